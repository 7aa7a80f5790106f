"""Manifests: JSON Lines, one utterance a line, and their validation.

Lines are UTF-8 JSON; a file name that is not UTF-8 (a str with lone surrogates) is written
with its surrogates escaped (`\udce9`), which `json.loads` reads back to the same name
(`asr.fileio.json_dumps`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from asr.audio import AudioError, audio_info
from asr.fileio import atomic_write_text, json_dumps, read_text
from asr.text import normalize


@dataclass
class Utterance:
    id: str
    audio: str
    duration: float
    text: str
    speaker: str = ""


@dataclass
class Rejected:
    id: str
    audio: str
    reason: str


class ManifestError(ValueError):
    """A manifest line that cannot be read; the message names file and line."""


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """One JSON object a line (`json_dumps`: UTF-8, lone surrogates escaped), written atomically."""
    atomic_write_text(path, "".join(json_dumps(r) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL file; blank lines are skipped."""
    path = Path(path)
    # split on \n only: U+2028 and friends may appear inside JSON strings
    lines = read_text(path, ManifestError).split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:  # JSONDecodeError, and the integer-digit limit
            raise ManifestError(f"{path}:{n}: not valid JSON ({getattr(e, 'msg', str(e))[:100]})") from None
        if not isinstance(row, dict):
            raise ManifestError(f"{path}:{n}: expected a JSON object")
        yield row


def read_manifest(path: str | Path) -> list[Utterance]:
    """Utterances of a manifest, with audio paths resolved against the manifest's folder."""
    path = Path(path)
    utts = []
    for n, row in enumerate(read_jsonl(path), 1):
        missing = [k for k in ("id", "audio") if k not in row]
        if missing:
            raise ManifestError(f"{path}: entry {n} lacks {', '.join(missing)}")
        for key, types in [("id", (str, int)), ("audio", (str,)), ("text", (str, type(None))), ("speaker", (str, int, type(None))), ("duration", (int, float, type(None)))]:
            if key in row and (not isinstance(row[key], types) or isinstance(row[key], bool)):
                raise ManifestError(f"{path}: entry {n}: '{key}' has the wrong type ({type(row[key]).__name__})")
        audio = Path(row["audio"])
        if not audio.is_absolute():
            audio = path.parent / audio
        utts.append(
            Utterance(
                id=str(row["id"]),
                audio=str(audio),
                duration=float(row.get("duration") or 0.0),
                text=row.get("text") or "",
                speaker=str(row.get("speaker") or ""),
            )
        )
    return utts


def require_unique_ids(path: str | Path, utts: Sequence[Utterance]) -> None:
    """ManifestError (one line: the manifest, the id, the two entries, counted from 1) when two
    utterances share an id: their results could not be told apart (each id is one line of the
    hypotheses), so a decode refuses such a manifest before any work."""
    first: dict[str, int] = {}
    for n, u in enumerate(utts, 1):
        if u.id in first:
            raise ManifestError(f"{path}: duplicate id {u.id!r} (entries {first[u.id]} and {n}): ids must be unique")
        first[u.id] = n


def write_manifest(path: str | Path, utts: Iterable[Utterance]) -> None:
    write_jsonl(path, (asdict(u) for u in utts))


def validate(utts: Iterable[Utterance], check_audio: bool = True) -> tuple[list[Utterance], list[Rejected]]:
    """Split utterances into usable ones and rejects with a reason each.

    Checks: duplicate id, empty text, missing, unreadable or empty audio. The duration is
    filled in from the audio header.
    """
    good: list[Utterance] = []
    bad: list[Rejected] = []
    seen: set[str] = set()
    for u in utts:
        reason = None
        if u.id in seen:
            reason = "duplicate id"
        elif not normalize(u.text):
            reason = "empty transcript"
        elif check_audio:
            try:
                u.duration = round(audio_info(u.audio).duration, 4)
            except AudioError as e:
                reason = e.reason
        seen.add(u.id)
        if reason:
            bad.append(Rejected(u.id, u.audio, reason))
        else:
            good.append(u)
    return good, bad
