"""Shared fixtures: audio that the tests generate, so the core suite needs no corpus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Each letter is a tone; a word is its letters in a row; words are separated by silence.
TONES = {"A": 400.0, "B": 900.0, "C": 1700.0, "D": 3000.0}
WORDS = ["AB", "BAD", "CAB", "DAD", "ADD", "BC", "DC", "CAD"]


def tone_word(word: str, sr: int = 16000) -> np.ndarray:
    """Each letter a 120 ms tone with 10 ms ramps."""
    t = np.arange(int(0.12 * sr)) / sr
    ramp = np.minimum(1, np.minimum(t, t[::-1]) / 0.01)
    return np.concatenate([0.5 * np.sin(2 * np.pi * TONES[ch] * t) * ramp for ch in word])


def tone_utterance(words: list[str], rng: np.random.Generator, sr: int = 16000) -> np.ndarray:
    """Tone words with 200 ms of silence around and between them, and a little noise."""
    gap = np.zeros(int(0.2 * sr))
    parts = [gap]
    for w in words:
        parts += [tone_word(w, sr), gap]
    x = np.concatenate(parts)
    return (x + 0.01 * rng.standard_normal(len(x))).astype(np.float32)


def make_tone_corpus(root: Path, n: int, seed: int, sr: int = 16000) -> Path:
    """Write n utterances of 1-3 tone words and a manifest; returns the manifest path."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        words = [WORDS[j] for j in rng.integers(0, len(WORDS), rng.integers(1, 4))]
        audio = tone_utterance(words, rng, sr)
        path = root / f"utt{i:03d}.wav"
        sf.write(path, audio, sr)
        rows.append({"id": f"s{seed}-utt{i:03d}", "audio": path.name, "duration": len(audio) / sr, "text": " ".join(words), "speaker": f"s{seed}"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture(scope="session")
def tone_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tones")
    return {
        "train": make_tone_corpus(root / "train", 160, seed=1),
        "dev": make_tone_corpus(root / "dev", 16, seed=2),
        "test": make_tone_corpus(root / "test", 16, seed=3),
    }


TONE_CONFIG = """
[features]
n_mels = 40

[augment]
freq_masks = 1
freq_width = 4
time_masks = 0

[model]
stack = 2
hidden = 64
layers = 1
dropout = 0.0

[train]
epochs = 30
lr = 0.006
warmup_steps = 10
batch_frames = 1500
seed = 1
"""


def invoke(*args: object):
    """Run the `asr` CLI in-process; fails the test on a non-zero exit."""
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture(scope="session")
def trained(tone_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained on the tone words (about half a minute on 2 cores)."""
    return train_tones(tmp_path_factory.mktemp("exp"), tone_corpus)


@pytest.fixture(scope="session")
def trained_streaming(tone_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A streaming model (one-direction LSTM, two frames of look-ahead) trained on the tone words."""
    return train_tones(tmp_path_factory.mktemp("exp_streaming"), tone_corpus, "model.kind=lstm", "model.lookahead=2")


def train_tones(root: Path, tone_corpus: dict[str, Path], *overrides: str) -> Path:
    """`asr train` of TONE_CONFIG with `overrides` (section.key=value) into root/exp."""
    config = root / "tones.toml"
    config.write_text(TONE_CONFIG)
    exp = root / "exp"
    sets = [f"data.train={tone_corpus['train']}", f"data.dev={tone_corpus['dev']}", *overrides]
    invoke("train", config, "--out", exp, *[a for s in sets for a in ("--set", s)])
    return exp
