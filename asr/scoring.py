"""Word and character error rates whose counts match NIST sclite's.

References and hypotheses are normalised with `asr.text.normalize` and aligned by a
Levenshtein alignment with sclite's weights (substitution 4, insertion 3, deletion 3) and
sclite's tie-breaking, so the substitution, deletion and insertion counts are those that
`sclite -r ref.trn trn -h hyp.trn trn -i rm` reports on the same texts. The character
error rate uses the same alignment over the characters of the normalised text with spaces
left out, as `sclite -c` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asr.fileio import atomic_write_text, read_text
from asr.manifest import ManifestError, read_jsonl
from asr.text import normalize

SUB_COST, DEL_COST, INS_COST = 4, 3, 3

# Back-pointer codes of the alignment lattice.
_DIAG, _DEL, _INS = 0, 1, 2
_OP_CODES = [ord(op) for op in "CSDI"]

# Upper bound on lattice cells (bytes of back-pointers) aligned in one batch.
_BATCH_CELLS = 1 << 24


class ScoringError(ValueError):
    """A transcript file that cannot be scored; the message names the file."""


def read_transcripts(path: str | Path) -> dict[str, str]:
    """Map utterance id to text, from JSONL (`{"id", "text", ...}` lines) or Kaldi text.

    A file is JSONL when its first non-blank line starts with `{`. A Kaldi text file has
    `utt-id word word ...` lines; an id alone on its line has empty text.
    """
    path = Path(path)
    lines = read_text(path, ScoringError).split("\n")

    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if numbered and numbered[0][1].lstrip().startswith("{"):
        entries = _jsonl_entries(path, [n for n, _ in numbered])
    else:
        entries = _kaldi_entries(path, numbered)

    texts: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for n, uid, text in entries:
        if uid in texts:
            raise ScoringError(f"{path}:{n}: duplicate id {uid!r} (first on line {first_line[uid]})")
        texts[uid] = text
        first_line[uid] = n
    return texts


def _jsonl_entries(path: Path, line_numbers: list[int]) -> list[tuple[int, str, str]]:
    # read_jsonl yields one object per non-blank line, so the objects pair up with the
    # numbers of the non-blank lines.
    entries = []
    try:
        for n, row in zip(line_numbers, read_jsonl(path), strict=True):
            if "id" not in row or "text" not in row:
                raise ScoringError(f"{path}:{n}: a JSON line needs both 'id' and 'text'")
            if not isinstance(row["text"], str):
                raise ScoringError(f"{path}:{n}: 'text' is not a string")
            entries.append((n, str(row["id"]), row["text"]))
    except ManifestError as e:
        raise ScoringError(str(e)) from None
    return entries


def _kaldi_entries(path: Path, numbered: list[tuple[int, str]]) -> list[tuple[int, str, str]]:
    entries = []
    for n, line in numbered:
        if line.lstrip().startswith("{"):
            raise ScoringError(f"{path}:{n}: a JSON line in a Kaldi text file")
        uid, *text = line.split(maxsplit=1)
        entries.append((n, uid, text[0].strip() if text else ""))
    return entries


@dataclass
class UttAlignment:
    """One utterance aligned: `ops` holds "C", "S", "D" or "I" per aligned column."""

    id: str
    ref: list[str]
    hyp: list[str]
    ops: list[str]

    def counts(self) -> tuple[int, int, int, int]:
        """Hits, substitutions, deletions and insertions."""
        c, s, d, i = (self.ops.count(op) for op in "CSDI")
        return c, s, d, i

    def columns(self) -> list[tuple[str | None, str | None, str]]:
        """(ref word or None, hyp word or None, op) per aligned column."""
        ref, hyp = iter(self.ref), iter(self.hyp)
        return [(None if op == "I" else next(ref), None if op == "D" else next(hyp), op) for op in self.ops]


@dataclass
class ScoreResult:
    """Totals over a test set; `wer` and `cer` are percentages."""

    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    ref_words: int
    utterances: int
    char_errors: int
    ref_chars: int
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    alignments: list[UttAlignment] = field(default_factory=list)

    @property
    def sentence_errors(self) -> int:
        """Utterances with at least one word error (sclite's S.Err)."""
        return sum(any(op != "C" for op in a.ops) for a in self.alignments)

    def to_json(self) -> dict:
        return {
            "wer": round(self.wer, 2),
            "cer": round(self.cer, 2),
            "ser": round(_rate(self.sentence_errors, self.utterances), 2),
            "sentence_errors": self.sentence_errors,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "hits": self.hits,
            "ref_words": self.ref_words,
            "utterances": self.utterances,
            "missing": list(self.missing),
        }


def align(ref: Sequence[str], hyp: Sequence[str]) -> list[str]:
    """sclite's alignment of two token sequences, as a list of "C", "S", "D", "I"."""
    return align_many([(ref, hyp)])[0]


def align_many(pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[list[str]]:
    """`align` over many (ref, hyp) pairs, much faster than one at a time."""
    return [list(ops) for ops in _align_encoded(_encode(pairs))]


def _encode(pairs: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[tuple[list[int], list[int]]]:
    vocab: dict[str, int] = {}
    return [
        ([vocab.setdefault(t, len(vocab)) for t in ref], [vocab.setdefault(t, len(vocab)) for t in hyp])
        for ref, hyp in pairs
    ]


def _align_encoded(pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[str]:
    """Alignments of integer-coded pairs as strings of "C", "S", "D", "I".

    Pairs of similar lengths are batched, and each batch is aligned with numpy.
    """
    order = sorted(range(len(pairs)), key=lambda k: (len(pairs[k][0]), len(pairs[k][1])))
    result = [""] * len(pairs)
    start = 0
    while start < len(order):
        stop, n, m = start, 0, 0
        while stop < len(order):
            ref, hyp = pairs[order[stop]]
            nn, mm = max(n, len(ref)), max(m, len(hyp))
            if stop > start and (stop - start + 1) * (nn + 1) * (mm + 1) > _BATCH_CELLS:
                break
            n, m, stop = nn, mm, stop + 1
        batch = order[start:stop]
        for k, ops in zip(batch, _align_batch([pairs[k] for k in batch], n, m), strict=True):
            result[k] = ops
        start = stop
    return result


def _align_batch(pairs: list[tuple[Sequence[int], Sequence[int]]], n: int, m: int) -> list[str]:
    """Fill the lattices of pairs no longer than (n, m) row by row, then trace them back.

    Arrays put the pairs on the last axis, so one numpy operation handles a lattice row
    of every pair. Padding past a pair's own lengths never reaches its cells, since a
    cell depends only on cells above and to its left.
    """
    size = len(pairs)
    # Tokens sit at 1..length so that lattice cell (a, b) compares refs[a] with hyps[b];
    # the two pad values never match anything.
    refs = np.full((n + 1, size), -1, dtype=np.int64)
    hyps = np.full((m + 1, size), -2, dtype=np.int64)
    for u, (ref, hyp) in enumerate(pairs):
        refs[1 : len(ref) + 1, u] = ref
        hyps[1 : len(hyp) + 1, u] = hyp

    # Lattice costs are held less INS_COST * column (cost 3b in row 0 becomes 0), which
    # turns the left-to-right insertion chain of a row into a plain running minimum.
    back = np.empty((n + 1, m + 1, size), dtype=np.uint8)
    back[0, :] = _INS
    back[:, 0] = _DEL
    prev = np.zeros((m + 1, size), dtype=np.int32)
    for a in range(1, n + 1):
        match = (refs[a] == hyps[1:]).astype(np.int32)
        sub = prev[:-1] + (SUB_COST - INS_COST)
        sub -= SUB_COST * match
        dele = prev[1:] + DEL_COST
        row = np.empty_like(prev)
        row[0] = DEL_COST * a
        np.minimum(sub, dele, out=row[1:])
        np.minimum.accumulate(row, axis=0, out=row)
        # row[b - 1] is now the insertion cost of cell b. Like sclite (net_dp.c), take
        # the diagonal on any tie, and a deletion over an insertion only when cheaper.
        step = back[a, 1:]
        np.greater_equal(dele, row[:-1], out=step, casting="unsafe")
        step += _DEL
        step *= sub != row[1:]  # _DIAG is 0
        prev = row

    # Trace all pairs back together, one step of every path at a time.
    cols = np.arange(size)
    a = np.array([len(ref) for ref, _ in pairs], dtype=np.int64)
    b = np.array([len(hyp) for _, hyp in pairs], dtype=np.int64)
    trace = np.zeros((size, n + m), dtype=np.uint8)
    for t in range(n + m):
        live = (a > 0) | (b > 0)
        if not live.any():
            break
        step = back[a, b, cols]
        diag = live & (step == _DIAG)
        dele = live & (step == _DEL)
        ins = live & (step == _INS)
        same = refs[a, cols] == hyps[b, cols]
        trace[:, t] = np.select([diag & same, diag, dele, ins], _OP_CODES, 0)
        a -= diag | dele
        b -= diag | ins
    return [path.tobytes().rstrip(b"\0")[::-1].decode("ascii") for path in trace]


def _rate(errors: int, total: int) -> float:
    # With an empty reference any error makes the rate 100%, not infinite.
    if total == 0:
        return 100.0 if errors else 0.0
    return 100.0 * errors / total


def score(refs: Mapping[str, str], hyps: Mapping[str, str]) -> ScoreResult:
    """Score hypotheses against references matched by id, both normalised first.

    A reference without a hypothesis counts as all deletions and is listed in `missing`;
    a hypothesis without a reference is ignored and listed in `extra`.
    """
    missing = [uid for uid in refs if uid not in hyps]
    extra = [uid for uid in hyps if uid not in refs]
    words = [(normalize(text).split(), normalize(hyps.get(uid, "")).split()) for uid, text in refs.items()]
    word_ops = _align_encoded(_encode(words))
    chars = [(list(map(ord, "".join(ref))), list(map(ord, "".join(hyp)))) for ref, hyp in words]
    char_ops = "".join(_align_encoded(chars))

    alignments = [
        UttAlignment(uid, ref, hyp, list(ops)) for uid, (ref, hyp), ops in zip(refs, words, word_ops, strict=True)
    ]
    all_ops = "".join(word_ops)
    hits, subs, dels, ins = (all_ops.count(op) for op in "CSDI")
    ref_words = sum(len(ref) for ref, _ in words)
    ref_chars = sum(len(ref) for ref, _ in chars)
    char_errors = len(char_ops) - char_ops.count("C")
    return ScoreResult(
        wer=_rate(subs + dels + ins, ref_words),
        cer=_rate(char_errors, ref_chars),
        substitutions=subs,
        deletions=dels,
        insertions=ins,
        hits=hits,
        ref_words=ref_words,
        utterances=len(refs),
        char_errors=char_errors,
        ref_chars=ref_chars,
        missing=missing,
        extra=extra,
        alignments=alignments,
    )


def check_ids_match(refs: Mapping[str, str], hyps: Mapping[str, str], ref_path: str | Path, hyp_path: str | Path) -> None:
    """Raise ScoringError when references exist and not one hypothesis id is among them: the two
    files do not belong together (another test set, another id scheme), and scoring them would
    report a WER of 100% that looks like a bad model. The message names both files and a few
    ids of each. A partial match is scored (its gaps are `missing` and `extra`)."""
    if refs and not any(uid in refs for uid in hyps):
        def few(ids: list[str]) -> str:
            return ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "") if ids else "none"

        raise ScoringError(
            f"{hyp_path}: no hypothesis id matches a reference id in {ref_path} "
            f"(reference ids: {few(list(refs))}; hypothesis ids: {few(list(hyps))}); are these files of the same set?"
        )


def score_files(ref_path: str | Path, hyp_path: str | Path) -> ScoreResult:
    """Score a hypothesis file against a reference file (JSONL or Kaldi text each).

    Raises ScoringError for an unreadable file and for files with no id in common
    (`check_ids_match`)."""
    refs, hyps = read_transcripts(ref_path), read_transcripts(hyp_path)
    check_ids_match(refs, hyps, ref_path, hyp_path)
    return score(refs, hyps)


def format_alignment(al: UttAlignment) -> str:
    """One utterance in sclite's "pra" layout: correct words lower case, errors upper."""
    c, s, d, i = al.counts()
    lines = [f"id: ({al.id})", f"Scores: (#C #S #D #I) {c} {s} {d} {i}"]
    if al.ops:
        ref_line, hyp_line, eval_line = "REF:  ", "HYP:  ", "Eval: "
        for r, h, op in al.columns():
            width = max(len(r or ""), len(h or ""))
            r = "*" * width if r is None else (r.lower() if op == "C" else r.upper())
            h = "*" * width if h is None else (h.lower() if op == "C" else h.upper())
            ref_line += r.ljust(width) + " "
            hyp_line += h.ljust(width) + " "
            eval_line += ("" if op == "C" else op).ljust(width) + " "
        lines += [ref_line, hyp_line, eval_line]
    return "\n".join(lines) + "\n"


def write_details(result: ScoreResult, path: str | Path) -> None:
    """Write every utterance's alignment, sclite "pra" style, atomically."""
    atomic_write_text(path, "\n".join(format_alignment(al) for al in result.alignments))


def write_trn(refs: Mapping[str, str], hyps: Mapping[str, str], directory: str | Path) -> tuple[Path, Path]:
    """Write normalised `ref.trn` and `hyp.trn` (`WORDS (id)` lines) for sclite.

    There is one line per reference id in each file; a reference without a hypothesis
    gets an empty hypothesis line, so sclite counts it as deletions too. Score with
    `sclite -r ref.trn trn -h hyp.trn trn -i rm` (add `-e utf-8` for non-ASCII text);
    sclite takes the speaker from the id up to its first '-' or '_' and only warns about
    ids that have neither.
    """
    for uid in refs:
        if not uid or any(c.isspace() or c in "()" for c in uid):
            raise ScoringError(f"id {uid!r} cannot be written to a trn file")
    directory = Path(directory)
    paths = directory / "ref.trn", directory / "hyp.trn"
    for path, texts in zip(paths, (refs, hyps), strict=True):
        lines = []
        for uid in refs:
            text = normalize(texts.get(uid, ""))
            lines.append(f"{text} ({uid})\n" if text else f"({uid})\n")
        atomic_write_text(path, "".join(lines))
    return paths


def format_summary(result: ScoreResult) -> str:
    """A few lines for people: error rates, error counts and what was scored."""
    lines = [
        f"WER {result.wer:6.2f}%  (S {result.substitutions}, D {result.deletions}, "
        f"I {result.insertions}; {result.ref_words} reference words)",
        f"CER {result.cer:6.2f}%  ({result.char_errors} errors; {result.ref_chars} reference characters)",
        f"{result.utterances} utterances, {len(result.missing)} without a hypothesis",
    ]
    if result.extra:
        lines.append(f"{len(result.extra)} hypotheses without a reference were ignored")
    return "\n".join(lines)
