"""Failures that users of other recognisers reported, replayed against asr: each kind of input
with its right value (DC offsets, non-UTF-8 names, symlinked folders, narrowband audio, word
times at the edges of speech, mismatched score files, clashing output names)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.config import Config, FeatureConfig
from asr.features import FeatureExtractor
from asr.segment import iter_segments

ROOT = Path(__file__).resolve().parents[1]

# 1. A constant DC offset changes neither the features nor the pause detector.


@pytest.mark.parametrize(("kind", "sample_rate", "offset"), [("fbank", 16000, 0.05), ("mfcc", 16000, -0.2), ("fbank", 8000, 0.3)])
def test_features_ignore_a_dc_offset(kind: str, sample_rate: int, offset: float) -> None:
    gen = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(sample_rate, generator=gen)
    ex = FeatureExtractor(FeatureConfig(kind=kind, sample_rate=sample_rate))
    clean, shifted = ex(x), ex(x + offset)
    assert (clean - shifted).abs().max() < 1e-3
    batch = ex(torch.stack([x, x + offset]))  # batched extraction removes each row's own offset
    assert (batch[1] - clean).abs().max() < 1e-3
    kept = FeatureExtractor(FeatureConfig(kind=kind, sample_rate=sample_rate, remove_dc_offset=False))
    assert (kept(x) - kept(x + offset)).abs().max() > 1.0  # without the option the offset shows


def test_dc_removal_matches_kaldi_framing() -> None:
    """Kaldi's order: cut the frame, subtract its mean, then window and FFT (feature-window.cc)."""
    gen = torch.Generator().manual_seed(1)
    x = 0.1 * torch.randn(8000, generator=gen) + 0.07
    ex = FeatureExtractor(FeatureConfig())
    win, hop, n_fft = 400, 160, 512
    off = (n_fft - win) // 2
    frames = x.unfold(0, n_fft, hop)[:, off : off + win]
    frames = frames - frames.mean(1, keepdim=True)
    padded = torch.nn.functional.pad(frames * torch.hann_window(win), (off, n_fft - win - off))
    power = torch.fft.rfft(padded, dim=-1).abs() ** 2
    reference = torch.log(power @ ex.mel.mel_scale.fb + 1e-6)
    assert reference.shape == ex(x).shape
    assert (reference - ex(x)).abs().max() < 1e-3


def test_checkpoints_saved_before_dc_removal_keep_their_features() -> None:
    saved = Config().to_dict()
    del saved["features"]["remove_dc_offset"]
    assert Config.from_saved(saved).features.remove_dc_offset is False
    assert Config.from_saved(Config().to_dict()).features.remove_dc_offset is True
    assert Config().features.remove_dc_offset is True


def _tones(sr: int, rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Tones of 0.6-1.5 s between 0.5-1 s pauses, with a little noise; returns the onsets."""
    parts, onsets, t = [], [], 0.0
    for i in range(4):
        pause, tone = 0.5 + 0.5 * rng.random(), 0.6 + 0.9 * rng.random()
        parts.append(np.zeros(int(pause * sr)))
        t += len(parts[-1]) / sr
        onsets.append(t)
        n = int(tone * sr)
        parts.append(0.3 * np.sin(2 * np.pi * (300 + 200 * i) * np.arange(n) / sr))
        t += n / sr
    parts.append(np.zeros(int(0.8 * sr)))
    x = np.concatenate(parts)
    return x + 0.002 * rng.standard_normal(len(x)), onsets


@pytest.mark.parametrize("offset", [0.05, -0.1, 0.3])
def test_pause_detector_ignores_a_dc_offset(tmp_path: Path, offset: float) -> None:
    x, onsets = _tones(16000, np.random.default_rng(3))
    sf.write(tmp_path / "clean.wav", x.astype(np.float32), 16000, subtype="FLOAT")
    sf.write(tmp_path / "offset.wav", (x + offset).astype(np.float32), 16000, subtype="FLOAT")
    clean = [round(s.start, 2) for s in iter_segments(tmp_path / "clean.wav")]
    shifted = [round(s.start, 2) for s in iter_segments(tmp_path / "offset.wav")]
    assert clean == pytest.approx([o - 0.1 for o in onsets], abs=0.05)
    assert shifted == clean


# 7. Scoring files that do not belong together.


class _Run:
    def __init__(self, r: subprocess.CompletedProcess) -> None:
        self.exit_code, self.stdout, self.output = r.returncode, r.stdout, r.stdout + r.stderr


def _run_score(*args: object) -> _Run:
    """`asr score` as a user runs it: a process, with errors reported by the entry point."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ASR_DEBUG", None)
    cmd = [sys.executable, "-m", "asr", "score", *map(str, args)]
    return _Run(subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120))


@pytest.mark.parametrize("layout", ["jsonl", "kaldi"])
def test_score_refuses_files_with_no_id_in_common(tmp_path: Path, layout: str) -> None:
    refs = {f"an4-test-{i}": "hello world" for i in range(5)}
    hyps = {f"fsdd-{i}": "hello world" for i in range(4)}
    if layout == "jsonl":
        import json

        ref, hyp = tmp_path / "ref.jsonl", tmp_path / "hyp.jsonl"
        ref.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in refs.items()))
        hyp.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in hyps.items()))
    else:
        ref, hyp = tmp_path / "text.ref", tmp_path / "text.hyp"
        ref.write_text("".join(f"{k} {v}\n" for k, v in refs.items()))
        hyp.write_text("".join(f"{k} {v}\n" for k, v in hyps.items()))
    result = _run_score(ref, hyp)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert str(ref) in lines[0] and str(hyp) in lines[0]
    assert "an4-test-0" in lines[0] and "fsdd-0" in lines[0]
    assert "WER" not in result.output

    from asr.scoring import ScoringError, score_files

    with pytest.raises(ScoringError, match="no hypothesis id matches"):
        score_files(ref, hyp)


def test_score_of_an_empty_hypothesis_file_is_refused(tmp_path: Path) -> None:
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("u1 a b\nu2 c\n")
    hyp.write_text("")
    result = _run_score(ref, hyp)
    assert result.exit_code != 0 and "no hypothesis id matches" in result.output and "none" in result.output


def test_score_with_some_ids_in_common_warns_and_counts(tmp_path: Path) -> None:
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("u1 a b\nu2 c d\n")
    hyp.write_text("u1 a b\nzz c d\n")
    result = _run_score(ref, hyp, "--json")
    assert result.exit_code == 0
    import json

    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["wer"] == 50.0 and scores["missing"] == ["u2"]
    assert "1 reference(s) without a hypothesis" in result.output


# KenLM's chatter stays off the terminal; real messages do not.


def test_beam_search_with_an_arpa_lm_keeps_the_terminal_quiet(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from asr.beam import BeamSearch
    from asr.config import DecodeConfig
    from asr.lm import build_arpa, write_lexicon
    from asr.text import Tokenizer

    tokens = ("<blank>", "|", "A", "B", "C")
    lexicon = tmp_path / "lexicon.txt"
    write_lexicon(["AB", "CAB"], tokens, lexicon)
    arpa = build_arpa(["AB CAB"] * 3 + ["CAB"], 2, tmp_path / "lm.arpa").path
    capfd.readouterr()
    for speeds in ([1.0], [0.9, 1.0, 1.1]):  # views also load the LM for rescoring
        search = BeamSearch(Tokenizer(tokens), DecodeConfig(speeds=speeds), lexicon=lexicon, lm=arpa)
        x = torch.full((6, len(tokens)), -9.0)
        for i, t in enumerate([2, 0, 3, 1, 4, 0]):
            x[i, t] = 0.0
        assert search.search_views([x.log_softmax(-1)] * len(speeds))[0].text
    out, err = capfd.readouterr()
    assert "binary file" not in out + err and "Reading" not in out + err and "*****" not in out + err, (out, err)


def test_kenlm_quietly_passes_on_other_output(capfd: pytest.CaptureFixture[str]) -> None:
    from asr.beam import kenlm_quietly

    with kenlm_quietly():
        os.write(2, b"Loading the LM will be faster if you build a binary file.\nReading /x/lm.arpa\n")
        os.write(2, b"----5---10---15---20---25---30---35---40---45---50---55---60---65---70---75---80---85---90---95--100\n")
        os.write(2, b"*" * 100 + b"\nlm.arpa:3: real error from KenLM\n")
        os.write(1, b"a line on stdout\n")
    out, err = capfd.readouterr()
    assert err.strip() == "lm.arpa:3: real error from KenLM"
    assert out.strip() == "a line on stdout"


# 6. Word times lie within the audio and do not start in the silence before a word.


def _speechlike(seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(len(t))


@pytest.mark.parametrize(
    ("lead", "floor", "offset_dc"),
    [("zeros", 0.0, 0.0), ("noise", 0.003, 0.0), ("noise", 0.003, 0.05), ("zeros", 0.0, -0.1)],
)
def test_fit_to_audio_moves_word_edges_out_of_silence(lead: str, floor: float, offset_dc: float) -> None:
    from asr.align import Word, fit_to_audio

    sr, rng = 16000, np.random.default_rng(4)
    silence = floor * rng.standard_normal(int(0.7 * sr))
    x = np.concatenate([silence, _speechlike(0.5, sr, rng), floor * rng.standard_normal(int(0.4 * sr)), _speechlike(0.6, sr, rng), floor * rng.standard_normal(int(0.3 * sr))])
    x = x + offset_dc
    # As an alignment that spread the first word over the leading silence and the last past the end.
    words = [Word("ONE", 0.0, 1.25, 0.9), Word("TWO", 1.55, 2.6, 0.8)]
    fitted = fit_to_audio(words, x, sr)
    assert [w.word for w in fitted] == ["ONE", "TWO"] and [w.confidence for w in fitted] == [0.9, 0.8]
    assert fitted[0].start == pytest.approx(0.7, abs=0.1)
    assert fitted[0].end == pytest.approx(1.2, abs=0.1)
    assert fitted[1].start == pytest.approx(1.6, abs=0.1)
    assert fitted[1].end == pytest.approx(2.2, abs=0.1) and fitted[1].end <= len(x) / sr


def test_fit_to_audio_digital_zeros_before_a_noisy_recording() -> None:
    """A muted start (zeros) before a recording whose own noise precedes the speech: the noise is
    still silence, so the word starts where the speech does."""
    from asr.align import Word, fit_to_audio

    sr, rng = 16000, np.random.default_rng(5)
    x = np.concatenate([np.zeros(int(0.7 * sr)), 0.0006 * rng.standard_normal(int(0.3 * sr)), _speechlike(1.0, sr, rng), 0.0006 * rng.standard_normal(int(0.5 * sr))])
    (w,) = fit_to_audio([Word("RUBOUT", 0.7, 2.1, 0.9)], x, sr)
    assert w.start == pytest.approx(1.0, abs=0.1) and w.end == pytest.approx(2.0, abs=0.1)


def test_fit_to_audio_clamps_to_the_clip_and_never_grows_a_word() -> None:
    from asr.align import Word, fit_to_audio

    sr = 16000
    clip = (0.3 * np.sin(np.arange(160) / 3)).astype(np.float32)  # 10 ms
    (w,) = fit_to_audio([Word("B", 0.0, 0.03, 0.5)], clip, sr)
    assert 0.0 <= w.start <= w.end <= 0.01
    # A segment 12 s into a file: times keep the offset; a word inside steady sound is unchanged.
    steady = (0.2 * np.sin(2 * np.pi * 300 * np.arange(2 * sr) / sr)).astype(np.float32)
    words = [Word("A", 12.2, 12.6, 1.0), Word("B", 13.5, 14.4, 1.0)]
    assert fit_to_audio(words, steady, sr, offset=12.0) == [Word("A", 12.2, 12.6, 1.0), Word("B", 13.5, 14.0, 1.0)]
    # A word in all-silent audio keeps its clamped times.
    assert fit_to_audio([Word("A", 0.1, 0.3, 1.0)], np.zeros(sr), sr) == [Word("A", 0.1, 0.3, 1.0)]


def test_transcribed_word_times_lie_within_the_speech(trained: Path, tmp_path: Path) -> None:
    import json

    from tests.conftest import invoke, tone_utterance

    rng = np.random.default_rng(7)
    speech = tone_utterance(["BAD", "CAB"], rng)  # words start 0.2 s in
    for name, lead in [("zeros", np.zeros(int(0.7 * 16000), np.float32)), ("hum", 0.002 * rng.standard_normal(int(0.7 * 16000)))]:
        sf.write(tmp_path / f"{name}.wav", np.concatenate([lead, speech]).astype(np.float32) + (0.05 if name == "hum" else 0.0), 16000)
    sf.write(tmp_path / "clip.wav", (0.3 * np.sin(np.arange(160) / 3)).astype(np.float32), 16000)  # 10 ms
    rows = [json.loads(line) for line in invoke("transcribe", trained / "best.pt", tmp_path, "--format", "json").stdout.splitlines()]
    by_name = {Path(r["path"]).stem: r for r in rows}
    for name in ("zeros", "hum"):
        words = by_name[name]["words"]
        assert words and words[0]["start"] >= 0.9 - 0.1, (name, words)
        assert words[-1]["end"] <= by_name[name]["duration"]
    clip = by_name["clip"]
    assert all(0 <= w["start"] <= w["end"] <= clip["duration"] for w in clip["words"]), clip
