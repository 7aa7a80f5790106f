"""Voice activity detection: Silero VAD, for live streams (`asr.stream`) and for cutting long
files at pauses (`asr.segment`, segmenter "silero").

Why a library
-------------
Telling speech from everything else is a learnt task: an energy threshold (what
`asr.segment`'s "energy" segmenter uses) calls any loud sound speech and any quiet speech
silence, and it needs seconds of audio to place its threshold. Silero VAD (the `silero-vad`
package, MIT licence) is a small recurrent network trained on speech and non-speech in many
languages and noise conditions; its model (about 2 MB) ships inside the wheel, so nothing is
downloaded. It reads 32 ms windows (512 samples at 16 kHz, 256 at 8 kHz) one after the other
with a recurrent state, so it streams with no look-ahead and no warm-up, and a window costs
about 0.1 ms on one CPU thread with onnxruntime (0.6 ms with TorchScript).

How it is run here
------------------
- With onnxruntime installed (the `onnx` extra), the package's ONNX model runs in one
  InferenceSession per process, shared by every stream (its `run` is thread-safe); each
  `VoiceActivity` keeps its own recurrent state and context. Without onnxruntime, the
  package's TorchScript model is loaded once per `VoiceActivity` (it keeps its state inside).
  Both give the same probabilities.
- Audio at another rate than 8 or 16 kHz is resampled to 16 kHz on the way in (python-soxr's
  streaming resampler).
- A window is speech when its probability is at least `threshold` (0.5), or at least
  `threshold - 0.15` while the window before it was speech (the hysteresis of silero-vad's own
  `VADIterator`). Smoothing over time (minimum pause and speech lengths) is left to the caller:
  the endpoint rules and the segmenter have their own.
- Importing silero_vad sets torch's process-wide thread count to 1; `_silero()` restores it.
"""

from __future__ import annotations

import threading
import warnings
from functools import lru_cache
from typing import Any

import numpy as np

from asr.audio import as_float_samples

__all__ = ["VoiceActivity", "SpeechWindows", "VAD_RATES", "DEFAULT_THRESHOLD"]

VAD_RATES = (8000, 16000)  # the rates the model takes; other rates are resampled to 16 kHz
DEFAULT_THRESHOLD = 0.5
HYSTERESIS = 0.15
_WINDOW = {16000: 512, 8000: 256}
_CONTEXT = {16000: 64, 8000: 32}  # samples of the previous window the model sees with each window
_LOCK = threading.Lock()


def _silero() -> Any:
    """The silero_vad package, imported without changing torch's thread count."""
    import torch

    with _LOCK:
        threads = torch.get_num_threads()
        try:
            import silero_vad
        finally:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
    return silero_vad


@lru_cache(maxsize=1)
def _onnx_session() -> Any:
    """One onnxruntime session over the package's ONNX model (None without onnxruntime)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    from importlib import resources

    _silero()
    path = resources.files("silero_vad.data").joinpath("silero_vad.onnx")
    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class _OnnxModel:
    """The shared ONNX session with this stream's own state."""

    def __init__(self, session: Any, rate: int):
        self.session, self.rate = session, rate
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros((2, 1, 128), np.float32)
        self.context = np.zeros((1, _CONTEXT[self.rate]), np.float32)

    def __call__(self, window: np.ndarray) -> float:
        x = np.concatenate([self.context, window[None, :]], axis=1)
        out, self.state = self.session.run(None, {"input": x, "state": self.state, "sr": np.array(self.rate, dtype=np.int64)})
        self.context = x[:, -_CONTEXT[self.rate] :]
        return float(out.reshape(-1)[0])


class _JitModel:
    """The TorchScript model, one per stream."""

    def __init__(self, rate: int):
        import torch

        self.rate = rate
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            self.model = _silero().load_silero_vad(onnx=False)
        self._torch = torch

    def reset(self) -> None:
        self.model.reset_states()

    def __call__(self, window: np.ndarray) -> float:
        with self._torch.inference_mode():
            return float(self.model(self._torch.from_numpy(window), self.rate))


class VoiceActivity:
    """One stream's voice-activity detector: samples in, a speech decision per 32 ms window out.

    sample_rate: the rate of the samples given to `accept` (any; 8 and 16 kHz run directly,
        others are resampled to 16 kHz).
    threshold: speech probability for a window to count as speech (see the module docstring).
    backend: "onnx", "jit" or "auto" (ONNX when onnxruntime is installed).

    `accept(samples)` returns the decisions of the windows it completed (bool array); window k
    covers [k, k + 1) x `window_seconds` of the stream. `flush()` pads the rest of the audio
    into a last window. `reset()` starts a new stream. Not thread-safe: one per stream.
    """

    def __init__(self, sample_rate: int = 16000, threshold: float = DEFAULT_THRESHOLD, backend: str = "auto"):
        if not 0 < threshold < 1:
            raise ValueError(f"VAD threshold must be between 0 and 1, got {threshold}")
        if int(sample_rate) <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = int(sample_rate)
        self.rate = self.sample_rate if self.sample_rate in VAD_RATES else 16000
        self.window = _WINDOW[self.rate]
        self.window_seconds = self.window / self.rate
        self.threshold = threshold
        session = _onnx_session() if backend in ("auto", "onnx") else None
        if backend == "onnx" and session is None:
            raise RuntimeError("the ONNX VAD needs onnxruntime: pip install onnxruntime")
        if backend not in ("auto", "onnx", "jit"):
            raise ValueError(f"VAD backend must be auto, onnx or jit, got {backend!r}")
        self.model: Any = _OnnxModel(session, self.rate) if session is not None else _JitModel(self.rate)
        self.reset()

    def reset(self) -> None:
        self.model.reset()
        self.buffer = np.zeros(0, np.float32)
        self.windows = 0  # windows decided since the stream began
        self.speaking = False
        self.resampler = None
        if self.sample_rate != self.rate:
            import soxr

            self.resampler = soxr.ResampleStream(self.sample_rate, self.rate, 1, dtype="float32")

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Speech (True) or not for each window these samples complete (float, or integer PCM
        scaled by `asr.audio.as_float_samples`)."""
        x = as_float_samples(samples).reshape(-1)
        if self.resampler is not None:
            x = self.resampler.resample_chunk(x)
        return self._windows(np.concatenate([self.buffer, x]))

    def flush(self) -> np.ndarray:
        """The decisions for the audio left over, zero-padded into a last window (none when
        nothing is left); the stream then holds nothing more."""
        x = self.buffer
        if self.resampler is not None:
            x = np.concatenate([x, self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)])
        if len(x) == 0:
            self.buffer = x
            return np.zeros(0, bool)
        return self._windows(np.concatenate([x, np.zeros((-len(x)) % self.window, np.float32)]))

    def _windows(self, x: np.ndarray) -> np.ndarray:
        n = len(x) // self.window
        flags = np.zeros(n, bool)
        for k in range(n):
            p = self.model(np.ascontiguousarray(x[k * self.window : (k + 1) * self.window]))
            self.speaking = p >= self.threshold or (self.speaking and p >= self.threshold - HYSTERESIS)
            flags[k] = self.speaking
        self.buffer = x[n * self.window :].copy()
        self.windows += n
        return flags


class SpeechWindows:
    """A stream's VAD decisions, one per window of `window_seconds`, read per frame of another
    length: what `asr.stream` (30 ms model frames) and `asr.segment` (30 ms energy frames) ask.

    `add(flags)` appends the decisions `VoiceActivity.accept`/`flush` returned; `decided` counts
    the windows decided since the stream began; `frames(...)` says which frames are speech;
    `drop_before(seconds)` forgets the windows that end before `seconds`.
    """

    def __init__(self, window_seconds: float):
        self.window_seconds = window_seconds
        self.flags = np.zeros(0, bool)  # decisions from window `base` on
        self.base = 0

    @property
    def decided(self) -> int:
        return self.base + len(self.flags)

    def add(self, flags: np.ndarray) -> None:
        self.flags = np.concatenate([self.flags, flags])

    def frames(self, first: int, n: int, frame_seconds: float, to_last: bool = False) -> tuple[np.ndarray, int]:
        """Frames first .. first + n - 1 (frame k spans [k, k + 1) x frame_seconds): (n,) bool,
        speech when a decided window overlapping the frame is speech, and how many of the
        frames, from the first, the decided windows cover whole (n with `to_last`, where frames
        past the last decided window take that window's decision: the end of a stream, whose
        last window was padded out)."""
        ws = self.window_seconds
        k = np.arange(first, first + n)
        w0 = np.floor(k * frame_seconds / ws + 1e-9).astype(np.int64)
        w1 = np.ceil((k + 1) * frame_seconds / ws - 1e-9).astype(np.int64)  # exclusive
        if to_last:
            w1 = np.minimum(w1, self.decided)
            w0 = np.minimum(w0, w1 - 1)
            ready = n
        else:
            ready = int(np.searchsorted(w1, self.decided, side="right"))
        csum = np.concatenate([[0], np.cumsum(self.flags)])
        lo = np.clip(w0 - self.base, 0, len(self.flags))
        hi = np.clip(w1 - self.base, 0, len(self.flags))
        return csum[hi] - csum[lo] > 0, ready

    def drop_before(self, seconds: float) -> None:
        keep = int(np.floor(seconds / self.window_seconds + 1e-9)) - self.base
        if keep > 0:
            self.flags = self.flags[keep:].copy()
            self.base += keep
