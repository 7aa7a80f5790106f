"""Word timestamps and confidences from CTC log-probabilities.

`word_alignments` takes one utterance's log-probabilities (T', V) and the token ids that were
decoded from them (no blanks; the word boundary `|` between words), aligns the ids to the frames
with CTC forced alignment (`torchaudio.functional.forced_align`), merges each token's frames into
a span (`torchaudio.functional.merge_tokens`) and groups the spans into words at `|`.

Timestamp convention
--------------------
Output frame j (one `stack` of feature frames, `frame_seconds` = stack x hop, 30 ms by default)
is taken to cover [j * frame_seconds, (j + 1) * frame_seconds) after `offset`. A word runs from
the start of its first token's first frame to the end of its last token's last frame:

    start = offset + first_frame * frame_seconds
    end   = offset + (last_frame + 1) * frame_seconds

No half window is added. With the default features (hop 10 ms, n_fft 512 samples = 32 ms at
16 kHz, no centre padding) and stack 3, output frame j is computed from samples
[j * 30 ms, j * 30 ms + 52 ms), whose centre lies 11 ms after the centre of the interval above;
`frame_timing` returns that lag, and a caller who wants times centred on the analysis windows
adds it to `offset`. It is less than half a frame, the resolution of the times anyway.

Confidence
----------
A token's confidence is the mean posterior (exp of the log-probability) of that token over the
frames aligned to it; a word's confidence is the mean over its tokens' confidences. It lies in
[0, 1]: close to 1 for a sharp, certain CTC spike, low where the model spread its probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from asr.text import WORD_BOUNDARY, Tokenizer

if TYPE_CHECKING:
    import torch

__all__ = ["Word", "word_alignments", "frame_timing"]


@dataclass(frozen=True)
class Word:
    """One recognised word: its text, start and end in seconds, and a confidence in [0, 1]."""

    word: str
    start: float
    end: float
    confidence: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class _Span:
    token: int
    start: int  # first frame
    end: int  # one past the last frame
    confidence: float


def frame_timing(stack: int = 3, hop_seconds: float = 0.01, window_seconds: float = 0.032) -> tuple[float, float]:
    """(frame_seconds, lag) of the model's output frames.

    `frame_seconds` = stack x hop is the `frame_seconds` argument of `word_alignments`. `lag` is
    how far the centre of the audio an output frame is computed from lies after the centre of
    [j * frame_seconds, (j + 1) * frame_seconds): (stack - 1) * hop / 2 + window / 2 - frame_seconds / 2
    (11 ms with the defaults: stack 3, hop 10 ms, 512-sample windows at 16 kHz). Add it to
    `offset` for times centred on the analysis windows.
    """
    frame_seconds = stack * hop_seconds
    lag = (stack - 1) * hop_seconds / 2 + window_seconds / 2 - frame_seconds / 2
    return frame_seconds, lag


def word_alignments(
    log_probs: torch.Tensor,
    token_ids: list[int],
    tokenizer: Tokenizer,
    frame_seconds: float,
    offset: float = 0.0,
) -> list[Word]:
    """Words with start and end times (seconds) and confidences for one utterance.

    log_probs: (T', V) CTC log-probabilities of one utterance (padding removed; a leading batch
        dimension of 1 is accepted), on any device.
    token_ids: the decoded ids (greedy or beam search), blanks already removed, `|` between words.
        Blanks that slip in are dropped; leading, trailing or repeated `|` make no empty words.
    frame_seconds: seconds per output frame (stack x hop, 0.03 by default; see `frame_timing`).
    offset: seconds added to every time, e.g. the start of the segment within its file.

    The ids are force-aligned to the frames with torchaudio's CTC forced alignment. Ids that do
    not fit the frames (more tokens plus repeats than frames, which decoded output never has) fall
    back to the greedy (argmax) frame spans when those spell the same ids, and else to spans that
    share the frames evenly, so every word still gets times. Returns [] when there are no frames
    or no ids. See the module docstring for the time convention and the confidence measure.
    """
    import torch

    lp = log_probs.detach().to("cpu", torch.float32)
    if lp.ndim == 3 and lp.shape[0] == 1:
        lp = lp[0]
    if lp.ndim != 2:
        raise ValueError(f"log_probs must be (frames, tokens) for one utterance, got shape {tuple(log_probs.shape)}")
    frames, vocab = lp.shape
    blank = tokenizer.blank
    ids = [int(i) for i in token_ids if int(i) != blank]
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"token ids {bad[:5]} are outside the {vocab} tokens of log_probs")
    if frames == 0 or not ids:
        return []
    spans = _forced_spans(lp, ids, blank) or _greedy_spans(lp, ids, blank) or _even_spans(lp, ids)
    return _words(spans, tokenizer, frame_seconds, offset)


def _fits(frames: int, ids: list[int]) -> bool:
    """CTC needs a frame per token plus a blank frame between repeated tokens."""
    repeats = sum(a == b for a, b in zip(ids, ids[1:], strict=False))
    return frames >= len(ids) + repeats


def _forced_spans(lp: torch.Tensor, ids: list[int], blank: int) -> list[_Span] | None:
    import torch
    import torchaudio.functional as AF

    if not _fits(lp.shape[0], ids):
        return None
    targets = torch.tensor([ids], dtype=torch.int32)
    try:
        path, scores = AF.forced_align(lp[None], targets, blank=blank)
    except (RuntimeError, ValueError):
        return None
    spans = AF.merge_tokens(path[0], scores[0].exp(), blank=blank)  # score: mean posterior over the span
    if [s.token for s in spans] != ids:
        return None
    return [_Span(s.token, s.start, s.end, s.score) for s in spans]


def _greedy_spans(lp: torch.Tensor, ids: list[int], blank: int) -> list[_Span] | None:
    """The argmax path's spans, when they spell exactly `ids`."""
    import torchaudio.functional as AF

    best = lp.argmax(-1)
    posteriors = lp.exp().gather(1, best[:, None])[:, 0]
    spans = AF.merge_tokens(best, posteriors, blank=blank)
    if [s.token for s in spans] != ids:
        return None
    return [_Span(s.token, s.start, s.end, s.score) for s in spans]


def _even_spans(lp: torch.Tensor, ids: list[int]) -> list[_Span]:
    """Last resort: token k gets frames [k T / L, (k + 1) T / L) (at least one frame)."""
    frames, n = lp.shape[0], len(ids)
    spans = []
    for k, token in enumerate(ids):
        start = min(k * frames // n, frames - 1)
        end = max((k + 1) * frames // n, start + 1)
        confidence = float(lp[start:end, token].exp().mean())
        spans.append(_Span(token, start, end, confidence))
    return spans


def _words(spans: list[_Span], tokenizer: Tokenizer, frame_seconds: float, offset: float) -> list[Word]:
    boundary = tokenizer.tokens.index(WORD_BOUNDARY) if WORD_BOUNDARY in tokenizer.tokens else -1
    words: list[Word] = []
    current: list[_Span] = []

    def close() -> None:
        if current:
            text = "".join(tokenizer.tokens[s.token] for s in current)
            confidence = sum(s.confidence for s in current) / len(current)
            words.append(
                Word(
                    text,
                    offset + current[0].start * frame_seconds,
                    offset + current[-1].end * frame_seconds,
                    min(1.0, max(0.0, confidence)),
                )
            )
            current.clear()

    for span in spans:
        if span.token == boundary:
            close()
        else:
            current.append(span)
    close()
    return words
