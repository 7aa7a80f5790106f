"""Decoding options: one frozen value, resolved once from the checkpoint, a decoder file and flags.

`resolve_options` is the only place where decoding settings are merged: the CLI, the recipes,
the benchmarks and the tuner all call it, and nothing writes into a loaded model's config, so one
model can serve differently configured requests at once.

Precedence, lowest first: the checkpoint's `[decode]` table (what the recipe chose), a decoder
file (a TOML `[decode]` table, as `asr tune-decoder` writes), then explicit arguments (flags).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from asr.config import Config, ConfigError, DecodeConfig, load_decode_settings, set_value
from asr.context import ContextError, Grammar, Hotword

__all__ = ["DecodeOptions", "resolve_options", "make_decoder", "with_context"]

DEFAULT_GRAMMAR_THRESHOLD = 20.0


@dataclass(frozen=True)
class DecodeOptions:
    """How to turn log-probabilities into text.

    beam: beam search (else greedy); implied by a lexicon, an LM, nbest > 1 or several speeds.
    lexicon / lm: files for the lexicon-constrained search and its KenLM (ARPA or binary).
    beam_size, beam_threshold, lm_weight, word_score: the flashlight search's settings (the LM
        weight multiplies log10 probabilities; the word score is added per word).
    speeds: test-time speed views (1.0 among them); searched only with the beam.
    view_nbest: hypotheses taken from each view's search before rescoring.
    nbest: hypotheses returned per utterance.
    batch_frames: padded feature frames per acoustic-model batch.
    hotwords: words or phrases to favour (`asr.context.Hotword`: each with its boost per token);
        words missing from the lexicon are added, spelled in the model's tokens. With greedy
        decoding they make it a small lexicon-free beam search (`asr.bias.GREEDY_CONTEXT_BEAM`).
    grammar: the only phrases that may be output (`asr.context.Grammar`); the lexicon and LM
        are then the grammar's; speech that fits no phrase gives the empty result.
    grammar_threshold: how far (nats) the best phrase may score below the acoustic model's own
        best path before it counts as fitting none (inf: never reject).
    """

    beam: bool = False
    lexicon: str | None = None
    lm: str | None = None
    beam_size: int = 50
    beam_threshold: float = 25.0
    lm_weight: float = 2.0
    word_score: float = 0.0
    speeds: tuple[float, ...] = (1.0,)
    view_nbest: int = 10
    nbest: int = 1
    batch_frames: int = 40000
    hotwords: tuple[Hotword, ...] = ()
    grammar: Grammar | None = None
    grammar_threshold: float = DEFAULT_GRAMMAR_THRESHOLD

    @property
    def uses_beam(self) -> bool:
        return self.beam or self.lexicon is not None or self.lm is not None or self.nbest > 1

    @property
    def views(self) -> tuple[float, ...]:
        """The speeds actually searched: the views apply to the beam search only."""
        return self.speeds if self.uses_beam else (1.0,)

    def decode_config(self) -> DecodeConfig:
        """The same settings as a (mutable, fresh) DecodeConfig, for code that takes one."""
        return DecodeConfig(**{k: list(getattr(self, k)) if k == "speeds" else getattr(self, k) for k in _CONFIG_KEYS})


_CONFIG_KEYS = {f.name for f in fields(DecodeConfig)}


def resolve_options(
    checkpoint: DecodeConfig | None = None,
    decoder_file: str | Path | None = None,
    **flags: Any,
) -> DecodeOptions:
    """DecodeOptions from the checkpoint's [decode] settings, then `decoder_file`'s [decode]
    table, then `flags` (any DecodeOptions field; None means "not given").

    `beam_size` or `speeds` given as flags imply the beam search, as on the command line.
    Raises ConfigError for an unreadable decoder file, an unknown key or a bad value (naming
    the file or the flag)."""
    cfg = Config(decode=DecodeConfig(**vars(checkpoint))) if checkpoint is not None else Config()
    if checkpoint is not None:
        cfg.decode.speeds = list(checkpoint.speeds)
    if decoder_file is not None:
        load_decode_settings(cfg.decode, decoder_file)
    given = {k: v for k, v in flags.items() if v is not None}
    known = {f.name for f in fields(DecodeOptions)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"unknown decoding option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    for key in _CONFIG_KEYS & set(given):
        value = list(given[key]) if key == "speeds" else given[key]
        set_value(cfg, f"decode.{key}", value, where=f"--{key.replace('_', '-')}")
    options = DecodeOptions(**{k: tuple(v) if k == "speeds" else v for k, v in vars(cfg.decode).items()})
    rest = {k: v for k, v in given.items() if k not in _CONFIG_KEYS}
    for key in ("lexicon", "lm"):
        if key in rest:
            rest[key] = str(rest[key])
    options = replace(options, **rest)
    options = with_context(options, options.hotwords, options.grammar, options.grammar_threshold)
    if "beam_size" in given or "speeds" in given:
        options = replace(options, beam=True)
    return options


def with_context(options: DecodeOptions, hotwords: Any = (), grammar: Grammar | None = None, grammar_threshold: float | None = None) -> DecodeOptions:
    """`options` with these hotwords (a sequence of `Hotword`), grammar and threshold, checked:
    ContextError for a hotwords entry that is not a Hotword, a grammar that is not a Grammar or
    a threshold that is not a positive number."""
    hotwords = tuple(hotwords or ())
    for h in hotwords:
        if not isinstance(h, Hotword):
            raise ContextError(f"hotwords must be asr.context.Hotword values (asr.context.parse_hotwords), got {h!r}")
    if grammar is not None and not isinstance(grammar, Grammar):
        raise ContextError(f"grammar must be an asr.context.Grammar (asr.context.read_grammar), got {type(grammar).__name__}")
    threshold = options.grammar_threshold if grammar_threshold is None else grammar_threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ContextError(f"grammar_threshold must be a positive number of nats (inf: never reject), got {threshold!r}")
    return replace(options, hotwords=hotwords, grammar=grammar, grammar_threshold=float(threshold))


def make_decoder(tokenizer: Any, options: DecodeOptions, base: Any = None) -> Any:
    """The search that `options` ask for: `asr.beam.GreedySearch`, `asr.beam.BeamSearch`, or with
    hotwords or a grammar `asr.bias.ContextSearch` (`base`: the search of the same options
    without them, whose loaded lexicon and LM it shares)."""
    from asr.beam import BeamSearch, GreedySearch

    if options.hotwords or options.grammar is not None:
        from asr.bias import context_search

        return context_search(tokenizer, options, base)
    if not options.uses_beam:
        return GreedySearch(tokenizer)
    return BeamSearch(tokenizer, options.decode_config(), lexicon=options.lexicon, lm=options.lm, nbest=options.nbest)
