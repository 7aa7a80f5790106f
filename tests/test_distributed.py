"""Distributed data parallel training on the CPU with gloo: two processes reach the model state
that one process reaches on the same global batches (two micro-batches per update), intermediate
CTC included (its layer outputs must come back through the DDP wrapper)."""

import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import make_tone_corpus

CONFIG = """
[features]
n_mels = 24
[augment]
freq_masks = 0
time_masks = 0
[model]
stack = 2
hidden = 16
layers = 2
dropout = 0.0
[train]
epochs = 2
batch_frames = 500
warmup_steps = 3
threads = 1
inter_ctc_weight = 0.3
device = "cpu"  # gloo; on a GPU machine "auto" would take NCCL
"""


def test_two_gloo_processes_match_one_process_with_accumulation(tmp_path: Path) -> None:
    manifest = make_tone_corpus(tmp_path / "data", 24, seed=11)
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    common = [str(config), "--set", f"data.train={manifest}"]

    one = subprocess.run([sys.executable, "-m", "asr", "train", *common, "--out", str(tmp_path / "one"), "--set", "train.accumulate=2"], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "asr", "train", *common, "--out", str(tmp_path / "two"), "--nproc", "2"], capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert "over 2 processes" in two.stderr

    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert a["train_state"]["step"] == b["train_state"]["step"] > 0
    for name, tensor in a["model"].items():
        assert torch.allclose(tensor, b["model"][name], atol=1e-4), name
    # Rank 0 alone writes: one metrics row per epoch.
    assert len((tmp_path / "two" / "metrics.csv").read_text().strip().splitlines()) == 1 + 2
