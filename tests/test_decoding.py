"""Beam search with a lexicon and n-gram LM, decoder tuning, output formats and export, through
the CLI, on the tone-word model that tests/test_end_to_end.py trains."""

import json
from pathlib import Path

import pytest

from tests.conftest import invoke


@pytest.fixture(scope="module")
def lm_files(trained: Path, tone_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm")
    arpa, lexicon = root / "3gram.arpa", root / "lexicon.txt"
    out = invoke("lm", "build", tone_corpus["train"], "--order", "3", "--out", arpa).stdout
    assert "1-grams" in out and "\\data\\" in arpa.read_text()
    invoke("lm", "lexicon", trained / "best.pt", tone_corpus["train"], "--out", lexicon)
    assert "CAB\tC A B |" in lexicon.read_text().splitlines()
    return {"lm": arpa, "lexicon": lexicon}


def wer(ref: Path, hyp: Path) -> float:
    return json.loads(invoke("score", ref, hyp, "--json").stdout)["wer"]


def test_beam_search_with_lm_is_no_worse_than_greedy(trained: Path, tone_corpus: dict[str, Path], lm_files: dict[str, Path], tmp_path: Path) -> None:
    test = tone_corpus["test"]
    invoke("decode", trained / "best.pt", test, "--out", tmp_path / "greedy.jsonl")
    invoke("decode", trained / "best.pt", test, "--out", tmp_path / "lm.jsonl", "--lm", lm_files["lm"], "--lexicon", lm_files["lexicon"], "--nbest", "3")
    assert wer(test, tmp_path / "lm.jsonl") <= wer(test, tmp_path / "greedy.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "lm.jsonl").read_text().splitlines()]
    assert all(1 <= len(r["nbest"]) <= 3 and r["nbest"][0]["text"] == r["text"] for r in rows)
    # Lexicon-free beam search without an LM gives the greedy answer on these peaky posteriors.
    invoke("decode", trained / "best.pt", test, "--out", tmp_path / "beam.jsonl", "--beam")
    assert wer(test, tmp_path / "beam.jsonl") == wer(test, tmp_path / "greedy.jsonl")


def test_tune_decoder_writes_settings_that_decode_reads(trained: Path, tone_corpus: dict[str, Path], lm_files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "decode.toml"
    result = invoke("tune-decoder", trained / "best.pt", tone_corpus["dev"], "--lm", lm_files["lm"], "--lexicon", lm_files["lexicon"], "--lm-weights", "0,1", "--word-scores", "0,1", "--out", out)
    assert len([line for line in result.stdout.splitlines() if line.startswith("lm_weight")]) == 4
    assert "[decode]" in out.read_text() and "lm_weight" in out.read_text()
    invoke("decode", trained / "best.pt", tone_corpus["test"], "--out", tmp_path / "h.jsonl", "--lm", lm_files["lm"], "--lexicon", lm_files["lexicon"], "--decoder-config", out)


def test_transcribe_formats(trained: Path, tone_corpus: dict[str, Path], tmp_path: Path) -> None:
    wav = sorted(tone_corpus["test"].parent.glob("*.wav"))[0]
    row = json.loads(invoke("transcribe", trained / "best.pt", wav, "--format", "json").stdout)
    assert row["text"] and row["duration"] > 0 and row["words"]
    assert all(0 <= w["start"] < w["end"] <= row["duration"] + 0.05 and 0 <= w["confidence"] <= 1 for w in row["words"])
    assert " ".join(w["word"] for w in row["words"]) == row["text"]
    srt = invoke("transcribe", trained / "best.pt", wav, "--format", "srt").stdout
    assert srt.startswith("1\n") and " --> " in srt
    vtt = invoke("transcribe", trained / "best.pt", wav, "--format", "vtt").stdout
    assert vtt.startswith("WEBVTT")
    ctm = invoke("transcribe", trained / "best.pt", wav, "--format", "ctm").stdout.splitlines()
    assert len(ctm) == len(row["words"]) and all(len(line.split()) == 6 for line in ctm)
    invoke("transcribe", trained / "best.pt", wav, "--format", "srt", "--output-dir", tmp_path / "subs")
    assert (tmp_path / "subs" / f"{wav.stem}.srt").read_text() == srt


@pytest.mark.parametrize(("fmt", "suffix"), [("torchscript", ".ts"), ("onnx", ".onnx")])
def test_exported_model_transcribes_like_the_checkpoint(trained: Path, tone_corpus: dict[str, Path], tmp_path: Path, fmt: str, suffix: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    exported = tmp_path / f"model{suffix}"
    invoke("export", trained / "best.pt", "--out", exported, "--format", fmt)
    wavs = sorted(tone_corpus["test"].parent.glob("*.wav"))[:4]
    assert invoke("transcribe", exported, *wavs).stdout == invoke("transcribe", trained / "best.pt", *wavs).stdout
    quantized = tmp_path / f"model-int8{suffix}"
    invoke("export", trained / "best.pt", "--out", quantized, "--format", fmt, "--quantize", "int8")
    assert quantized.stat().st_size < exported.stat().st_size
    invoke("decode", quantized, tone_corpus["test"], "--out", tmp_path / "q.jsonl")
    invoke("decode", trained / "best.pt", tone_corpus["test"], "--out", tmp_path / "c.jsonl")
    assert abs(wer(tone_corpus["test"], tmp_path / "q.jsonl") - wer(tone_corpus["test"], tmp_path / "c.jsonl")) <= 10


def test_srt_word_times_match_where_the_words_are(trained: Path, tmp_path: Path) -> None:
    """Words with known positions (tone words between silences of known length): every word's
    start and end in the JSON and the SRT cues fall within 0.1 s of the truth."""
    import numpy as np
    import soundfile as sf

    from tests.conftest import tone_word

    sr, rng = 16000, np.random.default_rng(7)
    words = ["CAB", "DAD", "BC"]  # as long as the training utterances (1-3 words)
    pieces, truth, t = [], [], 0.0
    for i, w in enumerate(words):
        gap = [0.2, 0.25, 0.2][i]  # near the training data's 0.2 s
        pieces.append(np.zeros(int(gap * sr)))
        t += gap
        pieces.append(tone_word(w, sr))
        truth.append((w, t, t + 0.12 * len(w)))
        t += 0.12 * len(w)
    pieces.append(np.zeros(int(0.2 * sr)))
    audio = np.concatenate(pieces)
    wav = tmp_path / "joined.wav"
    sf.write(wav, (audio + 0.01 * rng.standard_normal(len(audio))).astype(np.float32), sr)

    row = json.loads(invoke("transcribe", trained / "best.pt", wav, "--format", "json").stdout)
    assert [w["word"] for w in row["words"]] == words
    for w, (_, start, end) in zip(row["words"], truth, strict=True):
        assert abs(w["start"] - start) <= 0.1 and abs(w["end"] - end) <= 0.1, (w, start, end)

    srt = invoke("transcribe", trained / "best.pt", wav, "--format", "srt").stdout
    cues = [block.splitlines() for block in srt.strip().split("\n\n")]
    assert [int(c[0]) for c in cues] == list(range(1, len(cues) + 1))

    def seconds(stamp: str) -> float:
        h, m, s = stamp.replace(",", ".").split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    first = seconds(cues[0][1].split(" --> ")[0])
    last = seconds(cues[-1][1].split(" --> ")[1])
    assert abs(first - truth[0][1]) <= 0.1 and abs(last - truth[-1][2]) <= 0.1


def test_ctc_log_likelihoods_sum_every_alignment() -> None:
    import itertools

    import torch

    from asr.views import ctc_log_likelihoods

    torch.manual_seed(0)
    frames, vocab, boundary = 4, 3, 1  # tokens: blank, |, A
    log_probs = torch.randn(frames, vocab).log_softmax(-1)
    got = ctc_log_likelihoods(log_probs, [[2], []], boundary)
    closed = torch.cat([log_probs, torch.tensor([[-1e4, 0.0, -1e4]])])  # the search's closing boundary frame

    def total(target: list[int]) -> torch.Tensor:
        def collapse(path: tuple[int, ...]) -> list[int]:
            return [k for k, _ in itertools.groupby(path) if k != 0]

        paths = [p for p in itertools.product(range(vocab), repeat=frames + 1) if collapse(p) == target]
        return torch.logsumexp(torch.stack([sum(closed[t, k] for t, k in enumerate(p)) for p in paths]), 0)

    want = torch.stack([torch.maximum(total([2, 1]), total([1, 2, 1])), total([1])])
    assert torch.allclose(got, want, atol=1e-4)


def test_speed_views_outvote_one_views_narrow_choice(tmp_path: Path) -> None:
    import torch

    from asr.beam import BeamSearch
    from asr.config import DecodeConfig
    from asr.text import Tokenizer
    from asr.views import ctc_log_likelihoods

    tokenizer = Tokenizer(("<blank>", "|", "A", "B"))
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("A\tA |\nB\tB |\n")
    quiet = [0.90, 0.04, 0.03, 0.03]
    narrow_a = torch.tensor([[0.05, 0.05, 0.50, 0.40], quiet, quiet]).log()  # A by a little
    clear_b = torch.tensor([[0.05, 0.05, 0.10, 0.80], [0.05, 0.05, 0.10, 0.80], quiet, quiet]).log()  # B by a lot
    cfg = DecodeConfig(lm_weight=0.0, word_score=0.0, speeds=[1.0, 1.1])
    search = BeamSearch(tokenizer, cfg, lexicon=lexicon, nbest=2)
    assert search(narrow_a[None], torch.tensor([3]))[0][0].text == "A"
    best, second = search.search_views([narrow_a, clear_b])
    assert (best.text, second.text) == ("B", "A")
    mean = torch.stack([ctc_log_likelihoods(v, [[3]], 1) for v in (narrow_a, clear_b)]).mean()
    assert abs(best.score - float(mean)) < 1e-4


def test_decode_and_transcribe_with_speed_views(trained: Path, tone_corpus: dict[str, Path], lm_files: dict[str, Path], tmp_path: Path) -> None:
    test = tone_corpus["test"]
    invoke("decode", trained / "best.pt", test, "--out", tmp_path / "greedy.jsonl")
    lm = ["--lm", lm_files["lm"], "--lexicon", lm_files["lexicon"]]
    invoke("decode", trained / "best.pt", test, "--out", tmp_path / "views.jsonl", *lm, "--speeds", "0.9,1,1.1", "--nbest", "2")
    rows = [json.loads(line) for line in (tmp_path / "views.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(len(r["nbest"]) == 2 and r["nbest"][0]["score"] >= r["nbest"][1]["score"] for r in rows)
    assert wer(test, tmp_path / "views.jsonl") <= wer(test, tmp_path / "greedy.jsonl")
    tuned = tmp_path / "decode.toml"
    invoke("tune-decoder", trained / "best.pt", tone_corpus["dev"], *lm, "--lm-weights", "0,1", "--word-scores", "0", "--speeds", "0.9,1,1.1", "--out", tuned)
    assert "speeds = [0.9, 1.0, 1.1]" in tuned.read_text()
    wav = next((test.parent).glob("*.wav"))
    words = json.loads(invoke("transcribe", trained / "best.pt", wav, "--json", *lm, "--speeds", "0.9,1,1.1").stdout)["words"]
    assert words and all(0 <= w["start"] < w["end"] for w in words)


@pytest.mark.parametrize("speeds", ["0.9,1.1", "1,1", "0.3,1"])
def test_bad_speed_views_are_one_line_errors(trained: Path, tone_corpus: dict[str, Path], tmp_path: Path, speeds: str) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "asr", "decode", str(trained / "best.pt"), str(tone_corpus["test"]), "--out", str(tmp_path / "h.jsonl"), "--speeds", speeds], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "decode.speeds must be distinct factors between 0.5 and 2.0, 1.0 among them" in proc.stderr.strip().splitlines()[-1]
