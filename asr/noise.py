"""Additive noise for training: coloured noise at a chosen signal-to-noise ratio.

A recogniser trained on clean read speech (AN4) has never heard a noise floor: under noise it
spells letters out of it, and a streaming endpointer then finds no silence to end an utterance
on. Kaldi's recipes add MUSAN noise to copies of the training data (`steps/data/augment_data_dir.py`);
without a noise corpus at hand, this module makes the noise: white (flat spectrum), pink (1/f,
the spectrum of much room and fan noise) and brown (1/f², rumble). `add_noise` mixes one into
a recording at an SNR against the recording's mean power, so the noise covers its pauses too.

`augment.noise_snr` (`asr.config.AugmentConfig`) adds one noisy copy of every training
utterance (at every speed), the colour and the SNR drawn per utterance; see `asr.data`.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["NOISE_COLOURS", "coloured_noise", "pink_noise", "add_noise", "noisy_copy"]

NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ∝ 1/f^exponent


def coloured_noise(n: int, rng: np.random.Generator, colour: str = "pink") -> np.ndarray:
    """(n,) float64 samples of noise whose power spectrum falls as 1/f^k (white k=0, pink 1,
    brown 2), unit RMS. ValueError for another colour."""
    if colour not in NOISE_COLOURS:
        raise ValueError(f"noise colour must be one of {', '.join(NOISE_COLOURS)}, got {colour!r}")
    if n <= 0:
        return np.zeros(max(n, 0))
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spectrum / f ** (NOISE_COLOURS[colour] / 2), n)
    x -= x.mean()
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """n samples of 1/f noise, unit RMS (`coloured_noise(n, rng, "pink")`)."""
    return coloured_noise(n, rng, "pink")


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator, colour: str = "pink") -> np.ndarray:
    """`x` (1-D float samples) plus `colour` noise at `snr_db` dB below x's mean power, as
    float32, scaled down to a peak of 0.99 if the sum would clip."""
    power = float(np.mean(np.asarray(x, np.float64) ** 2))
    y = x + coloured_noise(len(x), rng, colour) * np.sqrt(power / 10 ** (snr_db / 10))
    peak = float(np.abs(y).max()) if len(y) else 0.0
    if peak > 0.99:
        y *= 0.99 / peak
    return y.astype(np.float32)


def noisy_copy(x: np.ndarray, key: str, snr_range: tuple[float, float]) -> np.ndarray:
    """The noisy copy of utterance `key` (its id) used in training: a colour and an SNR drawn
    uniformly from `snr_range` (dB) with a generator seeded by the id, so every run, and every
    rank of a distributed one, makes the same copy."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    colour = list(NOISE_COLOURS)[int(rng.integers(len(NOISE_COLOURS)))]
    return add_noise(x, float(rng.uniform(*snr_range)), rng, colour)
