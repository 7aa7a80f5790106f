"""CTC search: greedy, and beam search with a lexicon and an n-gram LM (torchaudio's
flashlight-text decoder, KenLM inside), each as a batch search, a search over one utterance's
speed views, and an online search for audio that arrives in chunks (the `Decoder` protocol)."""

from __future__ import annotations

import itertools
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from asr.config import DecodeConfig
from asr.text import BLANK, WORD_BOUNDARY, Tokenizer


class DecoderError(ValueError):
    """A decoder that cannot be built; names the file and the problem."""


@dataclass
class Hypothesis:
    text: str
    score: float
    token_ids: list[int]  # without blanks and repeats, `|` between words


class OnlineSearch(Protocol):
    """One utterance searched as its log-probabilities arrive (torchaudio's CTCDecoder
    decode_begin / decode_step / decode_end): `Decoder.begin()` starts one."""

    def step(self, log_probs: torch.Tensor) -> None:
        """Take the next (frames, tokens) log-probabilities of the utterance."""

    def partial(self) -> Hypothesis:
        """The best hypothesis so far (it may still change)."""

    def end(self) -> list[Hypothesis]:
        """Finish the utterance: its n best, best first. The search cannot be stepped again."""


class Decoder(Protocol):
    """What decoding needs of a search: a batch search, one for the speed views of one
    utterance, and an online search. `speeds` are the views it combines ((1.0,): one view)."""

    tokenizer: Tokenizer
    speeds: tuple[float, ...]

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        """n-best hypotheses for each utterance of a (B, T, V) batch with (B,) lengths."""

    def search_views(self, views: list[torch.Tensor]) -> list[Hypothesis]:
        """One utterance's (frames, tokens) log-probabilities at each of `speeds` -> its n best."""

    def begin(self) -> OnlineSearch:
        """A new online search for one utterance."""


class GreedySearch:
    """The best token per frame, repeats merged, blanks removed. Needs no state but the last
    frame's token, so its online search gives exactly the batch result however the frames are
    split."""

    speeds: tuple[float, ...] = (1.0,)

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        return greedy(self.tokenizer, log_probs, lengths)

    def search_views(self, views: list[torch.Tensor]) -> list[Hypothesis]:
        """Greedy decoding of the first view (greedy decoding has no scores to pool)."""
        return self(views[0][None], torch.tensor([len(views[0])]))[0]

    def begin(self) -> _GreedyOnline:
        return _GreedyOnline(self.tokenizer)


class _GreedyOnline:
    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.ids, self.last = tokenizer, [], tokenizer.blank

    def step(self, log_probs: torch.Tensor) -> None:
        for t in log_probs.argmax(-1).tolist():
            if t != self.last and t != self.tokenizer.blank:
                self.ids.append(t)
            self.last = t

    def partial(self) -> Hypothesis:
        return Hypothesis(self.tokenizer.decode(self.ids), 0.0, list(self.ids))

    def end(self) -> list[Hypothesis]:
        return [self.partial()]


class BeamSearch:
    """Lexicon-constrained (with `lexicon`) or lexicon-free beam search, with an optional KenLM
    (ARPA or binary) weighted by `lm_weight`, plus `word_score` per word. With several
    `cfg.speeds`, `search_views` combines the searches of one utterance's speed views
    (`asr.views`).

    The LM is loaded once. A flashlight decoder keeps the state of the utterance it is
    searching, so each thread gets its own decoder over the shared LM (KenLM queries are
    read-only), and so does each online search: one BeamSearch serves many threads at once.
    """

    def __init__(self, tokenizer: Tokenizer, cfg: DecodeConfig, lexicon: str | Path | None = None, lm: str | Path | None = None, nbest: int = 1):
        for path, what in [(lexicon, "lexicon"), (lm, "language model")]:
            if path is not None and not Path(path).is_file():
                raise DecoderError(f"{path}: {what} file not found")
        if lm is not None and lexicon is None:
            raise DecoderError(f"{lm}: a word language model needs a lexicon (asr lm lexicon)")
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.nbest = nbest
        self.speeds = tuple(cfg.speeds)
        self.lexicon = lexicon
        self.lm_path = lm
        self._local = threading.local()
        self._lock = threading.Lock()
        first = self._build(str(lm) if lm else None)
        self._lm = first.lm if lm else None  # the loaded KenLM, shared by every later decoder
        self.word_dict = first.word_dict
        self._local.decoder = first

    def _build(self, lm: Any) -> Any:
        from torchaudio.models.decoder import ctc_decoder

        try:
            with kenlm_quietly():
                return ctc_decoder(
                    lexicon=str(self.lexicon) if self.lexicon else None,
                    tokens=list(self.tokenizer.tokens),
                    lm=lm,
                    nbest=max(self.nbest, self.cfg.view_nbest) if len(self.speeds) > 1 else self.nbest,
                    beam_size=self.cfg.beam_size,
                    beam_threshold=self.cfg.beam_threshold,
                    lm_weight=self.cfg.lm_weight,
                    word_score=self.cfg.word_score,
                    blank_token=BLANK,
                    sil_token=WORD_BOUNDARY,
                    unk_word="<unk>",
                )
        except (RuntimeError, ValueError) as e:
            raise DecoderError(f"{self.lm_path or self.lexicon or 'decoder'}: cannot build the beam search ({str(e).splitlines()[0]})") from None

    @property
    def decoder(self) -> Any:
        """This thread's flashlight decoder (torchaudio's CTCDecoder)."""
        decoder = getattr(self._local, "decoder", None)
        if decoder is None:
            with self._lock:
                decoder = self._local.decoder = self._build(self._lm)
        return decoder

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        """n-best hypotheses for each utterance of a (B, T, V) batch of log-probabilities."""
        emissions, lengths = _end_with_boundary(log_probs.detach().float().cpu(), lengths.cpu(), self.boundary)
        results = self.decoder(emissions, lengths.to(torch.int32))
        return [[self._hypothesis(h.tokens, h.words, h.score) for h in hyps] or [Hypothesis("", float("-inf"), [])] for hyps in results]

    @property
    def boundary(self) -> int:
        return self.tokenizer.tokens.index(WORD_BOUNDARY)

    def _hypothesis(self, tokens: Any, words: Any, score: float) -> Hypothesis:
        """A flashlight result as a Hypothesis: blanks, and `|` at either end, dropped."""
        ids = [int(t) for t in tokens if int(t) != self.tokenizer.blank]
        while ids and ids[0] == self.boundary:
            ids.pop(0)
        while ids and ids[-1] == self.boundary:
            ids.pop()
        text = " ".join(w for w in words if w != "<unk>") if words else self.tokenizer.decode(ids)
        return Hypothesis(text, float(score), ids)

    def search_views(self, views: list[torch.Tensor]) -> list[Hypothesis]:
        """One utterance's log-probabilities (frames, tokens) at each of `speeds` -> its n best
        (`asr.views.search_views`; one view is the search's own n best)."""
        from asr.views import search_views

        return search_views(self, views)

    def _finals(self, hyps: Any, greedy_score: float = 0.0) -> list[Hypothesis]:
        """The flashlight decoder's final hypotheses of an online search as Hypotheses
        (`greedy_score`: the summed best log-probability of its frames, for searches that
        compare against it)."""
        out = [self._hypothesis(h.tokens, h.words, h.score) for h in hyps]
        return out[: self.nbest] or [Hypothesis("", float("-inf"), [])]

    def context_score(self, text: str) -> float:
        """What the search adds to a hypothesis beyond the LM and word scores (hotwords'
        bonuses, `asr.bias.ContextSearch`): 0 here."""
        return 0.0

    def begin(self) -> _BeamOnline:
        """An online search of one utterance, with a decoder of its own over the shared LM."""
        with self._lock:
            return _BeamOnline(self, self._build(self._lm))

    def lm_log10(self, text: str) -> float:
        """The LM's log10 probability of a sentence, as the search adds it (0 without an LM)."""
        if self._lm is None:
            return 0.0
        words = self.word_dict
        state, total = self._lm.start(False), 0.0
        for w in text.split():
            state, s = self._lm.score(state, words.get_index(w))
            total += s
        return total + self._lm.finish(state)[1]


class _BeamOnline:
    def __init__(self, search: BeamSearch, decoder: Any):
        self.search, self.decoder, self.frames, self.done = search, decoder, 0, False
        self.greedy: list[int] = []  # the most likely token of every frame stepped
        self.greedy_score = 0.0  # the sum of their log-probabilities
        decoder.decode_begin()

    def step(self, log_probs: torch.Tensor) -> None:
        if self.done:
            raise RuntimeError("this online search has ended")
        if len(log_probs):
            self.decoder.decode_step(log_probs.detach().float().cpu().contiguous())
            self.greedy += log_probs.argmax(-1).tolist()
            self.greedy_score += float(log_probs.detach().float().amax(-1).sum())
            self.frames += len(log_probs)

    def partial(self) -> Hypothesis:
        if self.frames == 0:
            return Hypothesis("", 0.0, [])
        # flashlight's best hypothesis mid-utterance reaches only to the last word the search
        # has committed to (with a lexicon, a word is committed once the path has left it): the
        # frames after it are shown with the acoustic model's own best tokens, so a word shows
        # as soon as it is spoken instead of a word later. The final is the search's alone.
        best = self.decoder.decoder.get_best_hypothesis(0)
        path = list(best.tokens)[1:]  # one token per frame after the start state
        frames = path + self.greedy[len(path) :]
        blank = self.search.tokenizer.blank
        return self.search._hypothesis([k for k, _ in itertools.groupby(frames) if k != blank], [], best.score)

    def end(self) -> list[Hypothesis]:
        if not self.done:
            closing = torch.full((1, len(self.search.tokenizer)), -1e4)
            closing[0, self.search.boundary] = 0.0
            self.decoder.decode_step(closing)
            self.decoder.decode_end()
            self.done = True
        return self.search._finals(self.decoder.get_final_hypothesis(), self.greedy_score)


# What KenLM prints to the terminal while it reads an ARPA file: advice and a progress bar.
_KENLM_CHATTER = re.compile(r"^(Loading the LM will be faster if you build a binary file\.|Reading .*|-*5-+10-+15-.*|\*+)?$")
_QUIET_LOCK = threading.Lock()


@contextmanager
def kenlm_quietly() -> Iterator[None]:
    """Load a KenLM without its chatter on the terminal, keeping real errors.

    KenLM (inside flashlight-text) writes its advice to build a binary and a progress bar of
    stars to the C-level stdout and stderr while it reads an ARPA file; no option turns that
    off. File descriptors 1 and 2 are pointed at temporary files meanwhile, and whatever was
    written is passed on afterwards, less the lines of that chatter. The descriptors belong to
    the process, so loads are serialised by a lock; load models before serving requests.
    """
    with _QUIET_LOCK:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        saved: list[tuple[int, int, object]] = []
        try:
            for fd in (1, 2):
                tmp = tempfile.TemporaryFile()
                saved.append((fd, os.dup(fd), tmp))
                os.dup2(tmp.fileno(), fd)
        except OSError:  # no such descriptor (an embedding host): load as it is
            for fd, copy, tmp in saved:
                os.dup2(copy, fd)
                os.close(copy)
                tmp.close()
            saved = []
        try:
            yield
        finally:
            for fd, copy, tmp in saved:
                os.dup2(copy, fd)
                os.close(copy)
                tmp.seek(0)
                text = tmp.read().decode("utf-8", "replace")
                tmp.close()
                kept = [line for line in text.splitlines() if not _KENLM_CHATTER.match(line.strip())]
                if kept:
                    print("\n".join(kept), file=sys.stdout if fd == 1 else sys.stderr, flush=True)


def _end_with_boundary(log_probs: torch.Tensor, lengths: torch.Tensor, boundary: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append one frame that is certainly the word boundary after each utterance.

    The lexicon spells every word with a closing `|` (flashlight ends hypotheses on complete
    words), but the model emits `|` only between words, so without this frame the last word
    of an utterance could never complete."""
    batch, frames, vocab = log_probs.shape
    out = torch.full((batch, frames + 1, vocab), -1e4)
    out[:, :frames] = log_probs
    out[torch.arange(batch), lengths, :] = -1e4
    out[torch.arange(batch), lengths, boundary] = 0.0
    return out.contiguous(), lengths + 1


def greedy_ids(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best token per frame, repeats merged, blanks removed."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for b, n in enumerate(lengths.tolist()):
        seq = torch.unique_consecutive(best[b, :n]).tolist()
        out.append([t for t in seq if t != blank])
    return out


def greedy(tokenizer: Tokenizer, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
    """Greedy CTC decoding in the same shape as BeamSearch's output (one hypothesis each)."""
    return [[Hypothesis(tokenizer.decode(ids), 0.0, ids)] for ids in greedy_ids(log_probs, lengths, tokenizer.blank)]


def build_decoder(model: Any, cfg: DecodeConfig, beam: bool = False, lexicon: str | Path | None = None, lm: str | Path | None = None, nbest: int = 1) -> Decoder:
    """A `GreedySearch` unless a beam, lexicon or LM is asked for, else a `BeamSearch`."""
    if not (beam or lexicon or lm or nbest > 1):
        return GreedySearch(model.tokenizer)
    return BeamSearch(model.tokenizer, cfg, lexicon=lexicon, lm=lm, nbest=nbest)
