"""Test-time speed views: one utterance played at several speeds, each view searched, the pooled
hypotheses rescored by their CTC log-likelihood averaged over the views plus the LM and word
scores, as the beam search scores its own paths. Views of one recording err in different
places, so the mean is a small ensemble from one model (`decode.speeds`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from asr.text import WORD_BOUNDARY

if TYPE_CHECKING:
    from asr.beam import BeamSearch, Hypothesis

__all__ = ["speed_views", "search_views", "ctc_log_likelihoods"]


def speed_views(samples: np.ndarray, sample_rate: int, speeds: Sequence[float]) -> list[np.ndarray]:
    """`samples` (1-D float, at `sample_rate` Hz) played at each of `speeds`, tempo and pitch
    together as Kaldi's `sox speed` (training's speed perturbation); speed 1.0 is the input."""
    from asr.data import speed_perturb

    return [speed_perturb(samples, sample_rate, s) for s in speeds]


def search_views(search: BeamSearch, views: list[torch.Tensor]) -> list[Hypothesis]:
    """One utterance's log-probabilities (frames, tokens) at each of `search.speeds` -> its n best.

    Every view is searched for its `view_nbest` best; the pooled hypotheses are scored by their
    CTC log-likelihood (summed over alignments) averaged over the views, plus `lm_weight` x the
    LM's log10 probability and `word_score` per word. One view is the search's own n best."""
    from asr.beam import Hypothesis

    if len(views) == 1:
        return search(views[0][None], torch.tensor([len(views[0])]))[0]
    pooled = {h.text: h for lp in views for h in search(lp[None], torch.tensor([len(lp)]))[0] if h.score > float("-inf")}
    if not pooled:
        return [Hypothesis("", float("-inf"), [])]
    texts = list(pooled)
    targets = [search.tokenizer.encode(t) for t in texts]
    boundary = search.tokenizer.tokens.index(WORD_BOUNDARY)
    am = torch.stack([ctc_log_likelihoods(lp, targets, boundary) for lp in views]).mean(0)
    cfg = search.cfg
    scored = [
        Hypothesis(t, float(a) + cfg.lm_weight * search.lm_log10(t) + cfg.word_score * len(t.split()) + search.context_score(t), pooled[t].token_ids)
        for t, a in zip(texts, am, strict=True)
    ]
    return sorted(scored, key=lambda h: -h.score)[: search.nbest]


def ctc_log_likelihoods(log_probs: torch.Tensor, targets: list[list[int]], boundary: int) -> torch.Tensor:
    """log P(target | log_probs) over all CTC alignments for each target (token ids, words joined
    by `boundary`), scored as the beam search reads them: with a closing boundary frame after the
    utterance and an optional boundary before the first word (the better of the two counts).

    log_probs: (frames, tokens); returns (len(targets),)."""
    from asr.beam import _end_with_boundary

    emissions, lengths = _end_with_boundary(log_probs[None].float(), torch.tensor([len(log_probs)]), boundary)
    variants = [[*t, boundary] for t in targets] + [[boundary, *t, boundary] if t else [boundary] for t in targets]
    padded = torch.zeros(len(variants), max(len(v) for v in variants), dtype=torch.long)
    for i, v in enumerate(variants):
        padded[i, : len(v)] = torch.tensor(v)
    frames = emissions[0][:, None].expand(-1, len(variants), -1)
    nll = torch.nn.functional.ctc_loss(frames, padded, lengths.expand(len(variants)), torch.tensor([len(v) for v in variants]), blank=0, reduction="none")
    return -nll.view(2, len(targets)).min(0).values
