"""Word n-gram language models (asr.lm): reading text, ARPA estimation, KenLM loading, decoder files."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest

from asr import lm
from asr.lm import (
    BOS,
    EOS,
    METHODS,
    UNK,
    ArpaModel,
    LMError,
    build_arpa,
    build_arpa_kenlm,
    kn_discounts,
    lexicon_words,
    perplexity,
    read_lm_texts,
    write_lexicon,
    write_tokens,
)

TOY = ["A B", "A C", "B"]
TOKENS = ("<blank>", "|", "A", "B", "C", "'")


def patterned(n: int, seed: int) -> list[str]:
    """Windows of a repeating word cycle: a trigram predicts the next word, a unigram cannot."""
    cycle = "ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT".split()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start, length = rng.randrange(len(cycle)), rng.randint(2, 9)
        out.append(" ".join(cycle[(start + i) % len(cycle)] for i in range(length)))
    return out


def mixed(n: int, seed: int) -> list[str]:
    """Random sentences over a small skewed vocabulary, with enough variety for real KN discounts."""
    words = "THE A CAT DOG SAT RAN ON MAT HOME FAST SLOW RED".split()
    weights = [1 / (i + 1) for i in range(len(words))]
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, weights, k=rng.randint(1, 7))) for _ in range(n)]


def read_arpa_sections(path: Path) -> dict[int, list[list[str]]]:
    sections: dict[int, list[list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("\\") and line.endswith("-grams:"):
            current = int(line[1:].split("-")[0])
            sections[current] = []
        elif line == "\\end\\":
            current = None
        elif current and line:
            sections[current].append(line.split("\t"))
    return sections


# --------------------------------------------------------------------------- read_lm_texts


def test_read_plain_text_normalises_and_skips_blanks(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("hello, world!\n\n   \nit's  Fine.\n--\nsecond   line\n", encoding="utf-8")
    assert read_lm_texts(p) == ["HELLO WORLD", "IT'S FINE", "SECOND LINE"]


def test_read_jsonl_manifest(tmp_path):
    p = tmp_path / "train.jsonl"
    rows = [{"id": "a", "audio": "a.wav", "text": "go left"}, {"id": "b", "audio": "b.wav", "text": "Stop."}]
    p.write_text("\n" + "".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert read_lm_texts(p) == ["GO LEFT", "STOP"]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.txt", None, "file not found"),
        ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1"), "not UTF-8"),
        ("empty.txt", b"\n  \n...\n", "no sentences"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": \n', ":2: not valid JSON"),
        ("notext.jsonl", b'{"text": "ok"}\n{"id": "x"}\n', ":2: a JSON line needs a string 'text'"),
    ],
)
def test_read_errors_name_the_file(tmp_path, name, content, expected):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(LMError) as e:
        read_lm_texts(p)
    msg = str(e.value)
    assert str(p) in msg and expected in msg and "\n" not in msg
    assert isinstance(e.value, ValueError)


def test_lexicon_words_sorted_unique():
    assert lexicon_words(["B A", "C A", "A"]) == ["A", "B", "C"]


# --------------------------------------------------------------------------- ARPA structure


@pytest.mark.parametrize("method", METHODS)
def test_arpa_structure_and_counts(tmp_path, method):
    out = tmp_path / "lm" / "toy.arpa"
    stats = build_arpa(TOY, 3, out, method)
    assert stats.path == out and stats.order == 3 and stats.method == method
    assert stats.counts == [6, 6, 5]
    assert (stats.sentences, stats.tokens, stats.vocab_size) == (3, 8, 5)

    text = out.read_text()
    assert text.startswith("\\data\\\nngram 1=6\nngram 2=6\nngram 3=5\n\n\\1-grams:\n")
    assert text.rstrip().endswith("\\end\\")
    sections = read_arpa_sections(out)
    grams = {n: {tuple(f[1].split()) for f in rows} for n, rows in sections.items()}
    assert grams[1] == {(BOS,), (EOS,), (UNK,), ("A",), ("B",), ("C",)}
    assert grams[2] == {(BOS, "A"), (BOS, "B"), ("A", "B"), ("A", "C"), ("B", EOS), ("C", EOS)}
    assert grams[3] == {(BOS, "A", "B"), (BOS, "A", "C"), (BOS, "B", EOS), ("A", "B", EOS), ("A", "C", EOS)}
    # lower orders carry a back-off weight, the highest order does not; <s> is never predicted
    assert all(len(f) == 3 for n in (1, 2) for f in sections[n])
    assert all(len(f) == 2 for f in sections[3])
    assert float(next(f[0] for f in sections[1] if f[1] == BOS)) == -99.0
    assert all(float(f[0]) <= 0 and float(f[-1]) <= 1e-9 for n in (1, 2) for f in sections[n])
    # atomic write leaves no temporary file behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["toy.arpa"]


def test_unigram_probabilities_by_hand(tmp_path):
    # Tokens after <s>: A A B B C </s></s></s>; vocabulary A B C </s> <unk> (5).
    wb = ArpaModel.load(build_arpa(TOY, 1, tmp_path / "wb.arpa", "witten-bell").path)
    # Witten-Bell: (c(w) + T/|V|) / (N + T) with N = 8 tokens and T = 4 types seen.
    assert 10 ** wb.logprob("A") == pytest.approx((2 + 4 / 5) / 12, rel=1e-6)
    assert 10 ** wb.logprob(UNK) == pytest.approx((4 / 5) / 12, rel=1e-6)

    # Kneser-Ney, order 2: unigram adjusted counts are the numbers of distinct left neighbours
    # (A:1 B:2 C:1 </s>:2, total 6); count-of-counts are degenerate, so D = (0.5, 1, 1.5).
    stats = build_arpa(TOY, 2, tmp_path / "kn.arpa", "kneser-ney")
    assert stats.discounts[1] == lm.FALLBACK_DISCOUNTS and 1 in stats.fallback_orders
    kn = ArpaModel.load(stats.path)
    gamma = (0.5 + 1 + 0.5 + 1) / 6
    assert 10 ** kn.logprob("A", ["NOTAWORD"]) == pytest.approx((1 - 0.5) / 6 + gamma / 5, rel=1e-6)
    # bigrams after <s>: A twice (D = 1), B once (D = 0.5)
    assert 10 ** kn.logprob("B", [BOS]) == pytest.approx(
        (1 - 0.5) / 3 + (1 + 0.5) / 3 * ((2 - 1) / 6 + gamma / 5), rel=1e-6
    )


def test_kn_discounts_formula_and_fallback():
    # Chen & Goodman eq. 26: Y = n1/(n1 + 2 n2), Dk = k - (k+1) Y n(k+1)/nk
    (d1, d2, d3), fell_back = kn_discounts({1: 10, 2: 4, 3: 2, 4: 1})
    y = 10 / 18
    assert not fell_back
    assert (d1, d2, d3) == pytest.approx((1 - 2 * y * 4 / 10, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2))
    assert kn_discounts({1: 5, 2: 3, 4: 1}) == (lm.FALLBACK_DISCOUNTS, True)  # no count-3 n-grams
    assert kn_discounts({1: 1, 2: 2, 3: 1}) == (lm.FALLBACK_DISCOUNTS, True)  # n4 = 0 would give D3+ = 3
    assert kn_discounts({1: 10, 2: 1, 3: 5, 4: 1}) == (lm.FALLBACK_DISCOUNTS, True)  # D2 < 0


def test_real_discounts_on_a_varied_corpus(tmp_path):
    stats = build_arpa(mixed(400, seed=1), 3, tmp_path / "m.arpa")
    assert 2 in stats.discounts and 2 not in stats.fallback_orders
    d1, d2, d3 = stats.discounts[2]
    assert 0 < d1 < 1 < d2 < 2 and 0 < d3 < 3


# --------------------------------------------------------------------------- normalisation


def _vocab_sum(model: ArpaModel, history: tuple[str, ...]) -> float:
    return sum(10 ** model.logprob(w, history) for w in model.vocab if w != BOS)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_distributions_sum_to_one(tmp_path, method, order):
    corpus = mixed(150, seed=order) + ["A", "CAT SAT ON THE MAT"]
    model = ArpaModel.load(build_arpa(corpus, order, tmp_path / "lm.arpa", method).path)
    histories = [
        (),
        (BOS,),
        (BOS, "THE"),
        ("CAT", "SAT", "ON"),
        ("THE", "CAT"),
        ("MAT",),
        ("RED", "RED", "RED"),  # probably unseen context
        ("NOTAWORD", "THE"),  # out-of-vocabulary history word
        ("A", EOS),  # a context that nothing follows
    ]
    for h in histories:
        assert _vocab_sum(model, h) == pytest.approx(1.0, abs=1e-4), h


def test_short_sentences_lower_the_order(tmp_path):
    stats = build_arpa(["A B", "B"], 6, tmp_path / "lm.arpa")
    assert stats.order == 4 and len(stats.counts) == 4
    model = ArpaModel.load(stats.path)
    assert model.order == 4
    assert _vocab_sum(model, (BOS, "A", "B")) == pytest.approx(1.0, abs=1e-4)


# --------------------------------------------------------------------------- perplexity


@pytest.mark.parametrize("method", METHODS)
def test_trigram_beats_unigram_on_held_out_text(tmp_path, method):
    train, held_out = patterned(200, seed=0), patterned(40, seed=1)
    ppl = {
        order: perplexity(build_arpa(train, order, tmp_path / f"{order}.arpa", method).path, held_out)
        for order in (1, 3)
    }
    assert ppl[3] < ppl[1] / 2
    assert 1 < ppl[3] and ppl[1] < 12  # 8 words + </s> + <unk>


def test_perplexity_counts_oov_as_unk(tmp_path):
    model = ArpaModel.load(build_arpa(TOY, 2, tmp_path / "lm.arpa").path)
    lp, n = model.sentence_logprob("A ZZZ")
    assert n == 3
    assert lp == pytest.approx(model.logprob("A", [BOS]) + model.logprob(UNK, [BOS, "A"]) + model.logprob(EOS, [BOS, "A", UNK]))
    assert perplexity(model, ["A ZZZ"]) == pytest.approx(10 ** (-lp / 3))


# --------------------------------------------------------------------------- KenLM and the CTC decoder


def _kenlm_dict(words):
    dictionary = pytest.importorskip("flashlight.lib.text.dictionary")
    d = dictionary.Dictionary()
    for w in [*words, UNK, EOS]:
        d.add_entry(w)
    return d


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("order", [1, 2, 4])
def test_kenlm_loads_and_agrees(tmp_path, method, order):
    kenlm_mod = pytest.importorskip("flashlight.lib.text.decoder.kenlm")
    corpus = mixed(100, seed=7)
    path = build_arpa(corpus, order, tmp_path / "lm.arpa", method).path
    ours = ArpaModel.load(path)
    words = lexicon_words(corpus)
    d = _kenlm_dict(words)
    kenlm = kenlm_mod.KenLM(str(path), d)
    for sentence in ["THE CAT SAT ON THE MAT", "RED RED FAST HOME", "SLOW"]:
        state, history = kenlm.start(False), [BOS]
        for w in sentence.split():
            state, score = kenlm.score(state, d.get_index(w))
            assert score == pytest.approx(ours.logprob(w, history), abs=1e-4), (sentence, w)
            history.append(w)
        _, score = kenlm.finish(state)
        assert score == pytest.approx(ours.logprob(EOS, history), abs=1e-4)


def _emissions(frames: list[dict[str, float]]):
    torch = pytest.importorskip("torch")
    x = torch.full((len(frames), len(TOKENS)), 1e-4)
    for i, frame in enumerate(frames):
        for token, p in frame.items():
            x[i, TOKENS.index(token)] = p
    return (x / x.sum(1, keepdim=True)).log().unsqueeze(0)


@pytest.mark.parametrize("boundary", [True, False])
def test_ctc_decoder_uses_lexicon_and_lm(tmp_path, boundary):
    decoder_mod = pytest.importorskip("torchaudio.models.decoder")
    tokens = write_tokens(TOKENS, tmp_path / "tokens.txt")
    lexicon = tmp_path / "lexicon.txt"
    assert write_lexicon(["AB", "AC", "CAB"], TOKENS, lexicon, boundary=boundary) == (3, [])
    # "A" then B or C equally likely, a boundary, then "CAB" and trailing silence.
    emissions = _emissions(
        [{"A": 1}, {"<blank>": 1}, {"B": 0.5, "C": 0.5}, {"|": 1}, {"C": 1}, {"A": 1}, {"B": 1}, {"<blank>": 1}]
    )
    for first, other in (("AB", "AC"), ("AC", "AB")):
        arpa = build_arpa([f"{first} CAB"] * 5 + [other], 2, tmp_path / f"{first}.arpa").path
        decode = decoder_mod.ctc_decoder(
            lexicon=str(lexicon), tokens=str(tokens), lm=str(arpa), blank_token="<blank>", sil_token="|", unk_word=UNK, beam_size=10
        )
        assert decode(emissions)[0][0].words == [first, "CAB"]


# --------------------------------------------------------------------------- decoder files


def test_lexicon_format_and_skipped_words(tmp_path):
    out = tmp_path / "lexicon.txt"
    written, skipped = write_lexicon(["AB", "A'B", "ABD", "AB", "CAB", "X|"], TOKENS, out)
    assert (written, skipped) == (3, ["ABD", "X|"])
    assert out.read_text() == "AB\tA B |\nA'B\tA ' B |\nCAB\tC A B |\n"
    write_lexicon(["AB"], TOKENS, out, boundary=False)
    assert out.read_text() == "AB\tA B\n"


def test_lexicon_needs_the_boundary_token(tmp_path):
    with pytest.raises(LMError, match="word-boundary"):
        write_lexicon(["AB"], ("<blank>", "A", "B"), tmp_path / "lexicon.txt")


def test_tokens_file(tmp_path):
    out = write_tokens(TOKENS, tmp_path / "tokens.txt")
    assert out.read_text().splitlines() == list(TOKENS)
    with pytest.raises(LMError, match="twice"):
        write_tokens(("<blank>", "|", "A", "A"), tmp_path / "t.txt")
    with pytest.raises(LMError, match="whitespace"):
        write_tokens(("<blank>", " "), tmp_path / "t.txt")


# --------------------------------------------------------------------------- errors and lmplz


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((TOY, 0), "order must be 1..6"),
        ((TOY, 7), "order must be 1..6"),
        ((TOY, 3, "good-turing"), "unknown smoothing method"),
        ((["", "  "], 3), "no sentences"),
        ((["A <s> B"], 3), "reserved word"),
    ],
)
def test_build_arpa_errors(tmp_path, args, expected):
    out = tmp_path / "lm.arpa"
    sentences, order, *method = args
    with pytest.raises(LMError, match=expected):
        build_arpa(sentences, order, out, *method)
    assert not out.exists()


def test_arpa_model_load_errors(tmp_path):
    with pytest.raises(LMError, match="file not found"):
        ArpaModel.load(tmp_path / "missing.arpa")
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=3\n\n\\1-grams:\n-1\tA\n\n\\end\\\n")
    with pytest.raises(LMError, match="declares 3 1-grams but the file has 1"):
        ArpaModel.load(bad)
    bad.write_text("just text\n")
    with pytest.raises(LMError, match="not an ARPA file"):
        ArpaModel.load(bad)


def test_lmplz_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(lm.shutil, "which", lambda name: None)
    with pytest.raises(LMError, match="lmplz .* not on PATH"):
        build_arpa_kenlm(TOY, 3, tmp_path / "lm.arpa")


@pytest.mark.skipif(shutil.which("lmplz") is None, reason="KenLM's lmplz is not installed")
def test_lmplz_builds_a_model_close_to_ours(tmp_path):
    corpus = mixed(400, seed=3)
    stats = build_arpa_kenlm(corpus, 3, tmp_path / "kenlm.arpa")
    theirs = ArpaModel.load(stats.path)
    ours = build_arpa(corpus, 3, tmp_path / "ours.arpa")
    assert stats.counts == ours.counts
    held_out = mixed(50, seed=4)
    assert math.isclose(perplexity(theirs, held_out), perplexity(ours.path, held_out), rel_tol=0.05)
