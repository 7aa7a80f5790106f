"""`asr serve`: the command-line face of `asr.server`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

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
    fail,
    set_threads,
)


def serve_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint (model.pt) or an exported model.")],
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="Require Authorization: Bearer KEY on every route but /health and the page (default: $ASR_API_KEY; none when unset).")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body in MB; larger ones get 413 before they are read.")] = 25.0,
    workers: Annotated[int, typer.Option(help="Threads running the model (0: one per CPU core, at most 8).")] = 0,
    queue_size: Annotated[int, typer.Option(help="Recordings waiting for the model before requests get 503.")] = 64,
    max_batch: Annotated[int, typer.Option(help="Recordings decoded together in one batch.")] = 16,
    request_timeout: Annotated[float, typer.Option(help="Seconds a transcription may take (504 after).")] = 300.0,
    body_timeout: Annotated[float, typer.Option(help="Seconds a client may stall while sending (408), or a WebSocket stay silent.")] = 30.0,
    max_audio_seconds: Annotated[float, typer.Option(help="Longest recording decoded, in seconds (413 past it); longer uploads than 30 s are decoded block by block.")] = 3600.0,
    cors_origin: Annotated[list[str] | None, typer.Option(help="Allow this origin by CORS (repeatable; default: CORS off).")] = None,
    name: Annotated[str | None, typer.Option(help="Model id in /v1/models and /health (default: the checkpoint's file name).")] = None,
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
    prompt_as_hotwords: Annotated[bool, typer.Option("--prompt-as-hotwords", help="Read the OpenAI route's prompt field as hotwords (WORD[:BOOST] items separated by commas or newlines), added to the server's.")] = False,
    wyoming: Annotated[str | None, typer.Option(help="Also serve the Wyoming protocol (Home Assistant) here, e.g. tcp://127.0.0.1:10300.")] = None,
    http: Annotated[bool, typer.Option("--http/--no-http", help="Serve HTTP (--no-http: Wyoming only).")] = True,
    language: Annotated[list[str] | None, typer.Option(help="Language the model speaks, for Wyoming's describe (repeatable; default en).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")] = "cpu",
    threads: Annotated[int, typer.Option(help="CPU threads for torch (0: the cores shared out among the workers).")] = 0,
) -> None:
    """Serve the model over HTTP (OpenAI-compatible /v1/audio/transcriptions, /v1/models, /health),
    a WebSocket for live recognition (/v1/stream) and a browser page (/); with --wyoming, the
    Wyoming protocol for Home Assistant too (or alone, --no-http)."""
    from asr.decode import load_model
    from asr.server import ServerConfig, serve

    if not 0 < port < 65536:
        raise typer.BadParameter(f"port must be 1-65535, got {port}", param_hint="--port")
    if not max_audio_seconds > 0:
        raise typer.BadParameter(f"--max-audio-seconds must be positive, got {max_audio_seconds:g}", param_hint="--max-audio-seconds")
    if max_upload_mb <= 0 or workers < 0 or queue_size < 1 or max_batch < 1:
        raise typer.BadParameter("--max-upload-mb must be positive, --workers at least 0 and --queue-size, --max-batch at least 1")
    if not model.exists():
        raise fail(f"{model}: no such model file")
    if not http and wyoming is None:
        raise fail("--no-http needs --wyoming URI: nothing would be served")
    if wyoming is not None:
        from asr.wyoming import check_uri

        try:
            check_uri(wyoming)
        except ValueError as e:
            raise fail(str(e)) from None
    # Workers run batches side by side, each on torch threads of its own share of the cores:
    # intra-op threads beyond that only contend with the other workers and the HTTP threads.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = workers or min(cores, 8)
    set_threads(threads or max(1, cores // workers))
    try:
        acoustic = load_model(model, device)
    except (ValueError, OSError) as e:
        raise fail(f"{model}: {e}") from None
    try:
        options = decode_options(
            acoustic, beam, beam_size, beam_threshold, lexicon, lm, lm_weight, word_score, decoder_config,
            hotwords_file=hotwords_file, hotword=hotword, grammar=grammar, grammar_threshold=grammar_threshold,
        )
        from asr.inference import decoder_for

        decoder_for(acoustic, options)  # a hotword the model cannot spell fails here, in one line
    except (ValueError, OSError) as e:
        raise fail(str(e)) from None
    key = api_key if api_key is not None else os.environ.get("ASR_API_KEY") or None
    config = ServerConfig(
        host, port, key, max_upload_mb, workers, queue_size, max_batch, request_timeout=request_timeout, body_timeout=body_timeout,
        max_audio_seconds=max_audio_seconds, cors_origins=tuple(cors_origin or []), prompt_as_hotwords=prompt_as_hotwords,
    )
    where = [f"http://{host}:{port}/ {'(API key required)' if key else '(no API key)'}"] if http else []
    where += [f"Wyoming {wyoming}"] if wyoming else []
    typer.echo(f"serving {model} ({acoustic.cfg.model.kind}) on {' and '.join(where)}; Ctrl-C stops", err=True)
    if wyoming is not None:
        from asr.wyoming import serve as serve_wyoming

        return serve_wyoming(acoustic, options, config, name or model.stem, wyoming, http, tuple(language or ["en"]))
    serve(acoustic, options, config, name or model.stem)
