"""Property tests (hypothesis): text normalisation, scoring counts, and readers that must
turn any input into a result or their own error type, never another exception."""

from __future__ import annotations

import io
import json
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from asr.audio import AudioError, load_audio
from asr.manifest import ManifestError, Utterance, read_manifest, write_manifest
from asr.scoring import score
from asr.text import normalize

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCORE = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- text ---------------------------------------------------------------------------------


@FAST
@given(st.text())
@example("ΐ ǅ ß ﬁ İ ŉ")  # upper-casing that expands or decomposes
@example("a\u0301\u0327 \u2028 \x85 e\u0300")
def test_normalize_is_idempotent_up_to_canonical_equivalence(s: str) -> None:
    once = normalize(s)
    assert unicodedata.normalize("NFC", normalize(once)) == unicodedata.normalize("NFC", once)


@FAST
@given(st.text())
@example("\u0390")  # GREEK SMALL LETTER IOTA WITH DIALYTIKA AND TONOS
def test_normalize_is_idempotent(s: str) -> None:
    once = normalize(s)
    assert normalize(once) == once


# --- scoring ------------------------------------------------------------------------------

WORDS = st.sampled_from(["a", "b", "c", "yes", "no", "it's", "Ça", "ΐ", "x-y", "!"])
SENTENCE = st.one_of(st.lists(WORDS, max_size=8).map(" ".join), st.text(max_size=30))
TRANSCRIPTS = st.dictionaries(st.text(min_size=1, max_size=5), SENTENCE, max_size=5)


@SCORE
@given(TRANSCRIPTS)
def test_wer_of_a_text_against_itself_is_zero(refs: dict[str, str]) -> None:
    r = score(refs, dict(refs))
    assert (r.wer, r.cer, r.substitutions, r.deletions, r.insertions) == (0, 0, 0, 0, 0)
    assert r.hits == r.ref_words


@SCORE
@given(TRANSCRIPTS, st.data())
def test_substitutions_deletions_hits_add_up_to_reference_words(refs: dict[str, str], data) -> None:
    # Hypotheses for some of the references (a missing one counts as all deletions), plus extras.
    hyps = {uid: data.draw(SENTENCE) for uid in refs if data.draw(st.booleans())}
    hyps |= data.draw(st.dictionaries(st.text(min_size=6, max_size=8), SENTENCE, max_size=2))
    r = score(refs, hyps)
    assert r.substitutions + r.deletions + r.hits == r.ref_words
    assert r.ref_words == sum(len(normalize(t).split()) for t in refs.values())
    hyp_words = sum(len(normalize(hyps.get(uid, "")).split()) for uid in refs)
    assert r.substitutions + r.insertions + r.hits == hyp_words
    assert r.wer >= 0


# --- manifest reader ----------------------------------------------------------------------

JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=10)
)
JSON_VALUE = st.recursive(
    JSON_SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=5
)
ENTRY = st.dictionaries(st.sampled_from(["id", "audio", "duration", "text", "speaker", "other"]), JSON_VALUE, max_size=6)
JSONL = st.lists(ENTRY | JSON_VALUE, max_size=4).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode())
MANIFEST_BYTES = st.one_of(
    st.binary(max_size=300),
    JSONL,
    st.tuples(JSONL, st.binary(max_size=20)).map(b"".join),
)


def _read_manifest_bytes(content: bytes) -> list | None:
    """read_manifest on a file holding content; None when it raised ManifestError (naming the file)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.jsonl"
        path.write_bytes(content)
        try:
            utts = read_manifest(path)
        except ManifestError as e:
            assert str(e).startswith(str(path))
            return None
    for u in utts:
        assert isinstance(u.id, str) and isinstance(u.audio, str) and isinstance(u.duration, float)
    return utts


@FAST
@given(st.binary(max_size=300))
def test_manifest_reader_on_random_bytes_returns_utterances_or_raises_manifest_error(content: bytes) -> None:
    _read_manifest_bytes(content)


# Known crashes in asr/manifest.py read_manifest/read_jsonl: a value of the wrong JSON type
# escapes as TypeError or ValueError instead of ManifestError naming file and line.
NOT_MANIFEST_ERROR = (TypeError, ValueError)
KNOWN_BAD = [
    b'{"id": "a", "audio": null}',  # TypeError from Path(None)
    b'{"id": "a", "audio": 5}',  # TypeError from Path(5)
    b'{"id": "a", "audio": "x.wav", "duration": [1]}',  # TypeError from float([1])
    b'{"id": "a", "audio": "x.wav", "duration": "soon"}',  # ValueError from float("soon")
    b'{"id": ' + b"1" * 5000 + b', "audio": "x.wav"}',  # ValueError from json.loads (int digit limit)
]


@pytest.mark.parametrize("content", KNOWN_BAD, ids=range(len(KNOWN_BAD)))
def test_manifest_reader_wrong_value_types(content: bytes) -> None:
    _read_manifest_bytes(content)


@settings(
    max_examples=200,
    deadline=None,
    report_multiple_bugs=False,
    phases=(Phase.explicit, Phase.generate),  # no shrinking of the known failures: keeps the run short
    database=None,
)
@given(MANIFEST_BYTES)
def test_manifest_reader_on_json_lines_returns_utterances_or_raises_manifest_error(content: bytes) -> None:
    _read_manifest_bytes(content)


def test_manifest_null_text_is_not_the_word_none() -> None:
    (utt,) = _read_manifest_bytes(b'{"id": "a", "audio": "x.wav", "text": null, "speaker": null}')
    assert (utt.text, utt.speaker) == ("", "")


@pytest.mark.parametrize("text", ["LINE\u2028SEPARATOR", "PARAGRAPH\u2029SEPARATOR", "NEXT\x85LINE"])
def test_manifest_round_trip_with_unicode_line_breaks_in_text(tmp_path: Path, text: str) -> None:
    write_manifest(tmp_path / "m.jsonl", [Utterance("a", "/x.wav", 1.0, text)])
    assert [u.text for u in read_manifest(tmp_path / "m.jsonl")] == [text]


UNICODE_LINE_BREAKS = "\x85\u2028\u2029"  # what str.splitlines() splits on and json.dumps leaves raw
UTTERANCE = st.builds(
    Utterance,
    id=st.text(),
    audio=st.text(min_size=1).filter(lambda s: "\x00" not in s).map(lambda s: "/" + s),
    duration=st.floats(0, 1e4),
    text=st.text(),
    speaker=st.text(),
).filter(lambda u: not any(c in u.id + u.audio + u.text + u.speaker for c in UNICODE_LINE_BREAKS))


@settings(max_examples=100, deadline=None)
@given(st.lists(UTTERANCE, max_size=4))
def test_manifest_round_trip(utts: list[Utterance]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        write_manifest(Path(tmp) / "m.jsonl", utts)
        back = read_manifest(Path(tmp) / "m.jsonl")
    assert [(u.id, u.duration, u.text, u.speaker) for u in back] == [(u.id, u.duration, u.text, u.speaker) for u in utts]
    assert [Path(u.audio) for u in back] == [Path(u.audio) for u in utts]  # pathlib drops "/./" and trailing "/"


# --- audio reader -------------------------------------------------------------------------


def _audio(fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    x = (0.3 * np.sin(np.arange(800) / 3)).astype(np.float32)
    sf.write(buf, x, 8000, format=fmt, subtype=subtype)
    return buf.getvalue()


VALID = [_audio("WAV", "PCM_16"), _audio("WAV", "FLOAT"), _audio("FLAC", "PCM_16"), _audio("WAV", "IMA_ADPCM")]


@st.composite
def mutated_audio(draw) -> bytes:
    """A valid file with a few bytes changed, a cut, or a valid header before random bytes."""
    data = bytearray(draw(st.sampled_from(VALID)))
    how = draw(st.sampled_from(["flip", "cut", "header+random"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, min(len(data), 96) - 1))] = draw(st.integers(0, 255))
    elif how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    else:
        data = data[: draw(st.integers(4, 64))] + draw(st.binary(max_size=400))
    return bytes(data)


@SLOW
@given(st.one_of(st.binary(max_size=2000), mutated_audio()), st.sampled_from([".wav", ".flac"]))
def test_audio_reader_rejects_random_bytes_cleanly(content: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{suffix}"
        path.write_bytes(content)
        try:
            x = load_audio(path)
        except AudioError as e:
            assert e.path == str(path) and "\n" not in e.reason and e.reason
            return
        assert x.dtype == np.float32 and x.ndim == 1 and len(x) > 0 and np.isfinite(x).all()
