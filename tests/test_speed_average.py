"""Speed perturbation (augment.speeds) and checkpoint averaging (train.average_last, `asr average`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from asr.checkpoint import CheckpointError, average_checkpoints, load_checkpoint
from asr.config import Config, ConfigError, load_config
from asr.data import Key, prepare_data, speed_perturb
from tests.conftest import TONE_CONFIG, invoke


def test_speed_perturb_changes_duration_and_pitch_together() -> None:
    sr = 16000
    t = np.arange(sr) / sr
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    for speed in (0.9, 1.1):
        out = speed_perturb(tone, sr, speed)
        assert abs(len(out) - sr / speed) <= 2
        spectrum = np.abs(np.fft.rfft(out[1000:-1000]))
        peak_hz = np.argmax(spectrum) * sr / len(out[1000:-1000])
        assert abs(peak_hz - 1000 * speed) < 5
    assert speed_perturb(tone, sr, 1.0) is tone


def test_speeds_config_parses_and_rejects_bad_values(tmp_path: Path) -> None:
    assert load_config(None, ["augment.speeds=[0.9, 1.0, 1.1]"]).augment.speeds == [0.9, 1.0, 1.1]
    assert Config().augment.speeds == [1.0]
    with pytest.raises(ConfigError, match="augment.speeds"):
        load_config(None, ["augment.speeds=fast"])


def test_training_data_holds_one_copy_per_speed(tone_corpus: dict[str, Path]) -> None:
    cfg = load_config(None, ["augment.speeds=[0.9, 1.0, 1.1]", "features.n_mels=40"])
    data = prepare_data(str(tone_corpus["train"]), "train", cfg, None, training=True, log=lambda m: None)
    n = data.n
    assert data.speeds == [0.9, 1.0, 1.1] and [len(v) for v in data.versions] == [n, n, n] and data.plain == 1
    slow, plain, fast = (v.lengths() for v in data.versions)
    assert np.all(slow > plain) and np.all(fast < plain)
    assert data.versions[0].utts[0].id == data.versions[1].utts[0].id == data.versions[2].utts[0].id
    assert len(data[Key(0, 0)]) == slow[0] and len(data[Key(0, 2)]) == fast[0]
    # every epoch: each utterance exactly once, at a random speed
    keys = data.epoch_keys(torch.Generator().manual_seed(0))
    assert sorted(k.utt for k in keys) == list(range(n)) and len({k.speed for k in keys}) == 3
    batches = data.epoch_batches(3000, torch.Generator().manual_seed(0))
    assert sorted(k.utt for b in batches for k in b) == list(range(n))
    assert data.epoch_keys(None) == [Key(i, 1) for i in range(n)]
    dev = prepare_data(str(tone_corpus["dev"]), "dev", cfg, None, training=False, log=lambda m: None)
    assert dev.speeds == [1.0] and len(dev.versions) == 1
    with pytest.raises(ConfigError, match="augment.speeds"):
        prepare_data(str(tone_corpus["dev"]), "dev", load_config(None, ["augment.speeds=[0.1]"]), None, training=True)


def test_average_last_epochs_and_asr_average(tone_corpus: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "tones.toml"
    config.write_text(TONE_CONFIG)
    exp = tmp_path / "exp"
    invoke(
        "train", config, "--out", exp,
        "--set", f"data.train={tone_corpus['train']}", "--set", f"data.dev={tone_corpus['dev']}",
        "--set", "train.epochs=4", "--set", "train.average_last=3", "--set", "augment.speeds=[0.9,1.0,1.1]", "--set", "train.plots=false",
    )
    kept = sorted((exp / "epochs").glob("epoch-*.pt"))
    assert [p.name for p in kept] == ["epoch-002.pt", "epoch-003.pt", "epoch-004.pt"]
    averaged = load_checkpoint(exp / "averaged.pt")
    weights = [load_checkpoint(p)["model"] for p in kept]
    for name, value in averaged["model"].items():
        torch.testing.assert_close(value, sum(w[name] for w in weights) / 3)
    assert "train_state" not in averaged and (exp / "averaged.json").exists()
    # the same through the command, from the experiment directory or from files
    invoke("average", exp, "--last", "2", "--out", tmp_path / "two.pt")
    two = load_checkpoint(tmp_path / "two.pt")["model"]
    name = next(iter(two))
    torch.testing.assert_close(two[name], (weights[1][name] + weights[2][name]) / 2)
    invoke("average", kept[0], kept[2], "--out", tmp_path / "ends.pt")
    torch.testing.assert_close(load_checkpoint(tmp_path / "ends.pt")["model"][name], (weights[0][name] + weights[2][name]) / 2)
    invoke("decode", exp / "averaged.pt", tone_corpus["test"], "--out", tmp_path / "hyp.jsonl")


def test_average_refuses_different_models(trained: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    ckpt = load_checkpoint(trained / "best.pt")
    ckpt["model"] = {k: v[..., :1] if v.dim() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, other)
    with pytest.raises(CheckpointError, match="different model"):
        average_checkpoints([trained / "best.pt", other], tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="no epochs"):
        from asr.checkpoint import epoch_checkpoints

        epoch_checkpoints(tmp_path, 3)
