"""CTC beam search with a lexicon and an n-gram LM (torchaudio's flashlight-text decoder, KenLM inside)."""

from __future__ import annotations

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
    (ARPA or binary) weighted by `lm_weight`, plus `word_score` per word."""

    def __init__(self, tokenizer: Tokenizer, cfg: DecodeConfig, lexicon: str | Path | None = None, lm: str | Path | None = None, nbest: int = 1):
        from torchaudio.models.decoder import ctc_decoder

        for path, what in [(lexicon, "lexicon"), (lm, "language model")]:
            if path is not None and not Path(path).is_file():
                raise DecoderError(f"{path}: {what} file not found")
        if lm is not None and lexicon is None:
            raise DecoderError(f"{lm}: a word language model needs a lexicon (asr lm lexicon)")
        self.tokenizer = tokenizer
        self.nbest = nbest
        try:
            self.decoder = ctc_decoder(
                lexicon=str(lexicon) if lexicon else None,
                tokens=list(tokenizer.tokens),
                lm=str(lm) if lm else None,
                nbest=nbest,
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
