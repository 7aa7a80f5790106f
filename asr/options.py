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

__all__ = ["DecodeOptions", "resolve_options", "make_decoder"]


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
    if "beam_size" in given or "speeds" in given:
        options = replace(options, beam=True)
    return options


def make_decoder(tokenizer: Any, options: DecodeOptions) -> Any:
    """The search that `options` ask for: `asr.beam.GreedySearch` or `asr.beam.BeamSearch`."""
    from asr.beam import BeamSearch, GreedySearch

    if not options.uses_beam:
        return GreedySearch(tokenizer)
    return BeamSearch(tokenizer, options.decode_config(), lexicon=options.lexicon, lm=options.lm, nbest=options.nbest)
