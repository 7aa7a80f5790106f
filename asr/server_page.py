"""What `asr serve`'s page needs besides the API routes: what the model is and can do, and the
page's icon.

`model_info(model)` is what `GET /health` tells the page (and anyone) about the model: its kind,
whether it can stream, a one-line description from what the checkpoint carries, and its layers
(for the page's layer selector). `add_page_routes(app, ...)` adds `GET /favicon.ico` (an SVG
icon, needs no key) and the page's own upload route, `POST /v1/page/transcribe`:

- multipart `file` (as the OpenAI route) and optionally `inspect` = `all` or a layer number
  (and `units`, 1-256, default 64);
- answers `{"text", "duration", "words": [{"word", "start", "end", "confidence"}]}`, the text
  `asr transcribe` gives, and with `inspect` also `"inspect": {"info", "messages"}`
  (`asr.live_inspect.file_inspection`: the data `asr inspect` plots, in the WebSocket's
  `inspect` message form), for recordings up to INSPECT_MAX_SECONDS;
- errors as the OpenAI route's (`{"error": {...}}`, 400 for bad audio or fields, 503, 504).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response

__all__ = ["FAVICON_SVG", "INSPECT_MAX_SECONDS", "add_page_routes", "can_stream", "describe_model", "model_info"]

INSPECT_MAX_SECONDS = 120.0  # longest recording the page's route inspects (the answer grows with it)

# A waveform in a rounded square: the page's icon, here and inline in the page.
FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect width="32" height="32" rx="6" fill="#2a5d8f"/>'
    '<path d="M5 16h3l2-6 3 14 3-18 3 16 3-10 2 4h3" fill="none" stroke="#fff" stroke-width="2.2" stroke-linecap="round" stroke-linejoin="round"/>'
    "</svg>"
)


def can_stream(model: Any) -> bool:
    """Whether `model` (a loaded checkpoint) can run live (`asr.streaming.check_streaming`)."""
    from asr.streaming import NotStreamingError, check_streaming

    try:
        check_streaming(model)
    except NotStreamingError:
        return False
    return True


def describe_model(model: Any) -> str:
    """One line from what the checkpoint carries: kind, layers x units, tokens and the training
    manifest, e.g. "lcblstm, 3 layers x 256 units per direction, 28 character tokens, trained on
    an4/data/train+dev.jsonl"."""
    cfg = model.cfg.model
    encoder = getattr(getattr(model, "model", None), "encoder", None)
    layers = len(encoder.layer_names()) if encoder is not None else cfg.layers
    per = " per direction" if encoder is not None and getattr(encoder, "bidirectional", False) else ""
    parts = [cfg.kind, f"{layers} layer{'s' if layers != 1 else ''} x {cfg.hidden} units{per}"]
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        from asr.text import WORD_BOUNDARY

        chars = sum(1 for t in tokenizer.tokens if len(t) == 1 and t != WORD_BOUNDARY)
        parts.append(f"{chars} character tokens")
    train = model.cfg.data.train
    if train:
        parts.append("trained on " + "/".join(Path(train).parts[-3:]))
    return ", ".join(parts)


def model_info(model: Any) -> dict[str, Any]:
    """{"kind", "streaming", "description", "layers"}: the model's kind, whether it streams, its
    `describe_model` line and its layer names (empty for an export)."""
    encoder = getattr(getattr(model, "model", None), "encoder", None)
    return {
        "kind": model.cfg.model.kind,
        "streaming": can_stream(model),
        "description": describe_model(model),
        "layers": encoder.layer_names() if encoder is not None else [],
    }


def add_page_routes(app: Any, model: Any = None, batcher: Any = None, config: Any = None) -> None:
    """`GET /favicon.ico`, and with a model, its batcher and the server's config, the page's upload
    route `POST /v1/page/transcribe` (module docstring)."""

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Any:
        return Response(FAVICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    if model is None:
        return

    @app.post("/v1/page/transcribe")
    async def page_transcribe(request: Request) -> Any:
        from asr.server import Refused

        try:
            return await page_transcription(request)
        except Refused as r:
            return r.response

    async def page_transcription(request: Request) -> Any:
        from asr.audio import AudioError
        from asr.inference import LONG_AUDIO_SECONDS, Audio
        from asr.live_inspect import DEFAULT_UNITS, check_layer, file_inspection
        from asr.server import audio_error, open_upload, openai_error, read_upload, submit, transcript_of

        form, upload, filename = await read_upload(request, max_fields=8)
        layers: list[int] = []
        asked, units = form.get("inspect"), str(form.get("units") or DEFAULT_UNITS)
        if asked is not None:
            try:
                layers = [check_layer(model, n) for n in _layer_numbers(str(asked), len(model_info(model)["layers"]))]
                if not units.isdigit() or not 1 <= int(units) <= 256:
                    raise ValueError(f"inspect units must be a whole number from 1 to 256, got {units!r}")
            except ValueError as e:
                return openai_error(str(e), 400, param="inspect", code="invalid_request")
        try:
            audio = await asyncio.to_thread(open_upload, upload.data, filename, model.cfg.features.sample_rate, config.max_audio_seconds)
        except AudioError as e:
            return audio_error(e)
        if layers and (audio.duration > INSPECT_MAX_SECONDS or not isinstance(audio, Audio)):
            limit = min(INSPECT_MAX_SECONDS, LONG_AUDIO_SECONDS)
            return openai_error(f"{filename}: inspect takes recordings up to {limit:g} s, this one is {audio.duration:.1f} s", 400, param="inspect", code="invalid_request")
        job = submit(batcher, audio, word_times=True)
        result = await transcript_of(request, job, filename, config.request_timeout)
        out: dict[str, Any] = {
            "text": result.text,
            "duration": round(result.duration, 3),
            "words": [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3), "confidence": round(w.confidence, 3)} for w in result.words],
        }
        if layers:
            try:
                out["inspect"] = await asyncio.to_thread(file_inspection, model, audio.samples, int(units), layers)
            except ValueError as e:  # an export
                return openai_error(f"{filename}: {e}", 400, param="inspect", code="invalid_request")
        return out



def _layer_numbers(asked: str, layers: int) -> list[Any]:
    """The `inspect` field: "all" -> every layer; "N" -> [N]; anything else as given (refused)."""
    if asked == "all":
        return list(range(1, layers + 1))
    return [int(asked)] if asked.isdigit() else [asked]
