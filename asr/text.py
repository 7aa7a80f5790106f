"""Text normalisation and the character token set."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

BLANK = "<blank>"
WORD_BOUNDARY = "|"

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Upper-case, drop punctuation and symbols except apostrophes, collapse spaces.

    The same function serves training targets and scoring, so both see one text form.
    """
    # NFKC again after upper(): upper-casing can produce decomposed sequences (e.g. U+0390).
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).upper())
    kept = [
        " " if unicodedata.category(c)[0] in "PSC" and c != "'" else c
        for c in text
    ]
    return _SPACES.sub(" ", "".join(kept)).strip()


class UnknownCharacterError(ValueError):
    """Text holds characters that are not in the token set."""

    def __init__(self, chars: set[str]):
        self.chars = chars
        super().__init__("characters not in the token set: " + " ".join(sorted(map(repr, chars))))


@dataclass(frozen=True)
class Tokenizer:
    """Characters of the training text, plus CTC blank (id 0) and a word boundary."""

    tokens: tuple[str, ...]

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> Tokenizer:
        chars = {c for t in texts for c in normalize(t) if c != " "}
        return cls((BLANK, WORD_BOUNDARY, *sorted(chars)))

    @property
    def blank(self) -> int:
        return 0

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def _index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def unknown(self, text: str) -> set[str]:
        """Characters of the normalised text that the token set cannot spell."""
        index = self._index
        return {c for c in normalize(text) if c != " " and c not in index}

    def encode(self, text: str) -> list[int]:
        """Normalised text as token ids, words joined by the boundary token."""
        index = self._index
        text = normalize(text)
        missing = {c for c in text if c != " " and c not in index}
        if missing:
            raise UnknownCharacterError(missing)
        return [index[WORD_BOUNDARY] if c == " " else index[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids (blanks and repeats already removed) back to text."""
        text = "".join(
            " " if self.tokens[i] == WORD_BOUNDARY else self.tokens[i]
            for i in ids
            if i != self.blank
        )
        return _SPACES.sub(" ", text).strip()
