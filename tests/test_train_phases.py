"""Training in phases (#18): last.pt written before `TrainState` and `Key` still resumes, and
exactly; TensorBoard logs what training measures; one launcher builds the torchrun command;
train.py keeps its phases short and leaves the probe and the plots to callbacks."""

from __future__ import annotations

import ast
import csv
import shutil
import signal
from pathlib import Path

import pytest
import torch

from asr.callbacks import EpochResult, StepResult
from asr.config import load_config
from asr.data import Key, prepare_data
from asr.train import PartialEpoch, TrainState, train
from tests.conftest import TONE_CONFIG, make_tone_corpus

TRAIN_PY = Path(__file__).resolve().parents[1] / "asr" / "train.py"

# No SpecAugment: its generator restarts with every epoch, so only without it does an epoch
# resumed halfway give the weights of an uninterrupted run. Dropout stays: the saved random
# state must carry it across the interruption.
EXACT = """
[features]
n_mels = 24
[augment]
freq_masks = 0
time_masks = 0
speeds = [0.9, 1.0, 1.1]
[model]
stack = 2
hidden = 16
layers = 2
dropout = 0.1
[train]
epochs = 3
batch_frames = 500
warmup_steps = 3
plots = false
"""


class InterruptAt:
    """A callback that presses Ctrl-C after update `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, step: StepResult) -> None:
        if step.step == self.step:
            signal.raise_signal(signal.SIGINT)

    def on_epoch_end(self, epoch: EpochResult) -> None:
        pass

    def on_train_end(self) -> None:
        pass


def _rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


TIMING = ("epoch_seconds", "elapsed_seconds", "rss_mb", "peak_rss_mb", "epoch_peak_rss_mb")


def _legacy(last: Path, n: int) -> None:
    """Rewrite last.pt's interrupted epoch as the code before `Key` saved it: one integer per
    example, speed * n + utterance."""
    ckpt = torch.load(last, weights_only=True)
    partial = ckpt["train_state"]["partial"]
    partial["batches"] = [[speed * n + utt for utt, speed in b] for b in partial["batches"]]
    torch.save(ckpt, last)


def test_old_last_pt_resumes_mid_epoch_to_the_uninterrupted_weights(tmp_path: Path) -> None:
    manifest = make_tone_corpus(tmp_path / "data", 24, seed=5)
    (tmp_path / "c.toml").write_text(EXACT)
    cfg = load_config(tmp_path / "c.toml", [f"data.train={manifest}"])
    n = prepare_data(str(manifest), "train", cfg, None, training=True, log=lambda m: None).n

    train(cfg, tmp_path / "whole")
    second = [int(r["step"]) for r in _rows(tmp_path / "whole" / "steps.csv") if r["epoch"] == "2"]
    cut = second[len(second) // 2]  # halfway through epoch 2
    assert cut < second[-1]
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", callbacks=[InterruptAt(cut)])
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["train_state"]
    assert saved["epoch"] == 1 and saved["step"] == cut and saved["partial"]["done"] == cut - second[0] + 1
    assert isinstance(saved["partial"]["stats"], dict)  # the untyped dict of older files, still
    assert any(speed != 1 for b in saved["partial"]["batches"] for _, speed in b)  # the keys matter
    shutil.copytree(tmp_path / "cut", tmp_path / "old")
    _legacy(tmp_path / "old" / "last.pt", n)

    for resumed in ("cut", "old"):
        train(cfg, tmp_path / resumed)
    whole = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    for resumed in ("cut", "old"):
        ckpt = torch.load(tmp_path / resumed / "last.pt", weights_only=True)
        for name, tensor in whole["model"].items():
            assert torch.equal(tensor, ckpt["model"][name]), (resumed, name)
        for i, state in whole["train_state"]["optimizer"]["state"].items():
            assert all(torch.equal(v, ckpt["train_state"]["optimizer"]["state"][i][k]) for k, v in state.items()), (resumed, i)
        assert _rows(tmp_path / resumed / "metrics.csv", TIMING) == _rows(tmp_path / "whole" / "metrics.csv", TIMING)
        assert _rows(tmp_path / resumed / "steps.csv") == _rows(tmp_path / "whole" / "steps.csv")


def test_train_state_reads_both_layouts_of_an_interrupted_epoch() -> None:
    stats = {"losses": [1.5, 2.0], "norms": [3.0, 7.0], "clipped": 1, "skipped": 0}
    old = {"epoch": 2, "step": 9, "best_wer": 12.5, "elapsed": 3.0, "partial": {"batches": [[4, 1], [7, 2]], "done": 2, "stats": stats}}
    state = TrainState.from_saved(old, n=3)
    assert state.partial is not None and state.partial.batches == [[Key(1, 1), Key(1, 0)], [Key(1, 2), Key(2, 0)]]
    assert (state.epoch, state.step, state.best_wer, state.partial.done, state.partial.stats.norms) == (2, 9, 12.5, 2, [3.0, 7.0])
    again = PartialEpoch.from_saved(state.partial.to_saved(), n=3)
    assert again == state.partial
    assert TrainState.from_saved({**old, "partial": None}, n=3).partial is None


def test_tensorboard_logs_what_training_measures(tone_corpus: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "tones.toml").write_text(TONE_CONFIG)
    sets = [f"data.train={tone_corpus['train']}", f"data.dev={tone_corpus['dev']}", "train.epochs=2", "train.plots=false", "train.probe_every=5", "train.tensorboard=true"]
    exp = tmp_path / "exp"
    train(load_config(tmp_path / "tones.toml", sets), exp)

    events = EventAccumulator(str(exp / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    steps, epochs = _rows(exp / "steps.csv"), _rows(exp / "metrics.csv")
    assert len(epochs) == 2 and len(steps) == int(epochs[-1]["step"])

    def logged(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    def same(tag: str, rows: list[dict[str, str]], column: str) -> None:
        """The tag's values at the rows' steps: the CSV's rounded figures, TensorBoard's float32."""
        assert [s for s, _ in logged(tag)] == [int(r["step"]) for r in rows], tag
        for (_, value), r in zip(logged(tag), rows, strict=True):
            assert value == pytest.approx(float(r[column]), rel=1e-3, abs=1e-4), (tag, r)

    for tag, column in [("train/loss", "loss"), ("train/grad_norm", "grad_norm"), ("train/grad_norm_clipped", "grad_norm_clipped"), ("train/lr", "lr")]:
        same(tag, steps, column)
    for tag, column in [("dev/wer", "dev_wer"), ("dev/cer", "dev_cer"), ("dev/loss", "dev_loss"), ("epoch/train_loss", "train_loss"), ("epoch/grad_norm_max", "grad_norm_max")]:
        same(tag, epochs, column)
    probes = [s for s, _ in logged("probe/first_last_ratio/layer1")]
    assert probes == list(range(0, len(steps) + 1, 5))
    images = events.Images("probe/gradients_through_time")
    assert [i.step for i in images] == [max(p for p in probes if p <= int(r["step"])) for r in epochs]
    assert images[0].width > 0 and images[0].height > 0


def test_one_launcher_for_the_command_line_and_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`asr train --nproc` and a recipe's `--nproc` both start torchrun through
    `asr.distributed.launch_training`; the recipe's processes read its resolved configuration."""
    import asr.distributed
    from asr.recipe import run_recipe
    from tests.test_corpora import make_an4
    from tests.test_recipes import tiny_an4_recipe

    commands: list[list[str]] = []
    monkeypatch.setattr(asr.distributed.subprocess, "call", lambda cmd: commands.append(cmd) or 0)
    assert asr.distributed.launch_training(tmp_path / "c.toml", tmp_path / "exp", 2, ["train.epochs=1"], "cpu") == 0
    assert commands[0][1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "asr", "train", str(tmp_path / "c.toml"), "--out", str(tmp_path / "exp"), "--set", "train.epochs=1"]

    launched = []

    def launch_here(config: Path, out: Path, nproc: int, overrides: tuple[str, ...] = (), device: str = "auto") -> int:
        launched.append((nproc, device))
        train(load_config(config, list(overrides)), out)  # what each process would run
        return 0

    monkeypatch.setattr(asr.distributed, "launch_training", launch_here)
    recipe = tiny_an4_recipe(tmp_path / "tiny")
    fast = ["train.plots=false", "augment.speeds=[1.0]", "train.device=cpu"]
    run_recipe(str(recipe), tmp_path / "run", data=make_an4(tmp_path / "an4"), stop_stage=2, overrides=fast, nproc=2)
    assert launched == [(2, "cpu")]
    assert (tmp_path / "run" / "model.pt").exists() and (tmp_path / "run" / "train" / "averaged.pt").exists()


def test_train_py_phases_stay_short_and_leave_probe_and_plots_to_callbacks() -> None:
    tree = ast.parse(TRAIN_PY.read_text())
    lengths = {f.name: f.end_lineno - f.lineno + 1 for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
    assert {"train", "setup", "train_one_epoch", "end_of_epoch", "finish"} <= set(lengths)
    assert max(lengths.values()) <= 80, max(lengths.items(), key=lambda kv: kv[1])
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"asr.plots", "asr.inspect"}
