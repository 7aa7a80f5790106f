"""Long audio in bounded memory: a file read block by block and cut at pauses into segments.

`iter_segments(path)` yields `Segment(start, samples)`: float32 mono samples at `sample_rate` and
the exact time (seconds in the original file) of the first sample. Memory holds one segment
(at most `max_seconds`) plus one block, however long the file is.

How segments are found (at the file's own sample rate, mixed to mono):

- short-term energy of consecutive 30 ms frames, in dBFS (10 log10 of the mean square about the
  frame's mean, so a constant DC offset counts as silence);
- an adaptive threshold: from a histogram of frame energies that forgets with a time constant
  of two minutes, noise floor = 10th percentile, signal level = 97th percentile, threshold =
  floor + max(6 dB, a quarter of level - floor), kept within [-65, -30] dBFS (so a quiet
  recording and a loud one both work, digital silence never sets a threshold of -100 dB, and a
  file with no pauses at all still counts as sound). The first decisions wait for 10 s of audio
  (or the end of the file), so the statistics are not guessed from a few frames;
- a frame is sound when its energy exceeds the threshold; a segment ends at a pause (a run of
  silent frames) of at least `min_silence` seconds; a segment about to exceed `max_seconds` is
  cut at its quietest point (lowest energy smoothed over 150 ms, searched in its last two
  thirds, with a slight preference for later points), and the next one starts exactly there, so no audio is lost or repeated;
- leading and trailing silence is trimmed to a margin of `margin` seconds (0.1 s) around the
  sound; segments with less than `min_speech` seconds of sound (clicks) and all-silent stretches
  produce nothing;
- each finished segment is resampled to `sample_rate` on its own (`asr.audio.resample`, the
  resampler `load_audio` uses). Segment edges lie in silence or at the quietest point, so the
  edges of the resampling filter do not matter.

Segment boundaries fall on the 30 ms frame grid of the file, and `start` is the exact time of
the segment's first sample (frame index x frame length / the file's rate), before resampling.

Two segmenters decide which frames are sound (`segmenter=`):

- "energy": the adaptive energy threshold above;
- "silero": Silero VAD (`asr.vad`): a frame is sound when a 32 ms VAD window overlapping it is
  speech. No warm-up is needed; the rest (pauses, margins, forced cuts at the lowest energy) is
  the same. It tells speech from noise where the energy threshold cannot, and it can miss
  sounds that are not speech to it (tones, for a model trained on them).

`DEFAULT_SEGMENTER` is used unless one is named; `bench/segment_vad.py` compares the two on AN4
test utterances joined with pauses, half of them in noise.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.audio import AudioError, _sf_message, as_float_samples, audio_info, resample

__all__ = ["Segment", "SEGMENTERS", "DEFAULT_SEGMENTER", "iter_segments", "segment_stream"]

FRAME_SECONDS = 0.03  # energy frame length (and hop)
WARMUP_SECONDS = 10.0  # audio read before the first decision
HISTORY_SECONDS = 120.0  # time constant of the energy statistics
NOISE_PERCENTILE = 10.0
LEVEL_PERCENTILE = 97.0
MIN_SNR_DB = 6.0  # the threshold is at least this far above the noise floor
RELATIVE_THRESHOLD = 0.25  # ... and at least this fraction of the way from floor to level
THRESHOLD_RANGE_DB = (-65.0, -30.0)
SMOOTH_SECONDS = 0.15  # energy smoothing when looking for a forced cut
LATE_BIAS_DB = 3.0  # a forced cut prefers later points: the earliest candidate counts this much louder

SEGMENTERS = ("energy", "silero")
DEFAULT_SEGMENTER = "energy"

_DB_LOW, _DB_HIGH, _DB_STEP = -100.0, 0.0, 0.5
_EDGES = np.arange(_DB_LOW, _DB_HIGH + _DB_STEP / 2, _DB_STEP)
_CENTRES = (_EDGES[:-1] + _EDGES[1:]) / 2


@dataclass(frozen=True, eq=False)
class Segment:
    """A stretch of a longer recording: `samples` (float32, mono, at `sample_rate`) begin
    `start` seconds into the original audio."""

    start: float
    samples: np.ndarray
    sample_rate: int = 16000

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def end(self) -> float:
        return self.start + self.duration


def iter_segments(
    path: str | Path,
    sample_rate: int = 16000,
    max_seconds: float = 30.0,
    min_silence: float = 0.3,
    block_seconds: float = 2.0,
    *,
    margin: float = 0.1,
    min_speech: float = 0.1,
    segmenter: str | None = None,
) -> Iterator[Segment]:
    """Segments of an audio file of any length, read in blocks of `block_seconds`, in order.

    Segments never overlap, hold at most `max_seconds` of audio each, and are cut at pauses of at
    least `min_silence` seconds, or at the quietest point when a stretch of sound runs longer.
    See the module docstring for the method; `segmenter` is "energy" or "silero" (default
    `DEFAULT_SEGMENTER`).

    A file that cannot be used raises `asr.audio.AudioError` at once (the checks of
    `audio_info`); audio data that fails to decode further on raises it during iteration.
    """
    path = Path(path)
    _check_params(sample_rate, max_seconds, min_silence, block_seconds, margin, min_speech)
    _segmenter_class(segmenter)
    info = audio_info(path)
    blocksize = max(1, int(round(block_seconds * info.sample_rate)))

    def blocks() -> Iterator[np.ndarray]:
        try:
            with sf.SoundFile(os.fsencode(path)) as f:  # bytes: a name that is not UTF-8 opens too
                yield from f.blocks(blocksize=blocksize, dtype="float32", always_2d=True)
        except Exception as e:
            raise AudioError(path, f"corrupt or truncated audio data ({_sf_message(e)})") from None

    return segment_stream(
        blocks(),
        info.sample_rate,
        sample_rate,
        max_seconds=max_seconds,
        min_silence=min_silence,
        margin=margin,
        min_speech=min_speech,
        segmenter=segmenter,
    )


def segment_stream(
    blocks: Iterable[np.ndarray],
    source_rate: int,
    sample_rate: int = 16000,
    *,
    max_seconds: float = 30.0,
    min_silence: float = 0.3,
    margin: float = 0.1,
    min_speech: float = 0.1,
    segmenter: str | None = None,
) -> Iterator[Segment]:
    """`iter_segments` for audio that arrives as blocks of samples at `source_rate`: each block
    is 1-D (mono) or (samples, channels), which are averaged. Times count from the first block."""
    _check_params(sample_rate, max_seconds, min_silence, 1.0, margin, min_speech)
    if source_rate <= 0:
        raise ValueError(f"source_rate must be positive, got {source_rate}")
    cls = _segmenter_class(segmenter)
    return cls(source_rate, sample_rate, max_seconds, min_silence, margin, min_speech).run(blocks)


def _segmenter_class(name: str | None) -> type[_Segmenter]:
    name = DEFAULT_SEGMENTER if name is None else name
    if name == "energy":
        return _Segmenter
    if name == "silero":
        return _VadSegmenter
    raise ValueError(f"segmenter must be one of {', '.join(SEGMENTERS)}, got {name!r}")


def _check_params(sample_rate: int, max_seconds: float, min_silence: float, block_seconds: float, margin: float, min_speech: float) -> None:
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if max_seconds < 1.0:
        raise ValueError(f"max_seconds must be at least 1, got {max_seconds}")
    if not min_silence > 0:
        raise ValueError(f"min_silence must be positive, got {min_silence}")
    if not block_seconds > 0:
        raise ValueError(f"block_seconds must be positive, got {block_seconds}")
    if margin < 0 or min_speech < 0:
        raise ValueError("margin and min_speech must not be negative")


class _Segmenter:
    """The streaming state. Frame indices are absolute (from the start of the audio); the
    buffers hold samples, energies and decisions from frame `base` on."""

    def __init__(self, source_rate: int, sample_rate: int, max_seconds: float, min_silence: float, margin: float, min_speech: float):
        self.sr = source_rate
        self.out_sr = sample_rate
        self.flen = max(1, int(round(FRAME_SECONDS * source_rate)))  # samples per frame
        fs = self.flen / source_rate  # exact frame duration
        self.max_frames = max(3, int(max_seconds * source_rate) // self.flen)
        self.min_silence = max(1, int(np.ceil(min_silence / fs - 1e-9)))
        self.margin = min(int(round(margin / fs)), self.min_silence // 2)
        self.min_speech = max(1, int(np.ceil(min_speech / fs - 1e-9))) if min_speech > 0 else 0
        self.smooth = max(1, int(round(SMOOTH_SECONDS / fs)))
        self.warmup = int(WARMUP_SECONDS * source_rate)
        self.decay_per_frame = np.exp(-fs / HISTORY_SECONDS)

        self.buf = np.zeros(0, np.float32)  # samples from frame `base` on (a partial frame at the end)
        self.energy = np.zeros(0, np.float32)  # dB of each complete frame from `base` on
        self.voiced = np.zeros(0, bool)  # decisions, from `base` on
        self.base = 0
        self.read = 0  # samples read in all
        self.hist = np.zeros(len(_CENTRES))
        self.threshold = THRESHOLD_RANGE_DB[0]

        self.pos = 0  # next frame for the state machine
        self.in_segment = False
        self.seg_start = 0
        self.last_voiced = 0
        self.floor = 0  # no segment may start before this frame (the end of the previous one)

    # --- input ---------------------------------------------------------------------------

    def run(self, blocks: Iterable[np.ndarray]) -> Iterator[Segment]:
        for block in blocks:
            self._append(block)
            if self.read >= self.warmup:
                self._classify()
                yield from self._advance(self.base + len(self.voiced))
                self._trim()
        self._finish_frames()
        self._classify()
        end = self._frames_end()
        yield from self._advance(end)
        if self.in_segment:
            seg = self._emit(self.seg_start, end)
            if seg is not None:
                yield seg

    def _frames_end(self) -> int:
        return self.base + len(self.energy)

    def _append(self, block: np.ndarray) -> None:
        block = as_float_samples(block, "<blocks>")
        if block.ndim == 2:
            block = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
        elif block.ndim != 1:
            raise ValueError(f"blocks must be 1-D or (samples, channels), got shape {block.shape}")
        if not np.isfinite(block).all():
            raise ValueError("samples contain NaN or Inf")
        self._on_samples(block)
        self.read += len(block)
        self.buf = np.concatenate([self.buf, block])
        done = len(self.energy)
        complete = len(self.buf) // self.flen
        if complete > done:
            frames = self.buf[done * self.flen : complete * self.flen].reshape(-1, self.flen)
            self._add_energy(frames)

    def _on_samples(self, block: np.ndarray) -> None:
        """A block of mono samples arrived (before its frames are measured)."""

    def _finish_frames(self) -> None:
        """The last, partial frame at the end of the audio becomes a frame of its own."""
        done = len(self.energy) * self.flen
        if len(self.buf) > done:
            self._add_energy(self.buf[done:][None, :])

    def _add_energy(self, frames: np.ndarray) -> None:
        frames = frames.astype(np.float64)
        power = np.var(frames, axis=1)  # mean square about the frame's mean: a DC offset is not energy
        db = np.clip(10 * np.log10(power + 1e-12), _DB_LOW, _DB_HIGH).astype(np.float32)
        self.energy = np.concatenate([self.energy, db])
        counts, _ = np.histogram(db, bins=_EDGES)
        self.hist = self.hist * self.decay_per_frame ** len(db) + counts
        self.threshold = self._threshold()

    def _threshold(self) -> float:
        cum = np.cumsum(self.hist)
        total = cum[-1]
        if total <= 0:
            return THRESHOLD_RANGE_DB[0]
        floor = _CENTRES[min(np.searchsorted(cum, total * NOISE_PERCENTILE / 100), len(cum) - 1)]
        level = _CENTRES[min(np.searchsorted(cum, total * LEVEL_PERCENTILE / 100), len(cum) - 1)]
        thr = floor + max(MIN_SNR_DB, RELATIVE_THRESHOLD * (level - floor))
        return float(np.clip(thr, *THRESHOLD_RANGE_DB))

    def _classify(self) -> None:
        """Decide sound / silence for the frames not decided yet, with the current threshold."""
        new = self.energy[len(self.voiced) :] > self.threshold
        self.voiced = np.concatenate([self.voiced, new])

    def _trim(self) -> None:
        """Drop what no future segment can need."""
        keep = self.seg_start if self.in_segment else max(self.base, min(self.pos, self._frames_end()) - self.margin)
        drop = keep - self.base
        if drop > 0:
            self.buf = self.buf[drop * self.flen :].copy()
            self.energy = self.energy[drop:].copy()
            self.voiced = self.voiced[drop:].copy()
            self.base = keep

    # --- decisions -----------------------------------------------------------------------

    def _advance(self, until: int) -> Iterator[Segment]:
        k = self.pos
        while k < until:
            voiced = bool(self.voiced[k - self.base])
            if not self.in_segment:
                if voiced:
                    self.in_segment = True
                    self.seg_start = max(k - self.margin, self.floor, self.base)
                    self.last_voiced = k
                k += 1
                continue
            if voiced:
                self.last_voiced = k
            elif k - self.last_voiced >= self.min_silence:  # a long enough pause: the segment ends
                end = self.last_voiced + 1 + self.margin
                seg = self._emit(self.seg_start, end)
                if seg is not None:
                    yield seg
                self.floor = end
                self.in_segment = False
                k += 1
                continue
            if k + 1 - self.seg_start > self.max_frames:  # too long: cut at the quietest point
                cut = self._quietest(self.seg_start, k + 1)
                seg = self._emit(self.seg_start, cut)
                if seg is not None:
                    yield seg
                self.floor = cut
                self.in_segment = False
                k = cut  # the frames after the cut are decided again, as the start of a segment
                continue
            k += 1
        self.pos = k

    def _quietest(self, start: int, end: int) -> int:
        """The frame to cut at: the lowest energy (smoothed over SMOOTH_SECONDS) in the last two
        thirds of [start, end), earlier frames counted up to LATE_BIAS_DB louder, so that among
        similar dips (between words) the latest wins and segments stay long, while a clearly
        quieter point (a pause) wins wherever it is."""
        lo = start + max(1, (end - start) // 3)
        db = self.energy[lo - self.base : end - self.base].astype(np.float64)
        power = 10 ** (db / 10)
        if len(power) > self.smooth:
            power = np.convolve(power, np.ones(self.smooth) / self.smooth, mode="same")
        score = 10 * np.log10(power + 1e-12) + np.linspace(LATE_BIAS_DB, 0.0, len(power))
        return lo + int(np.argmin(score))

    def _emit(self, start: int, end: int) -> Segment | None:
        """Frames [start, end) as a Segment, silence beyond the margin trimmed; None when it
        holds less than `min_speech` of sound."""
        end = min(end, self._frames_end())
        voiced = np.flatnonzero(self.voiced[start - self.base : end - self.base])
        if len(voiced) == 0 or len(voiced) < self.min_speech:
            return None
        first = max(start, start + int(voiced[0]) - self.margin)
        last = min(end, start + int(voiced[-1]) + 1 + self.margin)
        samples = self.buf[(first - self.base) * self.flen : (last - self.base) * self.flen]
        samples = resample(samples, self.sr, self.out_sr) if self.sr != self.out_sr else samples
        samples = np.array(samples, dtype=np.float32, copy=True)  # owned, writable, contiguous
        return Segment(first * self.flen / self.sr, samples, self.out_sr)


class _VadSegmenter(_Segmenter):
    """The segmenter with Silero VAD's decisions (`asr.vad.VoiceActivity`) instead of the energy
    threshold: a frame is sound when any VAD window overlapping it is speech."""

    def __init__(self, *args: float):
        from asr.vad import SpeechWindows, VoiceActivity

        super().__init__(*args)  # type: ignore[arg-type]
        self.vad = VoiceActivity(self.sr)
        self.warmup = 0  # the detector needs no statistics first
        self.speech = SpeechWindows(self.vad.window_seconds)
        self.flushed = False

    def _on_samples(self, block: np.ndarray) -> None:
        self.speech.add(self.vad.accept(block))

    def _finish_frames(self) -> None:
        super()._finish_frames()
        self.speech.add(self.vad.flush())
        self.flushed = True

    def _classify(self) -> None:
        first = self.base + len(self.voiced)
        last = self._frames_end()
        if last <= first:
            return
        speech, ready = self.speech.frames(first, last - first, self.flen / self.sr, to_last=self.flushed)
        self.voiced = np.concatenate([self.voiced, speech[:ready]])

    def _trim(self) -> None:
        super()._trim()
        self.speech.drop_before(self.base * self.flen / self.sr)
