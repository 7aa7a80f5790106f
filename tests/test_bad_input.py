"""Bad and unusual input: every kind of broken audio file gets a one-line reason naming the
file; unusual but usable audio loads (and says what was done); `asr prepare folder` sorts a
folder mixing both without a traceback."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.audio import (
    AudioError,
    audio_info,
    clipping_fraction,
    is_silent,
    load_audio,
    load_audio_with_notes,
)
from asr.text import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def tone(seconds: float = 0.25, sr: int = SR, amp: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * 440 * t)
    return (np.stack([x * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else x).astype(np.float32)


def audio_bytes(x: np.ndarray, sr: int = SR, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def wav_with_format_tag(tag: int) -> bytes:
    """A PCM wav whose fmt chunk names another encoding (offset 20: wFormatTag)."""
    b = bytearray(audio_bytes(tone()))
    b[20:22] = struct.pack("<H", tag)
    return bytes(b)


def extensible_wav_with_subformat(tag: int) -> bytes:
    """A WAVE_FORMAT_EXTENSIBLE wav whose SubFormat GUID names another encoding."""
    b = bytearray(audio_bytes(tone(), fmt="WAVEX", subtype="PCM_16"))
    assert b[12:16] == b"fmt " and b[20:22] == b"\xfe\xff"
    b[20 + 24 : 20 + 26] = struct.pack("<H", tag)
    return bytes(b)


def with_sample_rate(sr_field: int) -> bytes:
    b = bytearray(audio_bytes(tone()))
    b[24:28] = struct.pack("<I", sr_field)
    return bytes(b)


def shorten_sphere() -> bytes:
    sph = audio_bytes(tone(), fmt="NIST")
    return sph.replace(b"sample_coding -s3 pcm", b"sample_coding -s26 pcm,embedded-shorten-v2.00")


def float_wav_with(value: float, subtype: str = "FLOAT") -> bytes:
    x = tone().astype(np.float64)
    x[100] = value
    return audio_bytes(x, subtype=subtype)


def streamed_flac() -> bytes:
    """A FLAC whose STREAMINFO leaves the sample count at 0 ("unknown"), as one written to a pipe."""
    b = bytearray(FLAC)
    b[8 + 13] &= 0xF0
    b[8 + 14 : 8 + 18] = bytes(4)
    return bytes(b)


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
WAV = audio_bytes(tone())
FLAC = audio_bytes(tone(1.0), fmt="FLAC")

# name -> (file content, start of the reason); every one is rejected by audio_info and load_audio.
BAD: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty.wav": (lambda: b"", "empty file"),
    "zero_length.wav": (lambda: audio_bytes(np.zeros(0, np.float32)), "no audio samples"),
    "header_only.wav": (lambda: WAV[:44], "no audio samples"),
    "header_cut_in_fmt.wav": (lambda: WAV[:20], "not readable as audio (WAV header cut short"),
    "header_cut_before_data.wav": (lambda: WAV[:38], "not readable as audio (WAV header cut short"),
    "flac_header_cut.flac": (lambda: FLAC[:30], "not readable as audio (corrupt or cut short FLAC header"),
    "flac_data_cut.flac": (lambda: FLAC[: len(FLAC) // 2], "corrupt or truncated audio data"),
    "flac_unknown_length.flac": (streamed_flac, "unknown length"),
    "text.wav": (lambda: b"HELLO WORLD this is a transcript, not audio\n" * 3, "not readable as audio (looks like text)"),
    "random.wav": (lambda: np.random.default_rng(0).bytes(2000), "not readable as audio"),
    "random_bytes.flac": (lambda: np.random.default_rng(1).bytes(2000), "not readable as audio"),
    "image.wav": (lambda: PNG, "not readable as audio (looks like a PNG image)"),
    "mp3_in_wav.wav": (lambda: wav_with_format_tag(0x0055), "unsupported encoding (WAV format tag 0x0055, MPEG layer 3)"),
    "unknown_tag.wav": (lambda: wav_with_format_tag(0x1234), "unsupported encoding (WAV format tag 0x1234"),
    "ac3_extensible.wav": (lambda: extensible_wav_with_subformat(0x2000), "unsupported encoding (WAV format tag 0x2000, AC-3)"),
    "shorten.sph": (shorten_sphere, "unsupported encoding (NIST sphere sample_coding pcm,embedded-shorten"),
    "rate_1hz.wav": (lambda: with_sample_rate(1), "implausible sample rate 1 Hz"),
    "rate_0hz.wav": (lambda: with_sample_rate(0), "not readable as audio (corrupt WAV header"),
    "nan.wav": (lambda: float_wav_with(np.nan), "samples contain NaN or Inf"),
    "inf.wav": (lambda: float_wav_with(np.inf), "samples contain NaN or Inf"),
    "nan_double.wav": (lambda: float_wav_with(-np.inf, "DOUBLE"), "samples contain NaN or Inf"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_audio_one_line_reason_naming_the_file(tmp_path: Path, name: str) -> None:
    make, reason = BAD[name]
    path = tmp_path / name
    path.write_bytes(make())
    for read in (audio_info, load_audio, load_audio_with_notes):
        with pytest.raises(AudioError) as e:
            read(path)
        assert e.value.reason.startswith(reason), (read.__name__, e.value.reason)
        assert str(e.value) == f"{path}: {e.value.reason}"
        assert "\n" not in str(e.value)
        assert isinstance(e.value, ValueError)


def test_missing_and_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="file not found"):
        load_audio(tmp_path / "gone.wav")
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(AudioError, match="not a file"):
        audio_info(tmp_path / "dir.wav")


def test_corrupt_mp3_header_claiming_billions_of_frames_is_rejected(tmp_path: Path) -> None:
    # An MP3 whose Xing header claims 7.8e9 frames in 1.9 KB made sf.read try to allocate 29 GiB.
    mp3 = audio_bytes(tone(0.5), fmt="MP3", subtype="MPEG_LAYER_III")
    xing = mp3.find(b"Xing")
    if xing < 0:
        pytest.skip("this libsndfile writes MP3 without a Xing header")
    b = bytearray(mp3)
    b[xing + 8 : xing + 12] = struct.pack(">I", 0x7FFFFFFF)  # frame count field
    path = tmp_path / "liar.mp3"
    path.write_bytes(bytes(b))
    with pytest.raises(AudioError, match="implausible length: the header claims"):
        audio_info(path)


# --- unusual but usable audio ----------------------------------------------------------------


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_is_mixed_down_and_says_so(tmp_path: Path, channels: int) -> None:
    x = tone(channels=channels)
    sf.write(tmp_path / "multi.wav", x, SR)
    assert audio_info(tmp_path / "multi.wav").channels == channels
    loaded = load_audio_with_notes(tmp_path / "multi.wav")
    assert loaded.mixed_down and f"mixed down from {channels} channels" in loaded.notes
    assert loaded.samples.shape == (len(x),) and loaded.samples.dtype == np.float32
    np.testing.assert_allclose(loaded.samples, x.mean(axis=1), atol=1e-3)
    np.testing.assert_array_equal(load_audio(tmp_path / "multi.wav"), loaded.samples)


def test_mono_has_no_notes(tmp_path: Path) -> None:
    sf.write(tmp_path / "plain.wav", tone(), SR)
    loaded = load_audio_with_notes(tmp_path / "plain.wav")
    assert loaded.notes == () and not loaded.mixed_down and not loaded.resampled


@pytest.mark.parametrize("sr", [8000, 11025, 22050, 44100, 48000, 96000, 44101, 8001])
def test_any_sample_rate_is_resampled(tmp_path: Path, sr: int) -> None:
    # 44101 and 8001 Hz have no small rational ratio to 16 kHz; an exact sinc kernel would
    # take gigabytes, so they are resampled through the nearest small ratio.
    sf.write(tmp_path / "r.wav", tone(0.5, sr), sr)
    loaded = load_audio_with_notes(tmp_path / "r.wav", SR)
    assert loaded.resampled and f"resampled from {sr} Hz" in loaded.notes
    assert abs(len(loaded.samples) - SR // 2) <= 3
    assert abs(np.abs(loaded.samples).max() - 0.5) < 0.03
    assert loaded.samples.dtype == np.float32


@pytest.mark.parametrize(
    ("fmt", "subtype", "atol"),
    [
        ("WAV", "PCM_U8", 1 / 64),
        ("WAV", "PCM_16", 1e-3),
        ("WAV", "PCM_24", 1e-5),
        ("WAV", "PCM_32", 1e-6),
        ("WAV", "FLOAT", 1e-7),
        ("WAV", "DOUBLE", 1e-7),
        ("WAV", "ULAW", 0.02),
        ("WAV", "ALAW", 0.02),
        ("FLAC", "PCM_24", 1e-5),
        ("FLAC", "PCM_S8", 1 / 64),
        ("AIFF", "PCM_16", 1e-3),
        ("NIST", "PCM_16", 1e-3),
    ],
)
def test_sample_formats(tmp_path: Path, fmt: str, subtype: str, atol: float) -> None:
    x = tone()
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, SR, format=fmt, subtype=subtype)
    assert audio_info(path).subtype == subtype
    np.testing.assert_allclose(load_audio(path), x, atol=atol)


def test_wav_with_data_cut_short_loads_what_is_there(tmp_path: Path) -> None:
    x = tone(1.0)
    data = audio_bytes(x)
    path = tmp_path / "cut.wav"
    path.write_bytes(data[: 44 + 2 * 6000 + 1])  # 6000 whole samples and half of the next
    info = audio_info(path)
    assert (info.frames, info.declared_frames, info.truncated) == (6000, 16000, True)
    loaded = load_audio_with_notes(path)
    np.testing.assert_allclose(loaded.samples, x[:6000], atol=1e-3)
    assert any(n.startswith("truncated: the header declares 16000 frames, the file holds 6000") for n in loaded.notes)
    (tmp_path / "whole.wav").write_bytes(data)
    assert not audio_info(tmp_path / "whole.wav").truncated


def test_streamed_wav_with_unknown_sizes_loads_everything(tmp_path: Path) -> None:
    b = bytearray(audio_bytes(tone()))
    b[4:8] = b[40:44] = struct.pack("<I", 0xFFFFFFFF)  # what a piped ffmpeg/sox writes
    (tmp_path / "s.wav").write_bytes(bytes(b))
    info = audio_info(tmp_path / "s.wav")
    assert info.frames == len(tone()) and not info.truncated


def test_clipping_is_loaded_and_detectable(tmp_path: Path) -> None:
    clipped = np.clip(3 * tone(), -1, 1)
    sf.write(tmp_path / "clipped.wav", clipped, SR)
    sf.write(tmp_path / "clean.wav", tone(), SR)
    loud = load_audio_with_notes(tmp_path / "clipped.wav")
    assert clipping_fraction(loud.samples) > 0.5
    assert any(n.startswith("clipped:") for n in loud.notes)
    clean = load_audio_with_notes(tmp_path / "clean.wav")
    assert clipping_fraction(clean.samples) == 0.0 and clean.notes == ()
    assert clipping_fraction(np.zeros(0)) == 0.0


def test_float_beyond_full_scale_is_noted(tmp_path: Path) -> None:
    sf.write(tmp_path / "hot.wav", 4 * tone(), SR, subtype="FLOAT")
    loaded = load_audio_with_notes(tmp_path / "hot.wav")
    assert any(n.startswith("float samples beyond full scale") for n in loaded.notes)


def test_silence_is_loaded_and_detectable(tmp_path: Path) -> None:
    sf.write(tmp_path / "silent.wav", np.zeros(8000, np.float32), 8000)
    loaded = load_audio_with_notes(tmp_path / "silent.wav")
    assert len(loaded.samples) == SR and not loaded.samples.any()
    assert is_silent(loaded.samples) and "silent" in loaded.notes
    assert not is_silent(tone())


def test_ten_minute_file_loads(tmp_path: Path) -> None:
    sr, seconds = 8000, 600
    sf.write(tmp_path / "long.wav", np.tile(tone(1.0, sr, 0.3), seconds), sr)
    assert audio_info(tmp_path / "long.wav").duration == seconds
    x = load_audio(tmp_path / "long.wav", SR)
    assert x.dtype == np.float32 and abs(len(x) - SR * seconds) <= 1


# --- transcripts --------------------------------------------------------------------------


def test_tokenizer_reports_characters_outside_the_token_set() -> None:
    tok = Tokenizer.from_texts(["HELLO WORLD", "IT'S"])
    assert tok.unknown("hello, world!") == set()
    assert tok.unknown("héllo wörld 42 ß") == {"É", "Ö", "4", "2"}  # ß upper-cases to SS
    assert tok.unknown("") == set()


# --- the whole path: asr prepare folder -----------------------------------------------------


def test_prepare_and_transcribe_sort_good_and_bad_files(tmp_path: Path, trained: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()

    def put(name: str, content: bytes | np.ndarray, text: str | bytes | None = "HELLO", **write_args) -> None:
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            sf.write(path, content, **{"samplerate": SR, **write_args})
        if text is not None:
            txt = path.with_suffix(".txt")
            txt.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))

    good = {
        "mono": dict(content=tone()),
        "stereo": dict(content=tone(channels=2)),
        "six_channels": dict(content=tone(channels=6)),
        "rate_8k": dict(content=tone(sr=8000), samplerate=8000),
        "rate_44k1": dict(content=tone(sr=44100), samplerate=44100),
        "pcm_u8": dict(content=tone(), subtype="PCM_U8"),
        "pcm_24": dict(content=tone(), subtype="PCM_24"),
        "float": dict(content=tone(), subtype="FLOAT"),
        "silent": dict(content=np.zeros(4000, np.float32)),
        "clipped": dict(content=np.clip(3 * tone(), -1, 1)),
        "data_cut_short": dict(content=audio_bytes(tone(1.0))[:20000]),
        "unicode_text": dict(content=tone(), text="Ça va? Très bien — merci!"),
    }
    for name, spec in good.items():
        put(f"{name}.wav", **spec)
    put("nested/deeper.flac", tone(), format="FLAC")

    bad = {"no_transcript": "no transcript", "empty_transcript": "empty transcript"}
    bad |= {"punctuation_only": "empty transcript", "latin1_transcript": "transcript not readable as UTF-8"}
    for name in BAD:
        bad[Path(name).stem] = BAD[name][1]
        put(name, BAD[name][0]())
    put("no_transcript.wav", tone(), text=None)
    put("empty_transcript.wav", tone(), text="")
    put("punctuation_only.wav", tone(), text=" ... !? -- ")
    put("latin1_transcript.wav", tone(), text="ça coûte cher".encode("latin-1"))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ASR_DEBUG", None)
    r = subprocess.run(
        [sys.executable, "-m", "asr", "prepare", "folder", str(src), str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout

    kept = {row["id"]: row for row in map(json.loads, (out / "all.jsonl").read_text().splitlines())}
    rejected = {row["id"]: row for row in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}
    assert set(kept) == set(good) | {"nested-deeper"}
    assert set(rejected) == set(bad)
    for utt_id, reason in bad.items():
        assert rejected[utt_id]["reason"].startswith(reason), (utt_id, rejected[utt_id]["reason"])
        assert "\n" not in rejected[utt_id]["reason"]
    for row in kept.values():  # prepare checks headers only; what it keeps must really load
        assert len(load_audio(row["audio"])) == pytest.approx(row["duration"] * SR, abs=2)
    assert kept["data_cut_short"]["duration"] == pytest.approx((20000 - 44) / 2 / SR, abs=1e-3)
    assert kept["rate_8k"]["duration"] == pytest.approx(0.25)
    assert kept["unicode_text"]["text"] == "ÇA VA TRÈS BIEN MERCI"
    assert kept["nested-deeper"]["speaker"] == "nested"

    # `asr transcribe` on the same folder: every readable recording is transcribed (bad
    # transcripts do not matter here), every unreadable one is reported with its reason.
    r = subprocess.run(
        [sys.executable, "-m", "asr", "transcribe", str(trained / "best.pt"), str(src)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    transcribed = {Path(line.split("\t")[0]).relative_to(src).with_suffix("").as_posix() for line in r.stdout.splitlines()}
    readable = set(good) | {"nested/deeper", "no_transcript", "empty_transcript", "punctuation_only", "latin1_transcript"}
    assert transcribed == readable
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert {Path(line[len("error: ") :].split(": ")[0]).name for line in errors} == set(BAD)
    assert f"{len(BAD)} of {len(BAD) + len(readable)} files could not be transcribed" in r.stderr
