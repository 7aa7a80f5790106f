"""Training survives SIGKILL and Ctrl-C, refuses a second process, skips non-finite steps, and
measures its memory."""

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.config import load_config
from asr.memory import PeakMemory, rss_mb
from asr.train import TrainingError, train
from tests.conftest import make_tone_corpus

SMALL = """
[features]
n_mels = 24
[model]
stack = 2
hidden = 16
layers = 1
[train]
epochs = 4
batch_frames = 500
warmup_steps = 5
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("small")
    config = root / "small.toml"
    config.write_text(SMALL)
    return config, make_tone_corpus(root / "data", 24, seed=5)


def epochs_in(exp: Path) -> list[int]:
    return [int(r["epoch"]) for r in csv.DictReader(open(exp / "metrics.csv"))]


def train_cmd(config: Path, manifest: Path, exp: Path) -> list[str]:
    return [sys.executable, "-m", "asr", "train", str(config), "--out", str(exp), "--set", f"data.train={manifest}"]


def wait_for_steps(exp: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        steps = exp / "steps.csv"
        if steps.exists() and len(steps.read_text().splitlines()) > n:
            return
        time.sleep(0.05)
    raise AssertionError(f"training did not reach step {n}")


def test_sigkill_mid_epoch_then_rerun_completes(small: tuple[Path, Path], tmp_path: Path) -> None:
    config, manifest = small
    exp = tmp_path / "exp"
    proc = subprocess.Popen(train_cmd(config, manifest, exp), stderr=subprocess.PIPE, text=True)
    wait_for_steps(exp, 10, proc)  # an epoch has 8 batches: step 10 is inside epoch 2, after its checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(exp / "last.pt", weights_only=True)["train_state"]["epoch"] >= 1
    rerun = subprocess.run(train_cmd(config, manifest, exp), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    assert epochs_in(exp) == [1, 2, 3, 4]


def test_ctrl_c_saves_mid_epoch_and_resumes(small: tuple[Path, Path], tmp_path: Path) -> None:
    config, manifest = small
    exp = tmp_path / "exp"
    proc = subprocess.Popen(train_cmd(config, manifest, exp), stderr=subprocess.PIPE, text=True)
    wait_for_steps(exp, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: saved" in err and "Traceback" not in err
    state = torch.load(exp / "last.pt", weights_only=True)["train_state"]
    assert state["step"] >= 3 and (state["partial"] is None or state["partial"]["done"] >= 1)  # mid-epoch or at an epoch's end
    rerun = subprocess.run(train_cmd(config, manifest, exp), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    assert epochs_in(exp) == [1, 2, 3, 4]
    steps = [int(r["step"]) for r in csv.DictReader(open(exp / "steps.csv"))]
    assert steps == list(range(1, len(steps) + 1))  # no step lost or repeated


def test_second_process_is_refused(small: tuple[Path, Path], tmp_path: Path) -> None:
    config, manifest = small
    exp = tmp_path / "exp"
    first = subprocess.Popen([*train_cmd(config, manifest, exp), "--set", "train.epochs=1000"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for_steps(exp, 1, first)
        second = subprocess.run(train_cmd(config, manifest, exp), capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert f"another training process (pid {first.pid})" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_non_finite_steps_are_skipped_then_stop(small: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    train_module = importlib.import_module("asr.train")  # the package's own `asr.train` is the function
    config, manifest = small
    real_loss = train_module.ctc_loss
    calls = {"n": 0, "bad": {3, 4}}

    def flaky_loss(*args):
        calls["n"] += 1
        loss = real_loss(*args)
        return loss * math.nan if calls["n"] in calls["bad"] else loss

    monkeypatch.setattr(train_module, "ctc_loss", flaky_loss)
    cfg = load_config(config, [f"data.train={manifest}", "train.epochs=2"])
    train(cfg, tmp_path / "a")
    rows = list(csv.DictReader(open(tmp_path / "a" / "metrics.csv")))
    assert [int(r["skipped"]) for r in rows] == [2, 0]
    assert all(math.isfinite(p.float().sum()) for p in torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"].values())

    # From the 10th loss on, every step is non-finite: training stops, epoch 1's checkpoint stays.
    calls.update(n=0, bad=set(range(10, 10_000)))
    cfg = load_config(config, [f"data.train={manifest}", "train.epochs=3", "train.max_nonfinite=5"])
    with pytest.raises(TrainingError, match="5 consecutive steps with a non-finite"):
        train(cfg, tmp_path / "b")
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["train_state"]["epoch"] == 1
    assert os.path.exists(tmp_path / "b" / "best.pt")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="resident memory is read from Linux's /proc")
def test_epoch_peak_memory_sees_a_short_allocation() -> None:
    with PeakMemory(interval=0.01) as memory:
        memory.restart()
        before = rss_mb()
        block = np.ones(300 * 2**20 // 8)  # 300 MB, touched, held for 0.2 s, then freed
        time.sleep(0.2)
        del block
        assert memory.restart() >= before + 250  # the epoch that held it
        time.sleep(0.05)
        assert memory.restart() < before + 250  # the next one did not
