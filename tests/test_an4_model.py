"""Checks on the AN4 recipe's model, where one has been trained (`asr recipe run an4 ... --out exp/an4`);
skipped otherwise, as in CI."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import invoke

EXP = Path(__file__).resolve().parents[1] / "exp" / "an4"
pytestmark = pytest.mark.skipif(not (EXP / "model.pt").exists() or not (EXP / "data" / "test.jsonl").exists(), reason="no trained AN4 model in exp/an4")


def test_srt_times_on_joined_an4_utterances(tmp_path: Path) -> None:
    """Test utterances joined with known silences: every word of utterance i lies within its
    utterance's span (0.1 s tolerance), and the SRT covers the same span."""
    from asr.audio import load_audio
    from asr.manifest import read_manifest

    utts = read_manifest(EXP / "data" / "test.jsonl")[:6]
    sr, pieces, spans, t = 16000, [], [], 0.0
    for i, u in enumerate(utts):
        gap = 1.0 + 0.5 * i
        audio = load_audio(u.audio, sr)
        pieces += [np.zeros(int(gap * sr), np.float32), audio]
        spans.append((t + gap, t + gap + len(audio) / sr))
        t += gap + len(audio) / sr
    wav = tmp_path / "joined.wav"
    sf.write(wav, np.concatenate(pieces + [np.zeros(sr, np.float32)]), sr)
    row = json.loads(invoke("transcribe", EXP / "model.pt", wav, "--format", "json").stdout)
    assert row["words"]
    for w in row["words"]:
        assert any(start - 0.1 <= w["start"] < w["end"] <= end + 0.1 for start, end in spans), w
    srt = invoke("transcribe", EXP / "model.pt", wav, "--format", "srt").stdout
    first_cue = srt.split("\n\n")[0].splitlines()[1].split(" --> ")[0]
    h, m, s = first_cue.replace(",", ".").split(":")
    assert spans[0][0] - 0.1 <= int(h) * 3600 + int(m) * 60 + float(s) <= spans[0][1]


def test_transcribe_an4_test_wav_is_sensible() -> None:
    from asr.manifest import read_manifest

    u = read_manifest(EXP / "data" / "test.jsonl")[0]
    path, text = invoke("transcribe", EXP / "model.pt", u.audio).stdout.rstrip("\n").split("\t")
    assert path == u.audio
    ref, hyp = u.text.split(), text.split()
    assert len(set(ref) & set(hyp)) >= len(ref) // 2, (u.text, text)
