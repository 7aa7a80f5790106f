"""Corpus importers, prepare and Kaldi export: tiny fake corpora plus the real ones in shared/."""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.corpora import (
    IMPORTERS,
    PrepareError,
    export_kaldi,
    import_an4,
    import_fsdd,
    import_kaldi,
    import_librispeech,
    import_yesno,
    prepare,
)
from asr.manifest import Utterance, read_jsonl, read_manifest, write_manifest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_audio(path: Path, seconds: float = 0.3, sr: int = 16000, fmt: str | None = None) -> Path:
    """A short sine plus noise; fmt="NIST" writes NIST sphere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(len(path.name))
    samples = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.size)
    sf.write(path, samples.astype(np.float32), sr, format=fmt, subtype="PCM_16")
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def rejects(out_dir: Path) -> dict[str, dict]:
    """rejected.jsonl by id."""
    return {row["id"]: row for row in read_jsonl(out_dir / "rejected.jsonl")}


def ids(utts: list[Utterance]) -> list[str]:
    return [u.id for u in utts]


# --- yesno -------------------------------------------------------------------------------


def test_yesno_labels_and_even_odd_split(tmp_path: Path) -> None:
    names = ["0_0_1", "0_1_0", "1_0_0", "1_1_1"]
    for name in names:
        make_audio(tmp_path / "waves_yesno" / f"{name}.wav", sr=8000)
    write(tmp_path / "waves_yesno" / "README", "not audio")

    splits = import_yesno(tmp_path)

    assert ids(splits["train"]) == ["0_0_1", "1_0_0"]
    assert ids(splits["test"]) == ["0_1_0", "1_1_1"]
    assert splits["train"][0].text == "NO NO YES"
    assert {u.speaker for us in splits.values() for u in us} == {"yesno"}
    assert all(Path(u.audio).is_absolute() for u in splits["train"])


def test_yesno_flat_folder_and_bad_name(tmp_path: Path) -> None:
    make_audio(tmp_path / "0_1.wav", sr=8000)
    make_audio(tmp_path / "1_x.wav", sr=8000)

    report = prepare("yesno", tmp_path, tmp_path / "out")

    assert report.splits["train"].kept == 1
    assert "0/1 label" in rejects(tmp_path / "out")["1_x"]["reason"]


# --- fsdd --------------------------------------------------------------------------------


def test_fsdd_official_split_and_digit_words(tmp_path: Path) -> None:
    for speaker in ("george", "theo"):
        for index in range(7):
            make_audio(tmp_path / "recordings" / f"{index % 10}_{speaker}_{index}.wav", seconds=0.2, sr=8000)

    splits = import_fsdd(tmp_path)

    assert sorted(ids(splits["test"])) == sorted(f"{i}_{s}_{i}" for s in ("george", "theo") for i in range(5))
    assert sorted(ids(splits["train"])) == ["5_george_5", "5_theo_5", "6_george_6", "6_theo_6"]
    by_id = {u.id: u for us in splits.values() for u in us}
    assert by_id["0_george_0"].text == "ZERO"
    assert by_id["6_theo_6"].text == "SIX"
    assert by_id["6_theo_6"].speaker == "theo"


# --- an4 ---------------------------------------------------------------------------------

AN4_SPEAKERS = ["fash", "fbbh", "mblb"]  # sorted; every 10th from the first -> fash is dev


def make_an4(root: Path) -> Path:
    train_lines = []
    for spk in AN4_SPEAKERS:
        for n in range(3):
            utt = f"an{n}-{spk}-b"
            # one sphere file, to check that .sph is found by id
            fmt, ext = ("NIST", "sph") if (spk, n) == ("fbbh", 0) else (None, "wav")
            make_audio(root / "wav" / "an4_clstk" / spk / f"{utt}.{ext}", fmt=fmt)
            train_lines.append(f"<s> WORD {n} </s> ({utt})")
    write(root / "etc" / "an4_train.transcription", "\n".join(train_lines) + "\n")
    for n in range(2):
        make_audio(root / "wav" / "an4test_clstk" / "fcaw" / f"cen{n}-fcaw-b.wav")
    write(root / "etc" / "an4_test.transcription", "ERASE C Q (cen0-fcaw-b)\nRUBOUT SEVEN (cen1-fcaw-b)\n")
    return root


def test_an4_splits_speakers_and_sphere(tmp_path: Path) -> None:
    splits = import_an4(make_an4(tmp_path))

    assert list(splits) == ["train", "dev", "test"]
    assert {u.speaker for u in splits["dev"]} == {"fash"}
    assert {u.speaker for u in splits["train"]} == {"fbbh", "mblb"}
    assert ids(splits["test"]) == ["cen0-fcaw-b", "cen1-fcaw-b"]
    assert splits["test"][0].text == "ERASE C Q"
    by_id = {u.id: u for us in splits.values() for u in us}
    assert by_id["an0-fash-b"].text == "WORD 0"  # no <s> tags left
    assert by_id["an0-fbbh-b"].audio.endswith(".sph")


def test_an4_prepare_with_sphere_and_bad_items(tmp_path: Path) -> None:
    src = make_an4(tmp_path / "an4")
    (src / "wav" / "an4_clstk" / "mblb" / "an1-mblb-b.wav").unlink()  # missing audio
    (src / "wav" / "an4_clstk" / "mblb" / "an2-mblb-b.wav").write_bytes(b"")  # empty audio
    with (src / "etc" / "an4_train.transcription").open("a") as f:
        f.write("<s> NO ID HERE </s>\n")  # malformed
        f.write("<s> </s> (an0-mblb-b)\n")  # duplicate id (and empty)
    out = tmp_path / "out"

    report = prepare("an4", src, out)

    bad = rejects(out)
    assert bad["an1-mblb-b"]["reason"] == "file not found"
    assert bad["an2-mblb-b"]["reason"] == "empty file"
    assert bad["an0-mblb-b"]["reason"] == "duplicate id"
    assert "malformed" in bad["an4_train.transcription:10"]["reason"]
    assert ids(read_manifest(out / "train.jsonl")) == ["an0-fbbh-b", "an1-fbbh-b", "an2-fbbh-b", "an0-mblb-b"]
    assert report.splits["train"].kept == 4 and report.splits["train"].rejected == 4
    assert report.splits["dev"].kept == 3 and report.splits["test"].kept == 2
    sphere = read_manifest(out / "train.jsonl")[0]
    assert sphere.duration == pytest.approx(0.3)
    assert report.summary().startswith("an4: train 4 (0.00 h), dev 3 (0.00 h), test 2 (0.00 h); 4 rejected -> ")


def test_an4_layout_not_recognised(tmp_path: Path) -> None:
    make_audio(tmp_path / "wav" / "an4_clstk" / "fash" / "an1-fash-b.wav")
    with pytest.raises(PrepareError, match=r"not an AN4 corpus \(no etc/an4_train.transcription\)"):
        prepare("an4", tmp_path, tmp_path / "out")


# --- librispeech -------------------------------------------------------------------------


def make_librispeech_chapter(subset: Path, spk: str, chapter: str, n: int) -> None:
    lines = []
    for i in range(n):
        utt = f"{spk}-{chapter}-{i:04d}"
        make_audio(subset / spk / chapter / f"{utt}.flac", seconds=0.2)
        lines.append(f"{utt} HELLO WORLD {i}")
    write(subset / spk / chapter / f"{spk}-{chapter}.trans.txt", "\n".join(lines) + "\n")


def test_librispeech_root_and_subset(tmp_path: Path) -> None:
    root = tmp_path / "LibriSpeech"
    make_librispeech_chapter(root / "dev-clean", "84", "121123", 2)
    make_librispeech_chapter(root / "test-clean", "1089", "134686", 1)
    write(root / "README.TXT", "LibriSpeech")

    splits = import_librispeech(root)
    assert list(splits) == ["dev_clean", "test_clean"]
    assert ids(splits["dev_clean"]) == ["84-121123-0000", "84-121123-0001"]
    assert splits["dev_clean"][1].text == "HELLO WORLD 1"
    assert splits["test_clean"][0].speaker == "1089"
    assert splits["test_clean"][0].audio == str(root / "test-clean" / "1089" / "134686" / "1089-134686-0000.flac")

    assert list(import_librispeech(root / "dev-clean")) == ["dev_clean"]


def test_duplicate_ids_across_splits_are_rejected(tmp_path: Path) -> None:
    root = tmp_path / "LibriSpeech"
    make_librispeech_chapter(root / "dev-clean", "84", "121123", 2)
    make_librispeech_chapter(root / "dev-other", "84", "121123", 1)  # same id as in dev-clean

    report = prepare("librispeech", root, tmp_path / "out")

    assert report.splits["dev_clean"].kept == 2
    assert report.splits["dev_other"].kept == 0
    bad = list(read_jsonl(tmp_path / "out" / "rejected.jsonl"))
    assert bad == [
        {
            "split": "dev_other",
            "id": "84-121123-0000",
            "audio": str(root / "dev-other" / "84" / "121123" / "84-121123-0000.flac"),
            "reason": "duplicate id (also in dev_clean)",
        }
    ]
    assert not (tmp_path / "out" / "dev_other.jsonl").exists()


# --- folder ------------------------------------------------------------------------------


def test_folder_ids_speakers_and_missing_transcripts(tmp_path: Path) -> None:
    src = tmp_path / "corpus"
    make_audio(src / "top.wav")
    write(src / "top.txt", "Hello, world!\n")
    make_audio(src / "alice" / "a1.flac")
    write(src / "alice" / "a1.txt", "it's fine")
    make_audio(src / "bob" / "x" / "b1.wav", sr=8000)
    write(src / "bob" / "x" / "b1.txt", "bye")
    make_audio(src / "bob" / "b2.wav")  # no transcript
    make_audio(src / "bob" / "b3.wav")
    write(src / "bob" / "b3.txt", " ?! ")  # empty once normalised
    make_audio(src / ".hidden" / "h.wav")

    report = prepare("folder", src, tmp_path / "out")

    utts = {u.id: u for u in read_manifest(tmp_path / "out" / "all.jsonl")}
    assert set(utts) == {"top", "alice-a1", "bob-x-b1"}
    assert (utts["top"].text, utts["top"].speaker) == ("HELLO WORLD", "")
    assert (utts["alice-a1"].text, utts["alice-a1"].speaker) == ("IT'S FINE", "alice")
    assert utts["bob-x-b1"].speaker == "bob-x"
    bad = rejects(tmp_path / "out")
    assert {k: v["reason"] for k, v in bad.items()} == {"bob-b2": "no transcript", "bob-b3": "empty transcript"}
    assert report.summary().endswith(f"; 2 rejected -> {tmp_path / 'out'}")


def test_folder_nothing_usable(tmp_path: Path) -> None:
    make_audio(tmp_path / "a.wav")
    with pytest.raises(PrepareError, match="nothing usable.*no transcript: 1"):
        prepare("folder", tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- kaldi -------------------------------------------------------------------------------


def test_kaldi_import_and_rejects(tmp_path: Path) -> None:
    data = tmp_path / "data" / "train"
    a = make_audio(tmp_path / "audio" / "spk1-a.wav")
    b = make_audio(tmp_path / "audio" / "spk1-b.wav")
    c = make_audio(tmp_path / "audio" / "c.wav")
    rec = make_audio(tmp_path / "audio" / "rec.wav")
    write(
        data / "wav.scp",
        f"spk1-a {a}\nspk1-b {b}\nc {c}\npiped sox x.wav -t wav - |\nno-text {a}\nrec {rec}\n",
    )
    write(data / "text", "spk1-a hello there\nspk1-b\tbye\nc see\npiped x\nno-wav oops\nseg1 part one\n")
    write(data / "utt2spk", "spk1-a spk1\nspk1-b spk1\nc c\n")
    write(data / "segments", "seg1 rec 0.0 0.1\n")

    splits = import_kaldi(data)

    assert list(splits) == ["train"]
    assert [(u.id, u.text, u.speaker, u.audio) for u in splits["train"]] == [
        ("c", "SEE", "", str(c)),
        ("spk1-a", "HELLO THERE", "spk1", str(a)),
        ("spk1-b", "BYE", "spk1", str(b)),
    ]
    reasons = {r.id: r.reason for r in splits.rejected["train"]}
    assert reasons == {
        "no-text": "no transcript in text",
        "no-wav": "no entry in wav.scp",
        "piped": "piped wav.scp entries are not supported",
        "seg1": "segments are not supported (a part of recording rec)",
    }


def test_kaldi_not_a_data_dir(tmp_path: Path) -> None:
    write(tmp_path / "text", "a b\n")
    with pytest.raises(PrepareError, match=r"not a Kaldi data dir \(no wav.scp\)"):
        prepare("kaldi", tmp_path, tmp_path / "out")


def test_kaldi_export_import_round_trip(tmp_path: Path) -> None:
    utts = [
        Utterance("spk2-x", str(make_audio(tmp_path / "x.wav")), 0.3, "THIRD ONE", "spk2"),
        Utterance("spk1-b", str(make_audio(tmp_path / "b.wav")), 0.3, "SECOND", "spk1"),
        Utterance("spk1-a", str(make_audio(tmp_path / "a.flac")), 0.3, "FIRST IT'S", "spk1"),
        Utterance("lonely", str(make_audio(tmp_path / "l.wav")), 0.3, "NO SPEAKER", ""),
    ]
    write_manifest(tmp_path / "m.jsonl", utts)
    data = tmp_path / "kaldi" / "train"

    assert export_kaldi(tmp_path / "m.jsonl", data) == 4

    for name in ("wav.scp", "text", "utt2spk", "spk2utt"):
        lines = (data / name).read_text().splitlines()
        assert lines == sorted(lines), name
    assert (data / "spk2utt").read_text() == "lonely lonely\nspk1 spk1-a spk1-b\nspk2 spk2-x\n"
    back = import_kaldi(data)
    assert not back.rejected["train"]
    key = attrgetter("id", "text", "speaker", "audio")
    assert sorted(map(key, back["train"])) == sorted(map(key, utts))


def test_kaldi_export_rejects_whitespace_in_ids(tmp_path: Path) -> None:
    write_manifest(tmp_path / "m.jsonl", [Utterance("a b", "/x.wav", 1.0, "HI")])
    with pytest.raises(ValueError, match="whitespace"):
        export_kaldi(tmp_path / "m.jsonl", tmp_path / "kaldi")


# --- prepare -----------------------------------------------------------------------------


def test_prepare_errors(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match="corpus folder not found"):
        prepare("yesno", tmp_path / "absent", tmp_path / "out")
    with pytest.raises(PrepareError, match=r"unknown corpus 'timit' \(known: an4, ") as err:
        prepare("timit", tmp_path, tmp_path / "out")
    assert all(name in str(err.value) for name in IMPORTERS)
    with pytest.raises(PrepareError, match="not a yesno corpus"):
        prepare("yesno", tmp_path, tmp_path / "out")


def test_prepare_rewrites_rejected_and_removes_stale_manifests(tmp_path: Path) -> None:
    for name in ("0_0", "0_1", "1_0"):
        make_audio(tmp_path / "src" / f"{name}.wav", sr=8000)
    out = tmp_path / "out"
    (tmp_path / "src" / "0_1.wav").write_bytes(b"")  # the only test file

    first = prepare("yesno", tmp_path / "src", out)
    assert first.manifests == {"train": out / "train.jsonl"}
    assert list(rejects(out)) == ["0_1"]

    write(out / "test.jsonl", "stale\n")
    make_audio(tmp_path / "src" / "0_1.wav", sr=8000)
    second = prepare("yesno", tmp_path / "src", out)
    assert second.rejected == 0
    assert (out / "rejected.jsonl").read_text() == ""
    assert ids(read_manifest(out / "test.jsonl")) == ["0_1"]

    (tmp_path / "src" / "0_1.wav").write_bytes(b"")
    prepare("yesno", tmp_path / "src", out)
    assert not (out / "test.jsonl").exists()


# --- the real corpora --------------------------------------------------------------------


def prepare_real(corpus: str, tmp_path: Path):
    report = prepare(corpus, SHARED / corpus, tmp_path)
    assert report.rejected == 0
    assert (tmp_path / "rejected.jsonl").read_text() == ""
    return report


@pytest.mark.skipif(not (SHARED / "yesno").is_dir(), reason="shared/data/yesno not present")
def test_real_yesno(tmp_path: Path) -> None:
    report = prepare_real("yesno", tmp_path)
    assert {k: s.kept for k, s in report.splits.items()} == {"train": 30, "test": 30}


@pytest.mark.skipif(not (SHARED / "fsdd").is_dir(), reason="shared/data/fsdd not present")
def test_real_fsdd(tmp_path: Path) -> None:
    report = prepare_real("fsdd", tmp_path)
    assert {k: s.kept for k, s in report.splits.items()} == {"train": 2700, "test": 300}


@pytest.mark.skipif(not (SHARED / "an4").is_dir(), reason="shared/data/an4 not present")
def test_real_an4(tmp_path: Path) -> None:
    report = prepare_real("an4", tmp_path)
    kept = {k: s.kept for k, s in report.splits.items()}
    assert kept["train"] + kept["dev"] == 948 and kept["test"] == 130
    assert 80 <= kept["dev"] <= 120
    train = {u.speaker for u in read_manifest(tmp_path / "train.jsonl")}
    dev = {u.speaker for u in read_manifest(tmp_path / "dev.jsonl")}
    assert len(train | dev) == 74 and not train & dev
