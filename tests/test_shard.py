"""Decoding over many processes and machines (asr.shard): `asr decode --nj N`, `--shard I/N`
and `asr merge-shards` give the bytes one process writes; a missing or foreign part is refused
in one line naming it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asr.manifest import Utterance
from asr.shard import ShardError, balanced_shares, merge_shards, parse_shard, part_path, shard_of
from tests.conftest import invoke

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tone_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dev + test of the tone corpus in one manifest (32 utterances, ids not in sorted order), plus one unreadable file."""
    root = tmp_path_factory.mktemp("shard")
    rows = []
    for name in ("dev", "test"):
        for line in tone_corpus[name].read_text().splitlines():
            row = json.loads(line)
            row["audio"] = str(tone_corpus[name].parent / row["audio"])
            rows.insert(len(rows) // 2, row)
    (root / "broken.wav").write_bytes(b"RIFF....WAVEfmt not really")
    rows.insert(5, {"id": "broken", "audio": str(root / "broken.wav"), "duration": 1.0, "text": "AB"})
    manifest = root / "all.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture(scope="module")
def lm_files(trained: Path, tone_corpus: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm")
    invoke("lm", "build", tone_corpus["train"], "--order", "3", "--out", root / "3gram.arpa")
    invoke("lm", "lexicon", trained / "best.pt", tone_corpus["train"], "--out", root / "lexicon.txt")
    return {"lm": root / "3gram.arpa", "lexicon": root / "lexicon.txt"}


def decode(model: Path, manifest: Path, out: Path, *extra: object) -> bytes:
    invoke("decode", model, manifest, "--out", out, *extra)
    return out.read_bytes()


def sharded(model: Path, manifest: Path, out: Path, n: int, *extra: object) -> bytes:
    for i in range(n):
        invoke("decode", model, manifest, "--out", out, "--shard", f"{i}/{n}", *extra)
        assert part_path(out, i, n).exists()
    invoke("merge-shards", manifest, "--out", out, "--shards", n)
    return out.read_bytes()


@pytest.mark.parametrize("mode", ["greedy", "lm"])
def test_nj_and_merged_shards_equal_one_process(mode: str, trained: Path, corpus: Path, lm_files: dict[str, Path], tmp_path: Path) -> None:
    extra = [] if mode == "greedy" else ["--lm", lm_files["lm"], "--lexicon", lm_files["lexicon"], "--nbest", "3"]
    model = trained / "best.pt"
    one = decode(model, corpus, tmp_path / "one.jsonl", *extra)
    assert one.count(b"\n") == 32 and b'"broken"' not in one  # the unreadable one is left out, as ever
    assert decode(model, corpus, tmp_path / "nj.jsonl", "--nj", "2", *extra) == one
    assert sharded(model, corpus, tmp_path / "sh.jsonl", 3, *extra) == one
    assert not list(tmp_path.glob(".nj.jsonl.nj-*"))  # the workers' parts are cleaned up


def test_nj_within_a_shard_writes_that_shards_part(trained: Path, corpus: Path, tmp_path: Path) -> None:
    one = decode(trained / "best.pt", corpus, tmp_path / "one.jsonl").splitlines(keepends=True)
    out = tmp_path / "h.jsonl"
    invoke("decode", trained / "best.pt", corpus, "--out", out, "--shard", "1/2", "--nj", "2")
    assert not out.exists()
    part = part_path(out, 1, 2).read_bytes().splitlines(keepends=True)
    assert part == [line for line in one if shard_of(json.loads(line)["id"], 2) == 1]
    assert 0 < len(part) < len(one)


def test_a_failed_shard_is_rerun_alone(trained: Path, corpus: Path, tmp_path: Path) -> None:
    model, out = trained / "best.pt", tmp_path / "h.jsonl"
    one = decode(model, corpus, tmp_path / "one.jsonl")
    sharded(model, corpus, out, 3)
    kept = {i: part_path(out, i, 3).stat().st_mtime_ns for i in (0, 2)}
    part_path(out, 1, 3).unlink()
    out.unlink()
    proc = subprocess.run([sys.executable, "-m", "asr", "merge-shards", str(corpus), "--out", str(out), "--shards", "3"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "1/3" in lines[0] and str(part_path(out, 1, 3)) in lines[0] and "0/3" not in lines[0]
    assert not out.exists()
    invoke("decode", model, corpus, "--out", out, "--shard", "1/3")
    invoke("merge-shards", corpus, "--out", out, "--shards", "3")
    assert out.read_bytes() == one
    assert {i: part_path(out, i, 3).stat().st_mtime_ns for i in (0, 2)} == kept


def test_merge_names_every_missing_part_and_refuses_foreign_ones(trained: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "h.jsonl"
    with pytest.raises(ShardError, match=r"3 of 3 shard parts missing: 0/3 .*, 1/3 .*, 2/3 "):
        merge_shards(corpus, out, 3)
    sharded(trained / "best.pt", corpus, out, 2)
    for i in range(3):  # parts of a 2-way split where a 3-way one is expected
        part_path(out, i, 3).write_bytes(part_path(out, i % 2, 2).read_bytes())
    with pytest.raises(ShardError, match=r"belongs to shard \d/3, not \d/3"):
        merge_shards(corpus, out, 3)
    other = tmp_path / "other.jsonl"
    other.write_text(corpus.read_text().replace('"id": "s3-', '"id": "x3-'))
    with pytest.raises(ShardError, match="is not in the manifest"):
        merge_shards(other, out, 2)
    part_path(out, 0, 2).write_text('{"id": "s2-utt000", "text": "AB"\n')
    with pytest.raises(ShardError, match=r"shard-0-of-2:1: not valid JSON"):
        merge_shards(corpus, out, 2)


def test_shard_of_is_sha1_of_the_id() -> None:
    import hashlib

    ids = [f"spk{i % 7}-utt{i:05d}" for i in range(3000)] + ["é-ü", "a\udcff"]
    for n in (1, 2, 3, 8):
        shards = [shard_of(u, n) for u in ids]
        assert all(0 <= s < n for s in shards)
        counts = [shards.count(k) for k in range(n)]
        assert max(counts) - min(counts) < 0.1 * len(ids) / n + 10
    assert shard_of("utt1", 5) == int(hashlib.sha1(b"utt1").hexdigest(), 16) % 5


def test_balanced_shares_split_the_audio_evenly_whatever_the_order() -> None:
    utts = [Utterance(f"u{i}", "", float(1 + (i * 37) % 11), "") for i in range(50)]
    shares = balanced_shares(utts, 3)
    assert sorted(u for s in shares for u in s) == sorted(u.id for u in utts)
    seconds = [sum(u.duration for u in utts if u.id in s) for s in shares]
    assert max(seconds) - min(seconds) <= max(u.duration for u in utts)
    assert balanced_shares(utts[::-1], 3) == shares
    assert [len(s) for s in balanced_shares([Utterance(f"u{i}", "", 0.0, "") for i in range(7)], 3)] == [3, 2, 2]


@pytest.mark.parametrize("text", ["3/3", "1", "-1/2", "a/b", "1/0", ""])
def test_bad_shard_is_refused(text: str) -> None:
    with pytest.raises(ShardError, match="I/N"):
        parse_shard(text)


def test_bad_shard_and_nj_in_one_line(trained: Path, corpus: Path, tmp_path: Path) -> None:
    for flags, said in ((["--shard", "2/2"], "--shard expects I/N"), (["--nj", "0"], "--nj")):
        proc = subprocess.run([sys.executable, "-m", "asr", "decode", str(trained / "best.pt"), str(corpus), "--out", str(tmp_path / "h.jsonl"), *flags],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr and said in proc.stderr


@pytest.mark.parametrize(("fmt", "suffix"), [("torchscript", ".ts"), ("onnx", ".onnx")])
def test_nj_with_an_exported_model(fmt: str, suffix: str, trained: Path, corpus: Path, tmp_path: Path) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    exported = tmp_path / f"model{suffix}"
    invoke("export", trained / "best.pt", "--out", exported, "--format", fmt)
    assert decode(exported, corpus, tmp_path / "nj.jsonl", "--nj", "2") == decode(exported, corpus, tmp_path / "one.jsonl")


def test_spawned_workers_load_the_model_themselves(trained: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asr.shard
    from asr.shard import decode_parallel

    monkeypatch.setattr(asr.shard, "START_METHOD", "spawn")
    report = decode_parallel(trained / "best.pt", corpus, tmp_path / "nj.jsonl", 2)
    assert report.decoded == 32 and [f[0] for f in report.failed] == ["broken"]
    assert (tmp_path / "nj.jsonl").read_bytes() == decode(trained / "best.pt", corpus, tmp_path / "one.jsonl")


def test_a_failing_worker_is_named_and_nothing_is_written(trained: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asr.decode
    from asr.shard import decode_parallel

    decode_manifest = asr.decode.decode_manifest

    def failing(model, manifest, out, *args, select=None, **kwargs):
        if select("s3-utt000"):
            raise OSError("disk full")
        return decode_manifest(model, manifest, out, *args, select=select, **kwargs)

    monkeypatch.setattr(asr.decode, "decode_manifest", failing)  # the forked workers see it
    with pytest.raises(ShardError, match=r"all.jsonl: decode worker \d of 2 failed: disk full$"):
        decode_parallel(trained / "best.pt", corpus, tmp_path / "nj.jsonl", 2)
    assert not (tmp_path / "nj.jsonl").exists() and not list(tmp_path.iterdir())
