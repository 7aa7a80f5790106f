"""Field reports of issue #19, each kind with the reported input and variants of it:

1. outputs and ids named after inputs stay distinct (same file name in two speaker folders,
   several folder arguments, explicit files and stdin lists, one stem with two extensions,
   folder ids that join parts with "-", duplicate manifest ids, a split named "rejected");
2. file names that are not UTF-8 (a Latin-1 byte) open in every reader, and every writer keeps
   the name's bytes (text files) or escapes them losslessly (JSON), so that outputs lead back
   to the same file;
4. symbolic links to folders and files are followed, link cycles end, dangling links are
   reported with their reason;
5. audio sampled below the model's training rate is transcribed and said so once per run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from tests.conftest import invoke, tone_utterance

ROOT = Path(__file__).resolve().parents[1]
LATIN1 = os.fsdecode(b"caf\xe9")  # 'caf\udce9': the name's byte 0xE9 is not UTF-8


def put_wav(path: Path | str, words: list[str], sr: int = 16000, seed: int = 0, subtype: str = "PCM_16", fmt: str | None = None, transcript: str | None = None) -> Path:
    """Tone words as audio at `sr`; with `transcript`, a same-stem .txt beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = tone_utterance(words, np.random.default_rng(seed), sr)
    sf.write(os.fsencode(path), x, sr, subtype=subtype, format=fmt or path.suffix[1:].upper())
    if transcript is not None:
        path.with_suffix(".txt").write_text(transcript, encoding="utf-8")
    return path


def run(*args: object, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`asr` in a subprocess whose stdout is strict UTF-8 (as in a UTF-8 locale); output as bytes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"}
    env.pop("ASR_DEBUG", None)
    argv = [sys.executable, "-m", "asr", *(os.fspath(a) if isinstance(a, Path) else str(a) for a in args)]
    return subprocess.run(argv, input=stdin, capture_output=True, env=env, cwd=cwd, timeout=600)


def cli(*args: object, stdin: str | bytes | None = None):
    """`asr` in-process; returns the result whatever the exit code."""
    from cli.main import app

    return CliRunner().invoke(app, [os.fspath(a) if isinstance(a, Path) else str(a) for a in args], input=stdin)


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# --- 1. distinct inputs, distinct outputs ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["srt", "vtt", "txt", "json", "ctm"])
def test_same_file_name_in_two_speaker_folders_keeps_both_outputs(trained: Path, tmp_path: Path, fmt: str) -> None:
    """The reported case: spk1/utt1.wav and spk2/utt1.wav; every format mirrors the layout."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    one = put_wav(corpus / "spk1" / "utt1.wav", ["AB"], seed=1)
    two = put_wav(corpus / "spk2" / "utt1.wav", ["DAD", "CAB", "BC"], seed=2)
    r = invoke("transcribe", trained / "best.pt", corpus, "--format", fmt, "--output-dir", out)
    assert files_under(out) == [f"spk1/utt1.{fmt}", f"spk2/utt1.{fmt}"], r.output
    for wav, rel in ((one, "spk1/utt1"), (two, "spk2/utt1")):
        alone = invoke("transcribe", trained / "best.pt", wav, "--format", fmt).stdout
        if fmt == "ctm":  # the id names the file within the folder given: spk1-utt1, as `prepare folder`
            alone = alone.replace("utt1 1 ", f"{rel.replace('/', '-')} 1 ")
        if fmt == "json":
            got = json.loads((out / f"{rel}.{fmt}").read_text())
            want = json.loads(alone)
            assert got["path"] == str(wav) and got["text"] == want["text"] and got["words"] == want["words"]
        else:
            assert (out / f"{rel}.{fmt}").read_text() == alone


def test_explicit_files_stdin_lists_and_several_folders_keep_distinct_outputs(trained: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    files = [put_wav(a / "spk1" / "utt1.wav", ["AB"], seed=1), put_wav(b / "spk1" / "utt1.wav", ["CAB"], seed=2)]
    model = trained / "best.pt"

    invoke("transcribe", model, *files, "--format", "srt", "--output-dir", tmp_path / "explicit")
    assert files_under(tmp_path / "explicit") == ["a/spk1/utt1.srt", "b/spk1/utt1.srt"]

    listed = "".join(f"{f}\n" for f in files)
    r = cli("transcribe", model, "-", "--format", "vtt", "--output-dir", tmp_path / "stdin", stdin=listed)
    assert r.exit_code == 0, r.output
    assert files_under(tmp_path / "stdin") == ["a/spk1/utt1.vtt", "b/spk1/utt1.vtt"]

    invoke("transcribe", model, a, b, "--format", "txt", "--output-dir", tmp_path / "folders")
    assert files_under(tmp_path / "folders") == ["a/spk1/utt1.txt", "b/spk1/utt1.txt"]
    for f, rel in zip(files, ["a/spk1/utt1.txt", "b/spk1/utt1.txt"], strict=True):
        assert (tmp_path / "folders" / rel).read_text().split("\t")[0] == str(f)

    # one file alone, or files of one folder, keep their plain names as before
    invoke("transcribe", model, files[0], "--format", "srt", "--output-dir", tmp_path / "single")
    assert files_under(tmp_path / "single") == ["utt1.srt"]
    invoke("transcribe", model, a / "spk1", "--format", "srt", "--output-dir", tmp_path / "one_folder")
    assert files_under(tmp_path / "one_folder") == ["utt1.srt"]


def test_one_stem_with_two_extensions_keeps_both(trained: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    put_wav(corpus / "utt1.wav", ["AB"], seed=1)
    put_wav(corpus / "utt1.flac", ["CAB"], seed=2)
    put_wav(corpus / "utt2.wav", ["BC"], seed=3)
    invoke("transcribe", trained / "best.pt", corpus, "--format", "srt", "--output-dir", tmp_path / "out")
    assert files_under(tmp_path / "out") == ["utt1.flac.srt", "utt1.wav.srt", "utt2.srt"]
    ctm = invoke("transcribe", trained / "best.pt", corpus, "--format", "ctm").stdout
    assert {line.split()[0] for line in ctm.splitlines()} == {"utt1.flac", "utt1.wav", "utt2"}


def test_ctm_ids_of_two_speaker_folders_are_distinct_on_stdout(trained: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    put_wav(corpus / "spk1" / "utt1.wav", ["AB"], seed=1)
    put_wav(corpus / "spk2" / "utt1.wav", ["CAB"], seed=2)
    ctm = invoke("transcribe", trained / "best.pt", corpus, "--format", "ctm").stdout
    assert {line.split()[0] for line in ctm.splitlines()} == {"spk1-utt1", "spk2-utt1"}


def test_ctm_ids_that_cannot_be_told_apart_are_refused_before_any_work(tmp_path: Path) -> None:
    """"a b.wav" and "a_b.wav" both become CTM id a_b (a CTM field holds no space): one line, exit 1."""
    put_wav(tmp_path / "c" / "a b.wav", ["AB"])
    put_wav(tmp_path / "c" / "a_b.wav", ["AB"])
    r = run("transcribe", tmp_path / "no-model-needed.pt", tmp_path / "c", "--format", "ctm")
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "a b.wav" in err and "a_b.wav" in err and "no-model-needed" not in err  # refused before loading the model


def test_output_written_twice_through_an_alias_is_refused(trained: Path, tmp_path: Path) -> None:
    """Backstop for file systems that alias names (case-insensitive ones): out/spk2 is a link to
    out/spk1, so both outputs would be one file; the second is reported, not written over the first."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    put_wav(corpus / "spk1" / "utt1.wav", ["AB"], seed=1)
    put_wav(corpus / "spk2" / "utt1.wav", ["CAB"], seed=2)
    (out / "spk1").mkdir(parents=True)
    os.symlink(out / "spk1", out / "spk2")
    r = cli("transcribe", trained / "best.pt", corpus, "--format", "txt", "--output-dir", out)
    assert r.exit_code == 0 and "1 of 2 files could not be transcribed" in r.stderr, r.output
    assert "would overwrite the output of" in r.stderr and str(corpus / "spk1" / "utt1.wav") in r.stderr
    assert (out / "spk1" / "utt1.txt").read_text().startswith(str(corpus / "spk1" / "utt1.wav") + "\t")


def test_prepare_folder_ids_stay_distinct(tmp_path: Path) -> None:
    """Ids join folders with "-": a-b/c.wav and a/b-c.wav, or utt1.wav and utt1.flac, would share one."""
    from asr.corpora import prepare
    from asr.manifest import read_jsonl, read_manifest

    src = tmp_path / "src"
    for rel in ["a-b/c.wav", "a/b-c.wav", "spk/utt1.wav", "spk/utt1.flac", "spk/utt2.wav"]:
        put_wav(src / rel, ["AB"], transcript="AB")
    report = prepare("folder", src, tmp_path / "out")
    utts = read_manifest(tmp_path / "out" / "all.jsonl")
    assert report.kept == 5 and report.rejected == 0 and list(read_jsonl(tmp_path / "out" / "rejected.jsonl")) == []
    assert {u.id: Path(u.audio).relative_to(src).as_posix() for u in utts} == {
        "a-b/c.wav": "a-b/c.wav",
        "a/b-c.wav": "a/b-c.wav",
        "spk-utt1.wav": "spk/utt1.wav",
        "spk-utt1.flac": "spk/utt1.flac",
        "spk-utt2": "spk/utt2.wav",
    }


def test_distinct_names_resolves_every_clash() -> None:
    from asr.fileio import distinct_names

    rels = ["a.wav", "a.flac", "a.wav.wav", "x/y-z.wav", "x-y/z.wav", "x-y-z.wav", "Q.wav"]
    for sep in ("/", "-"):
        names = distinct_names(rels, sep)
        assert len(set(names)) == len(rels), (sep, names)
    assert distinct_names(["spk1/utt1.wav", "spk2/utt1.wav"], "-") == ["spk1-utt1", "spk2-utt1"]
    with pytest.raises(ValueError, match="a b.wav.*a_b.wav|a_b.wav.*a b.wav"):
        distinct_names(["a b.wav", "a_b.wav"], "-", clean=lambda s: s.replace(" ", "_"))


def test_decode_refuses_a_manifest_with_duplicate_ids(trained: Path, tmp_path: Path) -> None:
    one, two = put_wav(tmp_path / "spk1" / "utt1.wav", ["AB"]), put_wav(tmp_path / "spk2" / "utt1.wav", ["CAB"])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": "utt1", "audio": str(p), "text": "AB"}) + "\n" for p in (one, two)))
    r = run("decode", trained / "best.pt", manifest, "--out", tmp_path / "hyp.jsonl")
    err = r.stderr.decode()
    assert r.returncode == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(manifest) in err and "duplicate id 'utt1'" in err and "entries 1 and 2" in err
    assert not (tmp_path / "hyp.jsonl").exists()
    # its output must not be its input either
    manifest.write_text(json.dumps({"id": "utt1", "audio": str(one), "text": "AB"}) + "\n")
    before = manifest.read_bytes()
    r = run("decode", trained / "best.pt", manifest, "--out", manifest)
    assert r.returncode == 1 and "would overwrite the manifest" in r.stderr.decode()
    assert manifest.read_bytes() == before


def test_prepare_refuses_a_split_named_like_the_rejects_file(tmp_path: Path) -> None:
    from asr.corpora import PrepareError, prepare

    data = tmp_path / "rejected"
    wav = put_wav(tmp_path / "a.wav", ["AB"])
    data.mkdir()
    (data / "wav.scp").write_text(f"a {wav}\n")
    (data / "text").write_text("a AB\n")
    with pytest.raises(PrepareError, match="split 'rejected'.*rejected.jsonl"):
        prepare("kaldi", data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- 2. file names that are not UTF-8 -------------------------------------------------------


@pytest.mark.parametrize(("suffix", "fmt", "subtype"), [(".wav", "WAV", "PCM_16"), (".flac", "FLAC", "PCM_16"), (".sph", "NIST", "PCM_16"), (".wav", "WAV", "ULAW")])
def test_every_audio_reader_opens_a_latin1_name(tmp_path: Path, suffix: str, fmt: str, subtype: str) -> None:
    from asr.audio import audio_info, load_audio, load_audio_with_notes
    from asr.segment import iter_segments

    path = put_wav(tmp_path / f"{LATIN1}{suffix}", ["AB", "CAB"], sr=8000, subtype=subtype, fmt=fmt)
    assert os.fsencode(path).endswith(b"caf\xe9" + suffix.encode())
    info = audio_info(path)
    assert info.sample_rate == 8000 and info.frames > 0
    assert len(load_audio(path, 16000)) == 2 * info.frames
    assert load_audio_with_notes(str(path), 16000).notes == ("resampled from 8000 Hz",)
    assert sum(len(s.samples) for s in iter_segments(path, 16000)) > 0


def test_name_problems_are_not_blamed_on_the_audio(tmp_path: Path) -> None:
    from asr.audio import AudioError, audio_info, load_audio

    cases = {
        "\ud800.wav": "file name",  # a surrogate no file system byte maps to
        "nul\x00.wav": "file name",
        "x" * 300 + ".wav": "file name too long",
    }
    for name, reason in cases.items():
        for reader in (audio_info, load_audio):
            with pytest.raises(AudioError) as err:
                reader(tmp_path / name)
            assert reason in err.value.reason and "audio" not in err.value.reason and "\n" not in str(err.value), err.value.reason


def test_transcribe_a_latin1_name_every_format(trained: Path, tmp_path: Path) -> None:
    """Text outputs carry the name's own bytes, JSON escapes them (\\udce9): both lead back to the file."""
    wav = put_wav(tmp_path / "in" / f"{LATIN1}.wav", ["CAB", "DAD"])
    model = trained / "best.pt"
    r = run("transcribe", model, wav)
    assert r.returncode == 0 and b"corrupt" not in r.stderr and b"Traceback" not in r.stderr, r.stderr
    path, text = r.stdout.rstrip(b"\n").split(b"\t")
    assert path == os.fsencode(wav) and os.path.samefile(path, wav) and text

    r = run("transcribe", model, wav, "--format", "json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.decode("utf-8"))  # valid UTF-8 JSON
    assert b"\\udce9" in r.stdout and row["path"] == str(wav) and os.path.samefile(os.fsencode(row["path"]), wav)

    r = run("transcribe", model, wav, "--format", "ctm")
    assert r.returncode == 0 and r.stdout.split(b" ")[0] == b"caf\xe9", (r.stdout, r.stderr)

    out = tmp_path / "out"
    for fmt in ("txt", "srt", "json"):
        r = run("transcribe", model, tmp_path / "in", "--format", fmt, "--output-dir", out)
        assert r.returncode == 0, r.stderr
        assert os.listdir(os.fsencode(out)).count(b"caf\xe9." + fmt.encode()) == 1
    line = (out / f"{LATIN1}.txt").read_bytes()
    assert line.split(b"\t")[0] == os.fsencode(wav)


def test_transcribe_a_latin1_name_from_stdin(trained: Path, tmp_path: Path) -> None:
    wav = put_wav(tmp_path / f"{LATIN1}.wav", ["AB"])
    r = run("transcribe", trained / "best.pt", "-", stdin=os.fsencode(wav) + b"\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split(b"\t")[0] == os.fsencode(wav)


def test_latin1_names_round_trip_through_prepare_manifests_kaldi_and_decode(trained: Path, tmp_path: Path) -> None:
    src = tmp_path / f"src-{LATIN1}"
    wav = put_wav(src / f"spk-{LATIN1}" / f"{LATIN1}.wav", ["CAB"], transcript="CAB")
    put_wav(src / "plain.wav", ["AB"], transcript="AB")
    out = tmp_path / "data"

    r = run("prepare", "folder", src, out)
    assert r.returncode == 0 and b"0 rejected" in r.stdout and b"corrupt" not in r.stderr, (r.stdout, r.stderr)
    manifest = out / "all.jsonl"
    manifest.read_bytes().decode("utf-8")  # the manifest is UTF-8 JSON: the byte is escaped
    assert b"\\udce9" in manifest.read_bytes()
    from asr.manifest import read_manifest

    utts = {u.id: u for u in read_manifest(manifest)}
    assert set(utts) == {f"spk-{LATIN1}-{LATIN1}", "plain"}
    assert os.path.samefile(os.fsencode(utts[f"spk-{LATIN1}-{LATIN1}"].audio), wav)
    assert utts[f"spk-{LATIN1}-{LATIN1}"].speaker == f"spk-{LATIN1}"

    # a manifest whose own name is not UTF-8 decodes too; the hypotheses keep the id
    named = tmp_path / f"{LATIN1}.jsonl"
    named.write_bytes(manifest.read_bytes())
    hyp = tmp_path / f"hyp-{LATIN1}.jsonl"
    r = run("decode", trained / "best.pt", named, "--out", hyp)
    assert r.returncode == 0 and b"(0 failed)" in r.stdout, (r.stdout, r.stderr)
    rows = [json.loads(line) for line in hyp.read_text(encoding="utf-8").splitlines()]
    assert {row["id"] for row in rows} == set(utts)

    # Kaldi files hold the name's bytes; importing them leads back to the same file
    kaldi = tmp_path / "kaldi" / "train"
    r = run("export-data", manifest, kaldi)
    assert r.returncode == 0, r.stderr
    assert os.fsencode(wav) in (kaldi / "wav.scp").read_bytes()
    r = run("prepare", "kaldi", kaldi, tmp_path / "back")
    assert r.returncode == 0 and b"0 rejected" in r.stdout, (r.stdout, r.stderr)
    back = {u.id: u for u in read_manifest(tmp_path / "back" / "train.jsonl")}
    assert set(back) == set(utts)
    assert os.path.samefile(os.fsencode(back[f"spk-{LATIN1}-{LATIN1}"].audio), wav)


def test_kaldi_wav_scp_with_latin1_paths_written_by_hand(tmp_path: Path) -> None:
    from asr.corpora import import_kaldi

    wav = put_wav(tmp_path / "audio" / f"{LATIN1}.wav", ["AB"])
    data = tmp_path / "train"
    data.mkdir()
    (data / "wav.scp").write_bytes(b"u1 " + os.fsencode(wav) + b"\nu2 " + os.fsencode(wav) + b"\n")
    (data / "text").write_bytes(b"u1 AB\nu2 caf\xe9 au lait\n")  # u2's transcript is Latin-1 text
    got = import_kaldi(data)
    assert [(u.id, u.text) for u in got["train"]] == [("u1", "AB")]
    assert os.path.samefile(os.fsencode(got["train"][0].audio), wav)
    assert [(r.id, r.reason) for r in got.rejected["train"]] == [("u2", "transcript is not UTF-8 text")]


def test_json_lines_escape_only_what_utf8_cannot_hold(tmp_path: Path) -> None:
    from asr.fileio import json_dumps
    from asr.manifest import read_jsonl, write_jsonl

    row = {"id": LATIN1, "audio": f"/d/{LATIN1}.wav", "text": "ÇA VA — MERCI"}
    line = json_dumps(row)
    assert "\\udce9" in line and "ÇA VA — MERCI" in line and json.loads(line) == row
    write_jsonl(tmp_path / "m.jsonl", [row])
    assert list(read_jsonl(tmp_path / "m.jsonl")) == [row]


# --- 4. symbolic links ------------------------------------------------------------------------


def linked_corpus(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """corpus/ whose speaker folders are links to other storage, plus a linked file, a link
    cycle and dangling links (to a folder and to a file). Returns the corpus and the readable
    files by their path under corpus/."""
    storage, corpus = tmp_path / "storage", tmp_path / "corpus"
    a = put_wav(storage / "a" / "utt1.wav", ["AB"], seed=1, transcript="AB")
    b = put_wav(storage / "b" / "deep" / "utt2.flac", ["CAB"], seed=2, fmt="FLAC", transcript="CAB")
    c = put_wav(storage / "single.wav", ["BC"], seed=3, transcript="BC")
    (storage / "single.txt").write_text("BC")
    corpus.mkdir()
    os.symlink(storage / "a", corpus / "spk1")
    os.symlink(storage / "b", corpus / "spk2")
    local = put_wav(corpus / "spk3" / "utt3.wav", ["DAD"], seed=4, transcript="DAD")
    os.symlink(c, corpus / "spk3" / "linked.wav")
    os.symlink(storage / "single.txt", corpus / "spk3" / "linked.txt")
    os.symlink(corpus, storage / "a" / "loop")  # a cycle: corpus/spk1/loop -> corpus
    os.symlink(tmp_path / "gone", corpus / "spk4")  # dangling link to a folder
    os.symlink(tmp_path / "gone.wav", corpus / "spk3" / "lost.wav")  # dangling link to a file
    (corpus / "spk3" / "lost.txt").write_text("AB")
    return corpus, {"spk1/utt1.wav": a, "spk2/deep/utt2.flac": b, "spk3/linked.wav": c, "spk3/utt3.wav": local}


def test_transcribe_follows_linked_folders_and_reports_dangling_links(trained: Path, tmp_path: Path) -> None:
    corpus, readable = linked_corpus(tmp_path)
    r = run("transcribe", trained / "best.pt", corpus)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0 and "Traceback" not in err, err
    assert sorted(line.split("\t")[0] for line in out.splitlines()) == sorted(str(corpus / rel) for rel in readable)
    errors = sorted(line for line in err.splitlines() if line.startswith("error: "))
    assert errors == [
        f"error: {corpus / 'spk3' / 'lost.wav'}: dangling symbolic link (to {tmp_path / 'gone.wav'}, not found)",
        f"error: {corpus / 'spk4'}: dangling symbolic link (to {tmp_path / 'gone'}, not found)",
    ]
    assert "2 of 6 files could not be transcribed" in err

    invoke("transcribe", trained / "best.pt", corpus, "--format", "srt", "--output-dir", tmp_path / "subs")
    assert files_under(tmp_path / "subs") == sorted(str(Path(rel).with_suffix(".srt").as_posix()) for rel in readable)


def test_prepare_folder_follows_linked_folders_and_rejects_dangling_links(tmp_path: Path) -> None:
    from asr.corpora import prepare
    from asr.manifest import read_jsonl, read_manifest

    corpus, readable = linked_corpus(tmp_path)
    report = prepare("folder", corpus, tmp_path / "out")
    utts = {u.id: u for u in read_manifest(tmp_path / "out" / "all.jsonl")}
    assert {u: Path(x.audio).relative_to(corpus).as_posix() for u, x in utts.items()} == {
        "spk1-utt1": "spk1/utt1.wav",
        "spk2-deep-utt2": "spk2/deep/utt2.flac",
        "spk3-linked": "spk3/linked.wav",
        "spk3-utt3": "spk3/utt3.wav",
    }
    assert utts["spk2-deep-utt2"].speaker == "spk2-deep" and utts["spk2-deep-utt2"].text == "CAB"
    rejected = {row["id"]: row["reason"] for row in read_jsonl(tmp_path / "out" / "rejected.jsonl")}
    assert rejected == {
        "spk3-lost": f"dangling symbolic link (to {tmp_path / 'gone.wav'}, not found)",
        "spk4": f"dangling symbolic link (to {tmp_path / 'gone'}, not found)",
    }
    assert report.rejected == 2 and report.kept == 4


def test_link_loops_and_links_to_links(tmp_path: Path) -> None:
    from asr.audio import AudioError, audio_info
    from asr.fileio import walk_files

    root = tmp_path / "root"
    put_wav(root / "x" / "a.wav", ["AB"])
    os.symlink(root / "x", root / "y")  # two names for one folder: both are walked
    os.symlink(root / "x" / "a.wav", root / "link1.wav")
    os.symlink(root / "link1.wav", root / "link2.wav")  # a link to a link
    os.symlink(root / "self.wav", root / "self.wav")  # a link to itself
    os.symlink(root, root / "x" / "up")  # a cycle
    found = walk_files(root, (".wav",))
    assert [p.relative_to(root).as_posix() for p in found.files] == ["link1.wav", "link2.wav", "x/a.wav", "y/a.wav"]
    assert [(p.name, reason) for p, reason in found.problems] == [("self.wav", "symbolic link loop")]
    with pytest.raises(AudioError, match="symbolic link loop"):
        audio_info(root / "self.wav")


def test_an4_audio_under_linked_speaker_folders(tmp_path: Path) -> None:
    from asr.corpora import import_an4

    src, storage = tmp_path / "an4", tmp_path / "storage"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "an4_train.transcription").write_text("<s> AB </s> (an1-fash-b)\n")
    (src / "etc" / "an4_test.transcription").write_text("<s> CAB </s> (an2-mmxg-b)\n")
    put_wav(storage / "fash" / "an1-fash-b.sph", ["AB"], fmt="NIST")
    put_wav(storage / "mmxg" / "an2-mmxg-b.sph", ["CAB"], fmt="NIST")
    (src / "wav" / "an4_clstk").mkdir(parents=True)
    (src / "wav" / "an4test_clstk").mkdir(parents=True)
    os.symlink(storage / "fash", src / "wav" / "an4_clstk" / "fash")
    os.symlink(storage / "mmxg", src / "wav" / "an4test_clstk" / "mmxg")
    got = import_an4(src)
    audio = [u.audio for split in got.values() for u in split]
    assert sorted(Path(a).name for a in audio) == ["an1-fash-b.sph", "an2-mmxg-b.sph"]


# --- 5. narrowband audio into a wideband model ------------------------------------------------


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "sample rate below" in line and line.startswith("warning: ")]


def test_transcribe_says_once_that_narrowband_audio_is_below_the_model_rate(trained: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "calls"
    put_wav(corpus / "pcm8k.wav", ["AB"], sr=8000)
    put_wav(corpus / "ulaw.wav", ["CAB"], sr=8000, subtype="ULAW")
    put_wav(corpus / "alaw.wav", ["BC"], sr=8000, subtype="ALAW")
    put_wav(corpus / "r11k.wav", ["DAD"], sr=11025)
    put_wav(corpus / "wide.wav", ["AB"], sr=16000)
    put_wav(corpus / "hifi.flac", ["AB"], sr=44100, fmt="FLAC")
    r = cli("transcribe", trained / "best.pt", corpus)
    assert r.exit_code == 0, r.output
    assert len(r.stdout.splitlines()) == 6  # decoding goes on
    [warning] = warnings_of(r.stderr)
    assert "4 of 6 files" in warning and "8000 Hz: 3" in warning and "11025 Hz: 1" in warning
    assert "16000 Hz" in warning and "features.sample_rate = 8000" in warning

    r = cli("transcribe", trained / "best.pt", corpus / "wide.wav", corpus / "hifi.flac")
    assert r.exit_code == 0 and warnings_of(r.stderr) == []


def test_long_narrowband_file_is_counted(trained: Path, tmp_path: Path) -> None:
    """Files over 30 s take the segmenting path; it counts too."""
    long = put_wav(tmp_path / "long8k.wav", ["AB", "CAB", "DAD"] * 30, sr=8000)
    assert sf.info(os.fsencode(long)).duration > 30
    r = cli("transcribe", trained / "best.pt", long, "--format", "json")
    assert r.exit_code == 0, r.output
    [warning] = warnings_of(r.stderr)
    assert "1 of 1 file" in warning and "8000 Hz: 1" in warning


def test_transcribe_cuts_long_audio_with_the_segmenter_asked_for(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asr.segment as segment

    long = put_wav(tmp_path / "long.wav", ["AB", "CAB", "DAD"] * 30)
    used: list[str | None] = []
    chosen = segment._segmenter_class
    monkeypatch.setattr(segment, "_segmenter_class", lambda name: used.append(name) or chosen(name))
    texts = {}
    for name in (None, "silero"):
        r = cli("transcribe", trained / "best.pt", long, *(["--segmenter", name] if name else []))
        assert r.exit_code == 0, r.output
        texts[name] = r.stdout.split("\t", 1)[1]
    assert used and set(used) == {None, "silero"}
    # tone words: sound to the energy detector, not speech to Silero VAD, which cuts nothing out
    assert texts[None].strip() and texts["silero"].strip() == ""
    r = cli("transcribe", trained / "best.pt", long, "--segmenter", "loud")
    flat = " ".join(r.output.replace("│", " ").split())  # the message as one line, out of its box
    assert r.exit_code == 2 and "unknown segmenter 'loud'; choose from energy, silero" in flat and "Traceback" not in r.output


def test_decode_says_once_that_narrowband_audio_is_below_the_model_rate(trained: Path, tmp_path: Path) -> None:
    rows = []
    for i, (sr, subtype) in enumerate([(8000, "ALAW"), (8000, "ULAW"), (16000, "PCM_16")]):
        path = put_wav(tmp_path / f"u{i}.wav", ["AB", "CAB"], sr=sr, subtype=subtype, seed=i)
        rows.append({"id": f"u{i}", "audio": path.name, "text": "AB CAB"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run("decode", trained / "best.pt", manifest, "--out", tmp_path / "hyp.jsonl")
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "hyp.jsonl").read_text().splitlines()) == 3
    [warning] = warnings_of(r.stderr.decode())
    assert "2 of 3 files" in warning and "8000 Hz: 2" in warning and "features.sample_rate = 8000" in warning


def test_sample_rate_check_for_arrays_and_streams() -> None:
    """The check stream/serve will call: rates of files or of arrays, one message per run."""
    import io

    from asr.audio import SampleRateCheck

    check = SampleRateCheck(16000)
    assert check.add(16000) is False and check.add(48000) is False
    assert check.message() is None and check.warn(io.StringIO()) is False
    assert check.add(8000) is True and check.add(8000) is True and check.add(12000) is True
    text = check.message()
    assert text is not None and "\n" not in text
    assert "3 of 5 files" in text and "8000 Hz: 2" in text and "12000 Hz: 1" in text
    stream = io.StringIO()
    assert check.warn(stream) is True and check.warn(stream) is False  # once per run
    assert stream.getvalue() == f"warning: {text}\n"
    check.add(8000)  # later inputs do not repeat it
    assert check.warn(stream) is False and stream.getvalue().count("warning") == 1


def test_a_model_trained_on_narrowband_audio_hears_it_without_a_warning(trained: Path, tmp_path: Path, capsys) -> None:
    """FSDD's 8 kHz clips train a model whose features run at 16 kHz: 8 kHz input is what it
    was trained on. The checkpoint keeps its training audio's lowest rate; the check uses it."""
    import torch

    import asr
    from asr.audio import SampleRateCheck, training_rate
    from asr.checkpoint import load_checkpoint, save_checkpoint
    from asr.decode import decode_items

    assert load_checkpoint(trained / "best.pt")["normalizer"]["audio_rate"] == 16000  # saved by training
    ckpt = load_checkpoint(trained / "best.pt")
    ckpt["normalizer"]["audio_rate"] = 8000
    narrow = tmp_path / "narrow.pt"
    save_checkpoint(narrow, ckpt)
    model = asr.load_model(narrow)
    assert training_rate(model) == 8000 and model.cfg.features.sample_rate == 16000
    wav = put_wav(tmp_path / "call.wav", ["AB"], sr=8000, subtype="ULAW")
    check = SampleRateCheck(training_rate(model))
    assert [r.ok for r in decode_items(model, [("call", wav)], progress=False, rate_check=check)] == [True]
    assert check.message() is None
    r = cli("transcribe", narrow, wav)
    assert r.exit_code == 0 and warnings_of(r.stderr) == []
    del ckpt["normalizer"]["audio_rate"]  # a checkpoint from before the key: the features' rate
    old = tmp_path / "old.pt"
    save_checkpoint(old, ckpt)
    assert training_rate(asr.load_model(old)) == 16000
    assert torch.equal(asr.load_model(old).normalizer.mean, model.normalizer.mean)
