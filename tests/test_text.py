import pytest

from asr.text import BLANK, WORD_BOUNDARY, Tokenizer, UnknownCharacterError, normalize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("hello, world!", "HELLO WORLD"),
        ("  don't   stop\t", "DON'T STOP"),
        ("It\u2019s fine.", "IT'S FINE"),
        ("well-known (sic)", "WELL KNOWN SIC"),
        ("", ""),
        ("...", ""),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_normalize_is_idempotent() -> None:
    for s in ["a, b", "Ünïcödé text", "x\u00a0y", "O'Neil's"]:
        assert normalize(normalize(s)) == normalize(s)


def test_tokenizer_round_trip() -> None:
    tok = Tokenizer.from_texts(["hello world", "yes no"])
    assert tok.tokens[:2] == (BLANK, WORD_BOUNDARY)
    assert tok.blank == 0
    ids = tok.encode("Hello, yes!")
    assert tok.tokens[ids[5]] == WORD_BOUNDARY
    assert tok.decode(ids) == "HELLO YES"


def test_tokenizer_reports_unknown_characters() -> None:
    tok = Tokenizer.from_texts(["abc"])
    assert tok.unknown("abz") == {"Z"}
    with pytest.raises(UnknownCharacterError, match="'Z'"):
        tok.encode("abz")
