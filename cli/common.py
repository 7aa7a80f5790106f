"""What several commands share: output on stdout/stderr, parse errors as one line, the thread
count, and the decoding options (flags over the checkpoint's [decode] settings and a decoder file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from asr.context import DEFAULT_BOOST
from asr.options import DecodeOptions

Beam = Annotated[bool, typer.Option("--beam", help="Beam search instead of greedy (implied by --lexicon, --lm, --nbest > 1, --speeds).")]
BeamSize = Annotated[int | None, typer.Option(help="Beam size.")]
BeamThreshold = Annotated[float | None, typer.Option(help="Prune hypotheses this far below the best.")]
Lexicon = Annotated[Path | None, typer.Option(help="Lexicon (asr lm lexicon): words the beam search may output.")]
LM = Annotated[Path | None, typer.Option(help="n-gram LM, ARPA or KenLM binary (asr lm build); needs --lexicon.")]
LMWeight = Annotated[float | None, typer.Option(help="LM weight.")]
WordScore = Annotated[float | None, typer.Option(help="Score added per word.")]
DecoderConfig = Annotated[Path | None, typer.Option("--decoder-config", help="TOML with a \\[decode] table, e.g. written by asr tune-decoder.")]
HotwordsFile = Annotated[Path | None, typer.Option("--hotwords-file", help=f"Words or phrases to favour, one a line: word, or word<TAB>boost (boost: score added per letter and word end, default {DEFAULT_BOOST:g}). Words missing from the lexicon are added. Greedy decoding then becomes a small beam search (beam 10, no lexicon).")]
HotwordFlag = Annotated[list[str] | None, typer.Option("--hotword", help="A word or phrase to favour, WORD or WORD:BOOST (repeatable; with --hotwords-file too). Greedy decoding then becomes a small beam search (beam 10, no lexicon).")]
GrammarFile = Annotated[Path | None, typer.Option("--grammar", help="Only these phrases may be recognised: one a line, ( A | B ) for a choice, [ A ] for optional words, # comments (docs/decoding.md). Speech fitting none gives an empty result.")]
GrammarThreshold = Annotated[float | None, typer.Option(help="With --grammar: how far (nats) the best phrase may score below the acoustic model's best path before the speech counts as fitting none (inf: never).")]
Speeds = Annotated[str | None, typer.Option(help="Test-time speed views for the beam search (implies --beam), e.g. 0.9,1,1.1: each view is searched and the pooled hypotheses are rescored by their mean CTC score.")]


def echo(text: str, nl: bool = True) -> None:
    """Print on stdout as UTF-8 whatever the locale, with file names that are not UTF-8 (lone
    surrogates) as their own bytes, so that a printed path leads back to its file."""
    text = text + "\n" if nl else text
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no byte (from JSON): shown escaped
        from asr.fileio import display

        data = display(text).encode("utf-8")
    typer.echo(data, nl=False)


def warn(text: str) -> None:
    """One line on stderr; undecodable bytes of file names shown as \\udcXX."""
    from asr.fileio import display

    typer.echo(display(text), err=True)


def fail(text: str) -> typer.Exit:
    """Say `error: text` on stderr; the caller raises the returned Exit(1)."""
    warn(f"error: {text}")
    return typer.Exit(1)


def usage_error(e: typer.TyperException) -> str:
    """A parse error of the command line (a bad value, an unknown option, a missing argument)
    as one line: what is wrong, the value given where the parser says it, and where the help is."""
    message = " ".join(e.format_message().split()).rstrip(".")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    errors = getattr(e.__cause__, "errors", None)  # typer's coercion: a pydantic ValidationError
    if callable(errors) and ":" in message:
        try:
            given = errors()[0]["input"]
        except (TypeError, LookupError, AttributeError):
            given = None
        if isinstance(given, str):
            head, _, rest = message.partition(": ")
            message = f"{head}: {given!r}: {rest[:1].lower() + rest[1:]}"
    ctx = getattr(e, "ctx", None)
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        message += f"; see '{ctx.command_path} {ctx.help_option_names[0]}'"
    return message


def set_threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def _numbers(text: str, option: str, kind: type = float) -> list:
    try:
        return [kind(x) for x in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated {'integers' if kind is int else 'numbers'}, got {text!r}", param_hint=option) from None


def _speeds(text: str) -> list[float]:
    from asr.config import Config, set_value

    cfg = Config()
    set_value(cfg, "decode.speeds", _numbers(text, "--speeds"), where="--speeds")
    return cfg.decode.speeds


def decode_options(
    model: Any,
    beam: bool = False,
    beam_size: int | None = None,
    beam_threshold: float | None = None,
    lexicon: Path | None = None,
    lm: Path | None = None,
    lm_weight: float | None = None,
    word_score: float | None = None,
    decoder_config: Path | None = None,
    nbest: int = 1,
    speeds: str | None = None,
    *,
    hotwords_file: Path | None = None,
    hotword: list[str] | None = None,
    grammar: Path | None = None,
    grammar_threshold: float | None = None,
) -> DecodeOptions:
    """The decoding options the flags ask for, over the checkpoint's [decode] settings and a
    decoder file (`asr.options.resolve_options`). Hotwords and grammar are read here
    (ContextError, one line naming the file or flag, for ones that cannot be used)."""
    from asr.options import resolve_options

    hotwords, grammar_value = context_flags(hotwords_file, hotword, grammar)
    return resolve_options(
        model.cfg.decode,
        decoder_config,
        beam=beam or None,
        beam_size=beam_size,
        beam_threshold=beam_threshold,
        lexicon=lexicon,
        lm=lm,
        lm_weight=lm_weight,
        word_score=word_score,
        speeds=_speeds(speeds) if speeds is not None else None,
        nbest=nbest,
        hotwords=hotwords or None,
        grammar=grammar_value,
        grammar_threshold=grammar_threshold,
    )


def context_flags(hotwords_file: Path | None, hotword: list[str] | None, grammar: Path | None) -> tuple[tuple, Any]:
    """The hotwords of --hotwords-file and --hotword (in that order; a later boost of the same
    word wins) and the grammar of --grammar."""
    from asr.context import parse_hotwords, read_grammar, read_hotwords

    hotwords: tuple = ()
    if hotwords_file is not None:
        hotwords = read_hotwords(hotwords_file)
    if hotword is not None:
        given = parse_hotwords(hotword, "--hotword")
        hotwords = tuple({h.words: h for h in (*hotwords, *given)}.values())
    return hotwords, read_grammar(grammar) if grammar is not None else None
