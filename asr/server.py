"""`asr serve`: recognition over HTTP and WebSocket, with an OpenAI-compatible route.

Routes (`create_app`):

- `POST /v1/audio/transcriptions`: OpenAI's transcription request (multipart `file`, `model`,
  `response_format` json | text | srt | vtt | verbose_json, `timestamp_granularities[]`;
  `language`, `prompt` and `temperature` accepted and ignored). Errors in OpenAI's shape
  `{"error": {"message", "type", "param", "code"}}`.
- `GET /v1/models`, `GET /health`.
- `WebSocket /v1/stream`: live recognition with a streaming model (`asr.stream`).
- `GET /`: a page to upload a file or record from the microphone.

Requests from many clients meet in one bounded queue (`Batcher`): worker threads take what is
waiting (up to `max_batch` recordings) and run it through `asr.inference.recognize` in one
batched forward pass, as `asr decode` does with a manifest. A full queue answers 503 with
`Retry-After`. Nothing is acknowledged before it is finished: a response is sent only when its
transcript exists.

Safe defaults: loopback only; with an API key every route but `/health` and the page itself
needs `Authorization: Bearer KEY` (compared in constant time; a WebSocket may send the key in its
start message, as browsers cannot set headers on one); request bodies are capped (413 as soon as
the declared or received size passes the cap, before the rest is read) and must arrive without
long stalls (408); uploads are held in memory, never written to disk; CORS is off unless origins
are given. The HTTP and WebSocket machinery is FastAPI's and uvicorn's; this module holds the
routes, the batching and the limits.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import queue
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from asr.audio import AudioError, SampleRateCheck, training_rate
from asr.formats import Cue, Transcript, group_cues, to_srt, to_vtt
from asr.inference import LONG_AUDIO_SECONDS, Audio, decoder_for, read_audio, recognize, transcribe
from asr.options import DecodeOptions, resolve_options

__all__ = ["ServerConfig", "Batcher", "QueueFull", "create_app", "serve", "RESPONSE_FORMATS"]

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


@dataclass(frozen=True)
class ServerConfig:
    """How `asr serve` listens and what it accepts.

    api_key: required as `Authorization: Bearer <key>` on every route but /health and the page
        (None: no key). max_upload_mb: the largest request body, in MB (10^6 bytes).
    workers: threads running the model; queue_size: recordings waiting before 503;
    max_batch: recordings one forward pass takes; batch_wait_ms: how long a worker waits for
        more requests to join a batch.
    request_timeout: seconds a transcription may take before 504; body_timeout: seconds a
        client may stall while sending a body (408) and a WebSocket may stay silent (closed).
    cors_origins: origins allowed by CORS (empty: CORS off).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_upload_mb: float = 25.0
    workers: int = 1
    queue_size: int = 64
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    request_timeout: float = 300.0
    body_timeout: float = 30.0
    cors_origins: tuple[str, ...] = field(default_factory=tuple)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)


class QueueFull(RuntimeError):
    """The batcher's queue holds `queue_size` recordings already."""


@dataclass
class _Job:
    audio: Audio
    future: Future
    word_times: bool


class Batcher:
    """A bounded queue of recordings and `workers` threads that decode them in batches.

    `submit(audio)` returns a Future of its `Transcript` (QueueFull when the queue is full). A
    worker takes the first waiting job, then whatever else arrives within `batch_wait_ms`, up to
    `max_batch`, and decodes them together (`asr.inference.recognize`); recordings longer than
    LONG_AUDIO_SECONDS go through `asr.inference.transcribe`, which cuts them at pauses.
    """

    def __init__(self, model: Any, options: DecodeOptions, workers: int = 1, queue_size: int = 64, max_batch: int = 16, batch_wait_ms: float = 5.0):
        if workers < 1 or queue_size < 1 or max_batch < 1:
            raise ValueError("workers, queue_size and max_batch must be at least 1")
        self.model, self.options = model, options
        self.decoder = decoder_for(model, options)
        self.max_batch, self.wait = max_batch, batch_wait_ms / 1000
        self.jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self.threads = [threading.Thread(target=self._work, name=f"asr-batcher-{i}", daemon=True) for i in range(workers)]
        for t in self.threads:
            t.start()

    def submit(self, audio: Audio, word_times: bool = True) -> Future:
        future: Future = Future()
        try:
            self.jobs.put_nowait(_Job(audio, future, word_times))
        except queue.Full:
            raise QueueFull(f"{self.jobs.maxsize} recordings are waiting") from None
        return future

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)

    def _take(self) -> list[_Job] | None:
        first = self.jobs.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.wait
        while len(batch) < self.max_batch:
            try:
                job = self.jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:  # closing: finish this batch, then let the next get() see it
                self.jobs.put(None)
                break
            batch.append(job)
        return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]
            short = [j for j in batch if j.audio.duration <= LONG_AUDIO_SECONDS]
            for words in (True, False):
                group = [j for j in short if j.word_times == words]
                if group:
                    self._run(group, lambda g=group, w=words: recognize(self.model, [j.audio for j in g], self.options, decoder=self.decoder, word_times=w))
            for j in batch:
                if j.audio.duration > LONG_AUDIO_SECONDS:
                    a = j.audio
                    self._run([j], lambda a=a, w=j.word_times: [transcribe(self.model, a.samples, a.sample_rate, self.options, decoder=self.decoder, word_times=w)])

    @staticmethod
    def _run(jobs: list[_Job], work: Any) -> None:
        try:
            results = work()
        except Exception as e:  # the request fails, the server keeps serving
            for j in jobs:
                j.future.set_exception(e)
            return
        for j, r in zip(jobs, results, strict=True):
            j.future.set_result(r)


# --- responses ------------------------------------------------------------------------------


def openai_error(message: str, status: int, param: str | None = None, code: str | None = None) -> Any:
    """A JSONResponse in OpenAI's error shape."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def verbose_json(result: Transcript, words: bool, language: str) -> dict[str, Any]:
    """OpenAI's verbose_json object: the text, duration, segments (subtitle cues of the word
    times, `asr.formats.group_cues`) and, with `words`, each word's start and end."""
    if result.words:
        cues = group_cues(result.words)
    else:  # text without word times: one segment
        cues = [Cue(0.0, result.duration, result.text)] if result.text else []
    segments = []
    for i, c in enumerate(cues):
        inside = [w for w in result.words if c.start - 1e-6 <= w.start and w.end <= c.end + 1e-6]
        conf = sum(w.confidence for w in inside) / len(inside) if inside else 1.0
        segments.append(
            {
                "id": i,
                "seek": 0,
                "start": round(c.start, 3),
                "end": round(c.end, 3),
                "text": c.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": round(math.log(max(conf, 1e-6)), 4),
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }
        )
    out: dict[str, Any] = {"task": "transcribe", "language": language, "duration": round(result.duration, 3), "text": result.text, "segments": segments}
    if words:
        out["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3), "probability": round(w.confidence, 3)} for w in result.words]
    return out


# --- limits ---------------------------------------------------------------------------------


class RequestLimits:
    """ASGI middleware: the API key and the body cap, checked before the body is read.

    A request without the key gets 401 at once; a body larger than the cap gets 413 as soon as
    its Content-Length, or the bytes received so far, pass it; a client that stalls longer than
    `body_timeout` between pieces of its body gets 408. The body, once complete, is handed to
    the application from memory."""

    OPEN_PATHS = ("/health", "/", "/favicon.ico")

    def __init__(self, app: Any, config: ServerConfig):
        self.app, self.config = app, config

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.config.api_key and scope["path"] not in self.OPEN_PATHS and scope["method"] != "OPTIONS":
            if not key_matches(headers.get(b"authorization", b"").decode("latin-1"), self.config.api_key):
                return await _send_error(send, 401, "missing or incorrect API key: send Authorization: Bearer <key>", "invalid_api_key")
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.config.max_upload_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _send_error(send, 400, f"invalid Content-Length {declared.decode('latin-1')!r}", "invalid_request")
            if size > limit:
                return await _send_error(send, 413, f"request body of {size} bytes is over the {self.config.max_upload_mb:g} MB limit (--max-upload-mb)", "file_too_large")
        body = bytearray()
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.config.body_timeout)
            except TimeoutError:
                return await _send_error(send, 408, f"request body stalled for more than {self.config.body_timeout:g} s", "timeout")
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                return await _send_error(send, 413, f"request body is over the {self.config.max_upload_mb:g} MB limit (--max-upload-mb)", "file_too_large")
            if not message.get("more_body", False):
                break
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def key_matches(authorization: str, key: str) -> bool:
    """Whether an Authorization header carries `Bearer <key>`, compared in constant time."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


async def _send_error(send: Any, status: int, message: str, code: str) -> None:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --- the application ------------------------------------------------------------------------


def create_app(model: Any, options: DecodeOptions | None = None, config: ServerConfig | None = None, name: str = "asr") -> Any:
    """The FastAPI application serving `model` (a loaded model, `asr.load_model`) with decoding
    `options` (default: the checkpoint's own). `name` is the model id /v1/models lists."""
    config = config or ServerConfig()
    options = options or resolve_options(model.cfg.decode)
    batcher = Batcher(model, options, config.workers, config.queue_size, config.max_batch, config.batch_wait_ms)
    rate_check = SampleRateCheck(training_rate(model))
    rate_lock = threading.Lock()
    kind = model.cfg.model.kind
    created = int(time.time())

    app = FastAPI(title="asr", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        return openai_error(str(exc.detail), exc.status_code, code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Any:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = str(first.get("loc", ["", "?"])[-1]) if first else None
        return openai_error(f"{first.get('msg', 'invalid request')}: {param}", 400, param=param, code="invalid_request")

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "model": name, "kind": kind, "streaming": _can_stream(model), "sample_rate": model.cfg.features.sample_rate}

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "asr"}]}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> Any:
        return HTMLResponse(resources.files("asr").joinpath("web/index.html").read_text(encoding="utf-8"))

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Any:
        try:
            form = await request.form(max_files=1, max_fields=32)
        except Exception as e:  # malformed multipart, too many parts
            return openai_error(f"could not parse the multipart form: {getattr(e, 'detail', None) or e}", 400, code="invalid_request")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return openai_error("no audio: send the recording as the multipart field 'file'", 400, param="file", code="invalid_request")
        fmt = str(form.get("response_format") or "json")
        if fmt not in RESPONSE_FORMATS:
            return openai_error(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}", 400, param="response_format", code="invalid_request")
        granularities = [str(g) for g in form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")]
        for g in granularities:
            if g not in ("word", "segment"):
                return openai_error(f"timestamp_granularities must be word or segment, got {g!r}", 400, param="timestamp_granularities[]", code="invalid_request")
        filename = upload.filename or "file"
        data = await upload.read()
        await upload.close()
        try:
            audio = await asyncio.to_thread(read_audio, data, None, model.cfg.features.sample_rate, filename)
        except AudioError as e:
            return openai_error(str(e), 400, param="file", code="invalid_audio")
        with rate_lock:
            if rate_check.add(audio.source_rate):
                rate_check.warn(sys.stderr)
        try:
            future = batcher.submit(audio, word_times=fmt != "text" and fmt != "json")
        except QueueFull as e:
            response = openai_error(f"server busy: {e}; retry later", 503, code="overloaded")
            response.headers["Retry-After"] = "1"
            return response
        try:
            result: Transcript = await asyncio.wait_for(asyncio.wrap_future(future), config.request_timeout)
        except TimeoutError:
            return openai_error(f"{filename}: transcription took longer than {config.request_timeout:g} s", 504, code="timeout")
        except Exception as e:
            return openai_error(f"{filename}: recognition failed: {type(e).__name__}: {e}", 500, code="internal_error")
        if fmt == "json":
            return {"text": result.text}
        if fmt == "text":
            return PlainTextResponse(result.text + "\n")
        if fmt == "srt":
            return PlainTextResponse(to_srt(result), media_type="application/x-subrip")
        if fmt == "vtt":
            return PlainTextResponse(to_vtt(result), media_type="text/vtt")
        language = str(form.get("language") or "unknown")
        return JSONResponse(verbose_json(result, "word" in granularities, language))

    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        from asr.server_stream import serve_stream

        await serve_stream(websocket, model, options, config, rate_check)

    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(RequestLimits, config=config)
    return app


def _can_stream(model: Any) -> bool:
    from asr.encoders import encoder_class

    try:
        return bool(encoder_class(model.cfg.model.kind).streaming) and model.cfg.features.cmvn != "utterance"
    except Exception:
        return False


def serve(model: Any, options: DecodeOptions | None = None, config: ServerConfig | None = None, name: str = "asr") -> None:
    """Run the server until interrupted (uvicorn; Ctrl-C or SIGTERM stop it: open WebSocket
    streams are sent their last finals first, `asr.server_stream.close_streams`)."""
    config = config or ServerConfig()
    app = create_app(model, options, config, name)
    uvicorn_server(app, host=config.host, port=config.port).run()


def uvicorn_server(app: Any, host: str, port: int, **settings: Any) -> Any:
    """A uvicorn.Server of `app` (uvicorn's `settings` besides the server's own) that, when it
    stops, lets the open WebSocket streams send their finals before uvicorn closes them (1012)."""
    import uvicorn

    from asr.server_stream import close_streams

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            await close_streams(app)
            await super().shutdown(sockets)

    options = {"log_level": "warning", "timeout_keep_alive": 5, "ws_ping_interval": 20, "ws_ping_timeout": 20, **settings}
    return Server(uvicorn.Config(app, host=host, port=port, **options))
