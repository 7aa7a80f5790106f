"""Hotwords and grammars inside flashlight's CTC beam search (torchaudio's `CTCDecoder`).

flashlight's lexicon decoder adds the lexicon trie's (smeared) scores while it spells a word
and takes them back at the word's end, where it adds the LM's score of the word instead: a
bonus placed only in the trie changes which hypotheses survive pruning and nothing else. So
the bonus goes into the LM score the decoder sees: `WordContextLM` is a flashlight LM written in
Python that wraps the n-gram LM (KenLM, shared read-only) and returns, per word,

    lm_weight * log10 P(word | history)  +  the context graph's score change  (+ a grammar's)

with the decoder's own LM weight set to 1 (so the trie, built from the same scores, looks
ahead with the bonus too). Without a lexicon, `TokenContextLM` scores the lexicon-free search
token by token from the token-level context graph (sherpa-onnx's and WeNet's scheme). A
grammar is a word automaton: a word it does not allow next, or an end where no phrase ends,
costs `GRAMMAR_PENALTY` (finite: flashlight subtracts scores, and inf - inf is NaN), and the
results are filtered to accepted phrases afterwards.

Each flashlight decoder gets its own LM object (states are cached per utterance, cleared at
`start`); the KenLM under it is shared.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torchaudio.models.decoder import CTCDecoder, CTCDecoderLM, CTCDecoderLMState

from asr.beam import BeamSearch, Hypothesis, _end_with_boundary
from asr.config import DecodeConfig
from asr.context import ContextGraph, Grammar, Hotword, WordAutomaton, check_spellable, token_graph, word_graph
from asr.text import BLANK, WORD_BOUNDARY, Tokenizer

__all__ = ["GRAMMAR_PENALTY", "WordContextLM", "TokenContextLM", "ContextHypothesis", "ContextSearch", "lexicon_decoder", "lexicon_free_decoder", "graph_bonus"]

GRAMMAR_PENALTY = -1e4
KENLM_CACHE = 1 << 20  # weighted KenLM scores of (state, word) pairs kept across utterances
UNK = "<unk>"


class WordContextLM(CTCDecoderLM):
    """A word LM for the lexicon decoder: `lm_weight` x `base` (a flashlight LM: KenLM, or None)
    plus the hotwords' context graph plus a grammar's restriction.

    words: the decoder's word list (its ids); base_ids[i]: word i's id in `base`'s dictionary
    (the LM's unknown-word id for words it lacks, which KenLM scores as <unk>).

    flashlight calls `score` for every hypothesis at a word's end in every frame, mostly with a
    (state, word) pair it asked before, and each call from C++ into Python costs more than the
    LM itself. So `score` and `finish` are `functools.lru_cache` wrappers (a cached answer is
    found in C, without running Python code), cleared at `start`, and the weighted KenLM scores
    are kept across utterances (KENLM_CACHE pairs at most) under one persistent start state."""

    def __init__(self, words: Sequence[str], base: Any = None, base_ids: Sequence[int] = (), lm_weight: float = 1.0, graph: ContextGraph | None = None, grammar: WordAutomaton | None = None):
        CTCDecoderLM.__init__(self)
        self.words, self.base, self.base_ids, self.weight = list(words), base, list(base_ids), float(lm_weight)
        self.graph, self.grammar = graph, grammar
        # Off while the decoder builds its trie: the trie's scores are the look-ahead of every
        # word from the sentence start, and a grammar's penalty there would prune the words it
        # allows later in a phrase.
        self.restrict = True
        self._info: dict[Any, tuple[Any, Any, Any]] = {}
        self._base_root: Any = None
        self._base_scores: dict[tuple[Any, int], tuple[Any, float]] = {}
        # Instance attributes shadow the methods: pybind11 looks the override up on the object.
        self.score = functools.lru_cache(maxsize=None)(self._score)  # type: ignore[method-assign]
        self.finish = functools.lru_cache(maxsize=None)(self._finish)  # type: ignore[method-assign]

    def start(self, start_with_nothing: bool = False) -> Any:
        self._info = {}
        self.score.cache_clear()
        self.finish.cache_clear()
        if self.base is not None and (self._base_root is None or len(self._base_scores) > KENLM_CACHE):
            self._base_root, self._base_scores = self.base.start(False), {}
        state = CTCDecoderLMState()
        self._info[state] = (
            self._base_root,
            self.graph.start if self.graph is not None else None,
            self.grammar.start if self.grammar is not None else None,
        )
        return state

    def _base_score(self, base: Any, index: int) -> tuple[Any, float]:
        key = (base, index)
        hit = self._base_scores.get(key)
        if hit is None:
            child, s = self.base.score(base, index) if index >= 0 else self.base.finish(base)
            hit = self._base_scores[key] = (child, self.weight * s)
        return hit

    def _score(self, state: Any, index: int) -> tuple[Any, float]:
        base, ctx, gram = self._info[state]
        total = 0.0
        if self.base is not None:
            base, s = self._base_score(base, self.base_ids[index])
            total += s
        if ctx is not None:
            ctx, delta = self.graph.step(ctx, index)
            total += delta
        if gram is not None:
            gram = self.grammar.step(gram, self.words[index])
            if not gram and self.restrict:
                total += GRAMMAR_PENALTY
        child = state.child(index)
        self._info[child] = (base, ctx, gram)
        return child, total

    def _finish(self, state: Any) -> tuple[Any, float]:
        base, ctx, gram = self._info[state]
        total = 0.0
        if self.base is not None:
            base, s = self._base_score(base, -1)
            total += s
        if ctx is not None:
            total += self.graph.finish(ctx)
        if gram is not None and not self.grammar.accepts(gram):
            total += GRAMMAR_PENALTY
        child = state.child(-1)
        self._info[child] = (base, ctx, gram)
        return child, total


class TokenContextLM(CTCDecoderLM):
    """A token LM for the lexicon-free search: the hotwords' token-level context graph alone
    (the search begins as if after a word boundary). `score` and `finish` are cached as in
    `WordContextLM`."""

    def __init__(self, graph: ContextGraph, boundary: int):
        CTCDecoderLM.__init__(self)
        self.graph = graph
        self.first = graph.step(graph.start, boundary)[0]
        self._info: dict[Any, Any] = {}
        self.score = functools.lru_cache(maxsize=None)(self._score)  # type: ignore[method-assign]
        self.finish = functools.lru_cache(maxsize=None)(self._finish)  # type: ignore[method-assign]

    def start(self, start_with_nothing: bool = False) -> Any:
        self._info = {}
        self.score.cache_clear()
        self.finish.cache_clear()
        state = CTCDecoderLMState()
        self._info[state] = self.first
        return state

    def _score(self, state: Any, index: int) -> tuple[Any, float]:
        ctx, delta = self.graph.step(self._info[state], index)
        child = state.child(index)
        self._info[child] = ctx
        return child, delta

    def _finish(self, state: Any) -> tuple[Any, float]:
        ctx = self._info[state]
        child = state.child(-1)
        self._info[child] = ctx
        return child, self.graph.finish(ctx)


class ContextHypothesis(NamedTuple):
    """torchaudio's CTCHypothesis plus the acoustic (emitting-model) part of the score."""

    tokens: torch.LongTensor
    words: list[str]
    score: float
    timesteps: torch.IntTensor
    am_score: float


class _Decoder(CTCDecoder):
    def _to_hypo(self, results: Any) -> list[ContextHypothesis]:  # type: ignore[override]
        return [
            ContextHypothesis(
                self._get_tokens(r.tokens),
                [self.word_dict.get_entry(x) for x in r.words if x >= 0] if self.word_dict is not None else [],
                r.score,
                self._get_timesteps(r.tokens),
                r.emittingModelScore,
            )
            for r in results
        ]


def lexicon_decoder(tokens: Sequence[str], lexicon: dict[str, list[list[str]]], words: Sequence[str], lm: CTCDecoderLM, nbest: int, beam_size: int, beam_threshold: float, word_score: float) -> CTCDecoder:
    """A lexicon-constrained flashlight search over `lexicon` (word -> spellings in `tokens`)
    with `lm` (its weight already inside), words numbered as in `words` (`<unk>` among them)."""
    from flashlight.lib.text.decoder import CriterionType, LexiconDecoderOptions
    from flashlight.lib.text.dictionary import Dictionary

    options = LexiconDecoderOptions(
        beam_size=beam_size,
        beam_size_token=len(tokens),
        beam_threshold=beam_threshold,
        lm_weight=1.0,
        word_score=word_score,
        unk_score=-math.inf,
        sil_score=0.0,
        log_add=False,
        criterion_type=CriterionType.CTC,
    )
    word_dict = Dictionary(list(words))
    word_dict.set_default_index(word_dict.get_index(UNK))
    return _Decoder(nbest, lexicon, word_dict, Dictionary(list(tokens)), lm, options, BLANK, WORD_BOUNDARY, UNK)


def lexicon_free_decoder(tokens: Sequence[str], lm: CTCDecoderLM, nbest: int, beam_size: int, beam_threshold: float, beam_size_token: int) -> CTCDecoder:
    """A lexicon-free flashlight search with a token LM (weight 1), trying the `beam_size_token`
    likeliest tokens of each frame."""
    from flashlight.lib.text.decoder import CriterionType, LexiconFreeDecoderOptions
    from flashlight.lib.text.dictionary import Dictionary

    options = LexiconFreeDecoderOptions(
        beam_size=beam_size,
        beam_size_token=min(beam_size_token, len(tokens)),
        beam_threshold=beam_threshold,
        lm_weight=1.0,
        sil_score=0.0,
        log_add=False,
        criterion_type=CriterionType.CTC,
    )
    return _Decoder(nbest, None, None, Dictionary(list(tokens)), lm, options, BLANK, WORD_BOUNDARY, UNK)


def token_lm(hotwords: Sequence[Hotword], tokens: Sequence[str]) -> TokenContextLM:
    """The lexicon-free search's LM for `hotwords` over `tokens`."""
    graph, bar = token_graph(hotwords, {t: i for i, t in enumerate(tokens)})
    return TokenContextLM(graph, bar)


def word_context_graph(hotwords: Sequence[Hotword], index: dict[str, int]) -> ContextGraph | None:
    """The hotwords over the decoder's word ids (`index`: word -> id)."""
    return word_graph(hotwords, index.__getitem__) if hotwords else None


def text_graph(hotwords: Sequence[Hotword]) -> ContextGraph | None:
    """The hotwords' context graph over words as strings, for `graph_bonus`."""
    return word_graph(hotwords, lambda w: w) if hotwords else None


def graph_bonus(graph: ContextGraph | None, text: str) -> float:
    """The context graph's total score for a finished hypothesis `text` (words): what the
    search added for the hotwords in it, for rescoring hypotheses outside the search."""
    if graph is None:
        return 0.0
    state, total = graph.start, 0.0
    for w in text.split():
        state, delta = graph.step(state, w)
        total += delta
    return total + graph.finish(state)


GREEDY_CONTEXT_BEAM = 10  # the beam of the search that greedy decoding becomes with hotwords
CONTEXT_TOKENS = 10  # tokens tried per frame by the lexicon-free search with hotwords
GRAMMAR_NBEST = 16  # hypotheses searched for one that the grammar accepts


class ContextSearch(BeamSearch):
    """A beam search with hotwords and/or a grammar (`asr.beam.Decoder`).

    - grammar: a lexicon of the grammar's words (spelled in the model's tokens), no n-gram LM,
      no word score; results are the grammar's phrases only, and an utterance whose best phrase
      scores more than `grammar_threshold` (nats) below the best path of the acoustic model
      alone (its greedy path) fits none: the empty result.
    - else with `base` (a lexicon search, with or without LM): its lexicon plus the hotwords it
      lacks, its KenLM (shared, not reloaded), the hotwords' bonus added to the LM score.
    - else: a lexicon-free search with the token-level bonus (greedy decoding with hotwords
      becomes this search with a beam of `GREEDY_CONTEXT_BEAM`).

    ContextError (one line) for a hotword or grammar word the model's tokens cannot spell."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        cfg: DecodeConfig,
        nbest: int = 1,
        hotwords: Sequence[Hotword] = (),
        grammar: Grammar | None = None,
        grammar_threshold: float = math.inf,
        base: BeamSearch | None = None,
    ):
        tokens = list(tokenizer.tokens)
        for h in hotwords:
            check_spellable(h.words, tokens, h.source or "hotword")
        if grammar is not None:
            check_spellable(grammar.words, tokens, grammar.name)
        self.tokenizer, self.cfg, self.nbest = tokenizer, cfg, nbest
        self.speeds = tuple(cfg.speeds)
        self.hotwords, self.grammar, self.grammar_threshold = tuple(hotwords), grammar, grammar_threshold
        self._text_graph = text_graph(self.hotwords)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.lm_path = None
        self.lexicon = None
        self._lm = None
        self.word_dict = None
        self._words: list[str] = []
        self._lexicon: dict[str, list[list[str]]] | None = None
        self._base_ids: list[int] = []
        hot = [w for h in self.hotwords for w in h.words]
        if grammar is not None:
            self._words = sorted(set(grammar.words) | set(hot)) + [UNK]
            self._lexicon = {w: [[*w, WORD_BOUNDARY]] for w in self._words if w != UNK}
            self._lexicon[UNK] = []
        elif base is not None and base.lexicon is not None:
            from flashlight.lib.text.dictionary import load_words

            self.lexicon, self.lm_path, self._lm, self.word_dict = base.lexicon, base.lm_path, base._lm, base.word_dict
            self._lexicon = dict(load_words(str(base.lexicon)))
            self._words = [self.word_dict.get_entry(i) for i in range(self.word_dict.index_size())]
            if UNK not in self._words:
                self._words.append(UNK)
            self._base_ids = list(range(len(self._words)))
            closing = all(not s or s[-1] == WORD_BOUNDARY for s in next(iter(v for v in self._lexicon.values() if v), [[WORD_BOUNDARY]]))
            unk = self.word_dict.get_index(UNK)
            for w in dict.fromkeys(hot):
                if w not in self._lexicon:
                    self._lexicon[w] = [[*w, WORD_BOUNDARY] if closing else list(w)]
                    self._words.append(w)
                    self._base_ids.append(unk)
            self._lexicon.setdefault(UNK, [])
        self._index = {w: i for i, w in enumerate(self._words)}
        self._local.decoder = self._build(None)

    @property
    def _search_nbest(self) -> int:
        n = max(self.nbest, self.cfg.view_nbest) if len(self.speeds) > 1 else self.nbest
        return max(n, GRAMMAR_NBEST) if self.grammar is not None else n

    def _build(self, lm: Any) -> Any:
        cfg, tokens = self.cfg, list(self.tokenizer.tokens)
        if self._lexicon is None:
            return lexicon_free_decoder(tokens, token_lm(self.hotwords, tokens), self._search_nbest, cfg.beam_size, cfg.beam_threshold, CONTEXT_TOKENS)
        graph = word_context_graph(self.hotwords, self._index)
        if self.grammar is not None:
            word_lm = WordContextLM(self._words, graph=graph, grammar=self.grammar.automaton)
            word_lm.restrict = False
            decoder = lexicon_decoder(tokens, self._lexicon, self._words, word_lm, self._search_nbest, cfg.beam_size, cfg.beam_threshold, 0.0)
            word_lm.restrict = True
            return decoder
        word_lm = WordContextLM(self._words, self._lm, self._base_ids, cfg.lm_weight, graph)
        return lexicon_decoder(tokens, self._lexicon, self._words, word_lm, self._search_nbest, cfg.beam_size, cfg.beam_threshold, cfg.word_score)

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        emissions, lengths = _end_with_boundary(log_probs.detach().float().cpu(), lengths.cpu(), self.boundary)
        results = self.decoder(emissions, lengths.to(torch.int32))
        best = [float(emissions[b, : int(n)].max(-1).values.sum()) for b, n in enumerate(lengths)]
        return [self._finals(hyps, g) for hyps, g in zip(results, best, strict=True)]

    def _finals(self, hyps: Any, greedy_score: float = 0.0) -> list[Hypothesis]:
        out = []
        for h in hyps:
            hyp = self._hypothesis(h.tokens, h.words, h.score)
            if self.grammar is not None:
                if not self.grammar.matches(hyp.text):
                    continue
                if not out and greedy_score - h.am_score > self.grammar_threshold:
                    break  # the likeliest phrase is far from what the model heard: none fits
            out.append(hyp)
        limit = max(self.nbest, self.cfg.view_nbest) if len(self.speeds) > 1 else self.nbest
        return out[:limit] or [Hypothesis("", float("-inf"), [])]

    def context_score(self, text: str) -> float:
        return graph_bonus(self._text_graph, text)


def context_search(tokenizer: Tokenizer, options: Any, base: Any = None) -> ContextSearch:
    """The ContextSearch for `options` (an `asr.options.DecodeOptions` with hotwords or a
    grammar); `base`: the search of the same options without them, whose lexicon and LM are
    used (built here when not given)."""
    from dataclasses import replace

    cfg = options.decode_config()
    if not options.uses_beam:
        cfg.speeds = [1.0]
        if options.grammar is None:
            cfg.beam_size = min(cfg.beam_size, GREEDY_CONTEXT_BEAM)
    if options.grammar is None and options.lexicon is not None and base is None:
        base = BeamSearch(tokenizer, replace(options, hotwords=(), grammar=None).decode_config(), lexicon=options.lexicon, lm=options.lm, nbest=options.nbest)
    return ContextSearch(tokenizer, cfg, options.nbest, options.hotwords, options.grammar, options.grammar_threshold, base if options.grammar is None else None)
