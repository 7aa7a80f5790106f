"""Hotwords and grammars: what the caller expects to be said, as values the decoder is given.

- `Hotword`: a word or phrase with a boost (the score, in the model's log-probability units,
  added per token of its spelling when the decoder recognises it). Read from a `word<TAB>boost`
  file (`read_hotwords`), from `WORD[:BOOST]` specifications (`parse_hotwords`: the command
  line's `--hotword`, a request's form field) or built directly.
- `Grammar`: the only phrases the recogniser may output (`read_grammar`, `Grammar.parse`), in a
  small JSGF-like syntax:

      # a comment; blank lines are skipped
      LIGHTS ON                                   one phrase a line
      ( TURN | SWITCH ) [ THE ] LIGHTS ( ON | OFF )
      YES | NO                                    `|` at the top level: alternatives too

  Words are normalised as transcripts are (`asr.text.normalize`: upper case, punctuation
  dropped); `( a | b )` is a choice, `[ a ]` is optional, groups nest. A line whose words can
  all be left out (`[ A ]`) is refused: the empty result is what speech fitting no phrase gets.
- `ContextGraph`: the hotwords as an Aho-Corasick automaton over units (words or tokens) that
  gives a bonus per unit as a match proceeds and takes it back when the match fails, keeping
  what completed hotwords earned (sherpa-onnx's and WeNet's context graph). `asr.bias` turns it
  into the language-model score that flashlight's beam search sees.

Errors are `ContextError` (a ValueError) with one line naming the file and line, or the
request field, and the problem.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asr.fileio import read_text
from asr.text import WORD_BOUNDARY, normalize

__all__ = [
    "DEFAULT_BOOST",
    "MAX_HOTWORDS",
    "ContextError",
    "Hotword",
    "Grammar",
    "ContextGraph",
    "parse_hotword",
    "parse_hotwords",
    "read_hotwords",
    "read_grammar",
    "check_spellable",
    "split_list",
]

# Added per token of a hotword's spelling (log-probability units, nats). Chosen on test speakers other
# than the docs' NOVEMBER example with `bench/context.py --sweep ... --sweep-on test` (docs/decoding.md):
# the lowest WER on all words (ties: the higher recall); 1.5 (sherpa-onnx's) already adds false alarms.
DEFAULT_BOOST = 1.0
MAX_BOOST = 100.0
MAX_HOTWORDS = 10_000  # per list: a request cannot make the server build an unbounded graph
MAX_GRAMMAR_STATES = 100_000


class ContextError(ValueError):
    """A hotword list or grammar that cannot be used; one line naming where it came from."""


@dataclass(frozen=True)
class Hotword:
    """A word or phrase to favour: `words` (normalised, one or more), `boost` per token of its
    spelling (each word's letters and its closing `|`). `source` says where it came from (a
    file and line, a flag) for error messages and is not part of its value."""

    words: tuple[str, ...]
    boost: float = DEFAULT_BOOST
    source: str = field(default="", compare=False, repr=False)

    @classmethod
    def of(cls, text: str, boost: float = DEFAULT_BOOST, source: str = "") -> Hotword:
        """A hotword from text (normalised); ContextError for one with no words or a bad boost."""
        where = source or "hotword"
        words = tuple(normalize(text).split())
        if not words:
            raise ContextError(f"{where}: empty hotword {text!r}")
        if isinstance(boost, bool) or not isinstance(boost, (int, float)) or not math.isfinite(boost) or not -MAX_BOOST <= boost <= MAX_BOOST:
            raise ContextError(f"{where}: the boost of {text.strip()!r} must be a number between {-MAX_BOOST:g} and {MAX_BOOST:g}, got {boost!r}")
        return cls(words, float(boost), source)

    @property
    def text(self) -> str:
        return " ".join(self.words)

    def __str__(self) -> str:
        return f"{self.text}:{self.boost:g}"


def parse_hotword(spec: str, where: str = "--hotword") -> Hotword:
    """`WORD[:BOOST]` (a phrase may have spaces: `NEW YORK:3`) -> Hotword. ContextError (naming
    `where`) for an empty word or a boost that is not a number."""
    text, sep, boost = spec.rpartition(":") if ":" in spec else (spec, "", "")
    if not sep:
        return Hotword.of(spec, source=where)
    try:
        value = float(boost)
    except ValueError:
        raise ContextError(f"{where}: the boost of {text.strip()!r} is not a number: {boost.strip()!r} (write WORD or WORD:BOOST)") from None
    return Hotword.of(text, value, source=where)


def split_list(text: str) -> list[str]:
    """A request's list field: items separated by commas or newlines, blanks dropped."""
    return [s.strip() for s in re.split(r"[,\n]", text) if s.strip()]


def parse_hotwords(specs: Iterable[str], where: str = "--hotword") -> tuple[Hotword, ...]:
    """Several `WORD[:BOOST]` specifications -> hotwords (duplicates: the last boost wins).
    ContextError for an empty list, an empty word or a bad boost."""
    specs = list(specs)
    if not specs:
        raise ContextError(f"{where}: no hotwords given")
    return _distinct([parse_hotword(s, where) for s in specs], where)


def read_hotwords(path: str | Path) -> tuple[Hotword, ...]:
    """A hotwords file: one `word` or `word<TAB>boost` a line (a phrase may hold spaces; the
    boost is the last tab-separated field), `#` comments and blank lines skipped; UTF-8.
    ContextError naming the file (and line) for a file that cannot be read, holds no hotwords,
    or has a boost that is not a number."""
    lines = read_text(path, ContextError, what="hotwords file").splitlines()
    out = []
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        text, sep, boost = line.rpartition("\t")
        if not sep:
            out.append(Hotword.of(line, source=where))
            continue
        try:
            value = float(boost)
        except ValueError:
            raise ContextError(f"{where}: the boost of {text.strip()!r} is not a number: {boost.strip()!r} (write word<TAB>boost)") from None
        out.append(Hotword.of(text, value, source=where))
    if not out:
        raise ContextError(f"{path}: no hotwords in the file")
    return _distinct(out, str(path))


def _distinct(hotwords: list[Hotword], where: str) -> tuple[Hotword, ...]:
    if len(hotwords) > MAX_HOTWORDS:
        raise ContextError(f"{where}: {len(hotwords)} hotwords, more than the {MAX_HOTWORDS} allowed")
    kept: dict[tuple[str, ...], Hotword] = {}
    for h in hotwords:
        kept.pop(h.words, None)
        kept[h.words] = h
    return tuple(kept.values())


def check_spellable(words: Iterable[str], tokens: Sequence[str], where: str) -> None:
    """ContextError naming the first word (and `where`) that holds a character that is not one
    of the model's tokens."""
    spellable = {t for t in tokens if len(t) == 1 and t != WORD_BOUNDARY}
    for w in words:
        missing = sorted({c for c in w if c not in spellable})
        if missing:
            raise ContextError(f"{where}: {w!r} has characters the model has no token for: {' '.join(map(repr, missing))}")


# ----------------------------------------------------------------------------------- grammars

_TOKEN = re.compile(r"\s*(\(|\)|\[|\]|\||[^\s()\[\]|]+)")


@dataclass(frozen=True)
class Grammar:
    """The phrases a recogniser may output, as `text` in the syntax of the module docstring;
    `name` (a file, a request field) is what errors call it. Parsed and compiled into a word
    automaton when made: `Grammar.parse` / `read_grammar` raise ContextError for text that does
    not parse (naming the line)."""

    text: str
    name: str = field(default="grammar", compare=False)
    _automaton: Any = field(default=None, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        if self._automaton is None:
            object.__setattr__(self, "_automaton", _compile(self.text, self.name))

    @classmethod
    def parse(cls, text: str, name: str = "grammar") -> Grammar:
        return cls(text, name)

    @classmethod
    def of_phrases(cls, phrases: Iterable[str], name: str = "grammar") -> Grammar:
        """A grammar of plain phrases (one per item)."""
        return cls("\n".join(p for p in phrases if p.strip()), name)

    @property
    def automaton(self) -> WordAutomaton:
        return self._automaton

    @property
    def words(self) -> tuple[str, ...]:
        """Every word the grammar uses, sorted."""
        return self._automaton.words

    def matches(self, text: str) -> bool:
        """Whether `text` (normalised) is one of the grammar's phrases."""
        a = self._automaton
        state = a.start
        for w in normalize(text).split():
            state = a.step(state, w)
            if not state:
                return False
        return a.accepts(state)


def read_grammar(path: str | Path) -> Grammar:
    """A grammar file (UTF-8, the syntax of the module docstring) -> Grammar; ContextError naming
    the file and line for one that cannot be read or does not parse."""
    return Grammar(read_text(path, ContextError, what="grammar file"), str(path))


class WordAutomaton:
    """A grammar as a word automaton: states are frozensets of NFA states (a lazily built DFA);
    the empty set is the dead state."""

    def __init__(self, arcs: dict[int, list[tuple[str | None, int]]], start: int, final: int):
        self._arcs, self._final = arcs, final
        self._steps: dict[tuple[frozenset, str], frozenset] = {}
        self.start = self._closure({start})
        self.words = tuple(sorted({w for out in arcs.values() for w, _ in out if w is not None}))

    def _closure(self, states: Iterable[int]) -> frozenset:
        seen = set(states)
        todo = list(seen)
        while todo:
            for w, t in self._arcs.get(todo.pop(), ()):
                if w is None and t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(seen)

    def step(self, state: frozenset, word: str) -> frozenset:
        key = (state, word)
        out = self._steps.get(key)
        if out is None:
            out = self._closure(t for s in state for w, t in self._arcs.get(s, ()) if w == word)
            self._steps[key] = out
        return out

    def accepts(self, state: frozenset) -> bool:
        return self._final in state


class _Builder:
    """Thompson's construction of the grammar's NFA (epsilon arcs have word None)."""

    def __init__(self, name: str):
        self.name = name
        self.arcs: dict[int, list[tuple[str | None, int]]] = {}
        self.count = 0

    def new(self) -> int:
        self.count += 1
        if self.count > MAX_GRAMMAR_STATES:
            raise ContextError(f"{self.name}: the grammar is too large (more than {MAX_GRAMMAR_STATES} states)")
        return self.count

    def arc(self, a: int, word: str | None, b: int) -> None:
        self.arcs.setdefault(a, []).append((word, b))


class _Line:
    """A recursive-descent parser of one grammar line into the builder's NFA."""

    def __init__(self, builder: _Builder, items: list[str], where: str):
        self.b, self.items, self.where, self.pos = builder, items, where, 0

    def peek(self) -> str | None:
        return self.items[self.pos] if self.pos < len(self.items) else None

    def alternatives(self) -> tuple[int, int, bool]:
        """`seq ( | seq )*` up to a closing bracket or the end: (entry, exit, can be empty)."""
        a, z = self.b.new(), self.b.new()
        empty_any = False
        while True:
            s, e, empty = self.sequence()
            self.b.arc(a, None, s)
            self.b.arc(e, None, z)
            empty_any |= empty
            if self.peek() != "|":
                return a, z, empty_any
            self.pos += 1

    def sequence(self) -> tuple[int, int, bool]:
        s = cur = self.b.new()
        empty, count = True, 0
        while self.peek() not in (None, "|", ")", "]"):
            tok = self.items[self.pos]
            self.pos += 1
            if tok in ("(", "["):
                close = ")" if tok == "(" else "]"
                a, z, inner_empty = self.alternatives()
                if self.peek() != close:
                    raise ContextError(f"{self.where}: {tok!r} is not closed by {close!r}")
                self.pos += 1
                if tok == "[":
                    self.b.arc(a, None, z)
                    inner_empty = True
                self.b.arc(cur, None, a)
                cur = z
                empty &= inner_empty
            else:
                word = normalize(tok)
                if not word:
                    raise ContextError(f"{self.where}: {tok!r} is not a word")
                for w in word.split():
                    nxt = self.b.new()
                    self.b.arc(cur, w, nxt)
                    cur = nxt
                empty = False
            count += 1
        if count == 0:
            got = f"before {self.peek()!r}" if self.peek() is not None else "at the end of the line"
            raise ContextError(f"{self.where}: an empty alternative {got} (use [ ... ] for optional words)")
        return s, cur, empty


def _compile(text: str, name: str) -> WordAutomaton:
    builder = _Builder(name)
    start, final = builder.new(), builder.new()
    phrases = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{name}:{n}"
        parser = _Line(builder, _tokens(line, where), where)
        a, z, empty = parser.alternatives()
        if parser.peek() is not None:
            raise ContextError(f"{where}: unexpected {parser.peek()!r} (no group open)")
        if empty:
            raise ContextError(f"{where}: the line allows saying nothing at all")
        builder.arc(start, None, a)
        builder.arc(z, None, final)
        phrases += 1
    if not phrases:
        raise ContextError(f"{name}: no phrases in the grammar")
    return WordAutomaton(builder.arcs, start, final)


def _tokens(line: str, where: str) -> list[str]:
    items, pos = [], 0
    line = line.rstrip()
    while pos < len(line):
        m = _TOKEN.match(line, pos)
        if m is None:  # only trailing whitespace is left
            break
        items.append(m.group(1))
        pos = m.end()
    if not items:
        raise ContextError(f"{where}: no words")
    return items


# ------------------------------------------------------------------------------ context graph


class _Node:
    __slots__ = ("children", "fail", "score", "floor", "end")

    def __init__(self, score: float = 0.0):
        self.children: dict[Any, _Node] = {}
        self.fail: _Node | None = None
        self.score = score  # bonus along the path from the root
        self.floor = 0.0  # the score of the deepest completed hotword on that path
        self.end = False


class ContextGraph:
    """Hotwords as unit sequences (words, or tokens) with a bonus per unit, matched as the
    search extends a hypothesis (Aho-Corasick: a failed match carries on from the longest
    suffix that starts a hotword).

    A state is (node, banked): `step(state, unit)` -> (next state, score change). Each unit
    that extends a match adds its bonus; a match that fails gives back what it had added beyond
    `banked`, the bonus of the last hotword it completed; `finish(state)` gives back an
    unfinished match at the end of the utterance. So only completed hotwords keep a bonus, as
    in sherpa-onnx's and WeNet's context graphs. Shared prefixes take the larger bonus.
    """

    def __init__(self, sequences: Sequence[tuple[Sequence[Any], Sequence[float]]]):
        self.root = _Node()
        for units, bonuses in sequences:
            node = self.root
            for u, b in zip(units, bonuses, strict=True):
                child = node.children.get(u)
                if child is None:
                    child = node.children[u] = _Node(node.score + b)
                elif node.score + b > child.score:
                    child.score = node.score + b
                node = child
            node.end = True
        queue: deque[_Node] = deque()
        self.root.fail = self.root
        for child in self.root.children.values():
            child.fail = self.root
            queue.append(child)
        while queue:
            node = queue.popleft()
            node.floor = node.score if node.end else node.floor
            for u, child in node.children.items():
                f = node.fail
                while f is not self.root and u not in f.children:
                    f = f.fail
                child.fail = f.children[u] if u in f.children and f.children[u] is not child else self.root
                child.floor = node.floor
                queue.append(child)
        self._steps: dict[tuple[tuple[_Node, float], Any], tuple[tuple[_Node, float], float]] = {}

    @property
    def start(self) -> tuple[_Node, float]:
        return (self.root, 0.0)

    def step(self, state: tuple[_Node, float], unit: Any) -> tuple[tuple[_Node, float], float]:
        key = (state, unit)
        hit = self._steps.get(key)
        if hit is not None:
            return hit
        node, banked = state
        child = node.children.get(unit)
        if child is not None:
            delta = child.score - node.score
            new = (child, child.score if child.end else banked)
        else:
            f = node.fail
            while f is not self.root and unit not in f.children:
                f = f.fail
            child = f.children.get(unit, self.root)
            delta = child.score - (node.score - banked)
            new = (child, child.floor)
        if child.end and not child.children:  # complete: bank it and carry on from its suffix
            suffix = child.fail
            new = (suffix, suffix.score)
        self._steps[key] = (new, delta)
        return new, delta

    def finish(self, state: tuple[_Node, float]) -> float:
        node, banked = state
        return -(node.score - banked)


def word_graph(hotwords: Sequence[Hotword], index: Any) -> ContextGraph:
    """The hotwords over word units (`index(word)` -> the decoder's word id); a word's bonus is
    its hotword's boost times its spelling's tokens (letters and the closing `|`)."""
    return ContextGraph([([index(w) for w in h.words], [h.boost * (len(w) + 1) for w in h.words]) for h in hotwords])


def token_graph(hotwords: Sequence[Hotword], token_index: dict[str, int]) -> tuple[ContextGraph, int]:
    """The hotwords over token units, for a search without a lexicon: each spelled `| W O R D |`
    (the leading `|` worth nothing, so that a hotword only starts at a word's start); returns the
    graph and the boundary's id (the search starts as if after one)."""
    bar = token_index[WORD_BOUNDARY]
    seqs = []
    for h in hotwords:
        units, bonuses = [bar], [0.0]
        for w in h.words:
            units += [token_index[c] for c in w] + [bar]
            bonuses += [h.boost] * (len(w) + 1)
        seqs.append((units, bonuses))
    return ContextGraph(seqs), bar
