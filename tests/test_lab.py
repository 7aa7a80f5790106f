"""The RNN laboratory: the gradient probe, training plots, the time budget, `asr inspect`,
the long-dependency task and `asr lab compare` (on a tiny fake AN4)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.config import load_config
from asr.inspect import first_last_ratio, inspect_audio, load_probe
from asr.plots import TrainingPlots
from asr.train import train
from tests.conftest import WORDS, invoke, make_tone_corpus, tone_utterance

SMALL = """
[features]
n_mels = 24
[augment]
time_masks = 0
[model]
kind = "lstm"
stack = 2
hidden = 16
layers = 2
dropout = 0.0
[train]
epochs = 2
batch_frames = 800
warmup_steps = 5
probe_every = 2
threads = 1
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tone_corpus(tmp_path_factory.mktemp("lab") / "data", 24, seed=7)


@pytest.fixture(scope="module")
def probed(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LSTM trained 2 epochs with the probe every 2 updates (a few seconds)."""
    root = tmp_path_factory.mktemp("probed")
    (root / "c.toml").write_text(SMALL)
    exp = root / "exp"
    train(load_config(root / "c.toml", [f"data.train={corpus}", f"data.dev={corpus}"]), exp)
    return exp


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_probe_file_and_clipped_norms(probed: Path) -> None:
    probe = load_probe(probed / "probe.npz")
    steps = _rows(probed / "steps.csv")
    assert probe["steps"].tolist() == [0, *range(2, len(steps) + 1, 2)]
    n, layers, frames = probe["norms"].shape
    assert (n, layers) == (len(probe["steps"]), 2) and frames == probe["lengths"].max()
    assert np.isfinite(probe["norms"]).all() and (probe["norms"][:, :, : probe["lengths"].min()] > 0).all()
    assert list(probe["layers"]) == ["layer 1 (lstm, 16 units)", "layer 2 (lstm, 16 units)"]
    assert np.isfinite(first_last_ratio(probe))
    for r in steps:
        norm, clipped = float(r["grad_norm"]), float(r["grad_norm_clipped"])
        assert clipped == pytest.approx(min(norm, 5.0), rel=1e-3, abs=1e-3)
    assert [int(r["clipped"]) >= 0 for r in _rows(probed / "metrics.csv")] == [True, True]


def test_training_plots_are_written(probed: Path) -> None:
    for name in ("epochs.png", "grad_norm.png", "probe.png"):
        assert (probed / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_resumes_without_duplicates(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(SMALL)
    sets = [f"data.train={corpus}", "train.plots=false", "train.epochs=1"]
    train(load_config(tmp_path / "c.toml", sets), tmp_path / "exp")
    first = load_probe(tmp_path / "exp" / "probe.npz")
    train(load_config(tmp_path / "c.toml", [*sets, "train.epochs=2"]), tmp_path / "exp")
    both = load_probe(tmp_path / "exp" / "probe.npz")
    assert both["steps"].tolist()[: len(first["steps"])] == first["steps"].tolist()
    assert len(set(both["steps"].tolist())) == len(both["steps"]) > len(first["steps"])
    assert np.array_equal(both["norms"][: len(first["steps"])], first["norms"])
    assert not (tmp_path / "exp" / "plots").exists()


def test_max_minutes_stops_at_an_epoch_boundary_and_resumes(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(SMALL)
    sets = [f"data.train={corpus}", "train.plots=false", "train.probe_every=0", "train.epochs=3", "train.max_minutes=0.0001"]
    exp = tmp_path / "exp"
    assert train(load_config(tmp_path / "c.toml", sets), exp) == exp / "best.pt"
    assert [r["epoch"] for r in _rows(exp / "metrics.csv")] == ["1"]
    train(load_config(tmp_path / "c.toml", sets), exp)  # the budget is spent: nothing more
    assert [r["epoch"] for r in _rows(exp / "metrics.csv")] == ["1"]
    train(load_config(tmp_path / "c.toml", [*sets[:-1], "train.max_minutes=0"]), exp)
    assert [r["epoch"] for r in _rows(exp / "metrics.csv")] == ["1", "2", "3"]
    assert not (exp / "probe.npz").exists()


def test_a_failing_plot_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(exp: Path) -> list[Path]:
        raise OSError("disk full")

    monkeypatch.setattr("asr.plots.training_plots", broken)
    plots = TrainingPlots(tmp_path, cost=0.0)
    plots.update()
    plots.update(final=True)
    plots.finish()
    assert capsys.readouterr().err.count("warning: plots") == 1


def test_plots_are_throttled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr("asr.plots.training_plots", lambda exp: calls.append(exp) or [])
    plots = TrainingPlots(tmp_path, cost=0.0)
    plots.update()  # drawn
    plots.cost = 100.0  # as if it had taken 100 s
    plots.update()  # too soon after a costly drawing: skipped ...
    plots.finish()  # ... and drawn at the end
    plots.finish()  # nothing new
    plots.update(final=True)  # the last epoch is always drawn
    assert len(calls) == 3


def test_inspect_lstm(probed: Path, corpus: Path, tmp_path: Path) -> None:
    wav = corpus.parent / "utt000.wav"
    insp = inspect_audio(probed / "best.pt", wav)
    frames = insp.log_probs.shape[0]
    assert frames == -(-insp.features.shape[0] // 2) and len(insp.gates) == 2
    for g, out in zip(insp.gates, insp.layer_outputs, strict=True):
        assert g.input_gate.shape == g.cell.shape == (frames, 16)
        assert abs(g.hidden - out).max() < 1e-4  # the recomputed LSTM is the model's LSTM
    assert insp.text == "".join(insp.tokens[k] for _, k in insp.emissions).replace("|", " ").strip()
    out = tmp_path / "inspect.png"
    result = invoke("inspect", probed / "best.pt", wav, "--out", out, "--units", 8)
    assert out.read_bytes()[:4] == b"\x89PNG" and "->" in result.output


def test_inspect_other_kinds_and_refuses_exports(corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(SMALL)
    sets = [f"data.train={corpus}", "model.kind=bgru", "train.epochs=1", "train.probe_every=0", "train.plots=false"]
    train(load_config(tmp_path / "c.toml", sets), tmp_path / "exp")
    wav = corpus.parent / "utt001.wav"
    insp = inspect_audio(tmp_path / "exp" / "best.pt", wav)
    assert not insp.gates and [o.shape[1] for o in insp.layer_outputs] == [32, 32]
    invoke("inspect", tmp_path / "exp" / "best.pt", wav, "--out", tmp_path / "gru.png")
    invoke("export", tmp_path / "exp" / "best.pt", "--out", tmp_path / "m.ts")
    with pytest.raises(ValueError, match="exported model"):
        inspect_audio(tmp_path / "m.ts", wav)


def test_long_dependency_tiny(tmp_path: Path) -> None:
    invoke("lab", "long-dependency", "--out", tmp_path, "--steps", 3, "--delay", 2, "--delay", 6, "--hidden", 8)
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [(r["kind"], r["delay"]) for r in rows] == [("rnn", 2), ("lstm", 2), ("rnn", 6), ("lstm", 6)]
    assert all(0 <= r["accuracy"] <= 100 and r["ratio_init"] > 0 for r in rows)
    assert "| rnn | 6 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "gradient_vs_time.png").read_bytes()[:4] == b"\x89PNG"


def test_cue_task_gradients_vanish_faster_in_the_rnn() -> None:
    """At initialisation, the gradient reaching the cue 40 steps back is far smaller in the tanh RNN."""
    from asr.lab import train_dependency

    torch.set_num_threads(1)
    rnn, lstm = (train_dependency(kind, 40, steps=0, hidden=16) for kind in ("rnn", "lstm"))
    assert rnn.ratio_init < 1e-3 * lstm.ratio_init


def _fake_an4(root: Path) -> Path:
    """The AN4 layout with tone-word utterances: 3 training speakers (the first goes to dev), 1 test speaker."""
    rng = np.random.default_rng(3)
    for split, folder, speakers in (("train", "an4_clstk", ["fa", "fb", "fc"]), ("test", "an4test_clstk", ["fz"])):
        lines = []
        for spk in speakers:
            for i in range(6):
                words = [WORDS[j] for j in rng.integers(0, len(WORDS), 2)]
                uid = f"an{i}-{spk}-b"
                path = root / "wav" / folder / spk / f"{uid}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, tone_utterance(words, rng), 16000)
                lines.append(f"<s> {' '.join(words)} </s> ({uid})")
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc" / f"an4_{split}.transcription").write_text("\n".join(lines) + "\n")
    return root


def test_compare_on_a_fake_an4(tmp_path: Path) -> None:
    data = _fake_an4(tmp_path / "an4")
    out = tmp_path / "cmp"
    args = ["lab", "compare", "--data", data, "--out", out, "--minutes-per-model", 0.000001, "--kinds", "blstm,rnn", "--kinds", "mlp", "--probe-every", 1]
    tiny = ["features.n_mels=16", "model.hidden=12", "model.layers=1", "model.stack=2", "model.context=1", "train.batch_frames=2000", "train.threads=1", "train.plots=false"]
    result = invoke(*args, *[a for s in tiny for a in ("--set", s)])
    rows = json.loads((out / "results.json").read_text())
    assert [r["kind"] for r in rows] == ["blstm", "rnn", "mlp"]
    assert all(0.85 <= r["relative"] <= 1.15 and r["epochs"] == 1 for r in rows)
    assert all(r["dev_wer"] >= 0 and r["test_wer"] >= 0 and np.isfinite(r["grad_ratio"]) for r in rows)
    assert "| mlp |" in (out / "RESULTS.md").read_text() and "| rnn |" in result.output
    used = load_config(out / "blstm" / "config.toml")  # the lab's own settings, not the recipe's later tuning
    assert (used.model.dropout, used.augment.speeds, used.train.epochs) == (0.2, [1.0], 50)
    invoke(*args, *[a for s in tiny for a in ("--set", s)])  # resumes: every budget is spent, nothing retrained
    assert [r["epoch"] for r in _rows(out / "rnn" / "metrics.csv")] == ["1"]
