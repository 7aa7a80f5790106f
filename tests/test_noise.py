"""Additive noise for training (asr.noise, augment.noise_snr)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from asr.noise import NOISE_COLOURS, add_noise, coloured_noise, noisy_copy


def slope(x: np.ndarray) -> float:
    """The power spectrum's slope in dB per decade, fitted between 1/1000 and 1/3 of the band."""
    power = np.abs(np.fft.rfft(x)) ** 2
    f = np.arange(len(power), dtype=np.float64)
    band = slice(len(power) // 1000, len(power) // 3)
    return float(np.polyfit(np.log10(f[band]), 10 * np.log10(power[band]), 1)[0])


@pytest.mark.parametrize(("colour", "db_per_decade"), [("white", 0.0), ("pink", -10.0), ("brown", -20.0)])
def test_colours_have_unit_power_and_their_spectral_slope(colour: str, db_per_decade: float) -> None:
    x = coloured_noise(1 << 16, np.random.default_rng(1), colour)
    assert np.mean(x**2) == pytest.approx(1.0, rel=1e-6) and abs(x.mean()) < 1e-9
    assert slope(x) == pytest.approx(db_per_decade, abs=1.5)


def test_unknown_colour_is_refused() -> None:
    with pytest.raises(ValueError, match="white, pink, brown"):
        coloured_noise(100, np.random.default_rng(0), "blue")


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_noise_is_added_at_the_requested_snr(snr_db: float) -> None:
    rng = np.random.default_rng(2)
    x = (0.1 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
    y = add_noise(x, snr_db, rng, "white")
    noise = y.astype(np.float64) - x
    measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2))
    assert y.dtype == np.float32 and measured == pytest.approx(snr_db, abs=0.05)


def test_loud_mixtures_are_scaled_below_clipping() -> None:
    x = np.full(1000, 0.9, np.float32)
    assert np.abs(add_noise(x, 0.0, np.random.default_rng(0), "white")).max() <= 0.99 + 1e-6


def test_noisy_copy_is_the_same_for_an_utterance_and_differs_between_them() -> None:
    x = (0.1 * np.random.default_rng(3).standard_normal(8000)).astype(np.float32)
    a, b, c = noisy_copy(x, "utt-1", (0, 20)), noisy_copy(x, "utt-1", (0, 20)), noisy_copy(x, "utt-2", (0, 20))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    snrs = []
    for i in range(40):
        n = noisy_copy(x, f"u{i}", (5, 15)).astype(np.float64) - x
        snrs.append(10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(n**2)))
    assert 5 - 0.1 < min(snrs) and max(snrs) < 15 + 0.1 and max(snrs) - min(snrs) > 5  # drawn across the range


def test_noise_snr_adds_a_noisy_copy_of_every_utterance_at_every_speed(tmp_path) -> None:
    from asr.config import ConfigError, load_config
    from asr.data import prepare_data
    from asr.manifest import Utterance, write_manifest
    from asr.text import Tokenizer

    rng = np.random.default_rng(4)
    utts = []
    for i in range(3):
        path = tmp_path / f"u{i}.wav"
        t = np.arange(16000) / 16000
        sf.write(path, (0.2 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.001 * rng.standard_normal(16000)).astype(np.float32), 16000)
        utts.append(Utterance(f"u{i}", str(path), 1.0, "A B"))
    manifest = tmp_path / "train.jsonl"
    write_manifest(manifest, utts)
    cfg = load_config(None, ["augment.speeds=[0.9, 1.0]", "augment.noise_snr=[0, 10]"])
    data = prepare_data(str(manifest), "train", cfg, None, training=True)
    assert data.speeds == [0.9, 1.0, 0.9, 1.0] and data.noisy == [False, False, True, True]
    assert data.plain == 1  # clean, at 1.0
    clean, noisy = data.versions[1][0].numpy(), data.versions[3][0].numpy()
    assert clean.shape == noisy.shape and not np.allclose(clean, noisy)
    dev = prepare_data(str(manifest), "dev", cfg, Tokenizer.from_texts(u.text for u in utts), training=False)
    assert dev.speeds == [1.0] and dev.noisy == [False]  # evaluation data stays clean
    for bad in ("[10, 0]", "[5]", "[nan, 5]", "[0, inf]", "[-400, -400]"):
        with pytest.raises(ConfigError, match="noise_snr"):
            load_config(None, [f"augment.noise_snr={bad}"])
    cfg.augment.noise_snr = [10.0, 0.0]  # set in Python, past the config's own check
    with pytest.raises(ConfigError, match="noise_snr"):
        prepare_data(str(manifest), "train", cfg, None, training=True)
    assert set(NOISE_COLOURS) == {"white", "pink", "brown"}

