"""Live recognition: the endpoint rules, the voice-activity detector, `asr.stream.Stream` (partials,
finals, word times, several streams at once, resampling) and `asr stream` on the command line."""

from __future__ import annotations

import io
import json
import re
import struct
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.config import Config
from asr.endpoint import EndpointConfig, Endpointer, endpoint_rule
from asr.stream import Stream, StreamResult, pcm_source
from asr.text import Tokenizer
from tests.conftest import WORDS, tone_utterance

SR = 16000
FIXTURES = Path(__file__).parent / "fixtures"
SEGMENTS = [["BC", "DAD"], ["BAD"], ["CAD", "BC"]]  # words the tone models of conftest get right


# --------------------------------------------------------------------------- endpoint rules


def test_endpoint_rules_as_sherpa_onnx() -> None:
    cfg = EndpointConfig()
    assert (cfg.rule1_min_trailing_silence, cfg.rule2_min_trailing_silence, cfg.rule3_min_utterance_length) == (2.4, 1.2, 20.0)
    assert endpoint_rule(cfg, 2.4, 2.4) == 1  # silence only: rule 1 at 2.4 s
    assert endpoint_rule(cfg, 2.3, 2.3) == 0
    assert endpoint_rule(cfg, 2.0, 1.2) == 2  # something, then 1.2 s of silence
    assert endpoint_rule(cfg, 2.0, 1.1) == 0
    assert endpoint_rule(cfg, 1.2, 1.2) == 0  # nothing but the silence: rule 2 needs something before it
    assert endpoint_rule(cfg, 20.0, 0.0) == 3
    assert endpoint_rule(EndpointConfig(5.0, 0.5, 3.0), 1.0, 0.5) == 2
    for bad in (0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="rule2_min_trailing_silence"):
            EndpointConfig(rule2_min_trailing_silence=bad)


def _push(e: Endpointer, silent: list[bool]) -> list[tuple[int, int]]:
    """(frame, rule) of each endpoint, frames counted from 1."""
    return [(e.frames, r) for s in silent if (r := e.push(s))]


def test_endpointer_on_frame_sequences() -> None:
    fs = 0.03
    e = Endpointer(None, fs)  # silence only: rule 1 every 80 frames (2.4 s), from the last endpoint on
    assert _push(e, [True] * 200) == [(80, 1), (160, 1)]
    e = Endpointer(None, fs)  # 10 frames of sound, then silence: rule 2 after 40 frames (1.2 s)
    assert _push(e, [False] * 10 + [True] * 39) == []
    assert _push(e, [True]) == [(50, 2)]
    assert e.start == 50 and e.utterance_seconds == 0
    e = Endpointer(None, fs)  # sound that never pauses for long: rule 3 at 20 s = 667 frames
    assert _push(e, ([False] * 5 + [True] * 30) * 30)[0] == (667, 3)
    e = Endpointer(EndpointConfig(rule2_min_trailing_silence=0.3), 0.1)
    assert _push(e, [False, True, True, False, True, True, True, False]) == [(7, 2)]


# --------------------------------------------------------------------------- scripted emissions

TOKENS = ("<blank>", "|", "A", "B", "C")


class Scripted:
    """Stands in for `asr.streaming.OnlineEmissions`: the frames of a scripted token path, one
    per `frame_seconds` of audio accepted (the rest at `finish`)."""

    def __init__(self, path: list[int], frame_seconds: float = 0.03):
        self.log_probs = torch.full((len(path), len(TOKENS)), -12.0)
        self.log_probs[torch.arange(len(path)), torch.tensor(path)] = 0.0
        self.log_probs = self.log_probs.log_softmax(-1)
        self.frame_seconds = frame_seconds
        self.samples = self.frames = 0
        self.resets: list[int] = []

    def accept(self, samples: np.ndarray) -> torch.Tensor:
        self.samples += len(samples)
        n = min(len(self.log_probs), int(self.samples / SR / self.frame_seconds + 1e-9))
        out, self.frames = self.log_probs[self.frames : n], max(n, self.frames)
        return out

    def finish(self) -> torch.Tensor:
        out, self.frames = self.log_probs[self.frames :], len(self.log_probs)
        return out

    def reset(self, frame: int) -> None:  # the script is the same whatever came before
        self.resets.append(frame)
        self.frames, self.samples = frame, int(round(frame * self.frame_seconds * SR))


def _tokens(text: str) -> list[int]:
    """Each character two frames, a blank after each letter; `_` one blank frame, ` ` a boundary."""
    out: list[int] = []
    for ch in text:
        if ch == "_":
            out.append(0)
        elif ch == " ":
            out += [1, 1]
        else:
            out += [TOKENS.index(ch)] * 2 + [0]
    return out


def _fake_model() -> SimpleNamespace:
    return SimpleNamespace(cfg=Config(), tokenizer=Tokenizer(TOKENS))


def _run(stream: Stream, samples: np.ndarray, chunk: int, rate: int = SR) -> tuple[list[StreamResult], StreamResult, list[StreamResult]]:
    """Feed `samples` in pieces: (finals queued, the last final, partials)."""
    finals, partials = [], []
    for i in range(0, len(samples), chunk):
        partials.append(stream.accept(samples[i : i + chunk], rate))
        finals += stream.pop_finals()
    last = stream.finish()
    return finals + stream.pop_finals(), last, partials


@pytest.mark.parametrize("chunk", [160, 1111, 4800, 100000])
def test_utterances_end_where_the_rules_say_whatever_the_chunks(chunk: int) -> None:
    # a letter ends with a blank: 40 blank frames (1.2 s) after "AB C", 39 after "CAB |", 100 after "BA"
    path = _tokens("AB C") + [0] * 39 + _tokens("CAB ") + [0] * 39 + _tokens("BA") + [0] * 99 + _tokens("C")
    stream = Stream(_fake_model(), vad=False, emissions=Scripted(path))
    finals, last, partials = _run(stream, np.zeros(int(len(path) * 0.03 * SR), np.float32), chunk)
    assert [f.text for f in finals] == ["AB C", "CAB BA"]  # 39 blanks are not 1.2 s; 40 are
    assert all(f.final and f.type == "final" for f in finals) and not any(p.final for p in partials)
    first_end = (len(_tokens("AB C")) + 39) * 0.03
    assert finals[0].start == 0 and finals[0].end == pytest.approx(first_end)
    assert finals[1].start == pytest.approx(first_end)
    # the 100 blanks after "BA": rule 2 at 40, then an empty utterance the next 60 frames: nothing queued
    assert last.text == "C" and last.end == pytest.approx(len(path) * 0.03)
    assert [w.word for w in finals[0].words] == ["AB", "C"]
    a, c = finals[0].words
    assert a.start == pytest.approx(0.0) and a.end == pytest.approx(5 * 0.03) and c.start == pytest.approx(8 * 0.03)
    assert all(0.9 < w.confidence <= 1.0 for f in finals for w in f.words)


@pytest.mark.parametrize("chunk", [3200, 160, 10**6])
def test_rule_1_closes_silence_and_rule_3_cuts_long_speech_between_words(chunk: int) -> None:
    path = [0] * 100 + _tokens("AB " * 300)  # "AB |" is 8 frames: 0.24 s
    stream = Stream(_fake_model(), vad=False, emissions=Scripted(path))
    finals, last, _ = _run(stream, np.zeros(int(len(path) * 0.03 * SR), np.float32), chunk)
    # 80 blanks: rule 1, nothing to say; then rule 3 near every 667 frames (20 s) of talk
    assert finals[0].start == pytest.approx(80 * 0.03)
    assert (80 + 667 - 9) * 0.03 <= finals[0].end <= (80 + 667) * 0.03
    assert all(18.0 <= f.end - f.start <= 20.0 for f in finals)
    # never inside a word: each final holds whole words, the cut in the "|" before the next one
    assert all(set(f.text.split()) == {"AB"} for f in [*finals, last])
    assert sum(len(f.text.split()) for f in [*finals, last]) == 300
    for f in finals:
        assert round(f.end / 0.03 - 100) % 8 in (5, 6, 7, 0)  # after a word's last letter, before the next "A"


@pytest.mark.parametrize("reset_state", [True, False])
@pytest.mark.parametrize("pause", [0, 5])
def test_rule_3_carries_the_word_at_its_mark_into_the_next_utterance(reset_state: bool, pause: int) -> None:
    # words of 3-4 letters with `pause` blank frames between; rule 3 at 2 s (67 frames) falls in
    # a word at some offset of the script: shift it a frame at a time
    rules = EndpointConfig(rule3_min_utterance_length=2.0)
    for shift in range(0, 16, 3):
        text = " ".join(["CAB", "BAC", "ABCA"] * 8)
        path = [0] * shift + [t for w in text.split() for t in _tokens(w + " ") + [0] * pause]
        stream = Stream(_fake_model(), endpoint=rules, vad=False, reset_state=reset_state, emissions=Scripted(path))
        finals, last, _ = _run(stream, np.zeros(int(len(path) * 0.03 * SR), np.float32), 1600)
        got = [f.text for f in [*finals, last] if f.text]
        assert len(finals) >= 3 and " ".join(got) == text, (shift, got)
        assert all(f.end - f.start <= 2.0 + 1e-9 for f in finals)


@pytest.mark.parametrize("reset_state", [True, False])
def test_one_accept_of_many_endpoints_gives_the_finals_of_small_pieces(reset_state: bool) -> None:
    # 1500 utterances "AB" / "CAB" with 3 blank frames (rule 2 at 0.09 s) after each, in one call
    path = (_tokens("AB") + [0] * 3 + _tokens("CAB") + [0] * 3) * 750
    rules = EndpointConfig(rule2_min_trailing_silence=0.09)
    x = np.zeros(int(len(path) * 0.03 * SR), np.float32)
    whole = Stream(_fake_model(), endpoint=rules, vad=False, reset_state=reset_state, emissions=Scripted(path))
    finals, last, _ = _run(whole, x, len(x))
    assert len(finals) == 1500 and [f.text for f in finals[:2]] == ["AB", "CAB"]
    pieces = Stream(_fake_model(), endpoint=rules, vad=False, reset_state=reset_state, emissions=Scripted(path))
    small, small_last, _ = _run(pieces, x, 1111)
    assert [(f.text, f.start, f.end) for f in finals] == [(f.text, f.start, f.end) for f in small] and last == small_last
    if reset_state:  # each restart re-feeds only the audio past its endpoint that the stream holds
        assert whole.emissions.resets == pieces.emissions.resets and len(whole.emissions.resets) == 1500


def test_partials_grow_and_the_stream_refuses_bad_input() -> None:
    path = _tokens("AB CAB") + [0] * 10
    stream = Stream(_fake_model(), vad=False, emissions=Scripted(path))
    x = np.zeros(int(len(path) * 0.03 * SR), np.float32)
    texts = [stream.accept(x[i : i + 800], SR).text for i in range(0, len(x), 800)]
    assert texts[0] == "A" and texts[-1] == "AB CAB" and all("AB CAB".startswith(t) for t in texts)  # greedy partials only grow
    from asr.audio import AudioError

    with pytest.raises(AudioError, match="NaN"):
        stream.accept(np.array([0.0, np.nan], np.float32), SR)
    with pytest.raises(AudioError, match="sample rate"):
        stream.accept(x[:10], 0)
    with pytest.raises(ValueError, match="one rate per stream"):
        stream.accept(x[:10], 8000)
    assert stream.accept(np.zeros(0, np.float32), SR).text == "AB CAB"
    assert stream.accept((x[:100] * 0).astype(np.int16), SR).text == "AB CAB"  # int16 samples are taken too
    before = stream.seconds
    stream.accept(np.zeros((2, 160), np.float32), 16000.0)  # (channels, samples), a whole-number float rate
    stream.accept(np.zeros((160, 2), np.float32), SR)  # (samples, channels)
    assert stream.seconds - before == pytest.approx(320 / SR)
    assert stream.finish().text == "AB CAB"
    with pytest.raises(RuntimeError):
        stream.accept(x[:10], SR)


def test_a_source_that_fails_midway_keeps_what_was_heard() -> None:
    from asr.audio import AudioError
    from asr.stream import AudioSource, run

    path = _tokens("AB CAB") + [0] * 10
    x = np.zeros(int(len(path) * 0.03 * SR), np.float32)

    def chunks():
        yield from (x[i : i + 800] for i in range(0, len(x), 800))
        raise AudioError("<stdin>", "1 byte does not make a whole 16-bit sample")

    emitted: list[StreamResult] = []
    with pytest.raises(AudioError, match="16-bit"):
        run(Stream(_fake_model(), vad=False, emissions=Scripted(path)), AudioSource("<stdin>", SR, chunks()), emitted.append)
    assert emitted[-1].final and emitted[-1].text == "AB CAB"  # finished before the error is raised


# --------------------------------------------------------------------------- voice activity


def vowels(seconds: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """Speech-like sound: voiced vowels (harmonics of a gliding 100-140 Hz pitch shaped by
    formants), one after another, each 200-300 ms."""
    formants = [(700, 1200, 2600), (300, 2300, 3000), (500, 900, 2500), (400, 1900, 2550)]
    out = []
    total = 0
    while total < seconds * sr:
        n = int(rng.uniform(0.2, 0.3) * sr)
        t = np.arange(n) / sr
        f0 = rng.uniform(100, 140) * (1 + 0.08 * np.sin(2 * np.pi * 3 * t))
        phase = 2 * np.pi * np.cumsum(f0) / sr
        shape = formants[rng.integers(len(formants))]
        y = sum((sum(np.exp(-(((k * f0.mean()) - f) / 100) ** 2) for f in shape) + 0.01) * np.sin(k * phase) for k in range(1, 40))
        out.append(0.3 * y / np.abs(y).max() * np.minimum(1, np.minimum(t, t[::-1]) / 0.02))
        total += n
    return np.concatenate(out)[: int(seconds * sr)].astype(np.float32)


def test_vad_hears_vowels_not_tones_or_silence_and_keeps_torch_threads() -> None:
    from asr.vad import VoiceActivity

    before = torch.get_num_threads()
    rng = np.random.default_rng(0)
    silence = (0.003 * rng.standard_normal(SR)).astype(np.float32)
    x = np.concatenate([silence, vowels(1.5, rng), silence, tone_utterance(["CAB", "DC"], rng), silence])
    vad = VoiceActivity(SR)
    assert vad.window == 512 and VoiceActivity(8000).window == 256
    flags = np.concatenate([vad.accept(x[i : i + 700]) for i in range(0, len(x), 700)] + [vad.flush()])
    assert torch.get_num_threads() == before  # importing silero_vad sets it to 1; asr.vad puts it back
    t = (np.arange(len(flags)) + 0.5) * vad.window_seconds
    assert flags[(t > 1.1) & (t < 2.4)].mean() > 0.9
    assert not flags[t < 0.9].any() and not flags[(t > 2.7) & (t < 3.5)].any()
    assert flags[t > 3.6].mean() < 0.2  # tones are no speech to it
    vad.reset()
    again = np.concatenate([vad.accept(x), vad.flush()])
    assert (again == flags).all()  # decisions do not depend on the pieces
    at44 = VoiceActivity(44100)  # other rates are resampled to 16 kHz on the way in
    import soxr

    y = soxr.resample(x, SR, 44100).astype(np.float32)
    flags44 = np.concatenate([at44.accept(y[i : i + 4410]) for i in range(0, len(y), 4410)] + [at44.flush()])
    n = min(len(flags), len(flags44))
    assert (flags44[:n] == flags[:n]).mean() > 0.95


def test_vad_and_ctc_blanks_must_both_be_silence() -> None:
    """Tokens at first, then blanks while speech goes on: the utterance stays open until the
    detector hears 1.2 s without speech; without it, 1.2 s of blanks end it."""
    rng = np.random.default_rng(1)
    x = np.concatenate([vowels(2.0, rng), (0.003 * rng.standard_normal(3 * SR)).astype(np.float32)])
    path = _tokens("AB") + [0] * (int(5.0 / 0.03) - 6)
    ends = {}
    for vad in (True, False):
        stream = Stream(_fake_model(), vad=vad, emissions=Scripted(path))
        finals, _, _ = _run(stream, x, 1600)
        assert [f.text for f in finals] == ["AB"]
        ends[vad] = finals[0].end
    assert ends[False] == pytest.approx((5 + 40) * 0.03)  # the last token in frame 5, then 40 blanks
    assert 3.1 <= ends[True] <= 3.6


def test_silero_segmenter_skips_noise_that_energy_calls_sound() -> None:
    from asr.segment import DEFAULT_SEGMENTER, SEGMENTERS, segment_stream

    assert DEFAULT_SEGMENTER in SEGMENTERS == ("energy", "silero")
    rng = np.random.default_rng(2)
    quiet = lambda s: (0.002 * rng.standard_normal(int(s * SR))).astype(np.float32)  # noqa: E731
    burst = (0.3 * rng.standard_normal(SR)).astype(np.float32)  # a second of loud noise
    x = np.concatenate([quiet(1), vowels(2.0, rng), quiet(1.5), burst, quiet(1.5), vowels(1.5, rng), quiet(1)])

    def spans(name: str) -> list[tuple[float, float]]:
        blocks = (x[i : i + SR] for i in range(0, len(x), SR))
        return [(s.start, s.end) for s in segment_stream(blocks, SR, SR, segmenter=name)]

    energy, silero = spans("energy"), spans("silero")
    assert len(energy) == 3 and len(silero) == 2
    assert silero[0][0] == pytest.approx(0.9, abs=0.15) and silero[0][1] == pytest.approx(3.1, abs=0.2)
    assert silero[1][0] == pytest.approx(6.9, abs=0.35)  # the second vowels begin at 7.0 s
    with pytest.raises(ValueError, match="segmenter"):
        list(segment_stream(iter([x]), SR, SR, segmenter="loud"))


# --------------------------------------------------------------------------- a streaming model


@pytest.fixture(scope="module")
def lstm_model(trained_streaming: Path) -> Path:
    """conftest's streaming tone model: a one-direction LSTM with two frames of look-ahead."""
    return trained_streaming / "best.pt"


def joined(seed: int = 0, pause: float = 1.8) -> tuple[np.ndarray, list[np.ndarray]]:
    """SEGMENTS as tone utterances separated by `pause` seconds of faint noise: the whole, and each."""
    rng = np.random.default_rng(seed)
    segments = [tone_utterance(words, rng) for words in SEGMENTS]
    parts = []
    for s in segments:
        parts += [s, (0.01 * rng.standard_normal(int(pause * SR))).astype(np.float32)]
    return np.concatenate(parts), segments


@pytest.mark.parametrize("chunk", [1600, 593])
def test_one_final_per_segment_equal_to_offline_greedy(lstm_model: Path, chunk: int) -> None:
    import asr
    from asr.beam import greedy
    from asr.streaming import stream_log_probs

    model = asr.load_model(lstm_model)
    x, segments = joined()
    stream = asr.stream(model)
    finals, last, partials = _run(stream, x, chunk)
    finals = finals + ([last] if last.text else [])
    assert len(finals) == len(SEGMENTS)
    assert [f.text for f in finals] == [asr.transcribe(model, s, SR).text for s in segments]
    # exactly the greedy search over the same frames, split where the stream split them
    lp = stream_log_probs(model, x, 1600)
    fs = stream.frame_seconds
    for f in finals:
        a, b = round(f.start / fs), min(len(lp), round(f.end / fs))
        assert greedy(model.tokenizer, lp[a:b][None], torch.tensor([b - a]))[0][0].text == f.text
    # word times lie within each segment's tones, in the stream's time
    starts = np.cumsum([0] + [len(s) / SR + 1.8 for s in segments])[:-1]
    for f, seg_start, seg in zip(finals, starts, segments, strict=True):
        assert [w.word for w in f.words] == f.text.split()
        assert seg_start + 0.15 <= f.words[0].start and f.words[-1].end <= seg_start + len(seg) / SR - 0.15
        assert all(a.end <= b.start for a, b in zip(f.words, f.words[1:], strict=False))
    assert any(p.text for p in partials)


@pytest.mark.parametrize("lead", [0.0, 0.07, 0.15, 0.23])
def test_rule_3_does_not_cut_a_word_of_the_tone_model(lstm_model: Path, lead: float) -> None:
    import asr

    model = asr.load_model(lstm_model)
    words = ["BC", "DAD", "BAD", "CAD", "BC", "BAD", "DAD", "CAD"]
    rng = np.random.default_rng(11)
    x = np.concatenate([(0.01 * rng.standard_normal(int(lead * SR))).astype(np.float32), tone_utterance(words, rng)])
    # 1.5 s at most: the marks fall in words or pauses depending on `lead`
    stream = asr.stream(model, endpoint=EndpointConfig(rule3_min_utterance_length=1.5))
    finals, last, _ = _run(stream, x, 1600)
    got = [f.text for f in [*finals, last] if f.text]
    # every letter once, and every word whole (the small model may miss a space between two)
    assert len(finals) >= 2 and "".join(got).replace(" ", "") == "".join(words), got
    assert all(re.fullmatch(f"({'|'.join(WORDS)})+", w) for w in " ".join(got).split()), got
    assert all(f.end - f.start <= 1.5 + 1e-9 for f in finals)


def test_beam_search_with_lexicon_and_lm_online(lstm_model: Path, tmp_path: Path) -> None:
    import asr
    from asr.lm import build_arpa, write_lexicon

    model = asr.load_model(lstm_model)
    lexicon = tmp_path / "lexicon.txt"
    write_lexicon(["AB", "BAD", "CAB", "DAD", "ADD", "BC", "DC", "CAD"], model.tokenizer.tokens, lexicon)
    arpa = build_arpa([" ".join(w) for w in SEGMENTS] * 3, 2, tmp_path / "lm.arpa").path
    options = asr.resolve_options(model.cfg.decode, lexicon=lexicon, lm=arpa, lm_weight=0.5, speeds=[0.9, 1.0, 1.1])
    x, segments = joined(seed=3)
    stream = asr.stream(model, options)
    assert stream.options.speeds == (1.0,) and stream.options.uses_beam
    finals, last, _ = _run(stream, x, 3200)
    finals += [last] if last.text else []
    one_view = asr.resolve_options(model.cfg.decode, lexicon=lexicon, lm=arpa, lm_weight=0.5)
    assert [f.text for f in finals] == [asr.transcribe(model, s, SR, one_view).text for s in segments]
    assert [f.text for f in finals] == [" ".join(words) for words in SEGMENTS]


def test_streams_of_one_model_at_once_and_resampled_input(lstm_model: Path, capsys: pytest.CaptureFixture) -> None:
    import soxr

    import asr

    model = asr.load_model(lstm_model)
    audios = [joined(seed=s)[0] for s in (4, 5, 6)]
    alone = []
    for x in audios:
        f, last, _ = _run(asr.stream(model), x, 1600)
        alone.append([r.text for r in f] + [last.text])
    results: dict[int, list[str]] = {}

    def work(i: int) -> None:
        f, last, _ = _run(asr.stream(model), audios[i], 1000 + 300 * i)
        results[i] = [r.text for r in f] + [last.text]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(3)] == alone
    # 44.1 kHz input is resampled to the model's rate as it comes
    y = soxr.resample(audios[0], SR, 44100).astype(np.float32)
    f, last, _ = _run(asr.stream(model), y, 4410, rate=44100)
    assert [r.text for r in f] + [last.text] == alone[0]
    assert "warning" not in capsys.readouterr().err
    # narrowband input is decoded and said once
    z = soxr.resample(audios[0], SR, 8000).astype(np.float32)
    f, last, _ = _run(asr.stream(model), z, 800, rate=8000)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "the stream is at 8000 Hz, below the model's 16000 Hz" in err and " of 1 " not in err
    assert f or last.text


class _Heard:
    """OnlineEmissions that keeps the samples it is given (no `reset`: each sample once)."""

    def __init__(self, model):
        from asr.streaming import OnlineEmissions

        self.online = OnlineEmissions(model)
        self.frame_seconds = self.online.frame_seconds
        self.samples: list[np.ndarray] = []

    def accept(self, x: np.ndarray) -> torch.Tensor:
        self.samples.append(np.array(x))
        return self.online.accept(x)

    def finish(self) -> torch.Tensor:
        return self.online.finish()


def _tones_at(rate: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [tone_utterance(words, rng, rate) for words in SEGMENTS]


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 32000, 44100, 48000])
@pytest.mark.parametrize("chunk_seconds", [0.1, 0.0123])
def test_the_stream_resamples_as_offline_decoding_does(lstm_model: Path, rate: int, chunk_seconds: float) -> None:
    import asr
    from asr.inference import read_audio

    model = asr.load_model(lstm_model)
    x = np.concatenate(_tones_at(rate, 8))
    heard = _Heard(model)
    _run(asr.stream(model, emissions=heard, vad=False), x, max(1, int(chunk_seconds * rate)), rate=rate)
    fed = np.concatenate(heard.samples)
    offline = read_audio(x, rate, SR).samples  # what asr.transcribe gives the model
    assert len(fed) == len(offline) and np.abs(fed - offline).max() < 1e-5


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_live_and_offline_give_the_same_words_at_other_rates(lstm_model: Path, rate: int) -> None:
    import asr

    model = asr.load_model(lstm_model)
    segments = _tones_at(rate, 9)
    pause = (0.01 * np.random.default_rng(1).standard_normal(int(1.8 * rate))).astype(np.float32)
    x = np.concatenate([p for s in segments for p in (s, pause)])
    # one utterance (no endpoint): the final is the offline decoding of the whole
    never = EndpointConfig(1000.0, 1000.0, 1000.0)
    finals, last, _ = _run(asr.stream(model, endpoint=never), x, int(0.1 * rate), rate=rate)
    assert not finals and last.text == asr.transcribe(model, x, rate).text


def test_integer_pcm_is_scaled_as_offline_and_bool_or_complex_refused(lstm_model: Path) -> None:
    import asr
    from asr.audio import AudioError

    model = asr.load_model(lstm_model)
    x, _ = joined(seed=10)
    i16 = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    as_float = i16.astype(np.float32) / 32768

    def texts(samples, chunk: int = 1600) -> list[str]:
        finals, last, _ = _run(asr.stream(model), samples, chunk)
        return [f.text for f in finals] + [last.text]

    want = texts(as_float)
    assert want[0]
    assert texts(i16) == want
    assert texts(i16.astype(np.int32) << 16) == want
    assert texts(as_float.astype(np.float64)) == want
    assert texts(torch.from_numpy(i16.copy()), 1600) == want
    u8 = ((i16.astype(np.int32) >> 8) + 128).astype(np.uint8)
    assert texts(u8) == texts((u8.astype(np.float32) - 128) / 128)
    for bad, reason in [(x > 0, "bool"), (x.astype(np.complex64), "complex"), (torch.from_numpy(x > 0), "bool")]:
        with pytest.raises(AudioError, match=reason) as e:
            asr.stream(model).accept(bad, SR)
        assert str(e.value).startswith("<stream>: ") and "\n" not in str(e.value)


# --------------------------------------------------------------------------- stdin PCM


def _wav_stream_bytes(x: np.ndarray, rate: int) -> bytes:
    """A WAV header as a recorder writing to a pipe makes it (sizes unknown), then the samples."""
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 0x7FFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", 0x7FFFFFFF) + pcm


def test_pcm_source_raw_wav_header_and_bad_bytes() -> None:
    from asr.audio import AudioError

    x = (0.1 * np.sin(np.arange(4000) / 5)).astype(np.float32)
    raw = (x * 32767).astype("<i2").tobytes()
    src = pcm_source(io.BytesIO(raw), None, 0.1)
    got = np.concatenate(list(src.chunks))
    assert src.sample_rate == 16000 and np.abs(got - x).max() < 1e-4
    src = pcm_source(io.BytesIO(_wav_stream_bytes(x, 8000)), None, 0.1)
    assert src.sample_rate == 8000 and len(np.concatenate(list(src.chunks))) == 4000
    with pytest.raises(AudioError, match="header says 8000 Hz"):
        pcm_source(io.BytesIO(_wav_stream_bytes(x, 8000)), 16000)
    stereo = np.stack([x, -x], axis=1).astype("<i2").tobytes()
    assert len(np.concatenate(list(pcm_source(io.BytesIO(stereo), 16000, channels=2).chunks))) == 4000
    with pytest.raises(AudioError, match="whole 16-bit samples"):
        list(pcm_source(io.BytesIO(raw + b"\x01"), 16000).chunks)
    with pytest.raises(AudioError, match="no audio"):
        list(pcm_source(io.BytesIO(b""), 16000).chunks)
    with pytest.raises(AudioError, match="FLAC"):
        pcm_source(io.BytesIO(b"fLaC\x00\x00\x00\x22" + bytes(40)), 16000)
    with pytest.raises(AudioError, match="text"):
        pcm_source(io.BytesIO(b"hello, this is not audio\n"), 16000)
    with pytest.raises(AudioError, match="not 16-bit PCM"):
        pcm_source(io.BytesIO(_wav_stream_bytes(x, 8000).replace(struct.pack("<HH", 2, 16), struct.pack("<HH", 4, 32), 1)), None)


def _chunk(cid: bytes, body: bytes) -> bytes:
    return cid + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) & 1)


def _wav_with_chunks(x: np.ndarray, rate: int, before: list[bytes], after: list[bytes], data_size: int | None = None, riff_size: int | None = None) -> bytes:
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    fmt = _chunk(b"fmt ", struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16))
    data = b"data" + struct.pack("<I", len(pcm) if data_size is None else data_size) + pcm
    body = b"WAVE" + fmt + b"".join(before) + data + b"".join(after)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


_LIST = _chunk(b"LIST", b"INFOINAM" + struct.pack("<I", 9) + b"a title\x00\x00")
_ART = _chunk(b"id3 ", bytes(range(256)) * 40 + b"\xff")  # odd-sized: padded


@pytest.mark.parametrize(
    ("before", "after", "data_size", "riff_size", "whole"),
    [
        ([], [_LIST], None, None, True),  # a LIST after the audio (what sox and ffmpeg add)
        ([], [_ART, _LIST], None, None, True),  # cover art, odd-sized, then LIST
        ([_chunk(b"junk", b"abc"), _chunk(b"bext", bytes(3 << 20))], [_ART], None, None, True),  # odd and large chunks before
        ([_LIST], [], 0xFFFFFFFF, 0xFFFFFFFF, False),  # a stream's header: until the end
        ([], [], 0, 0, False),  # sizes left at 0 by a recorder writing to a pipe
        ([], [], 0x7FFFF000, 0x7FFFF024, False),  # sox's placeholder
    ],
)
def test_a_wav_on_stdin_ends_with_its_data_chunk(before: list[bytes], after: list[bytes], data_size: int | None, riff_size: int | None, whole: bool) -> None:
    x = (0.3 * np.sin(np.arange(4001) / 3)).astype(np.float32)
    wav = _wav_with_chunks(x, 8000, before, after, data_size, riff_size)
    for chunk_seconds in (0.1, 0.0003, 10):
        src = pcm_source(io.BytesIO(wav), None, chunk_seconds)
        got = np.concatenate(list(src.chunks))
        assert src.sample_rate == 8000
        if whole:
            assert len(got) == len(x) and np.abs(got - x).max() < 1e-4
        else:  # the bytes after the samples are read as samples: nothing says where they end
            assert len(got) == (len(wav) - wav.index(b"data") - 8) // 2 and np.abs(got[: len(x)] - x).max() < 1e-4


def test_a_wav_on_stdin_with_a_cut_or_empty_data_chunk() -> None:
    from asr.audio import AudioError

    x = (0.3 * np.sin(np.arange(4000) / 3)).astype(np.float32)
    cut = _wav_with_chunks(x, 8000, [], [_LIST])[:-len(_LIST) - 1000]  # ended by the recorder: what came is kept
    assert len(np.concatenate(list(pcm_source(io.BytesIO(cut), None).chunks))) == 4000 - 500
    with pytest.raises(AudioError, match="no audio"):
        list(pcm_source(io.BytesIO(_wav_with_chunks(x[:0], 8000, [], [_LIST])), None).chunks)
    with pytest.raises(AudioError, match="cut short"):
        pcm_source(io.BytesIO(_wav_with_chunks(x, 8000, [_chunk(b"junk", bytes(100))], [])[:60]), None)


def test_cli_stops_at_the_data_chunk(lstm_model: Path) -> None:
    x, _ = joined(seed=7)
    want = [" ".join(w) for w in SEGMENTS]
    noise = _chunk(b"LIST", np.random.default_rng(0).integers(-20000, 20000, 3 * SR, dtype=np.int16).tobytes())  # 3 s of "audio"
    r = cli(lstm_model, "-", input=_wav_with_chunks(x, SR, [], [noise]))
    assert r.exit_code == 0, (r.output, r.exception)
    events = _events(r.stdout)
    assert [e["text"] for e in events if e["type"] == "final"] == want
    assert max(e["end"] for e in events) <= len(x) / SR + 0.05


# --------------------------------------------------------------------------- the command line


def cli(*args: object, input: bytes | None = None):
    from typer.testing import CliRunner

    from cli.main import app

    return CliRunner().invoke(app, ["stream", *map(str, args)], input=input)


def one_error_line(r) -> str:
    assert r.exit_code != 0, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.stderr
    return lines[0]


def _events(stdout: str) -> list[dict]:
    events = [json.loads(line) for line in stdout.splitlines()]
    assert all(set(e) == {"type", "text", "start", "end", "words"} for e in events)
    partials = [e["text"] for e in events if e["type"] == "partial"]
    assert all(a != b for a, b in zip(partials, partials[1:], strict=False))  # only when the text changes
    return events


def test_cli_json_lines_from_a_file_and_from_stdin(lstm_model: Path, tmp_path: Path) -> None:
    x, _ = joined(seed=7)
    wav = tmp_path / "talk.wav"
    sf.write(wav, x, SR, subtype="PCM_16")
    want = [" ".join(w) for w in SEGMENTS]
    r = cli(lstm_model, wav)
    assert r.exit_code == 0, (r.output, r.exception)
    events = _events(r.stdout)
    finals = [e for e in events if e["type"] == "final"]
    assert [e["text"] for e in finals] == want
    assert [w["word"] for w in finals[0]["words"]] == SEGMENTS[0] and 0 <= finals[0]["words"][0]["confidence"] <= 1
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    r = cli(lstm_model, "-", "--rate", 16000, "--no-vad", "--chunk-ms", 50, input=pcm)
    assert r.exit_code == 0, (r.output, r.exception)
    assert [e["text"] for e in _events(r.stdout) if e["type"] == "final"] == want
    r = cli(lstm_model, "-", input=_wav_stream_bytes(x, SR))  # arecord's default: a WAV header first
    assert [e["text"] for e in _events(r.stdout) if e["type"] == "final"] == want
    r = cli(lstm_model, "-", "--rule2-min-trailing-silence", 30, "--rule1-min-trailing-silence", 30, input=pcm)
    assert [e["type"] for e in _events(r.stdout)].count("final") == 1  # no pause long enough: one utterance


@pytest.mark.parametrize("rate", [8000, 11025])
def test_cli_narrowband_stdin_is_said_as_a_stream(lstm_model: Path, rate: int) -> None:
    x = (0.1 * np.sin(np.arange(rate) / 3)).astype(np.float32)
    for args, data in [(("--rate", rate), (x * 32767).astype("<i2").tobytes()), ((), _wav_stream_bytes(x, rate))]:
        r = cli(lstm_model, "-", *args, input=data)
        assert r.exit_code == 0, (r.output, r.exception)
        warning = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
        assert len(warning) == 1 and f"the stream is at {rate} Hz" in warning[0] and "of 1 file" not in warning[0], r.stderr


def test_cli_errors_are_one_line(lstm_model: Path, tmp_path: Path) -> None:
    line = one_error_line(cli(FIXTURES / "old_checkpoints" / "blstm.pt", "-", input=bytes(3200)))
    assert "'blstm' cannot stream" in line and "lstm" in line.split("streaming kinds:")[1]
    for rate in (0, -16000, 10**9):
        assert "--rate" in one_error_line(cli(lstm_model, "-", "--rate", rate, input=bytes(3200)))
    assert "whole 16-bit samples" in one_error_line(cli(lstm_model, "-", input=bytes(3201)))
    assert "text" in one_error_line(cli(lstm_model, "-", input=b"this is not audio at all\n"))
    assert "no audio" in one_error_line(cli(lstm_model, "-", input=b""))
    assert "file not found" in one_error_line(cli(lstm_model, tmp_path / "missing.wav"))
    assert "file not found" in one_error_line(cli(tmp_path / "missing.pt", "-", input=bytes(3200)))
    (tmp_path / "junk.wav").write_text("not audio")
    assert "junk.wav" in one_error_line(cli(lstm_model, tmp_path / "junk.wav"))
    sf.write(tmp_path / "ok.wav", np.zeros(1600, np.float32), 16000)
    assert "--rate is for PCM on stdin" in one_error_line(cli(lstm_model, tmp_path / "ok.wav", "--rate", 8000))
    assert "one of them" in one_error_line(cli(lstm_model))
    assert "rule1_min_trailing_silence" in one_error_line(cli(lstm_model, "-", "--rule1-min-trailing-silence", 0, input=bytes(3200)))


def test_cli_mic_without_portaudio_says_what_to_install(lstm_model: Path) -> None:
    try:
        import sounddevice  # noqa: F401

        pytest.skip("PortAudio is installed here")
    except ImportError:
        pass
    except OSError:
        pass
    line = one_error_line(cli(lstm_model, "--mic"))
    assert "PortAudio" in line or "sounddevice" in line
    assert "pip install 'asr[mic]'" in line
