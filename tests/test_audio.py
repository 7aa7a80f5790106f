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


RATES = [8000, 11025, 16000, 22050, 32000, 44100, 48000]


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("model_rate", [16000, 8000])
def test_stream_resampler_gives_what_resample_gives_however_the_audio_is_cut(rate: int, model_rate: int) -> None:
    from asr.audio import StreamResampler, resample

    rng = np.random.default_rng(rate)
    x = (0.3 * rng.standard_normal(int(0.37 * rate) + 5)).astype(np.float32)
    want = resample(x, rate, model_rate)
    for sizes in ([1], [3, 1, 700, 2], [len(x)], [rng.integers(1, 2000) for _ in range(50)]):
        r, got, i, k = StreamResampler(rate, model_rate), [], 0, 0
        while i < len(x):
            got.append(r.accept(x[i : i + sizes[k % len(sizes)]]))
            i, k = i + sizes[k % len(sizes)], k + 1
        got.append(r.accept(x[:0]))
        got.append(r.finish())
        y = np.concatenate(got)
        assert y.dtype == np.float32 and len(y) == len(want), sizes
        assert np.abs(y - want).max() < 1e-5, sizes
    with pytest.raises(RuntimeError):
        r.accept(x)


def test_stream_resampler_of_odd_rates_and_short_input() -> None:
    from asr.audio import StreamResampler, resample

    x = np.random.default_rng(1).standard_normal(5).astype(np.float32)
    for rate in (44101, 8001, 12345):
        r = StreamResampler(rate, 16000)
        y = np.concatenate([r.accept(x[:2]), r.accept(x[2:]), r.finish()])
        assert np.abs(y - resample(x, rate, 16000)).max() < 1e-5


def test_as_float_samples_scales_integer_pcm_as_soundfile_reads_it(tmp_path: Path) -> None:
    import torch

    from asr.audio import as_float_samples

    x = np.linspace(-1, 1 - 2**-15, 1001, dtype=np.float32)
    for subtype, dtype in [("PCM_16", "int16"), ("PCM_32", "int32")]:
        sf.write(tmp_path / "a.wav", x, 8000, subtype=subtype)
        ints, floats = sf.read(tmp_path / "a.wav", dtype=dtype)[0], sf.read(tmp_path / "a.wav", dtype="float32")[0]
        assert np.array_equal(as_float_samples(ints), floats) and as_float_samples(ints).dtype == np.float32
        assert np.array_equal(as_float_samples(torch.from_numpy(ints)), floats)
    u8 = np.array([0, 64, 128, 192, 255], np.uint8)
    sf.write(tmp_path / "u8.wav", (u8.astype(np.float32) - 128) / 128, 8000, subtype="PCM_U8")
    assert np.array_equal(as_float_samples(u8), sf.read(tmp_path / "u8.wav", dtype="float32")[0])
    assert np.array_equal(as_float_samples(np.array([-128, 0, 127], np.int8)), np.array([-1, 0, 127 / 128], np.float32))
    f64 = np.array([0.5, -0.25])
    assert as_float_samples(f64).dtype == np.float32 and np.array_equal(as_float_samples(f64), f64)
    assert as_float_samples(np.zeros((3, 2), np.int16)).shape == (3, 2)
    for bad, reason in [(np.array([True]), "bool"), (np.array([1j]), "complex"), (torch.zeros(3, dtype=torch.complex64), "complex"),
                        (np.array([1], np.int64), "int64"), (torch.zeros(3, dtype=torch.int64), "int64"), (np.array(["x"]), "numbers")]:
        with pytest.raises(AudioError, match=reason) as e:
            as_float_samples(bad, "<clip>")
        assert isinstance(e.value, ValueError) and str(e.value).startswith("<clip>: ") and "\n" not in str(e.value)


def test_sample_rate_check_says_files_or_a_stream() -> None:
    from asr.audio import SampleRateCheck

    files = SampleRateCheck(16000)
    files.add(8000), files.add(16000)
    assert files.message().startswith("1 of 2 files with a sample rate below the model's 16000 Hz (8000 Hz: 1)")
    one = SampleRateCheck(16000)
    one.add(8000)
    assert one.message().startswith("1 of 1 file with")
    stream = SampleRateCheck(16000, what="stream")
    stream.add(8000)
    assert stream.message().startswith("the stream is at 8000 Hz, below the model's 16000 Hz: upsampled, it is empty above half its rate (4000 Hz)")
    assert "features.sample_rate=8000" in stream.message()
    streams = SampleRateCheck(16000, what="stream")
    streams.add(8000), streams.add(11025), streams.add(48000)
    assert streams.message().startswith("2 of 3 streams with")
