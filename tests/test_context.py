"""Hotwords and grammars (asr.context, asr.bias): parsing, the context graph, the searches they
make with the tone models, the command line and bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from asr.context import (
    DEFAULT_BOOST,
    ContextError,
    ContextGraph,
    Grammar,
    parse_hotword,
    parse_hotwords,
    read_grammar,
    read_hotwords,
)

# --------------------------------------------------------------------------------- parsing


def test_hotword_specs_and_files() -> None:
    h = parse_hotword("new york:3")
    assert h.words == ("NEW", "YORK") and h.boost == 3.0
    assert parse_hotword("CAB").boost == DEFAULT_BOOST
    assert [str(x) for x in parse_hotwords(["CAB:1", "DAD", "cab:2"])] == [f"DAD:{DEFAULT_BOOST:g}", "CAB:2"]  # the last boost wins


def test_hotwords_file(tmp_path: Path) -> None:
    f = tmp_path / "hot.txt"
    f.write_text("# names\nCAB\t2.5\n\nnew york\t4\nDAD\n", encoding="utf-8")
    assert [(h.text, h.boost) for h in read_hotwords(f)] == [("CAB", 2.5), ("NEW YORK", 4.0), ("DAD", DEFAULT_BOOST)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no hotwords in the file"),
        ("# only a comment\n", "no hotwords in the file"),
        ("CAB\t2\nDAD\tloud\n", "hot.txt:2: the boost of 'DAD' is not a number: 'loud'"),
        ("CAB\tinf\n", "hot.txt:1: the boost of 'CAB' must be a number"),
        ("...\t2\n", "hot.txt:1: empty hotword"),
    ],
    ids=["empty", "comment-only", "boost-not-a-number", "boost-inf", "no-word"],
)
def test_bad_hotwords_file_is_one_line_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "hot.txt"
    f.write_text(content, encoding="utf-8")
    with pytest.raises(ContextError) as e:
        read_hotwords(f)
    assert message in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("specs", "message"), [([], "no hotwords given"), (["CAB:abc"], "is not a number: 'abc'"), ([" "], "empty hotword"), (["CAB:1e9"], "between")])
def test_bad_hotword_specs(specs: list[str], message: str) -> None:
    with pytest.raises(ContextError, match=message):
        parse_hotwords(specs)


def test_grammar_syntax(tmp_path: Path) -> None:
    f = tmp_path / "g.txt"
    f.write_text("# lights\n( turn | switch ) [ the ] lights ( on | off )\nYES | NO\nSTOP\n", encoding="utf-8")
    g = read_grammar(f)
    for said, ok in [("turn lights on", True), ("Switch the lights off.", True), ("yes", True), ("stop", True), ("turn the", False), ("yes no", False), ("", False)]:
        assert g.matches(said) is ok, said
    assert set(g.words) == {"TURN", "SWITCH", "THE", "LIGHTS", "ON", "OFF", "YES", "NO", "STOP"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("( A | B\n", "g.txt:1: '(' is not closed by ')'"),
        ("A\nB )\n", "g.txt:2: unexpected ')'"),
        ("( | A )", "an empty alternative before '|'"),
        ("[ A ]", "allows saying nothing"),
        ("# nothing\n\n", "no phrases"),
        ("A | ", "an empty alternative at the end of the line"),
        ("A ... B", "'...' is not a word"),
    ],
)
def test_grammar_that_does_not_parse(text: str, message: str) -> None:
    with pytest.raises(ContextError) as e:
        Grammar.parse(text, "g.txt")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_context_graph_keeps_completed_hotwords_and_gives_back_failed_matches() -> None:
    g = ContextGraph([((1, 2, 3), (1.0, 1.0, 1.0)), ((2, 4), (2.0, 2.0))])

    def total(units: list[int]) -> float:
        state, score = g.start, 0.0
        for u in units:
            state, d = g.step(state, u)
            score += d
        return score + g.finish(state)

    assert total([1, 2, 3]) == 3.0
    assert total([1, 2, 3, 1, 2, 3]) == 6.0
    assert total([1, 2]) == 0.0  # unfinished at the end: given back
    assert total([1, 2, 5]) == 0.0  # failed: given back
    assert total([1, 2, 4]) == 4.0  # fails 1 2 3, but its suffix 2 starts 2 4 (Aho-Corasick)
    assert total([7, 2, 4, 9]) == 4.0


# ------------------------------------------------------------------------------ searches

SR = 16000


@pytest.fixture(scope="module")
def model(trained: Path):
    import asr

    return asr.load_model(trained / "best.pt")


@pytest.fixture(scope="module")
def test_set(tone_corpus: dict[str, Path]) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    from asr.manifest import read_manifest

    utts = read_manifest(tone_corpus["test"])
    return [(u.id, Path(u.audio)) for u in utts], {u.id: u.text for u in utts}


@pytest.fixture(scope="module")
def without_cab(model, tone_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A lexicon and bigram LM of the training text with every sentence holding CAB left out."""
    from asr.lm import build_arpa, lexicon_words, write_lexicon
    from asr.manifest import read_manifest

    root = tmp_path_factory.mktemp("nocab")
    texts = [u.text for u in read_manifest(tone_corpus["train"]) if "CAB" not in u.text.split()]
    write_lexicon(lexicon_words(texts), model.tokenizer.tokens, root / "lexicon.txt")
    build_arpa(texts, 2, root / "lm.arpa")
    return root / "lexicon.txt", root / "lm.arpa"


def _decode(model, items, **options) -> dict[str, str]:
    from asr.decode import decode_items
    from asr.inference import decoder_for
    from asr.options import resolve_options

    decoder = decoder_for(model, resolve_options(model.cfg.decode, **options))
    return {t.id: t.text for t in decode_items(model, items, decoder=decoder, progress=False)}


def _count(texts: dict[str, str], refs: dict[str, str], word: str) -> tuple[int, int]:
    """(occurrences of `word` in the references, of those also in the hypotheses)."""
    said = sum(r.split().count(word) for r in refs.values())
    found = sum(min(refs[k].split().count(word), texts[k].split().count(word)) for k in refs)
    return said, found


def test_no_hotwords_is_the_plain_search(model, without_cab) -> None:
    from asr.beam import BeamSearch, GreedySearch
    from asr.inference import decoder_for
    from asr.options import resolve_options

    lexicon, lm = without_cab
    assert type(decoder_for(model, resolve_options(model.cfg.decode, lexicon=lexicon, lm=lm, hotwords=()))) is BeamSearch
    assert type(decoder_for(model, resolve_options(model.cfg.decode))) is GreedySearch


def test_hotword_adds_a_word_the_lexicon_and_lm_lack_and_changes_nothing_else(model, without_cab, test_set) -> None:
    items, refs = test_set
    lexicon, lm = without_cab
    plain = _decode(model, items, lexicon=lexicon, lm=lm, lm_weight=1.0)
    hot = _decode(model, items, lexicon=lexicon, lm=lm, lm_weight=1.0, hotwords=parse_hotwords(["CAB:1"]))
    said, _ = _count(plain, refs, "CAB")
    assert said >= 3, "the test set should say CAB"
    assert _count(plain, refs, "CAB")[1] == 0  # not in the lexicon: never recognised
    assert _count(hot, refs, "CAB")[1] == said
    assert {k: hot[k] for k in refs if "CAB" not in refs[k].split()} == {k: plain[k] for k in refs if "CAB" not in refs[k].split()}
    # the same words through a hotword list of several, one of them a phrase
    both = _decode(model, items, lexicon=lexicon, lm=lm, lm_weight=1.0, hotwords=parse_hotwords(["CAB:1", "DC CAB:1"]))
    assert _count(both, refs, "CAB")[1] == said


def test_cached_lm_scores_give_the_same_results_in_any_order(model, without_cab, test_set, monkeypatch) -> None:
    """WordContextLM keeps KenLM scores across utterances and memoises score/finish per
    utterance: decoding in another order, or with the cross-utterance cache restarted before
    every utterance, gives the same hypotheses and scores."""
    from asr import bias
    from asr.inference import Audio, read_audio, recognize
    from asr.options import resolve_options

    items, _ = test_set
    lexicon, lm = without_cab
    options = resolve_options(model.cfg.decode, lexicon=lexicon, lm=lm, lm_weight=1.0, nbest=3, hotwords=parse_hotwords(["CAB:1", "DC CAB:2"]))
    audios: list[Audio] = [read_audio(p, None, model.cfg.features.sample_rate) for _, p in items]

    def run(order: list[int]) -> dict[int, list[tuple[str, float]]]:
        search = bias.context_search(model.tokenizer, options)
        out = {}
        for i in order:
            (t,) = recognize(model, [audios[i]], options, decoder=search, word_times=False)
            out[i] = [(h.text, round(h.score, 4)) for h in t.nbest]
        return out

    forward = run(list(range(len(audios))))
    assert run(list(reversed(range(len(audios))))) == forward
    monkeypatch.setattr(bias, "KENLM_CACHE", 0)
    assert run(list(range(len(audios)))) == forward


def test_hotwords_without_a_lexicon_and_greedy_becoming_a_small_beam_search(model, test_set) -> None:
    from asr.bias import GREEDY_CONTEXT_BEAM, ContextSearch
    from asr.inference import decoder_for
    from asr.options import resolve_options

    items, refs = test_set
    greedy = _decode(model, items)
    options = resolve_options(model.cfg.decode, hotwords=parse_hotwords(["CAB"]))
    search = decoder_for(model, options)
    assert isinstance(search, ContextSearch) and search.cfg.beam_size == GREEDY_CONTEXT_BEAM and search.speeds == (1.0,)
    hot = _decode(model, items, hotwords=parse_hotwords(["CAB"]))
    assert _count(hot, refs, "CAB")[1] == _count(hot, refs, "CAB")[0]
    # a boost large enough to count: DAD is heard where BAD was said
    bad = [k for k in refs if "BAD" in refs[k].split()]
    assert bad
    forced = _decode(model, items, hotwords=parse_hotwords(["DAD:8"]))
    assert any("DAD" in forced[k].split() and "DAD" not in greedy[k].split() for k in bad)
    beam = _decode(model, items, beam=True, hotwords=parse_hotwords(["DAD:8"]))
    assert any("DAD" in beam[k].split() and "DAD" not in greedy[k].split() for k in bad)


def test_grammar_restricts_the_output_and_speech_fitting_none_is_empty(model, test_set) -> None:
    items, refs = test_set
    phrases = sorted(set(refs.values()))[: len(set(refs.values())) // 2]
    grammar = Grammar.of_phrases(phrases)
    open_ = _decode(model, items)
    out = _decode(model, items, grammar=grammar)
    inside = [k for k in refs if refs[k] in phrases]
    outside = [k for k in refs if refs[k] not in phrases]
    assert inside and outside
    assert all(out[k] == refs[k] for k in inside)
    assert all(out[k] == "" for k in outside), {k: out[k] for k in outside}
    assert any(open_[k] for k in outside)
    # a grammar in the alternatives syntax, over the words of one utterance
    k = inside[0]
    w = refs[k].split()
    alt = Grammar.parse(f"( {w[0]} | DDDD ) [ {' '.join(w[1:])} ]" if len(w) > 1 else f"( {w[0]} | DDDD )")
    assert _decode(model, [i for i in items if i[0] == k], grammar=alt)[k] == refs[k]


def test_hotword_the_model_cannot_spell(model) -> None:
    from asr.inference import decoder_for
    from asr.options import resolve_options

    with pytest.raises(ContextError, match=r"--hotword: 'NOVEMBER' has characters the model has no token for: 'E'"):
        decoder_for(model, resolve_options(model.cfg.decode, hotwords=parse_hotwords(["NOVEMBER"])))
    with pytest.raises(ContextError, match=r"g.txt: 'STOP'"):
        decoder_for(model, resolve_options(model.cfg.decode, grammar=Grammar.parse("AB | STOP", "g.txt")))
    with pytest.raises(ContextError, match="Hotword"):
        resolve_options(model.cfg.decode, hotwords=["CAB"])


def test_stream_with_hotwords_and_grammar(trained_streaming: Path) -> None:
    import asr
    from asr.options import resolve_options
    from tests.conftest import tone_utterance

    model = asr.load_model(trained_streaming / "best.pt")
    rng = np.random.default_rng(5)
    x = tone_utterance(["BAD", "DC"], rng)

    def finals(options) -> list[str]:
        s = asr.stream(model, options=options)
        for i in range(0, len(x), 1600):
            s.accept(x[i : i + 1600], SR)
        last = s.finish()
        return [f.text for f in s.pop_finals()] + ([last.text] if last.text else [])

    plain = finals(resolve_options(model.cfg.decode))
    assert plain and "DAD" not in " ".join(plain)
    assert "DAD" in " ".join(finals(resolve_options(model.cfg.decode, hotwords=parse_hotwords(["DAD:8"]))))
    assert finals(resolve_options(model.cfg.decode, grammar=Grammar.parse("CAD AB"))) == []


# ------------------------------------------------------------------------------ command line


def _cli(monkeypatch, capsys, *args: object) -> tuple[int, str, str]:
    from cli.main import main

    monkeypatch.setattr(sys, "argv", ["asr", *map(str, args)])
    monkeypatch.delenv("ASR_DEBUG", raising=False)
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_transcribe_and_decode_with_hotwords_and_a_grammar(monkeypatch, capsys, trained: Path, without_cab, test_set, tone_corpus, tmp_path: Path) -> None:
    items, refs = test_set
    lexicon, lm = without_cab
    with_cab = [k for k in refs if "CAB" in refs[k].split()]
    path = dict(items)[with_cab[0]]
    code, out, err = _cli(monkeypatch, capsys, "transcribe", trained / "best.pt", path, "--lexicon", lexicon, "--lm", lm, "--lm-weight", 1)
    assert code == 0 and "CAB" not in out.split("\t")[1].split()
    hot = tmp_path / "hot.txt"
    hot.write_text("CAB\t1\n")
    code, out, err = _cli(monkeypatch, capsys, "transcribe", trained / "best.pt", path, "--lexicon", lexicon, "--lm", lm, "--lm-weight", 1, "--hotwords-file", hot)
    assert code == 0 and out.split("\t")[1].split() == refs[with_cab[0]].split(), (out, err)
    grammar = tmp_path / "g.txt"
    grammar.write_text(refs[with_cab[0]] + "\n")
    hyp = tmp_path / "hyp.jsonl"
    code, out, err = _cli(monkeypatch, capsys, "decode", trained / "best.pt", tone_corpus["test"], "-o", hyp, "--grammar", grammar)
    assert code == 0, err
    import json

    texts = {r["id"]: r["text"] for r in map(json.loads, hyp.read_text().splitlines())}
    assert texts[with_cab[0]] == refs[with_cab[0]] and all(t in ("", refs[with_cab[0]]) for t in texts.values())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--hotword", "CAB:loud"], "error: --hotword: the boost of 'CAB' is not a number: 'loud'"),
        (["--hotword", "NOVEMBER"], "error: --hotword: 'NOVEMBER' has characters the model has no token for"),
        (["--hotwords-file", "EMPTY"], "EMPTY: no hotwords in the file"),
        (["--hotwords-file", "MISSING"], "MISSING: hotwords file not found"),
        (["--grammar", "BROKEN"], "BROKEN:1: '(' is not closed by ')'"),
    ],
    ids=["boost", "unspellable", "empty-file", "missing-file", "grammar"],
)
def test_cli_bad_context_is_one_line_and_exit_1(monkeypatch, capsys, trained: Path, trained_streaming: Path, test_set, tmp_path: Path, flags: list[str], message: str) -> None:
    items, _ = test_set
    files = {"EMPTY": "\n", "BROKEN": "( AB | CAB\n", "m.jsonl": f'{{"id": "a", "audio": "{items[0][1]}", "duration": 1.0, "text": "AB"}}\n'}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    flags = [str(tmp_path / f) if f in ("EMPTY", "MISSING", "BROKEN") else f for f in flags]
    message = message.replace("EMPTY", str(tmp_path / "EMPTY")).replace("MISSING", str(tmp_path / "MISSING")).replace("BROKEN", str(tmp_path / "BROKEN"))
    for command in (["transcribe", trained / "best.pt", items[0][1]], ["decode", trained / "best.pt", tmp_path / "m.jsonl", "-o", tmp_path / "h.jsonl"], ["stream", trained_streaming / "best.pt", items[0][1]]):
        code, out, err = _cli(monkeypatch, capsys, *command, *flags)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 1 and len(lines) == 1 and message in lines[0], (command, err)
        assert "Traceback" not in err


def test_help_says_greedy_becomes_a_beam_search() -> None:
    from typer.testing import CliRunner

    from cli.main import app

    for command in ("transcribe", "decode", "stream", "serve"):
        text = " ".join(CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output.split())
        assert "--hotword" in text and "--grammar" in text and "small beam search" in text, command
