"""asr.segment: long audio cut at pauses, read in blocks, in bounded memory."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.audio import AudioError
from asr.segment import Segment, iter_segments, segment_stream


@pytest.fixture
def one_torch_thread():
    """Resampling runs in torch; on a busy 2-core machine one thread is several times faster."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tone(seconds: float, sr: int, amp: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return amp * np.sin(2 * np.pi * freq * t)


def _tones_and_silences(sr: int, amp: float, noise: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Tones separated by known silences: segments are expected at 1.0, 2.4 and 6.3 s (the
    0.2 s gap after the 1.2 s tone is shorter than min_silence and does not split)."""
    rng = np.random.default_rng(seed)
    plan = [(False, 1.0), (True, 0.8), (False, 0.6), (True, 1.2), (False, 0.2), (True, 0.5), (False, 2.0), (True, 0.7), (False, 1.5)]
    x = np.concatenate([_tone(s, sr, amp) if on else np.zeros(int(round(s * sr))) for on, s in plan])
    x = x + noise * rng.standard_normal(len(x))
    if channels > 1:
        x = np.stack([x * (1 - 0.2 * c) for c in range(channels)], axis=1)
    return x.astype(np.float32)


ONSETS = [1.0, 2.4, 6.3]


@pytest.mark.parametrize(
    ("sr", "channels", "amp", "noise"),
    [
        (16000, 1, 0.5, 0.003),  # ordinary level, no resampling
        (44100, 2, 0.9, 0.01),  # loud, stereo, resampled
        (8000, 1, 0.004, 0.00005),  # very quiet (-51 dBFS tones), resampled
    ],
)
def test_segment_starts_match_tone_onsets(tmp_path: Path, one_torch_thread: None, sr: int, channels: int, amp: float, noise: float) -> None:
    onsets = ONSETS
    path = tmp_path / "tones.wav"
    sf.write(path, _tones_and_silences(sr, amp, noise, channels), sr, subtype="FLOAT")

    segments = list(iter_segments(path, 16000, block_seconds=0.5))
    assert [round(s.start, 2) for s in segments] == pytest.approx([o - 0.1 for o in onsets], abs=0.05)  # 0.1 s margin
    for seg, onset in zip(segments, onsets, strict=True):
        assert seg.samples.dtype == np.float32 and seg.samples.ndim == 1 and seg.sample_rate == 16000
        # `start` is exact: the tone's first sample within the segment lands on the true onset.
        first = np.flatnonzero(np.abs(seg.samples) > amp / 3)[0]
        assert seg.start + first / 16000 == pytest.approx(onset, abs=0.002)
        assert seg.end <= onset + 2.0 + 0.2  # trailing silence trimmed to the margin
    # The 1.2 s and 0.5 s tones with a 0.2 s gap are one segment that ends 0.1 s after the second.
    assert segments[1].end == pytest.approx(2.4 + 1.2 + 0.2 + 0.5 + 0.1, abs=0.05)

    tight = list(iter_segments(path, 16000, margin=0.0))
    assert [s.start for s in tight] == pytest.approx(onsets, abs=0.05)


def test_silence_gives_no_segment_and_short_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    sf.write(tmp_path / "noise.wav", (0.002 * rng.standard_normal(16000 * 12)).astype(np.float32), 16000)
    assert list(iter_segments(tmp_path / "noise.wav")) == []
    sf.write(tmp_path / "zeros.wav", np.zeros(16000 * 3, np.float32), 16000)
    assert list(iter_segments(tmp_path / "zeros.wav")) == []
    # A file shorter than one energy frame that is all sound.
    sf.write(tmp_path / "tiny.wav", _tone(0.02, 16000, 0.5).astype(np.float32), 16000)
    assert list(iter_segments(tmp_path / "tiny.wav", min_speech=0.0))[0].start == 0.0


def test_continuous_sound_is_cut_at_the_quietest_point() -> None:
    sr = 16000
    rng = np.random.default_rng(2)
    t = np.arange(sr * 50) / sr
    x = 0.3 * np.sin(2 * np.pi * 300 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.7 * t))
    dip = slice(int(21.0 * sr), int(21.15 * sr))  # 150 ms much quieter, but not a pause
    x[dip] *= 0.05
    x = (x + 0.001 * rng.standard_normal(len(x))).astype(np.float32)
    blocks = (x[i : i + 3000] for i in range(0, len(x), 3000))
    segments = list(segment_stream(blocks, sr, sr, max_seconds=30.0))
    assert len(segments) == 2
    assert segments[0].start == 0.0
    assert segments[0].end == pytest.approx(21.07, abs=0.1)  # the cut lies in the dip
    assert segments[1].start == pytest.approx(segments[0].end, abs=1e-9)  # contiguous: nothing lost
    assert segments[1].end == pytest.approx(50.0, abs=1e-6)
    assert sum(len(s.samples) for s in segments) == len(x)
    np.testing.assert_array_equal(np.concatenate([s.samples for s in segments]), x)


def _write_long_file(path: Path, minutes: int, sr: int = 8000) -> tuple[list[float], float]:
    """`minutes` of a one-minute pattern, written block by block: sound 0-4 s, pause, sound 5-9 s,
    pause, 40 s of continuous sound (10-50 s, longer than a segment may be), 10 s of quiet."""
    rng = np.random.default_rng(3)
    t = np.arange(sr * 60) / sr
    syllables = 0.25 * np.sin(2 * np.pi * 500 * t) * (0.4 + 0.6 * np.abs(np.sin(2 * np.pi * 2.0 * t)))
    sound = np.zeros(len(t), bool)
    for a, b in ((0, 4), (5, 9), (10, 50)):
        sound[a * sr : b * sr] = True
    minute = np.where(sound, syllables, 0.0)
    onsets = []
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        for m in range(minutes):
            f.write((minute + 0.002 * rng.standard_normal(len(minute))).astype(np.float32))
            onsets += [60.0 * m, 60.0 * m + 5, 60.0 * m + 10]
    return onsets, 60.0 * minutes


def test_long_file_in_bounded_memory(tmp_path: Path, one_torch_thread: None) -> None:
    path = tmp_path / "long.wav"
    onsets, duration = _write_long_file(path, minutes=25)
    whole_at_16k = duration * 16000 * 4  # bytes of the file's float32 samples at 16 kHz: 96 MB

    tracemalloc.start()
    t0 = time.perf_counter()
    spans = []
    try:
        for seg in iter_segments(path, 16000, max_seconds=30.0):
            spans.append((seg.start, seg.end, len(seg.samples)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - t0
    print(f"long audio: {duration / 60:.0f} min at 8 kHz, {len(spans)} segments, peak traced memory "
          f"{peak / 2**20:.1f} MiB (whole file at 16 kHz float32: {whole_at_16k / 2**20:.0f} MiB), {elapsed:.1f} s")

    assert peak < 16 * 2**20 and peak < whole_at_16k / 5
    assert all(n <= 30 * 16000 + 16 for _, _, n in spans)  # no segment over max_seconds
    assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:], strict=False))  # in order, no overlap
    # Each minute: two short utterances and the 40 s stretch cut in two; the quiet 10 s yields nothing.
    assert len(spans) == 4 * 25
    starts = [s for s, _, _ in spans]
    for onset in onsets:
        assert min(abs(s - max(0.0, onset - 0.1)) for s in starts) < 0.05  # 0.1 s margin
    for s, e, _ in spans:
        assert (s + 0.15) % 60 < 50 and (e - 0.15) % 60 < 50  # nothing from the quiet stretches (margins aside)
    # The 40 s stretches are covered without a gap (the cut is contiguous).
    covered = sum(e - s for s, e, _ in spans)
    assert covered > 25 * (4 + 4 + 40)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="file not found"):
        iter_segments(tmp_path / "missing.wav")
    (tmp_path / "notes.wav").write_text("not audio at all\n")
    with pytest.raises(AudioError, match="not readable as audio"):
        iter_segments(tmp_path / "notes.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty file"):
        list(iter_segments(tmp_path / "empty.wav"))
    with pytest.raises(ValueError, match="max_seconds"):
        iter_segments(tmp_path / "missing.wav", max_seconds=0.5)


def test_segment_properties() -> None:
    seg = Segment(1.5, np.zeros(8000, np.float32))
    assert seg.duration == 0.5 and seg.end == 2.0
