import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.manifest import ManifestError, Utterance, read_manifest, validate, write_manifest


def test_round_trip_and_relative_paths(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", np.zeros(1600, np.float32), 16000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "a", "audio": "a.wav", "duration": 0.1, "text": "HI", "speaker": "s"}) + "\n\n")
    utts = read_manifest(tmp_path / "m.jsonl")
    assert utts == [Utterance("a", str(tmp_path / "a.wav"), 0.1, "HI", "s")]
    write_manifest(tmp_path / "out" / "m2.jsonl", utts)
    assert read_manifest(tmp_path / "out" / "m2.jsonl") == utts
    assert (tmp_path / "out" / "m2.jsonl").stat().st_mode & 0o044  # readable by others, not mkstemp's 0600


def test_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "audio": "a.wav"}\n{not json}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not valid JSON"):
        read_manifest(path)
    path.write_text('{"id": "a"}\n')
    with pytest.raises(ManifestError, match="lacks audio"):
        read_manifest(path)


def test_validate_keeps_good_and_reports_bad(tmp_path: Path) -> None:
    sf.write(tmp_path / "ok.wav", np.zeros(8000, np.float32), 16000)
    (tmp_path / "empty.wav").write_bytes(b"")
    utts = [
        Utterance("ok", str(tmp_path / "ok.wav"), 0, "YES"),
        Utterance("ok", str(tmp_path / "ok.wav"), 0, "YES"),
        Utterance("blank", str(tmp_path / "ok.wav"), 0, " ,. "),
        Utterance("gone", str(tmp_path / "gone.wav"), 0, "NO"),
        Utterance("empty", str(tmp_path / "empty.wav"), 0, "NO"),
    ]
    good, bad = validate(utts)
    assert [u.id for u in good] == ["ok"] and good[0].duration == 0.5
    assert {(b.id, b.reason) for b in bad} == {
        ("ok", "duplicate id"),
        ("blank", "empty transcript"),
        ("gone", "file not found"),
        ("empty", "empty file"),
    }
