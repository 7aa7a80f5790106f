"""Audio reading: any soundfile format (wav, flac, NIST sphere, ...), mono, resampled.

Every file that cannot be used raises `AudioError`, whose reason is one line:

- missing / not a file / unreadable: "file not found", "not a file", "cannot read (...)";
- 0 bytes: "empty file"; a valid header with no samples: "no audio samples";
- not audio at all (text, a PNG or other known file type, random bytes) or a header cut
  short or corrupt: "not readable as audio (...)", saying what it looks like;
- an encoding libsndfile cannot decode (e.g. MP3 or AC-3 inside a WAV, shorten-compressed
  NIST sphere): "unsupported encoding (...)" with the format tag / coding when known;
- a header that cannot be true: "implausible sample rate ..." (outside 1 kHz-768 kHz) or
  "implausible length ..." (more frames than a file of that size can hold); one that does not
  say: "unknown length ..." (a FLAC written to a pipe has no sample count);
- audio data that fails to decode after a good header: "corrupt or truncated audio data (...)";
  a FLAC file cut short is caught by `audio_info` too (it decodes the last frame);
- NaN or Inf samples: "samples contain NaN or Inf".

Truncated WAV data (the data chunk declares more bytes than the file holds, but whole
samples are there) is loaded as far as it goes, as soundfile/libsndfile, and therefore
lhotse, do; Kaldi's wave reader did the same for years with the warning "Read fewer bytes
than specified in the header" (its current version asserts instead). So a recording cut
by an interrupted copy keeps its audio, `audio_info(...).frames` counts the frames really
there (the duration written to manifests matches what loads), and `AudioInfo.truncated`
and the notes of `load_audio_with_notes` say it was cut. A cut FLAC stream is rejected
instead: libsndfile cannot decode it and its true length is unknown.

Usable but unusual audio loads and is reported in `LoadedAudio.notes`: several channels
(averaged to mono), another sample rate (resampled), truncation, clipping
(`clipping_fraction`), silence (`is_silent`), float samples beyond full scale.

File names are bytes: a name that is not UTF-8 (`caf\xe9.wav`, a str with a lone surrogate
in Python) opens like any other, since libsndfile is given `os.fsencode(path)`. Problems of
the name or of a link are said as such, never blamed on the audio: "invalid file name (...)",
"file name too long", "dangling symbolic link (to TARGET, not found)", "symbolic link loop"
(`asr.fileio.path_problem`).

Audio sampled below the rate a model was trained at is upsampled, but the band above half its
own rate stays empty: `SampleRateCheck` counts such inputs in a run and warns once.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np
import soundfile as sf

from asr.fileio import display, path_problem

AUDIO_EXTENSIONS = (".wav", ".flac", ".sph", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au")

# Header values outside these bounds come from corrupt headers, not recordings.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000
# Decoded samples per byte of file: FLAC-coded digital silence reaches a few hundred, so a
# header claiming more than this is lying (e.g. a corrupt MP3 Xing header claiming 10^10 frames).
MAX_SAMPLES_PER_BYTE = 10000

CLIPPING_THRESHOLD = 0.99  # |x| at or above this counts as full scale (8-bit peaks are 0.992)
CLIPPING_NOTE = 0.001  # load_audio_with_notes notes clipping above this fraction of samples
SILENCE_FLOOR = 1e-4  # -80 dBFS: a file whose peak is at or below this is silent
_MAX_KERNEL = 1_000_000  # resample: largest (new/g) x (orig/g) ratio used exactly
_UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's frame count when a header leaves it open (SF_COUNT_MAX)

_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
_PCM_SUBTYPES = ("PCM_U8", "PCM_S8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW")


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class AudioTooLong(AudioError):
    """Audio longer than a caller's bound of `limit` seconds: `seconds` is its length by its
    header, or None when it was found while decoding (the header said less, or nothing)."""

    def __init__(self, path: str | Path, limit: float, seconds: float | None = None):
        self.limit, self.seconds = limit, seconds
        length = f"{seconds:.1f} s of audio" if seconds is not None else "more audio than its header declares"
        super().__init__(path, f"{length}, over the limit of {limit:g} s")


@dataclass(frozen=True)
class AudioInfo:
    """Header facts. `frames` is what the file holds; `declared_frames` what a WAV header
    declares (None when unknown or not a WAV), so `truncated` tells a cut WAV."""

    sample_rate: int
    frames: int
    channels: int
    subtype: str = ""
    declared_frames: int | None = None

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    @property
    def truncated(self) -> bool:
        return self.declared_frames is not None and self.frames < self.declared_frames


@dataclass(frozen=True)
class LoadedAudio:
    """Samples (float32, mono, at `sample_rate`), the file's header facts and notes on
    what was done or found: "mixed down from 2 channels", "resampled from 8000 Hz",
    "truncated: ...", "clipped: ...", "silent", "float samples beyond full scale ..."."""

    samples: np.ndarray
    sample_rate: int
    info: AudioInfo
    notes: tuple[str, ...] = ()

    @property
    def mixed_down(self) -> bool:
        return self.info.channels > 1

    @property
    def resampled(self) -> bool:
        return self.info.sample_rate != self.sample_rate


def audio_info(path: str | Path) -> AudioInfo:
    """Header facts of an audio file; raises AudioError if it is missing, unreadable or empty.

    Reads the header only, except for float-coded files (FLOAT/DOUBLE subtypes, the only
    ones that can hold NaN or Inf), whose samples are scanned so that such files are
    rejected here too (a read of the file, block by block).
    """
    path = Path(path)
    info = _probe(path)
    if info.subtype in _FLOAT_SUBTYPES:
        try:
            for block in sf.blocks(_sf_path(path), blocksize=1 << 16, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():
                    raise AudioError(path, "samples contain NaN or Inf")
        except AudioError:
            raise
        except Exception as e:
            raise AudioError(path, f"corrupt or truncated audio data ({_sf_message(e)})") from None
    return info


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Samples as float32 mono at `sample_rate`; channels are averaged.

    See `load_audio_with_notes` for the same samples plus what was done to them.
    """
    return load_audio_with_notes(path, sample_rate).samples


def load_audio_with_notes(path: str | Path, sample_rate: int = 16000) -> LoadedAudio:
    """Samples as float32 mono at `sample_rate` (channels averaged, resampled), with notes.

    Raises AudioError for anything unusable (see the module docstring). Clipping, silence
    and truncation are measured on the file's own samples, before mixing and resampling.
    """
    path = Path(path)
    info = _probe(path)
    try:
        samples, sr = sf.read(_sf_path(path), dtype="float32", always_2d=True)
    except MemoryError:
        raise AudioError(path, f"too large to load ({info.frames} frames x {info.channels} channels)") from None
    except Exception as e:
        message = _sf_message(e)
        if "unimplemented" in message or "not supported" in message.lower():
            raise AudioError(path, f"unsupported encoding ({info.subtype or 'unknown'}: {message})") from None
        raise AudioError(path, f"corrupt or truncated audio data ({message})") from None
    if samples.shape[0] == 0:
        raise AudioError(path, "no audio samples")
    if not np.isfinite(samples).all():
        raise AudioError(path, "samples contain NaN or Inf")

    notes = []
    if info.channels > 1:
        notes.append(f"mixed down from {info.channels} channels")
    if sr != sample_rate:
        notes.append(f"resampled from {sr} Hz")
    if info.truncated:
        notes.append(f"truncated: the header declares {info.declared_frames} frames, the file holds {info.frames}")
    peak = float(np.abs(samples).max())
    clipped = clipping_fraction(samples)
    if peak > 1.0:
        notes.append(f"float samples beyond full scale (peak {peak:.3g})")
    elif clipped > CLIPPING_NOTE:
        notes.append(f"clipped: {100 * clipped:.1f}% of samples at full scale")
    if peak <= SILENCE_FLOOR:
        notes.append("silent")

    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if sr != sample_rate:
        mono = resample(mono, sr, sample_rate)
    return LoadedAudio(np.ascontiguousarray(mono, dtype=np.float32), sample_rate, info, tuple(notes))


def clipping_fraction(samples: np.ndarray, threshold: float = CLIPPING_THRESHOLD) -> float:
    """Fraction of samples (any shape, float full scale 1.0) whose magnitude is at or above
    `threshold`. A handful of peaks at full scale is common; whole stretches mean clipping."""
    samples = np.asarray(samples)
    if samples.size == 0:
        return 0.0
    return float(np.count_nonzero(np.abs(samples) >= threshold)) / samples.size


def is_silent(samples: np.ndarray, floor: float = SILENCE_FLOOR) -> bool:
    """True when no sample's magnitude exceeds `floor` (default -80 dBFS); all zeros is silent."""
    samples = np.asarray(samples)
    return samples.size == 0 or float(np.abs(samples).max()) <= floor


def is_sample_rate(rate: object) -> bool:
    """Whether `rate` is an integer (not a bool) between MIN_SAMPLE_RATE and MAX_SAMPLE_RATE Hz."""
    return isinstance(rate, (int, np.integer)) and not isinstance(rate, bool) and MIN_SAMPLE_RATE <= int(rate) <= MAX_SAMPLE_RATE


# Integer PCM as soundfile reads it into floats: (x - offset) / scale.
_PCM_SCALES = {
    np.dtype(np.int8): (0, 128.0),
    np.dtype(np.uint8): (128, 128.0),  # 8-bit WAV: offset binary
    np.dtype(np.int16): (0, 32768.0),
    np.dtype(np.uint16): (32768, 32768.0),
    np.dtype(np.int32): (0, 2147483648.0),
    np.dtype(np.uint32): (2147483648, 2147483648.0),
}


def as_float_samples(samples: Any, name: str = "<array>") -> np.ndarray:
    """Samples given by a caller (a numpy array or a torch tensor, any shape) as float32 with
    full scale 1.0, the same way for every API that takes arrays (`asr.transcribe`,
    `asr.stream`, the segmenter, the online model):

    - float16/32/64: the values as they are (float32);
    - integer PCM, scaled as soundfile reads such files: int16 / 32768, int32 / 2**31, int8 / 128,
      uint8 (8-bit WAV, offset binary) (x - 128) / 128, uint16 and uint32 likewise offset by
      half their range.

    Raises AudioError (a ValueError; one line naming `name` and the problem) for bool and
    complex samples, int64/uint64 (no sample width says where full scale is: give float or
    int16/int32), and anything that is not numbers."""
    if _is_tensor(samples):
        samples = samples.detach().cpu().numpy()
    x = np.asarray(samples)
    kind = x.dtype.kind
    if kind == "f":
        return x.astype(np.float32, copy=False)
    if x.dtype in _PCM_SCALES:
        offset, scale = _PCM_SCALES[x.dtype]
        return ((x.astype(np.float64) - offset) / scale).astype(np.float32) if offset else (x / np.float32(scale)).astype(np.float32)
    if kind == "b":
        raise AudioError(name, "samples are bool: give float samples in [-1, 1] or integer PCM (int16, int32)")
    if kind == "c":
        raise AudioError(name, f"samples are complex ({x.dtype}): give real float samples in [-1, 1] or integer PCM (int16, int32)")
    if kind in "iu":
        raise AudioError(name, f"samples are {x.dtype}, whose full scale is unknown: give float samples in [-1, 1] or int16/int32 PCM")
    raise AudioError(name, f"samples must be numbers (float, or integer PCM such as int16), got {x.dtype}")


def _is_tensor(x: Any) -> bool:
    """A torch tensor, found without importing torch when it was never imported."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def mix_down(x: np.ndarray) -> np.ndarray:
    """Samples given as an array by a caller, mixed to mono: a 2-D array, (samples, channels) or
    (channels, samples), is averaged over its shorter axis, taken for the channels; other
    arrays are returned as they are."""
    return x.mean(axis=1 if x.shape[0] >= x.shape[1] else 0) if x.ndim == 2 else x


def resample(samples: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's sinc interpolation, `torchaudio.functional.resample`
    with its defaults: a Hann-windowed sinc, 6 zero crossings, roll-off 0.99).

    torchaudio builds a kernel of about (new/g) x (orig/g) taps, g = gcd(orig, new): fine for
    44100 -> 16000 (160 x 441), gigabytes for an odd rate such as 44101 Hz. Such ratios are
    replaced by the nearest ratio of small integers, which changes the length (and pitch)
    by far less than can be heard: 44101 Hz by about a millionth, 8001 Hz (read as 8000 Hz)
    by 0.0125%. `StreamResampler` gives the same samples for audio that arrives in pieces.
    """
    import torch
    import torchaudio.functional as AF

    if orig_sr == new_sr:
        return samples
    orig, new = _resample_ratio(orig_sr, new_sr)
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    return AF.resample(x, orig, new).numpy()


def _resample_ratio(orig_sr: int, new_sr: int) -> tuple[int, int]:
    """(orig, new): the ratio new_sr / orig_sr in lowest terms, or the nearest one of small
    integers whose kernel stays small (see `resample`)."""
    exact = Fraction(int(new_sr), int(orig_sr))
    ratio = exact
    for limit in (1000, 300, 100, 30, 10):
        if ratio.numerator * ratio.denominator <= _MAX_KERNEL:
            break
        ratio = exact.limit_denominator(limit)
    if ratio == 0:
        raise ValueError(f"cannot resample {orig_sr} Hz to {new_sr} Hz")
    return ratio.denominator, ratio.numerator


class StreamResampler:
    """`resample` of audio that arrives in pieces: what `accept` returns for each piece and
    `finish` at the end, concatenated, are the samples `resample` gives for the whole signal
    (equal within float rounding), however the signal was cut.

    torchaudio's resampler is a polyphase FIR filter: output block n (the `new` samples of
    output n * new ...) is the dot product of the kernel with input samples
    [n * orig - width, n * orig + orig + width) (orig/new: the reduced ratio; zeros before the
    start and after the end). A block is computed once its last input sample has arrived,
    `width + orig` input samples later; the input held between calls is that history (one
    kernel's span), so the cost of a piece is linear in its length.

    orig_sr, new_sr: Hz. accept(x): float32 samples (n,) at orig_sr, any n (0 included) ->
    float32 samples at new_sr, those final now. finish() -> the rest (the end of the signal,
    zero-padded as `resample` pads it); the resampler then takes no more. A resampler with
    orig_sr == new_sr returns its input.
    """

    def __init__(self, orig_sr: int, new_sr: int):
        import torchaudio.transforms as T

        self.orig_sr, self.new_sr = int(orig_sr), int(new_sr)
        self.orig, self.new = _resample_ratio(self.orig_sr, self.new_sr) if self.orig_sr != self.new_sr else (1, 1)
        self.width = 0
        self._kernel = None
        if self.orig != self.new:
            import torch

            t = T.Resample(self.orig, self.new, dtype=torch.float32)  # the kernel `resample` builds
            self._kernel, self.width = t.kernel, int(t.width)
        self._span = 2 * self.width + self.orig  # input samples under one block's kernel
        self._held = np.zeros(self.width, np.float32)  # padded input from padded index `_base` on
        self._base = 0
        self.samples_in = 0  # input samples accepted
        self.samples_out = 0  # output samples given
        self.finished = False

    def accept(self, x: np.ndarray) -> np.ndarray:
        if self.finished:
            raise RuntimeError("StreamResampler: accept() after finish()")
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        self.samples_in += len(x)
        if self._kernel is None:
            self.samples_out += len(x)
            return x
        self._held = np.concatenate([self._held, x]) if len(self._held) else x
        return self._blocks(final=False)

    def finish(self) -> np.ndarray:
        if self.finished:
            raise RuntimeError("StreamResampler: finish() called twice")
        self.finished = True
        if self._kernel is None:
            return np.zeros(0, np.float32)
        self._held = np.concatenate([self._held, np.zeros(self.width + self.orig, np.float32)])
        return self._blocks(final=True)

    def _blocks(self, final: bool) -> np.ndarray:
        import torch

        end = self._base + len(self._held)  # padded length so far
        total = (end - self._span) // self.orig + 1 if end >= self._span else 0  # blocks computable
        first = self._base // self.orig  # the next block to compute
        if total <= first:
            out = np.zeros(0, np.float32)
        else:
            stop = (total - 1) * self.orig + self._span - self._base
            x = torch.from_numpy(np.ascontiguousarray(self._held[:stop]))[None, None]
            y = torch.nn.functional.conv1d(x, self._kernel, stride=self.orig)  # (1, new, blocks)
            out = y[0].T.reshape(-1).numpy()
            keep = total * self.orig - self._base
            self._held = self._held[keep:].copy()
            self._base += keep
        if final:  # `resample`'s length: ceil(new * n / orig)
            out = out[: max(0, -(-self.new * self.samples_in // self.orig) - self.samples_out)]
        self.samples_out += len(out)
        return out


# --- narrowband audio into a wideband model ----------------------------------------------


def lowest_sample_rate(paths: Iterable[str | Path]) -> int:
    """The lowest sample rate (Hz) among the headers of `paths` that can be read; 0 for none."""
    rates = set()
    for p in paths:
        try:
            rates.add(audio_info(p).sample_rate)
        except AudioError:
            continue
    return min(rates, default=0)


def training_rate(model: Any) -> int:
    """The sample rate of a loaded model's training audio: the lowest rate its training files had
    (saved with the checkpoint), else the rate its features are computed at."""
    saved = int(getattr(getattr(model, "normalizer", None), "audio_rate", 0) or 0)
    return saved or int(model.cfg.features.sample_rate)


@dataclass
class SampleRateCheck:
    """Inputs whose own sample rate is below `model_rate` (the rate of the model's training
    audio, `training_rate(model)`), counted over a run and said once.

    Such audio is upsampled to the model's rate, but nothing is above half its own rate (4 kHz
    for 8 kHz telephone audio, A-law and mu-law included), where a wideband model finds much of
    what it learnt: errors multiply, silently. Every command that feeds audio to a model (files:
    `asr.decode.transcribe`, `asr.decode.decode_manifest`; arrays with their rate: a stream or a
    server) calls `add` with each input's own rate and `warn` when it is done (a server: when
    it likes, e.g. at the first narrowband input); `warn` prints at most once per check.
    """

    model_rate: int
    rates: Counter = field(default_factory=Counter)  # own rate -> inputs seen at it
    warned: bool = False
    what: str = "file"  # what an input is called: "file", or "stream" (a live stream: one input, said as such)

    def add(self, rate: int, count: int = 1) -> bool:
        """Count `count` inputs at `rate` Hz; True when that is below the model's rate."""
        self.rates[int(rate)] += count
        return int(rate) < self.model_rate

    @property
    def narrowband(self) -> dict[int, int]:
        """Rate -> inputs, for the rates below the model's, lowest first."""
        return {r: n for r, n in sorted(self.rates.items()) if r < self.model_rate and n > 0}

    def message(self) -> str | None:
        """One line saying how many inputs, at which rates, and what to do; None when none is below."""
        low = self.narrowband
        if not low:
            return None
        total = sum(self.rates.values())
        count = sum(low.values())
        rates = ", ".join(f"{r} Hz: {n}" for r, n in low.items())
        lowest = min(low)
        if total == 1 and self.what == "stream":
            said = f"the stream is at {lowest} Hz, below the model's {self.model_rate} Hz: upsampled, it is empty above half its rate ({lowest // 2} Hz), "
        else:
            said = (
                f"{count} of {total} {self.what if total == 1 else self.what + 's'} with a sample rate below the model's {self.model_rate} Hz "
                f"({rates}): upsampled, they are empty above half their own rate ({lowest // 2} Hz at {lowest} Hz), "
            )
        return (
            said +
            "a band the model was trained with, so expect many more errors; for narrowband (e.g. telephone) "
            f"audio, train a model on narrowband audio with features.sample_rate = {lowest} "
            f"(asr train ... --set features.sample_rate={lowest})"
        )

    def warn(self, file: TextIO | None = None) -> bool:
        """Print "warning: <message>" on `file` (default stderr) unless already done or nothing
        is below the model's rate; True when printed."""
        text = self.message()
        if self.warned or text is None:
            return False
        self.warned = True
        print(f"warning: {display(text)}", file=file or sys.stderr, flush=True)
        return True


# --- header checks ------------------------------------------------------------------------


def _sf_path(path: str | Path) -> bytes:
    """The path as bytes for soundfile, which would encode a str strictly and fail on a name
    that is not UTF-8 (a str with lone surrogates)."""
    return os.fsencode(path)


def _probe(path: Path) -> AudioInfo:
    """Header facts with every header-level check; AudioError with a reason otherwise."""
    problem = path_problem(path)
    if problem:
        raise AudioError(path, problem)
    if not path.is_file():
        raise AudioError(path, "not a file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise AudioError(path, f"cannot read ({e.strerror or type(e).__name__})") from None
    if size == 0:
        raise AudioError(path, "empty file")
    wav = _wav_header(path) if head[:4] == b"RIFF" and head[8:12] == b"WAVE" else None
    try:
        info = sf.info(_sf_path(path))
    except UnicodeError as e:  # a name problem, whatever libsndfile's wrapper makes of it
        raise AudioError(path, f"invalid file name ({e})") from None
    except Exception as e:
        raise AudioError(path, _why_unreadable(head, wav, _sf_message(e))) from None
    result = _checked_info(path, info, wav, size)
    if info.format == "FLAC":
        _check_flac_end(path, info.frames)
    return result


def _checked_info(name: str | Path, info: Any, wav: _WavHeader | None, size: int) -> AudioInfo:
    """libsndfile's header facts of a file of `size` bytes, checked: samples present, a plausible
    rate and length; with the WAV header, the frames it declares."""
    if info.frames <= 0:
        raise AudioError(name, "no audio samples")
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(name, f"implausible sample rate {info.samplerate} Hz (corrupt header?)")
    if info.frames == _UNKNOWN_FRAMES:
        raise AudioError(name, "unknown length: the header does not count the samples (a streamed FLAC?); re-encode the file")
    if info.frames * info.channels > MAX_SAMPLES_PER_BYTE * size:
        raise AudioError(name, f"implausible length: the header claims {info.frames} frames in {size} bytes (corrupt header?)")
    declared = None
    if wav is not None and wav.block_align and not wav.streamed and info.subtype in _PCM_SUBTYPES:
        declared = wav.data_size // wav.block_align
    return AudioInfo(info.samplerate, info.frames, info.channels, info.subtype, declared)


def bytes_info(data: bytes, name: str = "<bytes>") -> AudioInfo:
    """Header facts of an encoded file held in memory (an upload), with the header checks of
    `audio_info`; AudioError naming `name` otherwise. A WAV whose header declares more samples
    than the bytes hold is an error here (`truncated`): a file sent whole should be whole."""
    if not data:
        raise AudioError(name, "empty file")
    head = data[:4096]
    wav = _wav_header(io.BytesIO(data)) if head[:4] == b"RIFF" and head[8:12] == b"WAVE" else None
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as e:
        raise AudioError(name, _why_unreadable(head, wav, _sf_message(e))) from None
    result = _checked_info(name, info, wav, len(data))
    if result.truncated:
        raise AudioError(name, f"truncated: the header declares {result.declared_frames} frames, the file holds {info.frames}")
    return result


def bytes_blocks(data: bytes, name: str = "<bytes>", blocksize: int = 1 << 16, max_frames: int | None = None, limit: float = 0.0) -> Iterator[np.ndarray]:
    """The samples of an encoded file held in memory (whose header `bytes_info` has checked),
    decoded `blocksize` frames at a time and mixed to mono: float32 1-D blocks at the file's own
    rate. Memory holds one block of the file's channels, whatever the length or compression.

    Frames are counted as they are decoded: past `max_frames` (when given) AudioTooLong (with
    `limit`, the bound in seconds) is raised, whatever the header said. Raises AudioError naming
    `name` for data that fails to decode or holds NaN or Inf."""
    total = 0
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            for block in f.blocks(blocksize=blocksize, dtype="float32", always_2d=True):
                total += len(block)
                if max_frames is not None and total > max_frames:
                    raise AudioTooLong(name, limit)
                if not np.isfinite(block).all():
                    raise AudioError(name, "samples contain NaN or Inf")
                yield block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(name, f"corrupt or truncated audio data ({_sf_message(e)})") from None


def _check_flac_end(path: Path, frames: int) -> None:
    """Decode a FLAC file's last frame (a seek: a few reads) so that a stream cut short,
    whose header still counts every frame, is caught without decoding the whole file."""
    try:
        with sf.SoundFile(_sf_path(path)) as f:
            f.seek(frames - 1)
            got = len(f.read(1, dtype="float32"))
    except Exception:
        got = 0
    if got == 0:
        raise AudioError(path, f"corrupt or truncated audio data (the header's {frames} frames cannot all be decoded)")


@dataclass(frozen=True)
class _WavHeader:
    format_tag: int | None = None  # the SubFormat's tag for WAVE_FORMAT_EXTENSIBLE
    block_align: int = 0
    data_size: int = 0
    streamed: bool = False  # data size 0 or 0xFFFFFFFF: unknown, read to the end
    cut: bool = False  # the file ends (or a chunk size points past its end) before the data chunk


_MAX_WAV_CHUNKS = 64  # real files have a handful before `data`; a zero-filled one would have millions


def _wav_header(source: Path | BinaryIO) -> _WavHeader:
    """Walk a RIFF/WAVE file's chunks (a path or a seekable binary file) up to `data`; never
    raises on bad bytes."""
    fmt: tuple[int, int] | None = None
    with open(source, "rb") if isinstance(source, Path) else contextlib.nullcontext(source) as f:
        f.seek(0)
        riff_size = int.from_bytes(f.read(12)[4:8], "little")
        pos = 12
        for _ in range(_MAX_WAV_CHUNKS):
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                return _WavHeader(*(fmt or (None, 0)), cut=True)
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"fmt ":
                body = f.read(min(size, 40))
                if len(body) < 16:
                    return _WavHeader(cut=True)
                tag, _, _, _, block_align, _ = struct.unpack("<HHIIHH", body[:16])
                if tag == 0xFFFE and len(body) >= 26:
                    tag = int.from_bytes(body[24:26], "little")
                fmt = (tag, block_align)
            elif chunk[:4] == b"data":
                streamed = size == 0xFFFFFFFF or (size == 0 and riff_size in (0, 0xFFFFFFFF))
                return _WavHeader(*(fmt or (None, 0)), data_size=size, streamed=streamed)
            pos += 8 + size + (size & 1)
    return _WavHeader(*(fmt or (None, 0)), streamed=True)  # no data chunk among the first chunks: size unknown


# WAV format tags libsndfile decodes, and names for some it does not.
_WAV_DECODED = {0x0001, 0x0002, 0x0003, 0x0006, 0x0007, 0x0011, 0x0031, 0x0040}
_WAV_TAG_NAMES = {
    0x0050: "MPEG",
    0x0055: "MPEG layer 3",
    0x00FF: "AAC",
    0x0160: "WMA v1",
    0x0161: "WMA",
    0x0162: "WMA Pro",
    0x0163: "WMA lossless",
    0x0092: "Dolby AC-3 SPDIF",
    0x1610: "HE-AAC",
    0x2000: "AC-3",
    0x2001: "DTS",
    0x0022: "TrueSpeech",
    0x0270: "ATRAC3",
}
_AUDIO_MAGIC = (
    (b"fLaC", "FLAC"),
    (b"NIST_1A", "NIST sphere"),
    (b"OggS", "Ogg"),
    (b"FORM", "AIFF"),
    (b".snd", "AU"),
    (b"RIFF", "RIFF"),
    (b"RF64", "RF64"),
)
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "gzip data"),
    (b"\x7fELF", "an executable"),
)


def _why_unreadable(head: bytes, wav: _WavHeader | None, message: str) -> str:
    """The reason for a file that libsndfile will not open."""
    if wav is not None:
        tag = wav.format_tag
        if tag is not None and tag not in _WAV_DECODED:
            name = _WAV_TAG_NAMES.get(tag, "unknown")
            return f"unsupported encoding (WAV format tag 0x{tag:04X}, {name})"
        if wav.cut:
            return f"not readable as audio (WAV header cut short or corrupt: {message})"
        return f"not readable as audio (corrupt WAV header: {message})"
    if head.startswith(b"NIST_1A"):
        coding = head.split(b"sample_coding", 1)[1].split(b"\n", 1)[0].split()[-1:] if b"sample_coding" in head else []
        if coding and coding[0] != b"pcm":
            name = coding[0].decode("ascii", "replace")
            hint = "; decompress it with sph2pipe first" if b"shorten" in coding[0] else ""
            return f"unsupported encoding (NIST sphere sample_coding {name}{hint})"
    for magic, name in _AUDIO_MAGIC:
        if head.startswith(magic):
            return f"not readable as audio (corrupt or cut short {name} header: {message})"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f"not readable as audio (looks like {what})"
    if _looks_like_text(head):
        return "not readable as audio (looks like text)"
    return f"not readable as audio ({message})"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # only a character cut at the end of the 4 KB is forgiven
            return False
        text = head[: e.start].decode("utf-8")
    return bool(text) and all(c.isprintable() or c in "\t\n\r" for c in text)


_OPENING = re.compile(r"^Error opening (?:'.*?'|<[^>]*>|\S+): ")  # a path, or a file object's repr


def _sf_message(e: BaseException) -> str:
    """libsndfile's message without its "Error opening '<path>': " prefix (the path is said once,
    by the caller) or "Error opening <_io.BytesIO object at 0x...>: " (bytes in memory, whose
    name the caller gives)."""
    message = (str(e).strip().splitlines() or [type(e).__name__])[0]
    message = _OPENING.sub("", message, count=1)
    if "does not exist or is not a regular file" in message:
        # What libsndfile says when its MPEG probe gives up on bytes that merely start like an
        # MPEG frame; the file exists (checked before), so that text would mislead.
        message = "unrecognised or corrupt data"
    return message or type(e).__name__
