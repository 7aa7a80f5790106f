"""asr.align (word times and confidences from CTC posteriors) and asr.formats (txt, json, srt, vtt, ctm)."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch

from asr.align import Word, frame_timing, word_alignments
from asr.formats import FORMATS, Transcript, format_timestamp, group_cues, to_ctm, to_json, to_srt, to_txt, to_vtt
from asr.text import Tokenizer

try:
    from asr.beam import greedy_ids
except ImportError:  # older layout
    from asr.decode import greedy_ids

TOK = Tokenizer(("<blank>", "|", "A", "B", "C", "D"))
FS = 0.03


def _posteriors(frames: int, peaks: dict[int, int], peak: float, vocab: int = len(TOK)) -> torch.Tensor:
    """(frames, vocab) log-probabilities: blank everywhere except `peaks` (frame -> token),
    where the token gets probability `peak` and the rest is shared by the other tokens."""
    probs = torch.full((frames, vocab), 0.02 / (vocab - 1))
    probs[:, 0] = 0.98
    for t, token in peaks.items():
        probs[t] = (1 - peak) / (vocab - 1)
        probs[t, token] = peak
    return probs.log()


def _ids(text: str) -> list[int]:
    return TOK.encode(text)


# "AB CAD": A at 5, B at 8-9, | at 12, C at 15, A at 17, D at 20-21.
PEAKS = {5: 2, 8: 3, 9: 3, 12: 1, 15: 4, 17: 2, 20: 5, 21: 5}


def test_word_times_from_known_peaks() -> None:
    lp = _posteriors(30, PEAKS, peak=0.95)
    ids = greedy_ids(lp[None], torch.tensor([30]))[0]
    assert TOK.decode(ids) == "AB CAD"
    words = word_alignments(lp, ids, TOK, FS, offset=2.0)
    assert [w.word for w in words] == ["AB", "CAD"]
    expected = [(5, 10), (15, 22)]  # first frame, one past the last frame
    for w, (a, b) in zip(words, expected, strict=True):
        assert w.start == pytest.approx(2.0 + a * FS, abs=FS)
        assert w.end == pytest.approx(2.0 + b * FS, abs=FS)
        assert 0.9 < w.confidence <= 1.0
    # The convention exactly: start of the first frame, end of the last frame.
    assert words[0].start == pytest.approx(2.0 + 5 * FS) and words[1].end == pytest.approx(2.0 + 22 * FS)
    # A batch dimension of 1 is accepted; boundary tokens at the ends make no empty words.
    padded = _posteriors(30, {1: 1, **PEAKS, 27: 1}, peak=0.95)
    again = word_alignments(padded[None], greedy_ids(padded[None], torch.tensor([30]))[0], TOK, FS, offset=2.0)
    assert [(w.word, w.start, w.end) for w in again] == [(w.word, w.start, w.end) for w in words]


def test_confidence_is_higher_for_peaky_posteriors() -> None:
    ids = _ids("AB CAD")
    sharp = word_alignments(_posteriors(30, PEAKS, peak=0.97), ids, TOK, FS)
    flat = word_alignments(_posteriors(30, PEAKS, peak=0.35), ids, TOK, FS)
    assert [w.word for w in flat] == ["AB", "CAD"]
    for s, f in zip(sharp, flat, strict=True):
        assert 0.0 <= f.confidence < s.confidence <= 1.0
        assert f.confidence < 0.5 < s.confidence


def test_forced_alignment_places_tokens_the_argmax_misses() -> None:
    """Beam search may output tokens that never win a frame: forced alignment still places them."""
    lp = _posteriors(30, {5: 2, 15: 4}, peak=0.9)  # only A and C peak
    lp[10, 3] = torch.tensor(0.3).log()  # B is second best at frame 10
    words = word_alignments(lp, _ids("AB C"), TOK, FS)
    assert [w.word for w in words] == ["AB", "C"]
    assert words[0].start == pytest.approx(5 * FS) and words[0].end == pytest.approx(11 * FS)
    assert words[1].start == pytest.approx(15 * FS)


def _path_score(lp: torch.Tensor, path: list[int]) -> float:
    return float(lp.double()[torch.arange(len(path)), torch.tensor(path)].sum())


def _is_ctc_path(path: list[int], ids: list[int]) -> bool:
    collapsed = [t for i, t in enumerate(path) if t != 0 and (i == 0 or t != path[i - 1])]
    return collapsed == ids


def test_viterbi_matches_torchaudio_forced_align() -> None:
    """The search equals torchaudio's forced_align on random emissions, and stays optimal on
    exact ties, where torchaudio's can return a worse path (pytorch/audio#4221)."""
    import torchaudio.functional as AF

    from asr.align import _viterbi

    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        frames = int(torch.randint(4, 40, (1,), generator=g))
        lp = (torch.randn(frames, 6, generator=g) * 3 + torch.tensor([3.0, 0, 0, 0, 0, 0])).log_softmax(-1)
        ids = torch.randint(1, 6, (int(torch.randint(1, frames // 2 + 1, (1,), generator=g)),), generator=g).tolist()
        if len(ids) + sum(a == b for a, b in zip(ids, ids[1:], strict=False)) > frames:
            assert _viterbi(lp.double().numpy(), ids, 0) is None
            continue
        ours = _viterbi(lp.double().numpy(), ids, 0).tolist()
        theirs = AF.forced_align(lp[None], torch.tensor([ids], dtype=torch.int32))[0][0].tolist()
        assert _is_ctc_path(ours, ids)
        assert _path_score(lp, ours) == pytest.approx(_path_score(lp, theirs), abs=1e-6)
    # Exact ties: torchaudio 2.11 returns [1, 2, 2] (log-probability -5) here; the best path,
    # found by enumerating all 27 paths, scores -4.
    lp = torch.tensor([[-1.0, -2.0, -2.0], [-1.0, -2.0, -2.0], [-1.0, 0.0, -1.0]])
    ids = [1, 2]
    paths = [list(p) for p in itertools.product(range(3), repeat=3) if _is_ctc_path(list(p), ids)]
    best = max(_path_score(lp, p) for p in paths)
    ours = _viterbi(lp.double().numpy(), ids, 0).tolist()
    assert _is_ctc_path(ours, ids) and _path_score(lp, ours) == pytest.approx(best) == -4.0
    theirs = AF.forced_align(lp[None], torch.tensor([ids], dtype=torch.int32))[0][0].tolist()
    assert _path_score(lp, theirs) <= best


def test_empty_and_impossible_inputs() -> None:
    lp = _posteriors(30, PEAKS, peak=0.9)
    assert word_alignments(lp, [], TOK, FS) == []
    assert word_alignments(lp, [0, 0], TOK, FS) == []  # blanks only
    assert word_alignments(lp, [1], TOK, FS) == []  # a boundary alone is no word
    assert word_alignments(lp[:0], _ids("AB"), TOK, FS) == []  # no frames
    # More tokens than frames: no CTC alignment exists, times are shared out evenly instead.
    short = _posteriors(3, {0: 2, 2: 3}, peak=0.9)
    words = word_alignments(short, _ids("AB CD"), TOK, FS)
    assert [w.word for w in words] == ["AB", "CD"]
    assert all(0 <= w.start < w.end <= 3 * FS + 1e-9 and 0 <= w.confidence <= 1 for w in words)
    assert words[0].end <= words[1].start + 1e-9
    # Repeated letters need a blank between them: "AA" cannot fit 2 frames, but fits 3.
    assert [w.word for w in word_alignments(_posteriors(2, {}, 0.9), _ids("AA"), TOK, FS)] == ["AA"]
    with pytest.raises(ValueError, match="outside"):
        word_alignments(lp, [99], TOK, FS)


def test_frame_timing() -> None:
    seconds, lag = frame_timing(3, 0.01, 512 / 16000)
    assert seconds == pytest.approx(0.03) and lag == pytest.approx(0.011)
    assert frame_timing(1, 0.01, 0.01) == pytest.approx((0.01, 0.0))


# --- formats ---------------------------------------------------------------------------------

SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n([^\n]+)\n")
VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n([^\n]+)\n")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def _words(n: int, pause_every: int = 0) -> list[Word]:
    """n words of 0.3 s with 0.1 s gaps; a 1 s pause after every `pause_every` words."""
    words, t = [], 3595.0  # cross the hour
    for i in range(n):
        text = "WORD" if i % 5 else "EXTRAORDINARILY"
        words.append(Word(f"{text}{i}", t, t + 0.3, 0.5 + (i % 5) / 10))
        t += 0.4 + (1.0 if pause_every and (i + 1) % pause_every == 0 else 0.0)
    return words


def _transcript(words: list[Word]) -> Transcript:
    return Transcript("/data/my talk.wav", " ".join(w.word for w in words), words, 3700.0, 12.5)


def _parse_srt(text: str) -> list[tuple[int, float, float, str]]:
    blocks = text.split("\n\n")
    assert blocks[-1] == "", "the file ends with a blank line after the last cue"
    cues = []
    for block in blocks[:-1]:
        m = SRT_CUE.fullmatch(block + "\n")
        assert m, f"malformed cue: {block!r}"
        g = m.groups()
        cues.append((int(g[0]), _seconds(*g[1:5]), _seconds(*g[5:9]), g[9]))
    return cues


def test_srt_structure_and_grouping() -> None:
    words = _words(40, pause_every=9)
    t = _transcript(words)
    cues = _parse_srt(to_srt(t))
    assert [c[0] for c in cues] == list(range(1, len(cues) + 1))
    for (_, start, end, text), nxt in zip(cues, cues[1:] + [None], strict=True):
        assert start <= end
        if nxt:
            assert end <= nxt[1]
        assert len(text.split()) <= 7 and len(text) <= 42 and end - start <= 5.0 + 1e-9
    assert " ".join(c[3] for c in cues).split() == [w.word for w in words]  # every word, in order
    # Cue times come from the first and last word of the cue.
    by_first = {w.word: w for w in words}
    for _, start, end, text in cues:
        assert start == pytest.approx(by_first[text.split()[0]].start, abs=0.0005)
        assert end == pytest.approx(by_first[text.split()[-1]].end, abs=0.0005)
    # A pause of more than 0.5 s always ends a cue.
    last_words = {c[3].split()[-1] for c in cues}
    assert all(words[i].word in last_words for i in range(8, 39, 9))
    assert cues[0][1] == pytest.approx(3595.0) and to_srt(t).startswith("1\n00:59:55,000 --> ")


def test_vtt_structure() -> None:
    words = _words(12) + [Word("R&D<X>", 4000.0, 4000.5, 0.9)]
    text = to_vtt(_transcript(words))
    assert text.startswith("WEBVTT\n\n")
    blocks = text[len("WEBVTT\n\n") :].split("\n\n")
    assert blocks[-1] == ""
    times = []
    for block in blocks[:-1]:
        m = VTT_CUE.fullmatch(block + "\n")
        assert m, f"malformed cue: {block!r}"
        g = m.groups()
        times.append((_seconds(*g[0:4]), _seconds(*g[4:8])))
    assert all(a <= b for a, b in times) and all(p[1] <= n[0] for p, n in zip(times, times[1:], strict=False))
    assert blocks[-2].endswith("R&amp;D&lt;X&gt;") and "01:06:40.000 --> 01:06:40.500" in text


def test_cue_grouping_limits() -> None:
    assert group_cues([]) == []
    long_word = Word("X" * 60, 0.0, 7.0, 1.0)  # beyond every limit: a cue of its own
    cues = group_cues([Word("A", -0.5, 0.0, 1.0), long_word, Word("B", 7.1, 7.2, 1.0), Word("C", 7.3, 7.4, 1.0)])
    assert [c.text for c in cues] == ["A", "X" * 60, "B C"]
    assert cues[0].start == 0.0 or cues[0].start == -0.5
    assert format_timestamp(-1.0) == "00:00:00,000" and format_timestamp(1.0005, ".") in ("00:00:01.000", "00:00:01.001")
    assert format_timestamp(360000.25) == "100:00:00,250"


def test_ctm_fields() -> None:
    words = _words(10)
    lines = to_ctm(_transcript(words)).splitlines()
    assert len(lines) == len(words)
    for line, w in zip(lines, words, strict=True):
        fields = line.split(" ")
        assert len(fields) == 6
        utt, channel, start, duration, word, confidence = fields
        assert (utt, channel, word) == ("my_talk", "1", w.word)
        assert re.fullmatch(r"\d+\.\d\d", start) and re.fullmatch(r"\d+\.\d\d", duration)
        assert float(start) == pytest.approx(w.start, abs=0.005) and float(duration) == pytest.approx(0.3, abs=0.011)
        assert 0.0 <= float(confidence) <= 1.0
    assert to_ctm(_transcript([])) == ""


def test_txt_and_json() -> None:
    words = _words(3)
    t = _transcript(words)
    assert to_txt(t) == f"/data/my talk.wav\t{t.text}\n"
    line = to_json(t)
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert list(record) == ["path", "text", "words", "duration", "processing_time"]
    assert record["path"] == t.path and record["text"] == t.text and record["duration"] == 3700.0 and record["processing_time"] == 12.5
    assert record["words"][0] == {"word": words[0].word, "start": 3595.0, "end": 3595.3, "confidence": 0.5}
    assert set(FORMATS) == {"txt", "json", "srt", "vtt", "ctm"}


def test_formats_without_words() -> None:
    plain = Transcript("a.wav", "HELLO THERE", [], 2.5, 0.1)
    assert _parse_srt(to_srt(plain)) == [(1, 0.0, 2.5, "HELLO THERE")]  # one cue over the file
    assert to_vtt(Transcript("a.wav", "", [], 2.5, 0.1)) == "WEBVTT\n\n"
    assert to_srt(Transcript("a.wav", "", [], 2.5, 0.1)) == ""
    assert json.loads(to_json(plain))["words"] == []


def test_alignment_into_formats() -> None:
    """Words from word_alignments go straight into every format."""
    lp = _posteriors(30, PEAKS, peak=0.95)
    words = word_alignments(lp, _ids("AB CAD"), TOK, FS, offset=61.0)
    t = Transcript("x/utt1.flac", "AB CAD", words, 62.0, 0.2)
    for name, fmt in FORMATS.items():
        assert fmt(t).endswith("\n"), name
    assert _parse_srt(to_srt(t))[0][3] == "AB CAD"
    assert to_ctm(t).splitlines()[0].startswith("utt1 1 61.15 0.15 AB ")
