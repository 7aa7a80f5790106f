"""Word timestamps and confidences from CTC log-probabilities.

`word_alignments` takes one utterance's log-probabilities (T', V) and the token ids that were
decoded from them (no blanks; the word boundary `|` between words), aligns the ids to the frames
with CTC forced alignment (a Viterbi search equal to `torchaudio.functional.forced_align` except
that it stays optimal when scores tie, which torchaudio's does not: pytorch/audio#4221), merges
each token's frames into a span (`torchaudio.functional.merge_tokens`) and groups the spans into
words at `|`.

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

Words within the audio
----------------------
CTC places a token's spike anywhere within (or near) its sound, and a model can spread the
first token over leading silence it never saw in training (digital zeros, say), so a word can
start in the silence before it; and the last output frame can run past the end of a clip that
is shorter than one frame. `fit_to_audio` keeps every word inside the audio and moves a word's
edges in from silence: frames of 10 ms whose energy (about the frame's mean, so a DC offset is
not sound) is below a threshold set from the audio's own noise floor and level, as the pause
detector of `asr.segment` sets it. A word never grows, only shrinks to the first and last frame
of sound within its own interval; a word with no sound in it keeps its (clamped) times.

Confidence
----------
A token's confidence is the mean posterior (exp of the log-probability) of that token over the
frames aligned to it; a word's confidence is the mean over its tokens' confidences. It lies in
[0, 1]: close to 1 for a sharp, certain CTC spike, low where the model spread its probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from asr.text import WORD_BOUNDARY, Tokenizer

if TYPE_CHECKING:
    import torch

__all__ = ["Word", "word_alignments", "frame_timing", "fit_to_audio"]

ENERGY_FRAME_SECONDS = 0.01  # resolution of fit_to_audio's sound/silence decision
NOISE_PERCENTILE, LEVEL_PERCENTILE = 10.0, 97.0
MIN_SNR_DB = 6.0  # sound is at least this far above the noise floor ...
RELATIVE_THRESHOLD = 0.25  # ... and this fraction of the way from the floor to the level
DIGITAL_SILENCE_DB = -100.0  # frames below this are zeros, not a recording's noise
LOUD_RANGE_DB = 20.0  # frames within this of the level are sound whatever the floor


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

    stack: feature frames per output frame (`model.stack`); hop_seconds: the feature hop
    (`features.hop_ms / 1000`); window_seconds: the FFT frame, n_fft / sample rate (512 / 16000
    for the default 25 ms window, which torchaudio centres inside the FFT frame).

    `frame_seconds` = stack x hop is the `frame_seconds` argument of `word_alignments`. `lag` is
    how far the centre of the audio that output frame j is computed from lies after the centre of
    [j * frame_seconds, (j + 1) * frame_seconds): (stack - 1) * hop / 2 + window / 2 - frame_seconds / 2,
    11 ms with the defaults. Add it to `offset` for times centred on the analysis windows.
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

    The ids are force-aligned to the frames (the most likely CTC path that spells them, as
    `torchaudio.functional.forced_align` computes it, but exact on ties; see `_viterbi`), and the
    path is merged into token spans with `torchaudio.functional.merge_tokens`. Ids that cannot
    fit the frames (more tokens plus repeated pairs than frames; never the case for ids decoded
    from these log-probabilities, greedy or beam search) get spans that share the frames evenly,
    so every word still has times. Returns [] when there are no frames or no ids. See the module
    docstring for the time convention and the confidence measure.
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
    spans = _forced_spans(lp, ids, blank) or _even_spans(lp, ids)
    return _words(spans, tokenizer, frame_seconds, offset)


def _forced_spans(lp: torch.Tensor, ids: list[int], blank: int) -> list[_Span] | None:
    """The most likely CTC path that spells `ids`, as token spans; None when none exists."""
    import torch
    import torchaudio.functional as AF

    path = _viterbi(lp.double().numpy(), ids, blank)
    if path is None:
        return None
    tokens = torch.from_numpy(path)
    posteriors = lp[torch.arange(len(path)), tokens].exp()
    spans = AF.merge_tokens(tokens, posteriors, blank=blank)  # score: mean posterior over the span
    if [s.token for s in spans] != ids:  # cannot happen with a valid path; guards the fallback
        return None
    return [_Span(s.token, s.start, s.end, s.score) for s in spans]


def _viterbi(lp: np.ndarray, ids: list[int], blank: int) -> np.ndarray | None:
    """CTC forced alignment: the token (or blank) of every frame on the most likely path through
    blank, ids[0], blank, ids[1], ..., blank; None when the ids cannot fit the frames.

    The same dynamic programme as `torchaudio.functional.forced_align`, which returns a
    sub-optimal path when two predecessor scores tie exactly (pytorch/audio#4221, open in
    torchaudio 2.11): a tie takes the first maximum here, so the path is always a best one.
    The loop runs over frames, vectorised over the 2L + 1 states (tens of milliseconds for 30 s
    of audio and 300 tokens).
    """
    frames = lp.shape[0]
    ext = np.full(2 * len(ids) + 1, blank, dtype=np.int64)
    ext[1::2] = ids
    states = len(ext)
    emit = lp[:, ext]  # (T, S)
    skip_penalty = np.full(states, -np.inf)  # 0 where state s may be entered from s - 2
    skip_penalty[2:][(ext[2:] != blank) & (ext[2:] != ext[:-2])] = 0.0
    score = np.full(states, -np.inf)
    score[:2] = emit[0, :2]
    back = np.zeros((frames, states), np.int8)  # 0 stay, 1 from s - 1, 2 from s - 2
    cand = np.full((3, states), -np.inf)
    for t in range(1, frames):
        cand[0] = score
        cand[1, 1:] = score[:-1]
        np.add(score[:-2], skip_penalty[2:], out=cand[2, 2:])
        back[t] = cand.argmax(axis=0)  # the first of equal maxima
        score = cand.max(axis=0) + emit[t]
    last = states - 1 if score[-1] >= score[-2] else states - 2
    if not np.isfinite(score[last]):
        return None
    path = np.empty(frames, np.int64)
    s = last
    for t in range(frames - 1, -1, -1):
        path[t] = ext[s]
        s -= int(back[t, s])
    if s > 1:  # the path must start in the first blank or the first token
        return None
    return path


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


def fit_to_audio(words: list[Word], samples: np.ndarray, sample_rate: int, offset: float = 0.0) -> list[Word]:
    """`words` kept within the audio and moved in from the silence at their edges.

    words: as `word_alignments` returns them, times in seconds including `offset`.
    samples: the 1-D float audio the words were recognised from, at `sample_rate` (Hz); it
        begins at `offset` seconds.
    Returns new words (same text and confidence): times clamped to [offset, offset + duration],
    then each word's start moved forward to its first 10 ms frame of sound and its end back to
    the end of its last, within the word's own interval (see the module docstring). The audio's
    threshold is noise floor + max(6 dB, a quarter of the way to its level), and at most 20 dB
    below the level (10th and 97th percentiles of frame energy in dBFS, digital zeros left out);
    audio with less than 6 dB between the two has no
    pauses to find, and only the clamping applies.
    """
    samples = np.asarray(samples, dtype=np.float64).reshape(-1)
    duration = len(samples) / sample_rate
    end_of_audio = offset + duration
    hop = max(1, int(round(ENERGY_FRAME_SECONDS * sample_rate)))
    n = len(samples) // hop
    sound = None
    if n >= 2:
        db = 10 * np.log10(samples[: n * hop].reshape(n, hop).var(axis=1) + 1e-12)
        live = db[db > DIGITAL_SILENCE_DB]  # digital zeros (padding, a muted start) set no noise floor
        floor, level = np.percentile(live if len(live) >= 2 else db, [NOISE_PERCENTILE, LEVEL_PERCENTILE])
        if level - floor >= MIN_SNR_DB:
            sound = db > min(floor + max(MIN_SNR_DB, RELATIVE_THRESHOLD * (level - floor)), level - LOUD_RANGE_DB)
    fitted = []
    for w in words:
        start = min(max(w.start, offset), end_of_audio)
        end = min(max(w.end, start), end_of_audio)
        if sound is not None:
            lo = int(np.floor((start - offset) / ENERGY_FRAME_SECONDS))
            hi = min(n, int(np.ceil((end - offset) / ENERGY_FRAME_SECONDS)))
            voiced = np.flatnonzero(sound[lo:hi]) + lo
            if len(voiced):
                start = max(start, offset + voiced[0] * hop / sample_rate)
                end = max(start, min(end, offset + (voiced[-1] + 1) * hop / sample_rate))
        fitted.append(Word(w.word, float(start), float(end), w.confidence))
    return fitted
