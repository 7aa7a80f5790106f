"""Output formats for transcripts: plain text, JSON lines, SRT and WebVTT subtitles, NIST CTM.

Each `to_<format>(result)` returns the complete text for one file, ending in a newline (nothing
at all for a CTM without words): `FORMATS[name](result)` is what a caller prints or writes.
`result` is a `Transcript`, the one result type of recognition (`asr.transcribe`, `asr transcribe`,
`asr decode`): `path`, `text`, `words` (`asr.align.Word`: word, start, end, confidence; seconds in
the file), `duration` (seconds of audio) and `seconds` (processing time), and `id` (the CTM
utterance id; `asr.decode.utterance_ids` makes ids distinct for the files of one run).

- txt:  `path<TAB>text`
- json: one line `{"path", "text", "words": [{"word", "start", "end", "confidence"}], "duration",
  "processing_time"}`; times and confidences rounded to milliseconds / three decimals
- srt:  numbered cues `HH:MM:SS,mmm --> HH:MM:SS,mmm`, a blank line after each cue
- vtt:  a `WEBVTT` header, then cues `HH:MM:SS.mmm --> HH:MM:SS.mmm` (text HTML-escaped)
- ctm:  `<utt-id> 1 <start> <duration> <word> <confidence>` per word (NIST CTM; seconds with two
  decimals; utt-id = the result's `id`, else the file's stem; whitespace replaced by `_`)

File names that are not UTF-8 (strs with lone surrogates): `to_json` escapes them (`\udce9`,
valid UTF-8 that `json.loads` reads back to the same name); txt and ctm keep them as they are,
to be written with errors="surrogateescape" so that the output holds the name's own bytes.

Subtitle cues (`group_cues`) hold consecutive words, at most 7 words, 42 characters and 5 s each,
and a pause of more than 0.5 s between two words always starts a new cue; a cue runs from its
first word's start to its last word's end. A transcript with text but no word times (timestamps
not computed) becomes a single cue over the whole file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr.align import Word
from asr.fileio import json_dumps

__all__ = [
    "Transcript",
    "Cue",
    "FORMATS",
    "group_cues",
    "format_timestamp",
    "to_txt",
    "to_json",
    "to_srt",
    "to_vtt",
    "to_ctm",
]

MAX_CUE_WORDS = 7
MAX_CUE_CHARS = 42
MAX_CUE_SECONDS = 5.0
CUE_PAUSE_SECONDS = 0.5

_SPACE = re.compile(r"\s+")


@dataclass
class Transcript:
    """What recognising one recording (a file, an array, a manifest's utterance) gives.

    path: the file ("" for audio given as samples or bytes); id: the utterance id (a manifest's,
        or the CTM id of a file; "" for the file's stem).
    text: the words, space-separated ("" for no speech, and for audio that could not be used).
    words: each word with start and end in seconds from the start of the recording and a
        confidence in [0, 1] (`asr.align`); empty unless word times were asked for.
    duration: seconds of audio; seconds: processing time (wall clock).
    error: why the audio could not be used ("" when it was); `ok` says it.
    sample_rate: the audio's own rate in Hz, before resampling to the model's (0 if unknown).
    nbest: the search's n best hypotheses (`asr.beam.Hypothesis`, best first) of audio decoded
        in one piece; empty for long audio decoded segment by segment.
    """

    path: str = ""
    text: str = ""
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0
    seconds: float = 0.0
    id: str = ""
    error: str = ""
    sample_rate: int = 0
    nbest: list[Any] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class Cue:
    """A subtitle cue: times in seconds, text on one line."""

    start: float
    end: float
    text: str


def format_timestamp(seconds: float, decimal: str = ",") -> str:
    """`HH:MM:SS,mmm` (SRT; `decimal="."` for WebVTT), rounded to the millisecond; negative
    times are clamped to 0 and hours may exceed 99."""
    ms = max(0, int(round(seconds * 1000)))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def group_cues(
    words: Sequence[Word],
    max_words: int = MAX_CUE_WORDS,
    max_chars: int = MAX_CUE_CHARS,
    max_seconds: float = MAX_CUE_SECONDS,
    max_pause: float = CUE_PAUSE_SECONDS,
) -> list[Cue]:
    """Consecutive words grouped into cues of at most `max_words` words, `max_chars` characters
    (words joined by spaces) and `max_seconds` from the first word's start to the last word's end,
    a new cue after any pause longer than `max_pause`. A single word beyond the limits gets a cue
    of its own. Cue times never go backwards: a cue starts no earlier than the previous one ends."""
    cues: list[Cue] = []
    group: list[Word] = []
    chars = 0

    def close() -> None:
        if group:
            start = max(group[0].start, cues[-1].end if cues else 0.0)
            end = max(group[-1].end, start)
            cues.append(Cue(start, end, " ".join(_clean(w.word) for w in group)))
            group.clear()

    for w in words:
        text = _clean(w.word)
        if not text:
            continue
        if group:
            too_many = len(group) + 1 > max_words
            too_long = chars + 1 + len(text) > max_chars
            too_slow = w.end - group[0].start > max_seconds
            pause = w.start - group[-1].end > max_pause
            if too_many or too_long or too_slow or pause:
                close()
        chars = chars + 1 + len(text) if group else len(text)
        group.append(w)
    close()
    return cues


def to_txt(result: Transcript) -> str:
    """`path<TAB>text` and a newline."""
    return f"{result.path}\t{_clean(result.text or '')}\n"


def to_json(result: Transcript) -> str:
    """One JSON line: path, text, words (word, start, end, confidence), duration, processing_time."""
    record: dict[str, Any] = {
        "path": str(result.path),
        "text": result.text or "",
        "words": [
            {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3), "confidence": round(w.confidence, 3)}
            for w in result.words
        ],
        "duration": round(float(result.duration), 3),
        "processing_time": round(float(result.seconds), 3),
    }
    return json_dumps(record) + "\n"


def to_srt(result: Transcript) -> str:
    """SubRip: `n`, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, the text, a blank line; numbered from 1."""
    return "".join(
        f"{i}\n{format_timestamp(c.start)} --> {format_timestamp(c.end)}\n{c.text}\n\n"
        for i, c in enumerate(_cues(result), start=1)
    )


def to_vtt(result: Transcript) -> str:
    """WebVTT: the `WEBVTT` header and a blank line, then `HH:MM:SS.mmm --> HH:MM:SS.mmm`, the
    text (`&`, `<`, `>` escaped) and a blank line per cue."""
    cues = "".join(
        f"{format_timestamp(c.start, '.')} --> {format_timestamp(c.end, '.')}\n{_escape_vtt(c.text)}\n\n"
        for c in _cues(result)
    )
    return "WEBVTT\n\n" + cues


def to_ctm(result: Transcript) -> str:
    """NIST CTM: `<utt-id> 1 <start> <duration> <word> <confidence>` per word, two decimals."""
    utt = _SPACE.sub("_", getattr(result, "id", "") or Path(str(result.path)).stem) or "utt"
    lines = []
    for w in result.words:
        word = _SPACE.sub("_", w.word.strip())
        if not word:
            continue
        start = round(w.start, 2)
        duration = max(0.0, round(w.end, 2) - start)
        lines.append(f"{utt} 1 {start:.2f} {duration:.2f} {word} {w.confidence:.2f}\n")
    return "".join(lines)


FORMATS: dict[str, Callable[[Transcript], str]] = {
    "txt": to_txt,
    "json": to_json,
    "srt": to_srt,
    "vtt": to_vtt,
    "ctm": to_ctm,
}


def _cues(result: Transcript) -> list[Cue]:
    if result.words:
        return group_cues(result.words)
    text = _clean(result.text or "")
    return [Cue(0.0, max(0.0, float(result.duration)), text)] if text else []


def _clean(text: str) -> str:
    """One line: whitespace (newlines included) collapsed to single spaces."""
    return _SPACE.sub(" ", text).strip()


def _escape_vtt(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
