"""`WebSocket /v1/stream` of `asr serve`: live recognition over a socket (`asr.stream.Stream`).

The protocol, in the order of a session:

1. The client sends a text message `{"type": "start", "sample_rate": 16000}` (optionally
   `"api_key"` when the server has one and the client cannot send an Authorization header, as
   browsers cannot on a WebSocket), `"hotwords": ["WORD", "WORD:BOOST", ...]` and `"grammar":
   "<grammar text>"` for this stream alone (`asr.context_fields`).
2. The server answers `{"type": "ready", "sample_rate": <the model's>, "model": <kind>}`.
3. The client sends binary messages of 16-bit little-endian mono PCM at its `sample_rate`, in
   pieces of any size; the server sends `{"type": "partial", ...}` whenever the current
   utterance's text changes and `{"type": "final", ...}` for each utterance that ends (the
   messages `asr stream` prints: type, text, start, end, words).
4. The client sends `{"type": "stop"}`; the server sends the remaining finals and closes (1000).

With `"inspect": {"layer": N}` in the start message (optionally `"units": K`), `ready` gains
`inspect` (the tokens, frame_seconds, layers and shown units) and each piece of audio is
followed by `{"type": "inspect", ...}` messages: the encoder's gates, cell state and the CTC
posteriors of the frames it made final (`asr.live_inspect`), before that piece's finals and
partial; `{"type": "inspect", "layer": N}` switches the layer mid-stream. A layer the model
lacks is an error (1008). A client that does not ask gets none of this.

Anything else gets `{"type": "error", "message"}` and a close: a model that cannot stream
(1000, the socket says which kinds can), a missing or wrong key or a message out of order
(1008), silence from the client for `body_timeout` seconds (1001), the server shutting down
(1012). However the stream ends, once audio has come the server first sends the finals of what
it heard, the current utterance's included, as after `stop`, then the error: a client that
stops sending without `stop` (push-to-talk, a muted microphone) still gets its last utterance,
and so does every open stream when the server stops (`close_streams`, which `asr.server.serve`
calls before uvicorn closes the sockets). A client that closes the socket itself can be sent
nothing more (the WebSocket protocol allows no message after its close): its stream is ended
there, and only its own.

`sample_rate` is a whole number of Hz, as an integer or a float with no fraction (16000.0,
what JavaScript's JSON gives for a computed rate, as `asr.stream` takes it); 16000.5 is refused.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect

from asr.audio import AudioError, SampleRateCheck

__all__ = ["serve_stream", "close_streams"]

SHUTDOWN_SECONDS = 10.0  # how long `close_streams` waits for the open streams' finals


class _Close(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.message, self.code = message, code


class _Streams:
    """The open streams of one app: `closing` is set when the server stops."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()
        self.open = 0
        self.none_open = asyncio.Event()
        self.none_open.set()

    def enter(self) -> None:
        self.open += 1
        self.none_open.clear()

    def leave(self) -> None:
        self.open -= 1
        if self.open == 0:
            self.none_open.set()


def _streams(app: Any) -> _Streams:
    streams = getattr(app.state, "asr_streams", None)
    if streams is None:
        streams = app.state.asr_streams = _Streams()
    return streams


async def close_streams(app: Any, timeout: float = SHUTDOWN_SECONDS) -> None:
    """Tell every open stream of `app` that the server stops: each sends the finals of what it
    heard, then an error saying so, and closes (1012). Returns when none is open, or after
    `timeout` seconds. New streams are refused from then on."""
    streams = _streams(app)
    streams.closing.set()
    try:
        await asyncio.wait_for(streams.none_open.wait(), timeout)
    except TimeoutError:
        pass


def whole_rate(rate: Any) -> int | None:
    """A start message's sample_rate as an int: an integer, or a float with no fraction, between
    1000 and 768000 Hz; None otherwise (bools, 16000.5, strings, out of range)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        return None
    if isinstance(rate, float) and not rate.is_integer():
        return None
    return int(rate) if 1000 <= rate <= 768000 else None


async def serve_stream(websocket: WebSocket, model: Any, options: Any, config: Any, rate_check: SampleRateCheck) -> None:
    """Run one client's stream on `websocket` until it stops, fails or goes away."""
    streams = _streams(websocket.app)
    streams.enter()
    try:
        await _serve(websocket, model, options, config, rate_check, streams.closing)
    finally:
        streams.leave()


async def _serve(websocket: WebSocket, model: Any, options: Any, config: Any, rate_check: SampleRateCheck, closing: asyncio.Event) -> None:
    from asr.encoders import NotStreamingError
    from asr.live_inspect import LiveInspector, inspect_request, ready_info
    from asr.server import key_matches
    from asr.stream import Stream

    await websocket.accept()
    stream = inspector = None
    try:
        if closing.is_set():
            raise _Close("the server is shutting down", 1012)
        start = await _receive(websocket, config.body_timeout, closing)
        if start.get("bytes") is not None or start.get("text") is None:
            raise _Close("expected a start message first: {\"type\": \"start\", \"sample_rate\": 16000}", 1008)
        try:
            header = json.loads(start["text"])
        except ValueError:
            raise _Close("the start message is not JSON", 1008) from None
        if not isinstance(header, dict) or header.get("type") != "start":
            raise _Close("expected a start message first: {\"type\": \"start\", \"sample_rate\": 16000}", 1008)
        if config.api_key:
            given = websocket.headers.get("authorization", "") or f"Bearer {header.get('api_key') or ''}"
            if not key_matches(given, config.api_key):
                raise _Close("missing or incorrect API key: send Authorization: Bearer <key> or api_key in the start message", 1008)
        given_rate = header.get("sample_rate", model.cfg.features.sample_rate)
        rate = whole_rate(given_rate)
        if rate is None:
            raise _Close(f"sample_rate must be a whole number of Hz between 1000 and 768000, got {given_rate!r}", 1008)
        try:
            asked = inspect_request(header, model)
            from asr.context_fields import request_options

            own = await asyncio.to_thread(request_options, model, options, header.get("hotwords"), header.get("grammar"))
        except ValueError as e:
            raise _Close(str(e), 1008) from None
        try:
            inspector = LiveInspector(model, asked) if asked else None
            stream = Stream(model, own, rate_check=rate_check, emissions=inspector)
        except NotStreamingError as e:
            raise _Close(str(e), 1000) from None
        ready = {"type": "ready", "sample_rate": model.cfg.features.sample_rate, "model": model.cfg.model.kind}
        if asked:
            ready["inspect"] = {"layer": asked.layer, **ready_info(model, asked.units)}
        await websocket.send_json(ready)
        await _run(websocket, stream, rate, config.body_timeout, rate_check, closing, inspector)
    except _Close as e:
        if stream is not None and not stream.finished:
            await _send_last(websocket, stream, inspector)
        await _close(websocket, e.message, e.code)
    except WebSocketDisconnect:
        if stream is not None and not stream.finished:
            await asyncio.to_thread(stream.finish)  # nobody to tell: the stream ends here
        return


async def _run(websocket: WebSocket, stream: Any, rate: int, idle: float, rate_check: SampleRateCheck, closing: asyncio.Event, inspector: Any = None) -> None:
    leftover = b""
    last_partial = ""
    while True:
        message = await _receive(websocket, idle, closing)
        data = message.get("bytes")
        if data is not None:
            data = leftover + data
            cut = len(data) - len(data) % 2
            leftover = data[cut:]
            if not cut:
                continue
            samples = np.frombuffer(data[:cut], dtype="<i2")
            try:
                partial = await asyncio.to_thread(stream.accept, samples, rate)
            except (AudioError, ValueError) as e:
                raise _Close(str(e), 1008) from None
            if rate_check.narrowband:
                rate_check.warn()
            await _send_inspect(websocket, inspector)
            for final in stream.pop_finals():
                await websocket.send_json(final.to_dict())
                last_partial = ""
            if partial.text != last_partial:
                await websocket.send_json(partial.to_dict())
                last_partial = partial.text
            continue
        try:
            control = json.loads(message.get("text") or "")
        except ValueError:
            raise _Close("text messages must be JSON: {\"type\": \"stop\"}", 1008) from None
        if inspector is not None and isinstance(control, dict) and control.get("type") == "inspect":
            inspector.layer = _inspect_layer(stream.model, control)
            continue
        if not isinstance(control, dict) or control.get("type") not in ("stop", "eof"):
            raise _Close(f"unexpected message {str(control)[:80]!r}: send PCM as binary messages, then {{\"type\": \"stop\"}}", 1008)
        await _send_last(websocket, stream, inspector)
        await websocket.close(1000)
        return


async def _send_inspect(websocket: WebSocket, inspector: Any) -> None:
    if inspector is not None:
        for message in inspector.messages():
            await websocket.send_json(message)


def _inspect_layer(model: Any, control: dict) -> int:
    """The layer of a `{"type": "inspect", "layer": N}` message; a bad one closes the stream."""
    from asr.live_inspect import check_layer

    try:
        return check_layer(model, control.get("layer"))
    except ValueError as e:
        raise _Close(str(e), 1008) from None


async def _send_last(websocket: WebSocket, stream: Any, inspector: Any = None) -> None:
    """Finish `stream` and send its remaining finals, the current utterance's last (with the
    inspect messages of the frames it decided, when asked)."""
    last = await asyncio.to_thread(stream.finish)
    try:
        await _send_inspect(websocket, inspector)
        for final in stream.pop_finals():
            await websocket.send_json(final.to_dict())
        if last.text:
            await websocket.send_json(last.to_dict())
    except (WebSocketDisconnect, RuntimeError):
        pass


async def _receive(websocket: WebSocket, idle: float, closing: asyncio.Event) -> dict:
    """The client's next message; _Close after `idle` seconds without one or when the server
    stops, WebSocketDisconnect when the client has gone."""
    receive = asyncio.ensure_future(websocket.receive())
    stop = asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait({receive, stop}, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not receive.done():
            receive.cancel()
    if not receive.done() or receive.cancelled():
        if closing.is_set():
            raise _Close("the server is shutting down", 1012)
        raise _Close(f"no message for {idle:g} s", 1001)
    message = receive.result()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return message


async def _close(websocket: WebSocket, message: str, code: int) -> None:
    try:
        await websocket.send_json({"type": "error", "message": message})
        await websocket.close(code)
    except (WebSocketDisconnect, RuntimeError):
        pass
