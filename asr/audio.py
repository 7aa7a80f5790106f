"""Audio reading: any soundfile format (wav, flac, NIST sphere, ...), mono, resampled."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

AUDIO_EXTENSIONS = (".wav", ".flac", ".sph", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au")


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def audio_info(path: str | Path) -> AudioInfo:
    """Header facts of an audio file; raises AudioError if it is missing, unreadable or empty."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file")
    try:
        info = sf.info(str(path))
    except Exception as e:  # soundfile raises several types for bad files
        raise AudioError(path, f"not readable as audio ({_first_line(e)})") from None
    if info.frames <= 0:
        raise AudioError(path, "no audio samples")
    return AudioInfo(info.samplerate, info.frames, info.channels)


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Samples as float32 mono at `sample_rate`; channels are averaged."""
    audio_info(path)
    try:
        samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(path, f"not readable as audio ({_first_line(e)})") from None
    if samples.shape[0] == 0:
        raise AudioError(path, "no audio samples")
    if not np.isfinite(samples).all():
        raise AudioError(path, "samples contain NaN or Inf")
    samples = samples.mean(axis=1)
    if sr != sample_rate:
        samples = resample(samples, sr, sample_rate)
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(samples), orig_sr, new_sr).numpy()


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
