"""Train on generated tone "words", then decode, transcribe, score and resume through the CLI."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import TONE_CONFIG, invoke


def test_training_writes_self_contained_checkpoints(trained: Path) -> None:
    for name in ["best.pt", "last.pt"]:
        ckpt = torch.load(trained / name, weights_only=True)
        assert {"config", "tokens", "normalizer", "model"} <= set(ckpt)
        assert ckpt["tokens"][:2] == ["<blank>", "|"]
    rows = list(csv.DictReader(open(trained / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"]) / 10
    for r in rows:  # memory now, the epoch's own peak (reset each epoch) and the run's peak
        assert 0 < int(r["rss_mb"]) <= int(r["epoch_peak_rss_mb"]) <= int(r["peak_rss_mb"]), r
    steps = list(csv.DictReader(open(trained / "steps.csv")))
    assert len(steps) == int(rows[-1]["step"]) and all(float(s["grad_norm"]) > 0 for s in steps)
    assert (trained / "config.toml").exists()


def test_model_learns_the_tone_words(trained: Path, tone_corpus: dict[str, Path], tmp_path: Path) -> None:
    hyp = tmp_path / "hyp.jsonl"
    invoke("decode", trained / "best.pt", tone_corpus["test"], "--out", hyp)
    assert len(hyp.read_text().splitlines()) == 16
    scores = json.loads(invoke("score", tone_corpus["test"], hyp, "--json").stdout)
    assert scores["utterances"] == 16
    assert scores["wer"] <= 15.0, scores
    assert scores["cer"] <= 5.0, scores


def test_transcribe_prints_path_and_text(trained: Path, tone_corpus: dict[str, Path]) -> None:
    wavs = sorted(tone_corpus["test"].parent.glob("*.wav"))[:2]
    lines = invoke("transcribe", trained / "best.pt", *wavs).stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(w) for w in wavs]
    assert all(line.split("\t")[1].strip() for line in lines)
    rows = [json.loads(line) for line in invoke("transcribe", trained / "best.pt", wavs[0], "--json").stdout.splitlines()]
    assert rows[0]["path"] == str(wavs[0]) and rows[0]["text"]


def test_rerun_resumes_from_last(trained: Path, tone_corpus: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    exp = tmp_path / "exp"
    shutil.copytree(trained, exp)
    done = len(list(csv.DictReader(open(exp / "metrics.csv"))))
    config = tmp_path / "tones.toml"
    config.write_text(TONE_CONFIG)
    data = ["--set", f"data.train={tone_corpus['train']}", "--set", f"data.dev={tone_corpus['dev']}"]
    result = invoke("train", config, "--out", exp, *data, "--set", f"train.epochs={done + 1}")
    assert "resuming" in result.output and f"after epoch {done}" in result.output
    rows = list(csv.DictReader(open(exp / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, done + 2))
    assert torch.load(exp / "last.pt", weights_only=True)["train_state"]["epoch"] == done + 1


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asr", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_bad_input_gives_one_line_and_non_zero_exit(trained: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....not really a wav")
    r = run_cli("transcribe", trained / "best.pt", bad)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert str(bad) in r.stderr and len(r.stderr.strip().splitlines()) == 1

    r = run_cli("transcribe", tmp_path / "no-such-model.pt", bad)
    assert r.returncode == 1 and "no-such-model.pt: file not found" in r.stderr and "Traceback" not in r.stderr

    config = tmp_path / "c.toml"
    config.write_text("[model]\nhiden = 3\n")
    r = run_cli("train", config, "--out", tmp_path / "x")
    assert r.returncode == 1 and "model.hiden" in r.stderr and "Traceback" not in r.stderr


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "asr-ctc", "payload": Evil()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    r = run_cli("transcribe", path, tmp_path / "x.wav")
    assert r.returncode == 1 and "refused" in r.stderr and "pwned" not in r.stdout


def test_transcribe_folder_and_stdin_skips_bad_files(trained: Path, tone_corpus: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "mixed" / "sub"
    folder.mkdir(parents=True)
    good = sorted(tone_corpus["test"].parent.glob("*.wav"))[:3]
    for w in good:
        shutil.copy(w, folder / w.name)
    (folder / "broken.wav").write_bytes(b"not audio")
    (folder / "notes.txt").write_text("ignored: not an audio extension")
    r = run_cli("transcribe", trained / "best.pt", tmp_path / "mixed")
    assert r.returncode == 0, r.stderr
    assert sorted(line.split("\t")[0] for line in r.stdout.splitlines()) == sorted(str(folder / w.name) for w in good)
    assert f"error: {folder / 'broken.wav'}:" in r.stderr and "1 of 4 files" in r.stderr and "Traceback" not in r.stderr

    listed = subprocess.run(
        [sys.executable, "-m", "asr", "transcribe", str(trained / "best.pt"), "-"],
        input="\n".join(str(folder / w.name) for w in good[:2]) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2


def test_help_keeps_bracketed_names() -> None:
    """Typer renders help through rich, whose markup would swallow "[data]" unless escaped."""
    def text(command: str) -> str:
        return " ".join(invoke(command, "--help").stdout.replace("│", " ").split())

    assert "[data], [features], [augment], [model], [train], [decode]" in text("train")
    assert "best [decode] settings" in text("tune-decoder")
