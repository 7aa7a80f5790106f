from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.audio import AudioError, audio_info, load_audio


def test_reads_resamples_and_mixes_down(tmp_path: Path) -> None:
    sr = 8000
    t = np.arange(sr) / sr
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], axis=1) * 0.5
    path = tmp_path / "a.wav"
    sf.write(path, stereo, sr, subtype="PCM_24")
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.duration) == (8000, 2, 1.0)
    x = load_audio(path, 16000)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 16000) <= 1
    assert abs(np.abs(x).max() - 0.5) < 0.02


def test_flac_and_sphere(tmp_path: Path) -> None:
    x = (np.random.default_rng(0).standard_normal(1600) * 0.1).astype(np.float32)
    for name, fmt in [("a.flac", "FLAC"), ("a.sph", "NIST")]:
        sf.write(tmp_path / name, x, 16000, format=fmt, subtype="PCM_16")
        assert np.allclose(load_audio(tmp_path / name), x, atol=1e-3)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"this is not audio at all" * 10), "not readable as audio"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), 16000), "no audio samples"),
        (lambda p: sf.write(p, np.array([0.0, np.nan, 0.1], np.float32), 16000, subtype="FLOAT"), "samples contain NaN or Inf"),
    ],
)
def test_bad_audio_names_file_and_reason(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert e.value.reason.startswith(reason)
    assert str(path) in str(e.value)
