import json
import random
import re
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asr.scoring import (
    ScoringError,
    align,
    align_many,
    format_alignment,
    format_summary,
    read_transcripts,
    score,
    score_files,
    write_details,
    write_trn,
)


def reference_align(ref: list[str], hyp: list[str]) -> list[str]:
    """The textbook form of sclite's alignment (net_dp.c), one cell at a time."""
    n, m = len(ref), len(hyp)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    back = [["I"] * (m + 1) for _ in range(n + 1)]
    for b in range(1, m + 1):
        cost[0][b] = 3 * b
    for a in range(1, n + 1):
        cost[a][0], back[a][0] = 3 * a, "D"
        for b in range(1, m + 1):
            sub = cost[a - 1][b - 1] + (0 if ref[a - 1] == hyp[b - 1] else 4)
            dele, ins = cost[a - 1][b] + 3, cost[a][b - 1] + 3
            if sub <= dele and sub <= ins:
                cost[a][b], back[a][b] = sub, "S"
            elif dele < ins:
                cost[a][b], back[a][b] = dele, "D"
            else:
                cost[a][b], back[a][b] = ins, "I"
    ops, a, b = [], n, m
    while a > 0 or b > 0:
        step = back[a][b]
        if step == "S":
            a, b = a - 1, b - 1
            ops.append("C" if ref[a] == hyp[b] else "S")
        elif step == "D":
            a -= 1
            ops.append("D")
        else:
            b -= 1
            ops.append("I")
    return ops[::-1]


def test_perfect_match():
    result = score({"u1": "the cat sat", "u2": "on the mat"}, {"u1": "the cat sat", "u2": "on the mat"})
    assert result.wer == 0.0 and result.cer == 0.0
    assert (result.hits, result.substitutions, result.deletions, result.insertions) == (6, 0, 0, 0)
    assert result.ref_words == 6 and result.utterances == 2


def test_all_deletions():
    result = score({"u1": "one two three"}, {"u1": ""})
    assert (result.deletions, result.substitutions, result.insertions) == (3, 0, 0)
    assert result.wer == 100.0
    assert result.alignments[0].ops == ["D", "D", "D"]
    assert result.missing == []


def test_all_insertions():
    result = score({"u1": "a b", "u2": ""}, {"u1": "a b", "u2": "x y z"})
    assert (result.insertions, result.hits, result.ref_words) == (3, 2, 2)
    assert result.wer == 150.0
    assert score({"u1": ""}, {"u1": "x"}).wer == 100.0  # nothing to compare with
    assert score({"u1": ""}, {"u1": ""}).wer == 0.0


def test_sclite_weights_change_the_split():
    # Unit-cost Levenshtein (jiwer) makes two substitutions of these; sclite's weights
    # (sub 4, ins/del 3) give a deletion and an insertion, as sclite itself reports.
    assert align("A B".split(), "B C".split()) == ["D", "C", "I"]
    # Here equal weighted costs tie and sclite's tie-breaking yields 5 errors, where
    # unit-cost Levenshtein finds 4 (3 S + 1 D, WER 80%). Checked with sctk sclite 2.10.
    result = score({"u": "b b b c a"}, {"u": "c a a c"})
    assert result.alignments[0].ops == ["D", "D", "D", "C", "I", "C", "I"]
    assert (result.substitutions, result.deletions, result.insertions) == (0, 3, 2)
    assert result.wer == 100.0


def test_normalisation_applies_to_both_sides():
    result = score({"u": "hello, world"}, {"u": "HELLO WORLD"})
    assert result.wer == 0.0 and result.hits == 2


def test_cer_counts_characters_without_spaces():
    # sclite -c on the same pair: 8 correct, 2 deleted characters.
    result = score({"u": "hello world"}, {"u": "helo wrld"})
    assert (result.char_errors, result.ref_chars) == (2, 10)
    assert result.cer == 20.0
    assert score({"u": "ab cd"}, {"u": "abcd"}).cer == 0.0


def test_missing_and_extra_hypotheses():
    refs = {"u1": "a b c", "u2": "d e"}
    result = score(refs, {"u1": "a b c", "u9": "z"})
    assert result.missing == ["u2"] and result.extra == ["u9"]
    assert (result.deletions, result.ref_words, result.utterances) == (2, 5, 2)
    assert result.wer == 40.0
    assert result.to_json()["missing"] == ["u2"]


def test_to_json():
    result = score({"u1": "a b c"}, {"u1": "a x"})
    data = result.to_json()
    assert set(data) == {
        "wer",
        "cer",
        "ser",
        "sentence_errors",
        "substitutions",
        "deletions",
        "insertions",
        "hits",
        "ref_words",
        "utterances",
        "missing",
    }
    assert data["wer"] == 66.67 and result.wer == pytest.approx(200 / 3)
    json.dumps(data)


def test_format_summary():
    text = format_summary(score({"u1": "a b c", "u2": "d"}, {"u1": "a b"}))
    assert "WER  50.00%" in text and "S 0, D 2, I 0" in text
    assert "4 reference words" in text and "2 utterances, 1 without a hypothesis" in text


def test_read_transcripts_jsonl(tmp_path):
    path = tmp_path / "test.jsonl"
    rows = [
        {"id": "a-1", "audio": "a.wav", "duration": 1.0, "text": "Hello world", "speaker": "a"},
        {"id": "a-2", "text": ""},
    ]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert read_transcripts(path) == {"a-1": "Hello world", "a-2": ""}


def test_read_transcripts_kaldi(tmp_path):
    path = tmp_path / "text"
    path.write_text("a-1 HELLO  WORLD\n\na-2\na-3\tTAB SEPARATED\n")
    assert read_transcripts(path) == {"a-1": "HELLO  WORLD", "a-2": "", "a-3": "TAB SEPARATED"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("text", "a x\nb y\n\na z\n", "text:4: duplicate id 'a' (first on line 1)"),
        ("h.jsonl", '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "h.jsonl:2: duplicate id 'a'"),
        ("h.jsonl", '{"id": "a", "text": "x"}\n{"id": "b"\n', "h.jsonl:2: not valid JSON"),
        ("h.jsonl", '{"id": "a", "text": "x"}\n{"id": "b"}\n', "h.jsonl:2: a JSON line needs both"),
        ("text", 'a x\n{"id": "b", "text": "y"}\n', "text:2: a JSON line in a Kaldi text file"),
    ],
)
def test_read_transcripts_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ScoringError, match=re.escape(message)) as err:
        read_transcripts(tmp_path / name)
    assert "\n" not in str(err.value)


def test_read_transcripts_missing_file(tmp_path):
    with pytest.raises(ScoringError, match="nope.jsonl: file not found"):
        read_transcripts(tmp_path / "nope.jsonl")


def test_score_files_mixes_formats(tmp_path):
    (tmp_path / "ref.jsonl").write_text('{"id": "u1", "audio": "x.wav", "duration": 1.0, "text": "The cat."}\n')
    (tmp_path / "hyp.txt").write_text("u1 the hat\n")
    result = score_files(tmp_path / "ref.jsonl", tmp_path / "hyp.txt")
    assert (result.substitutions, result.hits, result.wer) == (1, 1, 50.0)


def test_write_details_matches_sclite_layout(tmp_path):
    result = score(
        {"s-1": "hello wonderful world again", "s-2": "ab", "s-3": ""},
        {"s-1": "hello wonder world", "s-2": "abcdef xy", "s-3": ""},
    )
    write_details(result, tmp_path / "out" / "details.txt")
    # Blocks as sclite's pra report prints them for the same texts.
    assert (tmp_path / "out" / "details.txt").read_text() == (
        "id: (s-1)\n"
        "Scores: (#C #S #D #I) 2 1 1 0\n"
        "REF:  hello WONDERFUL world AGAIN \n"
        "HYP:  hello WONDER    world ***** \n"
        "Eval:       S               D     \n"
        "\n"
        "id: (s-2)\n"
        "Scores: (#C #S #D #I) 0 1 0 1\n"
        "REF:  ****** AB \n"
        "HYP:  ABCDEF XY \n"
        "Eval: I      S  \n"
        "\n"
        "id: (s-3)\n"
        "Scores: (#C #S #D #I) 0 0 0 0\n"
    )


def test_write_trn(tmp_path):
    refs = {"an406-fcaw-b": "Hello, world!", "0_jackson_0": "zero", "u-3": "x"}
    ref_path, hyp_path = write_trn(refs, {"an406-fcaw-b": "hello word", "u-3": "", "extra-1": "y"}, tmp_path)
    assert ref_path.read_text() == "HELLO WORLD (an406-fcaw-b)\nZERO (0_jackson_0)\nX (u-3)\n"
    assert hyp_path.read_text() == "HELLO WORD (an406-fcaw-b)\n(0_jackson_0)\n(u-3)\n"
    with pytest.raises(ScoringError, match="cannot be written"):
        write_trn({"bad id": "x"}, {}, tmp_path)


@given(st.lists(st.sampled_from(["a", "b", "c", "dd", "e'f"]), max_size=12))
def test_text_against_itself_scores_zero(words):
    text = " ".join(words)
    result = score({"u": text}, {"u": text})
    assert result.wer == 0.0 and result.cer == 0.0 and result.hits == len(words)


words_lists = st.lists(st.sampled_from(["a", "b", "c", "dd"]), max_size=12)


@given(st.lists(st.tuples(words_lists, words_lists), min_size=1, max_size=8))
def test_alignments_account_for_every_word(pairs):
    refs = {f"u{k}": " ".join(ref) for k, (ref, _) in enumerate(pairs)}
    hyps = {f"u{k}": " ".join(hyp) for k, (_, hyp) in enumerate(pairs)}
    result = score(refs, hyps)
    assert result.substitutions + result.deletions + result.hits == result.ref_words
    assert result.ref_words == sum(len(ref) for ref, _ in pairs)
    for al, (ref, hyp) in zip(result.alignments, pairs, strict=True):
        assert al.ops == reference_align([w.upper() for w in ref], [w.upper() for w in hyp])
        c, s, d, i = al.counts()
        assert c + s + i == len(hyp)


def test_batched_alignment_equals_one_at_a_time():
    rng = random.Random(7)
    pairs = [
        ([rng.choice("abc") for _ in range(rng.randint(0, 30))], [rng.choice("abc") for _ in range(rng.randint(0, 30))])
        for _ in range(300)
    ]
    assert align_many(pairs) == [reference_align(ref, hyp) for ref, hyp in pairs]


def _sclite_command() -> list[str] | None:
    if shutil.which("sctk"):
        return ["sctk", "sclite"]
    return ["sclite"] if shutil.which("sclite") else None


PRA_BLOCK = re.compile(
    r"id: \((\S+)\)\nScores: \(#C #S #D #I\) (\d+) (\d+) (\d+) (\d+)\n(?:REF: .*\nHYP: .*\nEval: .*\n)?"
)


def _run_sclite(directory, *options: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    command = [*_sclite_command(), "-r", "ref.trn", "trn", "-h", "hyp.trn", "trn", "-i", "rm", *options]
    out = subprocess.run([*command, "-o", "pra", "stdout"], cwd=directory, capture_output=True, text=True, check=True)
    return {m[1]: (m[0], tuple(map(int, m.groups()[1:]))) for m in PRA_BLOCK.finditer(out.stdout)}


@pytest.mark.skipif(_sclite_command() is None, reason="NIST sclite (sctk) is not installed")
def test_counts_and_alignments_match_sclite(tmp_path):
    rng = random.Random(2024)
    vocabularies = [["a", "b"], ["a", "b", "c", "d"], ["the", "then", "he", "hen", "an"], ["aa", "b", "ccc", "d'd"]]
    refs, hyps = {"an406-fcaw-b": "", "0_jackson_0": "a b"}, {"an406-fcaw-b": "c", "0_jackson_0": ""}
    for k in range(200):
        vocab = rng.choice(vocabularies)
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 15))]
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 15))]
        if ref and rng.random() < 0.5:  # a near miss rather than unrelated texts
            hyp = [w if rng.random() < 0.8 else rng.choice(vocab) for w in ref]
            hyp.insert(rng.randint(0, len(hyp)), rng.choice(vocab))
        refs[f"s{k % 5}-{k}"] = " ".join(ref)
        if rng.random() < 0.95:
            hyps[f"s{k % 5}-{k}"] = " ".join(hyp)
    write_trn(refs, hyps, tmp_path)
    result = score(refs, hyps)

    words = _run_sclite(tmp_path)
    assert len(words) == len(refs)
    for al in result.alignments:
        block, counts = words[al.id]
        assert al.counts() == counts, al.id
        assert format_alignment(al) == block

    chars = _run_sclite(tmp_path, "-c")
    assert result.char_errors == sum(s + d + i for _, (c, s, d, i) in chars.values())
    assert result.ref_chars == sum(c + s + d for _, (c, s, d, i) in chars.values())


def test_sentence_errors_count_utterances_with_any_error():
    result = score({"u1": "a b", "u2": "c", "u3": "d e", "u4": ""}, {"u1": "a b", "u2": "x", "u3": "d e f"})
    assert result.sentence_errors == 2 and result.to_json()["ser"] == 50.0
