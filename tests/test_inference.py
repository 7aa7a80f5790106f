"""The inference seam: decoding options resolved in one place, searches with a declared
interface (batch, speed views, online), and models used from several threads at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asr.beam import BeamSearch, GreedySearch
from asr.config import ConfigError, DecodeConfig
from asr.options import DecodeOptions, make_decoder, resolve_options
from asr.text import Tokenizer

TOKENS = ("<blank>", "|", "A", "B", "C")


def _emissions(path: list[int], frames_per_token: int = 2, seed: int = 0) -> torch.Tensor:
    """(T, V) log-probabilities that favour `path` (one token per group of frames), with noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(path) * frames_per_token, len(TOKENS), generator=gen)
    for i, t in enumerate(path):
        x[i * frames_per_token : (i + 1) * frames_per_token, t] += 6.0
    return x.log_softmax(-1)


def test_options_precedence_checkpoint_then_file_then_flags(tmp_path: Path) -> None:
    ckpt = DecodeConfig(lm_weight=0.75, word_score=2.0, speeds=[0.9, 1.0, 1.1])
    assert resolve_options(ckpt) == DecodeOptions(lm_weight=0.75, word_score=2.0, speeds=(0.9, 1.0, 1.1))
    tuned = tmp_path / "decode.toml"
    tuned.write_text("[decode]\nlm_weight = 1.5\nbeam_size = 20\n")
    opts = resolve_options(ckpt, tuned, word_score=-1.0, lexicon=tmp_path / "lex.txt")
    assert (opts.lm_weight, opts.word_score, opts.beam_size, opts.speeds) == (1.5, -1.0, 20, (0.9, 1.0, 1.1))
    assert opts.lexicon == str(tmp_path / "lex.txt") and opts.uses_beam
    # Resolving copies: the checkpoint's settings are never written to.
    assert ckpt == DecodeConfig(lm_weight=0.75, word_score=2.0, speeds=[0.9, 1.0, 1.1])
    with pytest.raises(AttributeError):
        opts.lm_weight = 3.0  # type: ignore[misc]
    # Greedy decoding searches one view whatever the checkpoint carries; --speeds implies the beam.
    assert resolve_options(ckpt).views == (1.0,)
    assert resolve_options(ckpt, speeds=[1.0, 1.1]).views == (1.0, 1.1)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"speeds": [0.9, 1.1]}, "1.0 among them"),
        ({"view_nbest": 0}, "at least 1"),
        ({"beam_width": 3}, "unknown decoding option"),
        ({"beam_size": 0}, "beam_size must be at least 1"),
        ({"beam_threshold": -1.0}, "beam_threshold must be positive"),
        ({"lm_weight": float("nan")}, "lm_weight must be a finite number"),
        ({"word_score": float("inf")}, "word_score must be a finite number"),
    ],
)
def test_bad_options_name_the_problem(flags: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_options(DecodeConfig(), **flags)


def test_bad_decoder_file(tmp_path: Path) -> None:
    bad = tmp_path / "d.toml"
    bad.write_text("[decode]\nlm_weight = 'heavy'\n")
    with pytest.raises(ConfigError, match=str(bad)):
        resolve_options(DecodeConfig(), bad)
    with pytest.raises(ConfigError, match="file not found"):
        resolve_options(DecodeConfig(), tmp_path / "missing.toml")


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
def test_online_greedy_equals_batch_for_any_chunking(chunk: int) -> None:
    tok = Tokenizer(TOKENS)
    lp = _emissions([2, 0, 2, 3, 1, 4, 4, 0, 4, 2], frames_per_token=3)
    search = GreedySearch(tok)
    batch = search(lp[None], torch.tensor([len(lp)]))[0][0]
    online = search.begin()
    partials = []
    for i in range(0, len(lp), chunk):
        online.step(lp[i : i + chunk])
        partials.append(online.partial().token_ids)
    final = online.end()[0]
    assert final.token_ids == batch.token_ids and final.text == batch.text
    assert all(final.token_ids[: len(p)] == p for p in partials)  # greedy partials only grow


def _lexicon_and_lm(tmp_path: Path) -> tuple[Path, Path]:
    from asr.lm import build_arpa, write_lexicon

    lexicon = tmp_path / "lexicon.txt"
    write_lexicon(["AB", "CAB", "CC", "BA"], TOKENS, lexicon)
    arpa = build_arpa(["AB CAB", "CAB CC", "AB CC BA", "BA CAB"], 2, tmp_path / "lm.arpa").path
    return lexicon, arpa


@pytest.mark.parametrize("chunk", [1, 4, 9, 1000])
def test_online_beam_search_ends_as_the_batch_search(tmp_path: Path, chunk: int) -> None:
    lexicon, arpa = _lexicon_and_lm(tmp_path)
    search = BeamSearch(Tokenizer(TOKENS), DecodeConfig(lm_weight=0.5, word_score=1.0), lexicon=lexicon, lm=arpa, nbest=3)
    lp = _emissions([2, 3, 0, 1, 4, 2, 3, 0, 1, 4, 0, 4], frames_per_token=3, seed=1)
    batch = search(lp[None], torch.tensor([len(lp)]))[0]
    online = search.begin()
    assert online.partial().text == ""
    partials = {}
    for i in range(0, len(lp), chunk):
        online.step(lp[i : i + chunk])
        partials[min(i + chunk, len(lp))] = online.partial().text
    # Frames 12-20 say C A B, 21-23 blank, 24-26 the boundary: the search commits to CAB only
    # once its path has left the word, the partial shows it as soon as its letters are decoded.
    assert all(text == "AB CAB" for n, text in partials.items() if 21 <= n <= 24)
    assert partials[len(lp)] == "AB CAB CC"
    final = online.end()
    assert [h.text for h in final] == [h.text for h in batch]
    assert [h.score for h in final] == pytest.approx([h.score for h in batch], abs=1e-3)
    assert batch[0].text == "AB CAB CC"
    with pytest.raises(RuntimeError, match="ended"):
        online.step(lp[:1])


def test_one_beam_search_serves_threads_and_streams_at_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    lexicon, arpa = _lexicon_and_lm(tmp_path)
    search = BeamSearch(Tokenizer(TOKENS), DecodeConfig(lm_weight=0.5), lexicon=lexicon, lm=arpa)
    utts = [_emissions(p, 3, seed=s) for s, p in enumerate([[2, 3, 0, 1, 4, 2, 3], [4, 0, 4, 1, 3, 2], [3, 2, 1, 4, 2, 3, 1, 2, 3]] * 4)]
    alone = [search(u[None], torch.tensor([len(u)]))[0][0].text for u in utts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda u: search(u[None], torch.tensor([len(u)]))[0][0].text, utts))
    assert together == alone
    streams = [search.begin() for _ in utts[:3]]
    for i in range(0, 30, 5):  # interleaved: each stream keeps its own state
        for s, u in zip(streams, utts[:3], strict=True):
            s.step(u[i : i + 5])
    assert [s.end()[0].text for s in streams] == alone[:3]


def test_make_decoder_follows_the_options(tmp_path: Path) -> None:
    tok = Tokenizer(TOKENS)
    assert isinstance(make_decoder(tok, DecodeOptions()), GreedySearch)
    assert isinstance(make_decoder(tok, DecodeOptions(speeds=(0.9, 1.0))), GreedySearch)
    lexicon, arpa = _lexicon_and_lm(tmp_path)
    beam = make_decoder(tok, resolve_options(DecodeConfig(), lexicon=lexicon, lm=arpa, speeds=[0.9, 1.0, 1.1]))
    assert isinstance(beam, BeamSearch) and beam.speeds == (0.9, 1.0, 1.1)


# --------------------------------------------------------------------------- asr.transcribe


def _wavs(tone_corpus: dict[str, Path], n: int) -> list[Path]:
    return sorted(tone_corpus["test"].parent.glob("*.wav"))[:n]


def test_transcribe_takes_a_path_an_array_or_bytes(trained: Path, tone_corpus: dict[str, Path]) -> None:
    import numpy as np
    import soundfile as sf

    import asr
    from tests.conftest import invoke

    model = asr.load_model(trained / "best.pt")
    wav = _wavs(tone_corpus, 1)[0]
    samples, sr = sf.read(wav, dtype="float32")
    by_path = asr.transcribe(model, wav)
    assert by_path.text and by_path.duration == pytest.approx(len(samples) / sr)
    assert asr.transcribe(model, samples, sample_rate=sr).text == by_path.text
    assert asr.transcribe(model, torch.from_numpy(samples), sample_rate=sr).text == by_path.text
    assert asr.transcribe(model, wav.read_bytes()).text == by_path.text
    assert asr.transcribe(model, np.stack([samples, samples], 1), sample_rate=sr).text == by_path.text  # stereo
    words = by_path.words
    assert [w.word for w in words] == by_path.text.split()
    assert all(0 <= w.start <= w.end <= by_path.duration and 0 <= w.confidence <= 1 for w in words)
    # The command line gives the same text for the file.
    line = invoke("transcribe", trained / "best.pt", wav).stdout.strip()
    assert line.split("\t")[1] == by_path.text


def test_transcribe_from_several_threads_equals_one_at_a_time(trained: Path, tone_corpus: dict[str, Path]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import asr

    model = asr.load_model(trained / "best.pt")
    wavs = _wavs(tone_corpus, 8)
    for options in (asr.DecodeOptions(), asr.DecodeOptions(beam=True, beam_size=8)):
        alone = [asr.transcribe(model, w, options=options) for w in wavs]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda w: asr.transcribe(model, w, options=options), wavs))  # noqa: B023
        assert [r.text for r in together] == [r.text for r in alone]
        assert [r.words for r in together] == [r.words for r in alone]
    assert model.cfg.decode == asr.load_model(trained / "best.pt").cfg.decode  # nothing wrote to the model


def test_transcribe_long_and_narrowband_arrays(trained: Path, tone_corpus: dict[str, Path]) -> None:
    import numpy as np
    import soundfile as sf

    import asr
    from asr.audio import resample

    model = asr.load_model(trained / "best.pt")
    wavs = _wavs(tone_corpus, 16)
    clips = [sf.read(w, dtype="float32")[0] for w in wavs]
    singles = [asr.transcribe(model, c, sample_rate=16000).text for c in clips]
    pause = np.zeros(8000, np.float32)
    long = np.concatenate([x for c in clips for x in (c, pause)] * 2)  # about 40 s: cut at pauses
    assert len(long) / 16000 > 30
    result = asr.transcribe(model, long, sample_rate=16000)
    # Segments start where the pause detector cuts, not where the clips did, so the small tone
    # model may join or split a word differently; the letters stay.
    joined = asr.score({"long": " ".join(singles * 2)}, {"long": result.text})
    assert joined.cer <= 3.0, (joined.wer, joined.cer)
    starts = [w.start for w in result.words]
    assert starts == sorted(starts) and result.words[-1].end <= result.duration
    narrow = resample(clips[0], 16000, 8000)
    r8 = asr.transcribe(model, narrow, sample_rate=8000)
    assert r8.sample_rate == 8000 and r8.duration == pytest.approx(len(clips[0]) / 16000, abs=0.01)


@pytest.mark.parametrize(
    ("audio", "rate", "reason"),
    [
        ("array", None, "without their sample_rate"),
        ("nan", 16000, "NaN or Inf"),
        ("empty", 16000, "no audio samples"),
        (b"this is not audio at all, just text", None, "not readable as audio"),
        (b"", None, "empty file"),
    ],
)
def test_transcribe_rejects_bad_audio_with_a_reason(trained: Path, audio: object, rate: int | None, reason: str) -> None:
    import numpy as np

    import asr
    from asr.audio import AudioError

    model = asr.load_model(trained / "best.pt")
    samples = {"array": np.zeros(1600, np.float32), "nan": np.full(1600, np.nan, np.float32), "empty": np.zeros(0, np.float32)}
    with pytest.raises(AudioError, match=reason):
        asr.transcribe(model, samples.get(audio, audio) if isinstance(audio, str) else audio, sample_rate=rate)


def _pcm_variants(wav: Path) -> dict[str, object]:
    """One file's samples as callers hand them over: soundfile's dtypes, 8-bit, float64, tensors."""
    import numpy as np
    import soundfile as sf

    i16 = sf.read(wav, dtype="int16")[0]
    return {
        "int16": i16,
        "int32": sf.read(wav, dtype="int32")[0],
        "uint8": ((i16.astype(np.int32) >> 8) + 128).astype(np.uint8),
        "float64": sf.read(wav, dtype="float64")[0],
        "int16 tensor": torch.from_numpy(i16.copy()),
        "int32 tensor": torch.from_numpy(sf.read(wav, dtype="int32")[0]),
        "int16 stereo": np.stack([i16, i16], 1),
    }


def test_integer_pcm_arrays_are_scaled_as_files_are_read(trained: Path, tone_corpus: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np
    import soundfile as sf

    import asr

    model = asr.load_model(trained / "best.pt")
    for wav in _wavs(tone_corpus, 2):
        want = asr.transcribe(model, sf.read(wav, dtype="float32")[0], sample_rate=16000).text
        assert want == asr.transcribe(model, wav).text
        variants = _pcm_variants(wav)
        u8 = variants.pop("uint8")
        for kind, samples in variants.items():
            assert asr.transcribe(model, samples, sample_rate=16000).text == want, kind
        # 8-bit audio as a file and as the array of its bytes' values
        sf.write(tmp_path / "u8.wav", (u8.astype(np.float32) - 128) / 128, 16000, subtype="PCM_U8")
        assert asr.transcribe(model, u8, sample_rate=16000).text == asr.transcribe(model, tmp_path / "u8.wav").text


@pytest.mark.parametrize(
    ("samples", "reason"),
    [
        ("bool", "bool"),
        ("complex", "complex"),
        ("complex tensor", "complex"),
        ("int64", "int64"),
        ("strings", "must be numbers"),
    ],
)
def test_bool_complex_and_unscaled_samples_are_refused(trained: Path, samples: str, reason: str) -> None:
    import numpy as np

    import asr
    from asr.audio import AudioError

    model = asr.load_model(trained / "best.pt")
    x = np.sin(np.arange(16000) / 7)
    given = {
        "bool": x > 0,
        "complex": x.astype(np.complex64),
        "complex tensor": torch.from_numpy(x.astype(np.complex64)),
        "int64": (x * 32767).astype(np.int64),
        "strings": np.array(["a"] * 1600),
    }[samples]
    with pytest.raises(AudioError, match=reason) as e:
        asr.transcribe(model, given, sample_rate=16000)
    assert "\n" not in str(e.value) and str(e.value).startswith("<array>: ")
