"""Acoustic features: log-mel filterbank or MFCC (of a whole signal, or online as audio arrives),
mean/variance normalisation, SpecAugment."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from asr.config import AugmentConfig, FeatureConfig


class FeatureExtractor(nn.Module):
    """Waveform (float samples at cfg.sample_rate) to (frames, dim) features."""

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        import torchaudio.transforms as T

        self.cfg = cfg
        win = int(round(cfg.sample_rate * cfg.win_ms / 1000))
        hop = int(round(cfg.sample_rate * cfg.hop_ms / 1000))
        n_fft = 1 << (win - 1).bit_length()
        mel = dict(n_fft=n_fft, win_length=win, hop_length=hop, n_mels=cfg.n_mels, center=False, f_min=cfg.f_min)
        if cfg.kind == "fbank":
            self.transform = T.MelSpectrogram(sample_rate=cfg.sample_rate, **mel)
            self.dim = cfg.n_mels
        elif cfg.kind == "mfcc":
            self.transform = T.MFCC(sample_rate=cfg.sample_rate, n_mfcc=cfg.n_mfcc, melkwargs=mel)
            self.dim = cfg.n_mfcc
        else:
            raise ValueError(f"features.kind must be 'fbank' or 'mfcc', got {cfg.kind!r}")
        self.min_samples = n_fft
        self.mel = self.transform if cfg.kind == "fbank" else self.transform.MelSpectrogram
        # Each frame's mean is taken over the samples its window covers: torch.stft centres a
        # window shorter than n_fft inside the FFT frame.
        self.win, self.hop, self.win_offset = win, hop, (n_fft - win) // 2
        window = nn.functional.pad(self.mel.spectrogram.window, (self.win_offset, n_fft - win - self.win_offset))
        self.register_buffer("window_dft", torch.view_as_real(torch.fft.rfft(window)), persistent=False)

    def num_frames(self, samples: int) -> int:
        """Feature frames of `samples` samples: whole windows only (no centre padding); audio
        shorter than one FFT frame gives one frame."""
        return (max(samples, self.min_samples) - self.min_samples) // self.hop + 1

    @torch.no_grad()
    def batch(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """Features of several 1-D waveforms in one call, each (frames, dim) as `forward` gives
        it alone: they are zero-padded to the longest and each is cut to its own frames (a
        frame depends on its own samples only; MFCC's decibel floor is taken per waveform, over
        its own frames). Large tensors keep intra-op threads busy where one small utterance at a
        time would mostly wait for them."""
        if not waveforms:
            return []
        longest = max(max(len(w) for w in waveforms), self.min_samples)
        x = torch.stack([nn.functional.pad(w, (0, longest - len(w))) for w in waveforms])
        frames = torch.tensor([self.num_frames(len(w)) for w in waveforms])
        feats = self._features(self._mel_power(x), frames)
        return [feats[i, : int(n)] for i, n in enumerate(frames)]

    @torch.no_grad()
    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Waveform (..., samples) -> features (..., frames, dim), frames = `num_frames(samples)`:
        frame i covers samples [i * hop, i * hop + n_fft) (no centre padding)."""
        if waveform.shape[-1] < self.min_samples:  # shorter than one FFT frame: pad to one frame
            waveform = nn.functional.pad(waveform, (0, self.min_samples - waveform.shape[-1]))
        return self._features(self._mel_power(waveform))

    def _features(self, mel: torch.Tensor, frames: torch.Tensor | None = None, peak: torch.Tensor | None = None) -> torch.Tensor:
        """Mel power (..., frames, n_mels) -> features (..., frames, dim).

        fbank: log(mel + 1e-6), frame by frame. mfcc: torchaudio's MFCC, the DCT of the mel power
        in decibels floored at `top_db` (80 dB) below a peak: the given `peak` (..., 1, 1) in dB,
        else the loudest bin of each waveform's first `frames` frames (B,) (of all its frames when
        None). torchaudio takes one peak for a whole 3-D batch; here each waveform has its own."""
        if self.cfg.kind == "fbank":
            return torch.log(mel + 1e-6).contiguous()
        db = self.decibels(mel)  # (..., n_mels, frames)
        if peak is None:
            if frames is None:
                peak = db.amax(dim=(-2, -1), keepdim=True)
            else:
                own = torch.arange(db.shape[-1], device=db.device) < frames.to(db.device)[:, None]
                peak = db.masked_fill(~own[:, None, :], float("-inf")).amax(dim=(-2, -1), keepdim=True)
        db = torch.max(db, peak - self.transform.top_db)
        return torch.matmul(db.transpose(-1, -2), self.transform.dct_mat).contiguous()

    def decibels(self, mel: torch.Tensor) -> torch.Tensor:
        """MFCC only: mel power (..., frames, n_mels) -> decibels (..., n_mels, frames), without
        the floor (torchaudio's AmplitudeToDB with top_db=None)."""
        import torchaudio.functional as AF

        to_db = self.transform.amplitude_to_DB
        return AF.amplitude_to_DB(mel.transpose(-1, -2), to_db.multiplier, to_db.amin, to_db.db_multiplier, None)

    def _mel_power(self, waveform: torch.Tensor) -> torch.Tensor:
        """torchaudio's MelSpectrogram (same window and filterbank), about twice as fast: the power
        spectrum is taken from the real and imaginary parts instead of a complex abs().

        With `remove_dc_offset`, each frame's mean m is removed before the window. The DFT is
        linear, so DFT(w * (x - m)) = DFT(w * x) - m * DFT(w): the frame means (a strided moving
        average) times the window's DFT are subtracted from the STFT, with no copy of the frames.
        """
        spec, mel = self.mel.spectrogram, self.mel.mel_scale
        stft = torch.stft(waveform, spec.n_fft, spec.hop_length, spec.win_length, spec.window, center=False, return_complex=True)
        stft = torch.view_as_real(stft)  # (..., freq, frames, 2)
        if self.cfg.remove_dc_offset:
            frames = stft.shape[-2]
            flat = waveform.reshape(-1, 1, waveform.shape[-1])[..., self.win_offset :]
            means = nn.functional.avg_pool1d(flat, self.win, self.hop)[:, 0, :frames]
            means = means.reshape(*waveform.shape[:-1], 1, frames, 1)
            stft = stft - means * self.window_dft[:, None, :].to(stft.dtype)
        power = stft.square().sum(-1)  # (..., freq, frames)
        return torch.matmul(power.transpose(-1, -2), mel.fb)


class OnlineFeatures:
    """`FeatureExtractor` on audio that arrives in pieces: `accept` takes the next samples (any
    number, float at the extractor's sample rate) and returns the frames they complete, `finish`
    what is left at the end. Frame i covers samples [i * hop, i * hop + n_fft), as offline
    (no centre padding), so the frames of all calls together are those of the extractor on the
    whole signal: a frame is computed once all its samples are there, from the same samples by
    the same code; audio shorter than one FFT frame gives one zero-padded frame at `finish`.

    MFCC floors its decibels 80 dB (top_db) below the loudest mel bin of the utterance, which
    is known only at its end; here the floor is taken below the loudest bin so far, so a frame
    more than 80 dB below a louder one that comes after it keeps values below that floor. fbank
    has no such floor. Holds at most one frame's samples besides what it is given."""

    def __init__(self, extractor: FeatureExtractor):
        self.extractor = extractor
        self.hop, self.n_fft = extractor.hop, extractor.min_samples
        self._buffer = torch.zeros(0)  # samples from the start of the next frame on
        self._peak: torch.Tensor | None = None  # MFCC: the loudest mel bin so far, in dB
        self.samples = 0  # samples accepted so far
        self.frames = 0  # frames returned so far
        self.finished = False

    @property
    def dim(self) -> int:
        return self.extractor.dim

    @torch.no_grad()
    def accept(self, samples: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The next samples (n,) -> the frames they complete, (frames, dim) float32 (maybe none)."""
        if self.finished:
            raise RuntimeError("OnlineFeatures: accept() after finish()")
        samples = torch.as_tensor(np.asarray(samples, dtype=np.float32) if not isinstance(samples, torch.Tensor) else samples, dtype=torch.float32)
        if samples.dim() != 1:
            raise ValueError(f"OnlineFeatures.accept takes 1-D samples (one channel), got shape {tuple(samples.shape)}")
        self.samples += samples.numel()
        self._buffer = torch.cat([self._buffer, samples.to(self._buffer.device)])
        if self._buffer.numel() < self.n_fft:
            return torch.zeros(0, self.dim)
        n = (self._buffer.numel() - self.n_fft) // self.hop + 1
        feats = self._compute(self._buffer[: (n - 1) * self.hop + self.n_fft])
        self._buffer = self._buffer[n * self.hop :].clone()
        return feats

    @torch.no_grad()
    def finish(self) -> torch.Tensor:
        """The frames still to come at the end of the audio, (frames, dim): one zero-padded frame
        when the whole audio was shorter than one FFT frame, else none (the samples past the
        last whole frame are dropped, as offline)."""
        if self.finished:
            raise RuntimeError("OnlineFeatures: finish() called twice")
        self.finished = True
        if self.frames:
            return torch.zeros(0, self.dim)
        return self._compute(nn.functional.pad(self._buffer, (0, self.n_fft - self._buffer.numel())))

    def _compute(self, waveform: torch.Tensor) -> torch.Tensor:
        ex = self.extractor
        mel = ex._mel_power(waveform)
        if ex.cfg.kind == "mfcc":
            db_peak = ex.decibels(mel).amax(dim=(-2, -1), keepdim=True)
            self._peak = db_peak if self._peak is None else torch.max(self._peak, db_peak)
        feats = ex._features(mel, peak=self._peak)
        self.frames += feats.shape[0]
        return feats


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: per-utterance feature extraction works on tensors too small for
    intra-op parallelism, which only adds overhead (bench/features.py measures it). It changes
    torch's process-wide thread count, so only single-threaded batch jobs (the training data
    cache) use it; inference extracts features batch by batch (`FeatureExtractor.batch`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Normalizer(nn.Module):
    """Mean/variance normalisation with statistics of the training set; with `per_utterance`, each
    utterance's own mean is removed first and the statistics are those of the mean-removed features."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, per_utterance: bool = False):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.per_utterance = per_utterance

    @classmethod
    def fit(cls, features: list[torch.Tensor], per_utterance: bool = False) -> Normalizer:
        total, s, sq = 0, 0, 0
        for f in features:
            f = f.double()
            if per_utterance:
                f = f - f.mean(0)
            total, s, sq = total + f.shape[0], s + f.sum(0), sq + (f**2).sum(0)
        mean = s / total
        std = (sq / total - mean**2).clamp_min(1e-10).sqrt()
        return cls(mean, std, per_utterance)

    @classmethod
    def from_checkpoint(cls, state: dict[str, torch.Tensor], cfg: FeatureConfig) -> Normalizer:
        """The normaliser saved in a checkpoint (its `normalizer` entry), with the feature settings saved beside it."""
        return cls(state["mean"], state["std"], per_utterance=cfg.cmvn == "utterance")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise (…, T, D) features; with `lengths`, frames past each length (padding) are set
        to zero, as if each utterance were normalised alone and then padded."""
        real = None
        if lengths is not None:
            real = (torch.arange(x.shape[-2], device=x.device)[None, :] < lengths.to(x.device)[:, None])[:, :, None]
        if self.per_utterance:
            if real is None:
                x = x - x.mean(-2, keepdim=True)
            else:
                x = x - (x * real).sum(-2, keepdim=True) / real.sum(-2, keepdim=True).clamp_min(1)
        x = (x - self.mean) / self.std
        if real is not None:
            x = x * real.to(x.dtype)
        return x


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Frequency and time masks on a normalised (batch, frames, dim) tensor, set to zero (the mean)."""
    x = x.clone()
    batch, _, dim = x.shape
    for b in range(batch):
        n = int(lengths[b])
        for _ in range(cfg.freq_masks):
            w = int(torch.randint(0, cfg.freq_width + 1, (1,), generator=generator))
            f0 = int(torch.randint(0, max(1, dim - w), (1,), generator=generator))
            x[b, :n, f0 : f0 + w] = 0
        max_t = min(cfg.time_width, int(n * cfg.time_ratio))
        for _ in range(cfg.time_masks):
            w = int(torch.randint(0, max_t + 1, (1,), generator=generator))
            t0 = int(torch.randint(0, max(1, n - w), (1,), generator=generator))
            x[b, t0 : t0 + w, :] = 0
    return x
