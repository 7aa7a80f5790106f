"""Word n-gram language models (ARPA) and the lexicon/tokens files for lexicon-constrained CTC decoding.

- `read_lm_texts`: sentences from a text file or a JSONL manifest, normalised as the acoustic model sees them.
- `build_arpa`: an n-gram model (orders 1-6) in ARPA format, pure Python: interpolated modified
  Kneser-Ney (Chen & Goodman 1998, with the per-order discounts D1, D2, D3+ that KenLM's `lmplz`
  estimates) or interpolated Witten-Bell. KenLM (and so torchaudio's `ctc_decoder(lm=...)`) loads it.
- `build_arpa_kenlm`: the same through KenLM's `lmplz`, when it is on PATH.
- `ArpaModel` / `perplexity`: read an ARPA file back and score text with the ARPA back-off rules.
- `write_lexicon` / `write_tokens` / `lexicon_words`: the files `torchaudio.models.decoder.ctc_decoder`
  takes as `lexicon=` and `tokens=`.

The model (interpolated, in back-off form). For an n-gram ``h w`` seen in training,

    p(w | h) = (a(h w) - D(a(h w))) / S(h) + gamma(h) * p(w | h[1:])        (Kneser-Ney)
    p(w | h) = (c(h w) + T(h) * p(w | h[1:])) / (S(h) + T(h))                 (Witten-Bell)

and an unseen ``w`` gets ``gamma(h) * p(w | h[1:])``, so the ARPA back-off weight of ``h`` is
``gamma(h)`` exactly and every conditional distribution sums to one. The unigram level interpolates
with the uniform distribution over the vocabulary (every word seen, ``</s>`` and ``<unk>``; ``<s>`` is
never predicted and is written with log10 probability -99), which is where ``<unk>`` gets its mass.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asr.fileio import atomic_open, read_text
from asr.text import BLANK, WORD_BOUNDARY, normalize

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
METHODS = ("kneser-ney", "witten-bell")
MAX_ORDER = 6
# lmplz --discount_fallback's defaults, used when count-of-counts cannot give valid discounts.
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
_BOS_LOGPROB = -99.0


class LMError(ValueError):
    """Bad language-model input or a tool failure; the message is one line naming the file."""


# --------------------------------------------------------------------------- text


def read_lm_texts(path: str | Path) -> list[str]:
    """Normalised sentences of a text file (one a line) or a JSONL manifest (its ``text`` fields).

    A file whose first non-blank line starts with ``{`` is read as JSONL. Lines that are blank
    (or normalise to nothing) are skipped.
    """
    path = Path(path)
    text = read_text(path, LMError)

    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    jsonl = first.startswith("{")
    sentences = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if jsonl:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LMError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise LMError(f"{path}:{n}: a JSON line needs a string 'text' field")
            line = row["text"]
        sentence = normalize(line)
        if sentence:
            sentences.append(sentence)
    if not sentences:
        raise LMError(f"{path}: no sentences")
    return sentences


def lexicon_words(sentences: Iterable[str]) -> list[str]:
    """Sorted unique words of the sentences."""
    return sorted({w for s in sentences for w in s.split()})


# --------------------------------------------------------------------------- estimation


@dataclass
class LMStats:
    """What `build_arpa` wrote: n-grams per order (``counts[0]`` is unigrams, with ``<s>``, ``</s>``,
    ``<unk>``), the order written (lower than asked when no sentence is long enough), and for
    Kneser-Ney the discounts per order (D1, D2, D3+) and the orders that fell back to fixed ones."""

    path: Path
    order: int
    method: str
    counts: list[int]
    sentences: int
    tokens: int  # words plus one </s> per sentence
    vocab_size: int  # words seen, plus </s> and <unk>
    discounts: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    fallback_orders: list[int] = field(default_factory=list)


def kn_discounts(count_of_counts: dict[int, int] | Counter) -> tuple[tuple[float, float, float], bool]:
    """Modified Kneser-Ney discounts (D1, D2, D3+) from count-of-counts n1..n4 (Chen & Goodman eq. 26).

    ``Y = n1 / (n1 + 2 n2)``, ``Dk = k - (k + 1) Y n(k+1) / nk``. When some of n1..n4 is zero or a
    discount falls outside (0, k) (tiny or artificial corpora), returns lmplz's ``--discount_fallback``
    values (0.5, 1, 1.5) and True. (lmplz itself only needs n1..n3 and accepts 0 <= Dk <= k; with
    n4 = 0 that gives D3+ = 3, which leaves n-grams seen 3 times no probability of their own.)
    """
    n = [count_of_counts.get(k, 0) for k in range(5)]
    if not all(n[1:5]):
        return FALLBACK_DISCOUNTS, True
    y = n[1] / (n[1] + 2 * n[2])
    d = tuple(k - (k + 1) * y * n[k + 1] / n[k] for k in (1, 2, 3))
    if any(not (0.0 < dk < k) for k, dk in zip((1, 2, 3), d, strict=True)):
        return FALLBACK_DISCOUNTS, True
    return d, False  # type: ignore[return-value]


def _count(sentences: Iterable[str], order: int) -> tuple[list[Counter], int, int]:
    """Raw n-gram counts (index n: Counter of n-tuples) of ``<s> words </s>``; sentences; tokens."""
    counts: list[Counter] = [Counter() for _ in range(order + 1)]
    n_sent = n_tok = 0
    for s in sentences:
        words = s.split()
        if not words:
            continue
        if BOS in words or EOS in words:
            raise LMError(f"sentence {n_sent + 1} contains the reserved word {BOS} or {EOS}")
        toks = (BOS, *words, EOS)
        n_sent += 1
        n_tok += len(toks) - 1
        for n in range(1, min(order, len(toks)) + 1):
            counts[n].update(zip(*(toks[i:] for i in range(n)), strict=False))
    return counts, n_sent, n_tok


def _estimate(counts: list[Counter], order: int, method: str) -> tuple[dict, dict, dict, list[int]]:
    """Interpolated probabilities of every n-gram and gamma (back-off weight) of every context."""
    prob: dict[tuple[str, ...], float] = {}
    gamma: dict[tuple[str, ...], float] = {}
    discounts: dict[int, tuple[float, float, float]] = {}
    fallback: list[int] = []

    if method == "kneser-ney":
        # Adjusted counts: raw at the highest order and for n-grams starting with <s> (nothing can
        # precede them), otherwise the number of distinct words seen before the n-gram.
        adj: list[Counter] = [Counter() for _ in range(order + 1)]
        adj[order] = counts[order]
        for n in range(order - 1, 0, -1):
            a = Counter(g[1:] for g in counts[n + 1])
            for g, c in counts[n].items():
                if g[0] == BOS:
                    a[g] = c
            adj[n] = a
        for n in range(1, order + 1):
            coc = Counter(c for g, c in adj[n].items() if c <= 4 and g != (BOS,))
            discounts[n], fell_back = kn_discounts(coc)
            if fell_back:
                fallback.append(n)
        table = adj
    else:
        table = counts

    vocab = [g for g in counts[1] if g != (BOS,)]
    if (UNK,) not in counts[1]:
        vocab.append((UNK,))
    uniform = 1.0 / len(vocab)

    for n in range(1, order + 1):
        level = table[n]
        total: dict[tuple[str, ...], float] = defaultdict(float)
        mass: dict[tuple[str, ...], float] = defaultdict(float)  # KN: discounted mass; WB: types
        if method == "kneser-ney":
            d = (0.0, *discounts[n])
            for g, c in level.items():
                if g == (BOS,):
                    continue
                h = g[:-1]
                total[h] += c
                mass[h] += d[c if c < 3 else 3]
            for h, s in total.items():
                gamma[h] = mass[h] / s
            if n == 1:
                for g in vocab:
                    c = level.get(g, 0)
                    prob[g] = (c - d[c if c < 3 else 3]) / total[()] + gamma[()] * uniform
                continue
            for g, c in level.items():
                h = g[:-1]
                prob[g] = (c - d[c if c < 3 else 3]) / total[h] + gamma[h] * prob[g[1:]]
        else:
            for g, c in level.items():
                if g == (BOS,):
                    continue
                h = g[:-1]
                total[h] += c
                mass[h] += 1
            for h, s in total.items():
                gamma[h] = mass[h] / (s + mass[h])
            if n == 1:
                for g in vocab:
                    prob[g] = (level.get(g, 0) + mass[()] * uniform) / (total[()] + mass[()])
                continue
            for g, c in level.items():
                h = g[:-1]
                prob[g] = (c + mass[h] * prob[g[1:]]) / (total[h] + mass[h])
    return prob, gamma, discounts, fallback


def build_arpa(sentences: Sequence[str], order: int, out: str | Path, method: str = "kneser-ney") -> LMStats:
    """Estimate a word n-gram model of the (normalised) sentences and write it to ``out`` as ARPA.

    ``method``: ``"kneser-ney"`` (interpolated modified Kneser-Ney) or ``"witten-bell"``
    (interpolated). The file is written atomically. If no sentence is long enough for the asked
    order, the highest order that has n-grams is written (``LMStats.order`` says which). A
    unigram model is written with an empty bigram section, as KenLM loads nothing below order 2.

    Kneser-Ney uses adjusted counts (raw counts at the highest order and for n-grams that start
    with ``<s>``; elsewhere the number of distinct words seen before the n-gram) and three
    discounts per order from that order's count-of-counts (`kn_discounts`), as ``lmplz`` does.
    """
    out = Path(out)
    if method not in METHODS:
        raise LMError(f"unknown smoothing method {method!r} (choose from {', '.join(METHODS)})")
    if not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
        raise LMError(f"n-gram order must be 1..{MAX_ORDER}, got {order!r}")
    counts, n_sent, n_tok = _count(sentences, order)
    if n_sent == 0:
        raise LMError(f"{out}: no sentences to build a language model from")
    while not counts[order]:
        order -= 1
    counts = counts[: order + 1]
    prob, gamma, discounts, fallback = _estimate(counts, order, method)

    sections: list[list[tuple[str, ...]]] = [[]]
    unigrams = sorted((g for g in prob if len(g) == 1), key=" ".join)
    sections.append([(BOS,), *unigrams])
    for n in range(2, order + 1):
        sections.append(sorted(counts[n], key=" ".join))

    # KenLM refuses ARPA files below order 2, so a unigram model gets an empty bigram section.
    written = max(order, 2)
    if order == 1:
        sections.append([])
    with atomic_open(out) as f:
        f.write("\\data\\\n")
        for n in range(1, written + 1):
            f.write(f"ngram {n}={len(sections[n])}\n")
        for n in range(1, written + 1):
            f.write(f"\n\\{n}-grams:\n")
            highest = n == written
            lines = []
            for g in sections[n]:
                lp = _BOS_LOGPROB if g == (BOS,) else math.log10(prob[g])
                words = " ".join(g)
                if highest:
                    lines.append(f"{lp:.7f}\t{words}\n")
                else:
                    bow = gamma.get(g)
                    lines.append(f"{lp:.7f}\t{words}\t{math.log10(bow) if bow else 0.0:.7f}\n")
            f.writelines(lines)
        f.write("\n\\end\\\n")

    return LMStats(
        path=out,
        order=order,
        method=method,
        counts=[len(sections[n]) for n in range(1, order + 1)],
        sentences=n_sent,
        tokens=n_tok,
        vocab_size=len(unigrams),
        discounts=discounts,
        fallback_orders=fallback,
    )


def build_arpa_kenlm(sentences: Sequence[str], order: int, out: str | Path, memory: str = "10%") -> LMStats:
    """Build the ARPA model with KenLM's ``lmplz -o ORDER --discount_fallback`` (modified Kneser-Ney).

    Raises LMError when ``lmplz`` is not on PATH or fails.
    """
    out = Path(out)
    lmplz = shutil.which("lmplz")
    if lmplz is None:
        raise LMError("lmplz (KenLM) is not on PATH; install KenLM or use build_arpa")
    if not isinstance(order, int) or order < 1:
        raise LMError(f"n-gram order must be a positive integer, got {order!r}")
    text = "".join(s.strip() + "\n" for s in sentences if s.strip())
    if not text:
        raise LMError(f"{out}: no sentences to build a language model from")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmpdir:
        tmp_arpa = Path(tmpdir) / "lm.arpa"
        cmd = [lmplz, "-o", str(order), "--discount_fallback", "-S", memory, "-T", tmpdir, "--arpa", str(tmp_arpa)]
        try:
            proc = subprocess.run(cmd, input=text, capture_output=True, text=True, encoding="utf-8", check=False)
        except OSError as e:
            raise LMError(f"{lmplz}: cannot run ({e.strerror})") from None
        if proc.returncode != 0 or not tmp_arpa.exists():
            tail = [line for line in proc.stderr.splitlines() if line.strip()]
            raise LMError(f"lmplz failed (exit {proc.returncode}): {tail[-1] if tail else 'no message'}")
        os.replace(tmp_arpa, out)
    counts = _arpa_counts(out)
    return LMStats(
        path=out,
        order=len(counts),
        method="kneser-ney (lmplz)",
        counts=counts,
        sentences=text.count("\n"),
        tokens=sum(len(s.split()) + 1 for s in text.splitlines()),
        vocab_size=counts[0] - 1 if counts else 0,
    )


def _arpa_counts(path: Path) -> list[int]:
    counts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("ngram ") and "=" in line:
                counts.append(int(line.split("=", 1)[1]))
            elif line.startswith("\\1-grams:"):
                break
    return counts


# --------------------------------------------------------------------------- reading and scoring


class ArpaModel:
    """An ARPA n-gram model in memory, scored with the standard back-off rules (as KenLM does)."""

    def __init__(self, entries: dict[tuple[str, ...], tuple[float, float]], order: int):
        self.entries = entries  # n-gram -> (log10 prob, log10 back-off)
        self.order = order
        self.vocab = {g[0] for g in entries if len(g) == 1}

    @classmethod
    def load(cls, path: str | Path) -> ArpaModel:
        path = Path(path)
        try:
            f = open(path, encoding="utf-8")  # noqa: SIM115
        except FileNotFoundError:
            raise LMError(f"{path}: file not found") from None
        except OSError as e:
            raise LMError(f"{path}: cannot read ({e.strerror})") from None
        declared: dict[int, int] = {}
        entries: dict[tuple[str, ...], tuple[float, float]] = {}
        section = 0  # -1: \data\, n: \n-grams:
        ended = False
        try:
            with f:
                for lineno, line in enumerate(f, 1):
                    line = line.strip()
                    if not line:
                        continue
                    if line == "\\data\\":
                        section = -1
                    elif line == "\\end\\":
                        ended = True
                        break
                    elif line.startswith("\\") and line.endswith("-grams:"):
                        section = int(line[1:].split("-", 1)[0])
                        if section not in declared:
                            raise LMError(f"{path}:{lineno}: section {line} not declared in \\data\\")
                    elif section == -1:
                        if not line.startswith("ngram ") or "=" not in line:
                            raise LMError(f"{path}:{lineno}: expected 'ngram N=count' in \\data\\")
                        n, c = line[6:].split("=", 1)
                        declared[int(n)] = int(c)
                    elif section > 0:
                        parts = line.split()
                        if len(parts) not in (section + 1, section + 2):
                            raise LMError(f"{path}:{lineno}: expected log10 prob, {section} words and an optional back-off")
                        bow = float(parts[section + 1]) if len(parts) == section + 2 else 0.0
                        entries[tuple(parts[1 : section + 1])] = (float(parts[0]), bow)
        except UnicodeDecodeError:
            raise LMError(f"{path}: not UTF-8 text") from None
        except ValueError as e:
            if isinstance(e, LMError):
                raise
            raise LMError(f"{path}: malformed ARPA file ({e})") from None
        if not declared or not ended:
            raise LMError(f"{path}: not an ARPA file (no \\data\\ header or no \\end\\)")
        found = Counter(len(g) for g in entries)
        for n, c in declared.items():
            if found[n] != c:
                raise LMError(f"{path}: \\data\\ declares {c} {n}-grams but the file has {found[n]}")
        return cls(entries, max(declared))

    def logprob(self, word: str, history: Sequence[str] = ()) -> float:
        """log10 P(word | history); history is the preceding words, oldest first (``<s>`` included
        for a sentence start). Words outside the vocabulary are ``<unk>``."""
        entries = self.entries
        word = word if word in self.vocab else UNK
        h = tuple(w if w in self.vocab else UNK for w in history)
        h = h[-(self.order - 1) :] if self.order > 1 else ()
        backoff = 0.0
        while True:
            e = entries.get((*h, word))
            if e is not None:
                return backoff + e[0]
            if not h:
                return -math.inf  # no <unk> in the model
            e = entries.get(h)
            if e is not None:
                backoff += e[1]
            h = h[1:]

    def sentence_logprob(self, sentence: str) -> tuple[float, int]:
        """Total log10 probability of ``<s> sentence </s>`` and the number of predicted tokens."""
        words = sentence.split()
        history = [BOS]
        total = 0.0
        for w in [*words, EOS]:
            total += self.logprob(w, history)
            history.append(w)
        return total, len(words) + 1


def perplexity(model: ArpaModel | str | Path, sentences: Iterable[str]) -> float:
    """Perplexity over words and ``</s>`` (out-of-vocabulary words scored as ``<unk>``, as KenLM does)."""
    if not isinstance(model, ArpaModel):
        model = ArpaModel.load(model)
    total = 0.0
    tokens = 0
    for s in sentences:
        lp, n = model.sentence_logprob(s)
        total += lp
        tokens += n
    if tokens == 0:
        raise LMError("perplexity of no sentences")
    return 10.0 ** (-total / tokens)


# --------------------------------------------------------------------------- decoder files


def write_tokens(tokens: Sequence[str], out: str | Path) -> Path:
    """The tokens file of ``ctc_decoder``: one token a line, in id order."""
    out = Path(out)
    seen = set()
    for i, t in enumerate(tokens):
        if not t or any(c.isspace() for c in t):
            raise LMError(f"{out}: token {i} ({t!r}) is empty or contains whitespace")
        if t in seen:
            raise LMError(f"{out}: token {t!r} appears twice")
        seen.add(t)
    if not seen:
        raise LMError(f"{out}: no tokens to write")
    with atomic_open(out) as f:
        f.write("".join(t + "\n" for t in tokens))
    return out


def write_lexicon(
    words: Iterable[str], tokens: Sequence[str], out: str | Path, *, boundary: bool = True
) -> tuple[int, list[str]]:
    """The lexicon of ``ctc_decoder`` (flashlight format): ``WORD<TAB>W O R D |`` a line.

    Each word is spelled in the model's character tokens and ends with the word-boundary token
    ``|`` (the decoder's ``sil_token``), as in torchaudio's CTC decoder tutorial. Words holding a
    character that is not a token are left out and returned, in input order, so the caller can
    report them. Returns (words written, words skipped).

    Note: with the trailing ``|`` the flashlight decoder only completes a word when it can place a
    ``|`` after it, and our models emit ``|`` between words, not after the last one: the decoder
    then has to spend a trailing (blank) frame on ``|`` at whatever log-probability the model gives
    it, and drops the last word if no frame follows it. Appending one frame that is certainly
    ``|`` to the emissions, or ``boundary=False`` (bare spellings, ``|`` then acts as optional
    silence between words), avoids that.
    """
    out = Path(out)
    spellable = {t for t in tokens if len(t) == 1 and t != WORD_BOUNDARY and t != BLANK and not t.isspace()}
    if WORD_BOUNDARY not in tokens:
        raise LMError(f"{out}: the token list has no word-boundary token {WORD_BOUNDARY!r}")
    lines = []
    skipped: list[str] = []
    seen = set()
    for word in words:
        if not word or word in seen:
            continue
        seen.add(word)
        if all(c in spellable for c in word):
            lines.append(f"{word}\t{' '.join(word)}{' ' + WORD_BOUNDARY if boundary else ''}\n")
        else:
            skipped.append(word)
    with atomic_open(out) as f:
        f.writelines(lines)
    return len(lines), skipped
