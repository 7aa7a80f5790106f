"""Device selection: the CPU path here; the CUDA path (bf16 autocast) where a GPU is present."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import make_tone_corpus

CONFIG = """
[features]
n_mels = 24
[model]
stack = 2
hidden = 16
layers = 1
[train]
epochs = 1
batch_frames = 800
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dev")
    (root / "c.toml").write_text(CONFIG)
    return root / "c.toml", make_tone_corpus(root / "data", 12, seed=21)


def train(config: Path, manifest: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "asr", "train", str(config), "--out", str(out), "--set", f"data.train={manifest}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_auto_is_cpu_and_cuda_without_a_gpu_is_a_clear_error(small: tuple[Path, Path], tmp_path: Path) -> None:
    config, manifest = small
    r = train(config, manifest, tmp_path / "a", "--device", "auto", "--threads", "1")
    assert r.returncode == 0 and "device cpu" in r.stderr, r.stderr
    r = train(config, manifest, tmp_path / "b", "--device", "cuda")
    assert r.returncode == 1 and "no CUDA device" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_training_with_mixed_precision_loads_on_cpu(small: tuple[Path, Path], tmp_path: Path) -> None:
    config, manifest = small
    r = train(config, manifest, tmp_path / "gpu", "--device", "cuda")
    assert r.returncode == 0 and "device cuda" in r.stderr, r.stderr
    from asr.checkpoint import Recognizer

    rec = Recognizer.from_checkpoint(tmp_path / "gpu" / "best.pt", "cpu")
    assert rec.device.type == "cpu"
    wav = sorted(manifest.parent.glob("*.wav"))[0]
    out = subprocess.run([sys.executable, "-m", "asr", "transcribe", str(tmp_path / "gpu" / "best.pt"), str(wav), "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("gpus, processes, auto", [(0, 1, "cpu"), (1, 1, "cuda:0"), (1, 2, "cpu"), (2, 2, "cuda:1"), (4, 2, "cuda:1")])
def test_auto_takes_a_gpu_only_when_every_process_has_its_own(monkeypatch: pytest.MonkeyPatch, gpus: int, processes: int, auto: str) -> None:
    from asr.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("LOCAL_RANK", str(processes - 1))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    assert str(resolve_device("auto")) == auto
    assert str(resolve_device("cpu")) == "cpu"
    if auto == "cpu":
        with pytest.raises(ValueError, match="no CUDA device" if gpus == 0 else f"{processes} processes on this machine, {gpus} GPU"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda") == resolve_device("auto")


def test_too_few_gpus_for_nproc_is_one_line_before_launch(small: tuple[Path, Path], tmp_path: Path) -> None:
    if torch.cuda.is_available() and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has a GPU for each of 2 processes")
    config, manifest = small
    r = train(config, manifest, tmp_path / "x", "--device", "cuda", "--nproc", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and ("GPU per process" in r.stderr or "no CUDA device" in r.stderr), r.stderr
    assert not (tmp_path / "x").exists()
