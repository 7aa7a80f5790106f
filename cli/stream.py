"""`asr stream`: the command-line face of `asr.stream` (live recognition)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from asr.endpoint import EndpointConfig
from cli.common import (
    LM,
    Beam,
    BeamSize,
    BeamThreshold,
    DecoderConfig,
    GrammarFile,
    GrammarThreshold,
    HotwordFlag,
    HotwordsFile,
    Lexicon,
    LMWeight,
    WordScore,
    decode_options,
    echo,
    fail,
    set_threads,
)

_DEFAULT = EndpointConfig()


def stream_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint of a model that can stream (model.kind lstm, gru, rnn, lcblstm).")],
    source: Annotated[str | None, typer.Argument(help="An audio file, or - for raw 16-bit little-endian PCM on stdin (a WAV header is read too); none with --mic.")] = None,
    mic: Annotated[bool, typer.Option("--mic", help="Record from the default microphone until Ctrl-C (needs pip install 'asr[mic]' and PortAudio).")] = False,
    rate: Annotated[int | None, typer.Option(help="Sample rate of the PCM on stdin (default 16000) or of the microphone (default: the model's).")] = None,
    channels: Annotated[int, typer.Option(help="Interleaved channels of the PCM on stdin (averaged).")] = 1,
    realtime: Annotated[bool, typer.Option("--realtime", help="Feed a file at the speed of speech, as if it were being recorded.")] = False,
    chunk_ms: Annotated[float, typer.Option(help="Milliseconds of audio fed at a time.")] = 100.0,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines even on a terminal (the default when stdout is not one).")] = False,
    vad: Annotated[bool, typer.Option("--vad/--no-vad", help="Silero VAD besides the CTC blanks decides what is silence for the endpoint rules.")] = True,
    rule1_min_trailing_silence: Annotated[float, typer.Option(help="Endpoint after this much silence, even with nothing decoded (seconds).")] = _DEFAULT.rule1_min_trailing_silence,
    rule2_min_trailing_silence: Annotated[float, typer.Option(help="Endpoint after this much silence following speech (seconds).")] = _DEFAULT.rule2_min_trailing_silence,
    rule3_min_utterance_length: Annotated[float, typer.Option(help="Endpoint when an utterance is this long (seconds).")] = _DEFAULT.rule3_min_utterance_length,
    beam: Beam = False,
    beam_size: BeamSize = None,
    beam_threshold: BeamThreshold = None,
    lexicon: Lexicon = None,
    lm: LM = None,
    lm_weight: LMWeight = None,
    word_score: WordScore = None,
    decoder_config: DecoderConfig = None,
    hotwords_file: HotwordsFile = None,
    hotword: HotwordFlag = None,
    grammar: GrammarFile = None,
    grammar_threshold: GrammarThreshold = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "cpu",
    threads: Annotated[int, typer.Option(help="CPU threads for torch (0: torch's default).")] = 0,
) -> None:
    """Recognise speech as it arrives, from a file, stdin or the microphone. On a terminal the
    partial result rewrites one line and each final is printed; otherwise one JSON object a line:
    {"type": "partial"|"final", "text", "start", "end", "words"}. An utterance ends after a pause
    (the endpoint rules) or at the end of the audio."""
    from asr.stream import TerminalView, check_rate, file_source, json_line, mic_source, pcm_source, run

    if mic == (source is not None):
        raise fail("give an audio file, - for PCM on stdin, or --mic (one of them)")
    if rate is not None:
        try:
            check_rate(rate, "--rate")
        except ValueError as e:
            raise fail(str(e)) from None
    if rate is not None and source not in (None, "-"):
        raise fail(f"{source}: --rate is for PCM on stdin (-) and --mic; a file says its own rate")
    if not 1 <= channels <= 64:
        raise fail(f"--channels must be between 1 and 64, got {channels}")
    if not 5 <= chunk_ms <= 10000:
        raise fail(f"--chunk-ms must be between 5 and 10000, got {chunk_ms:g}")
    try:
        endpoint = EndpointConfig(rule1_min_trailing_silence, rule2_min_trailing_silence, rule3_min_utterance_length)
    except ValueError as e:
        raise fail(str(e)) from None
    chunk = chunk_ms / 1000
    try:
        if mic:
            mic_source(16000)  # says what to install before the model is loaded
        elif source == "-":
            audio = pcm_source(sys.stdin.buffer, rate, chunk, channels)
        else:
            audio = file_source(source, chunk, realtime)
    except (ValueError, RuntimeError) as e:
        raise fail(str(e)) from None
    set_threads(threads)
    context = {"hotwords_file": hotwords_file, "hotword": hotword, "grammar": grammar, "grammar_threshold": grammar_threshold}
    stream = _open_stream(model, device, endpoint, vad, beam, beam_size, beam_threshold, lexicon, lm, lm_weight, word_score, decoder_config, context)
    if mic:
        audio = mic_source(rate or stream.sample_rate, chunk)
    terminal = sys.stdout.isatty() and not as_json
    view = TerminalView(sys.stdout.write, sys.stdout.flush) if terminal else None
    try:
        run(stream, audio, view or (lambda r: echo(json_line(r))))
    except (ValueError, RuntimeError, OSError) as e:
        if view is not None:
            view.close()
        raise fail(str(e)) from None
    if view is not None:
        view.close()


def _open_stream(model, device, endpoint, vad, beam, beam_size, beam_threshold, lexicon, lm, lm_weight, word_score, decoder_config, context=None):
    """The model loaded and its stream opened; one error line for a model that cannot be used."""
    from asr.decode import load_model
    from asr.stream import Stream

    try:
        acoustic = load_model(model, device)
        options = decode_options(acoustic, beam, beam_size, beam_threshold, lexicon, lm, lm_weight, word_score, decoder_config, **(context or {}))
        return Stream(acoustic, options, endpoint, vad=vad)
    except (ValueError, OSError, RuntimeError) as e:
        raise fail(str(e)) from None
