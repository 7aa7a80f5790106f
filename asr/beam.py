"""CTC beam search with a lexicon and an n-gram LM (torchaudio's flashlight-text decoder, KenLM inside)."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


class BeamSearch:
    """Lexicon-constrained (with `lexicon`) or lexicon-free beam search, with an optional KenLM
    (ARPA or binary) weighted by `lm_weight`, plus `word_score` per word. With several
    `cfg.speeds`, `rescore_views` combines the searches of one utterance's speed views."""

    def __init__(self, tokenizer: Tokenizer, cfg: DecodeConfig, lexicon: str | Path | None = None, lm: str | Path | None = None, nbest: int = 1):
        from torchaudio.models.decoder import ctc_decoder

        for path, what in [(lexicon, "lexicon"), (lm, "language model")]:
            if path is not None and not Path(path).is_file():
                raise DecoderError(f"{path}: {what} file not found")
        if lm is not None and lexicon is None:
            raise DecoderError(f"{lm}: a word language model needs a lexicon (asr lm lexicon)")
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.nbest = nbest
        self.speeds = list(cfg.speeds)
        self.lm_path = lm
        self._kenlm = None
        try:
            with kenlm_quietly():
                self.decoder = ctc_decoder(
                    lexicon=str(lexicon) if lexicon else None,
                    tokens=list(tokenizer.tokens),
                    lm=str(lm) if lm else None,
                    nbest=max(nbest, cfg.view_nbest) if len(self.speeds) > 1 else nbest,
                    beam_size=cfg.beam_size,
                    beam_threshold=cfg.beam_threshold,
                    lm_weight=cfg.lm_weight,
                    word_score=cfg.word_score,
                    blank_token=BLANK,
                    sil_token=WORD_BOUNDARY,
                    unk_word="<unk>",
                )
        except (RuntimeError, ValueError) as e:
            raise DecoderError(f"{lm or lexicon or 'decoder'}: cannot build the beam search ({str(e).splitlines()[0]})") from None

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        """n-best hypotheses for each utterance of a (B, T, V) batch of log-probabilities."""
        boundary = self.tokenizer.tokens.index(WORD_BOUNDARY)
        emissions, lengths = _end_with_boundary(log_probs.detach().float().cpu(), lengths.cpu(), boundary)
        results = self.decoder(emissions, lengths.to(torch.int32))
        out = []
        for hyps in results:
            utt = []
            for h in hyps:
                ids = [int(t) for t in h.tokens if int(t) != self.tokenizer.blank]
                while ids and ids[0] == boundary:
                    ids.pop(0)
                while ids and ids[-1] == boundary:
                    ids.pop()
                text = " ".join(w for w in h.words if w != "<unk>") if h.words else self.tokenizer.decode(ids)
                utt.append(Hypothesis(text, float(h.score), ids))
            out.append(utt or [Hypothesis("", float("-inf"), [])])
        return out

    def rescore_views(self, views: list[torch.Tensor]) -> list[Hypothesis]:
        """One utterance's log-probabilities (frames, tokens) at each of `speeds` -> its n best.

        Every view is searched; the pooled hypotheses are scored by their CTC log-likelihood
        (summed over alignments) averaged over the views, plus the LM and word scores, as the
        search scores its own paths. Views of one recording err in different places, so the
        mean is a small ensemble from one model. One view is the search's own n best."""
        if len(views) == 1:
            return self(views[0][None], torch.tensor([len(views[0])]))[0]
        pooled = {h.text: h for lp in views for h in self(lp[None], torch.tensor([len(lp)]))[0] if h.score > float("-inf")}
        if not pooled:
            return [Hypothesis("", float("-inf"), [])]
        texts = list(pooled)
        targets = [self.tokenizer.encode(t) for t in texts]
        am = torch.stack([ctc_log_likelihoods(lp, targets, self.tokenizer.tokens.index(WORD_BOUNDARY)) for lp in views]).mean(0)
        scored = [
            Hypothesis(t, float(a) + self.cfg.lm_weight * self.lm_log10(t) + self.cfg.word_score * len(t.split()), pooled[t].token_ids)
            for t, a in zip(texts, am, strict=True)
        ]
        return sorted(scored, key=lambda h: -h.score)[: self.nbest]

    def lm_log10(self, text: str) -> float:
        """The LM's log10 probability of a sentence, as the search adds it (0 without an LM)."""
        if self.lm_path is None:
            return 0.0
        if self._kenlm is None:
            from flashlight.lib.text.decoder import KenLM

            with kenlm_quietly():
                self._kenlm = KenLM(str(self.lm_path), self.decoder.word_dict)
        words = self.decoder.word_dict
        state, total = self._kenlm.start(False), 0.0
        for w in text.split():
            state, s = self._kenlm.score(state, words.get_index(w))
            total += s
        return total + self._kenlm.finish(state)[1]


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


def ctc_log_likelihoods(log_probs: torch.Tensor, targets: list[list[int]], boundary: int) -> torch.Tensor:
    """log P(target | log_probs) over all CTC alignments for each target (token ids, words joined
    by `boundary`), scored as the beam search reads them: with a closing boundary frame after the
    utterance and an optional boundary before the first word (the better of the two counts)."""
    emissions, lengths = _end_with_boundary(log_probs[None].float(), torch.tensor([len(log_probs)]), boundary)
    variants = [[*t, boundary] for t in targets] + [[boundary, *t, boundary] if t else [boundary] for t in targets]
    padded = torch.zeros(len(variants), max(len(v) for v in variants), dtype=torch.long)
    for i, v in enumerate(variants):
        padded[i, : len(v)] = torch.tensor(v)
    frames = emissions[0][:, None].expand(-1, len(variants), -1)
    nll = torch.nn.functional.ctc_loss(frames, padded, lengths.expand(len(variants)), torch.tensor([len(v) for v in variants]), blank=0, reduction="none")
    return -nll.view(2, len(targets)).min(0).values


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


def build_decoder(model, cfg: DecodeConfig, beam: bool = False, lexicon: str | Path | None = None, lm: str | Path | None = None, nbest: int = 1):
    """Greedy decoding unless a beam, lexicon or LM is asked for; returns a callable
    (log_probs, lengths) -> n-best hypotheses per utterance."""
    if not (beam or lexicon or lm or nbest > 1):
        return lambda log_probs, lengths: greedy(model.tokenizer, log_probs, lengths)
    return BeamSearch(model.tokenizer, cfg, lexicon=lexicon, lm=lm, nbest=nbest)
