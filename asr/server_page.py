"""What `asr serve`'s page needs besides the API routes: what the model is and can do, and the
page's icon.

`model_info(model)` is what `GET /health` tells the page (and anyone) about the model: its kind,
whether it can stream, a one-line description from what the checkpoint carries, and its layers
(for the page's layer selector). `add_page_routes(app, ...)` adds `GET /favicon.ico` (an SVG
icon, needs no key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.responses import Response

__all__ = ["FAVICON_SVG", "add_page_routes", "can_stream", "describe_model", "model_info"]

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


def add_page_routes(app: Any) -> None:
    """`GET /favicon.ico`: the page's icon (SVG)."""

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Any:
        return Response(FAVICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})
