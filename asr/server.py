"""`asr serve`: recognition over HTTP and WebSocket, with an OpenAI-compatible route.

Routes (`create_app`):

- `POST /v1/audio/transcriptions`: OpenAI's transcription request (multipart `file`, `model`,
  `response_format` json | text | srt | vtt | verbose_json, `timestamp_granularities[]`;
  `stream=true` for OpenAI's streamed events; `language`, `prompt` and `temperature` accepted and
  ignored, `prompt` read as hotwords with `prompt_as_hotwords`) and fields of our own: `hotwords`
  (`WORD[:BOOST]` items separated by commas or newlines, added to the server's) and `grammar`
  (grammar text, `asr.context`). Errors in OpenAI's shape
  `{"error": {"message", "type", "param", "code"}}`.
- `GET /v1/models`, `GET /health`.
- `WebSocket /v1/stream`: live recognition with a streaming model (`asr.stream`).
- `GET /`: a page to upload a file or record from the microphone; `GET /favicon.ico`, its icon
  (`asr.server_page`).

Requests from many clients meet in one bounded queue (`Batcher`): worker threads take what is
waiting (up to `max_batch` recordings) and run it through `asr.inference.recognize` in one
batched forward pass, as `asr decode` does with a manifest. A full queue answers 503 with
`Retry-After`. Nothing is acknowledged before it is finished: a response is sent only when its
transcript exists.

Safe defaults: loopback only; with an API key every route but `/health` and the page itself
needs `Authorization: Bearer KEY` (compared in constant time; a WebSocket may send the key in its
start message, as browsers cannot set headers on one); request bodies are capped (413 as soon as
the declared or received size passes the cap, before the rest is read) and must arrive without
long stalls (408); uploads are held and parsed in memory (`asr.server_form`), never written to
disk; CORS is off unless origins are given. The HTTP and WebSocket machinery is FastAPI's and uvicorn's; this module holds the
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
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.exceptions import HTTPException as StarletteHTTPException

from asr.audio import AudioError, AudioTooLong, SampleRateCheck, training_rate
from asr.context_fields import options_from_form
from asr.formats import Cue, Transcript, group_cues, to_srt, to_vtt
from asr.inference import LONG_AUDIO_SECONDS, Audio, EncodedAudio, decoder_for, join_segments, open_bytes, recognize
from asr.options import DecodeOptions, resolve_options
from asr.server_form import FormError, Upload, parse_form
from asr.server_page import add_page_routes, model_info

__all__ = ["ServerConfig", "Batcher", "Job", "Dropped", "QueueFull", "create_app", "serve", "RESPONSE_FORMATS"]

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
STREAM_FORMATS = ("json", "text")  # the response formats `stream=true` can stand for
UNNAMED_UPLOAD = "upload"  # what errors call an audio part sent without a file name


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
    max_audio_seconds: the longest recording decoded (413 past it, by its header or counted
        while decoding); uploads over LONG_AUDIO_SECONDS are decoded block by block, so one
        upload's decoded audio in memory stays under that much, whatever its compression.
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
    max_audio_seconds: float = 3600.0
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    prompt_as_hotwords: bool = False  # read OpenAI's `prompt` field as a hotword list

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)


class QueueFull(RuntimeError):
    """The batcher's queue holds `queue_size` recordings already."""


class Dropped(RuntimeError):
    """A job dropped before it was done: its client went away or its time was up."""


@dataclass(eq=False)
class Job:
    """One recording in the batcher: `audio` decoded (short) or still encoded (long: decoded
    block by block by the worker), the Future of its Transcript, and whether word times are
    wanted. `on_segment(transcript)`, when given, is called from the worker with each segment of
    a long recording as it is done. `cancel()` drops the job: before it starts, or between the
    segments of a long one."""

    audio: Audio | EncodedAudio
    future: Future
    word_times: bool = True
    on_segment: Callable[[Transcript], None] | None = None
    options: DecodeOptions | None = None  # the request's own (hotwords, grammar); None: the server's
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def long(self) -> bool:
        return self.audio.duration > LONG_AUDIO_SECONDS

    def cancel(self) -> None:
        self.cancelled.set()
        self.future.cancel()


class Batcher:
    """A bounded queue of recordings and `workers` threads that decode them in batches.

    `submit(audio)` returns a `Job` whose `future` gives its `Transcript` (QueueFull when the
    queue is full). A worker takes the first waiting job, then whatever else arrives within
    `batch_wait_ms`, up to `max_batch`, and decodes the short ones together
    (`asr.inference.recognize`); a recording longer than LONG_AUDIO_SECONDS (an `EncodedAudio`)
    is decoded block by block, cut at pauses and recognised segment by segment
    (`asr.inference.join_segments`), as `asr transcribe` reads a long file. A cancelled job
    (`Job.cancel`) is dropped before it starts and between its segments.

    `runs` counts the recordings whose recognition was started, `dropped` those dropped.
    """

    def __init__(self, model: Any, options: DecodeOptions, workers: int = 1, queue_size: int = 64, max_batch: int = 16, batch_wait_ms: float = 5.0):
        if workers < 1 or queue_size < 1 or max_batch < 1:
            raise ValueError("workers, queue_size and max_batch must be at least 1")
        self.model, self.options = model, options
        self.decoder = decoder_for(model, options)
        self.max_batch, self.wait = max_batch, batch_wait_ms / 1000
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.runs = self.dropped = 0
        self._count = threading.Lock()
        self.threads = [threading.Thread(target=self._work, name=f"asr-batcher-{i}", daemon=True) for i in range(workers)]
        for t in self.threads:
            t.start()

    def submit(
        self, audio: Audio | EncodedAudio, word_times: bool = True, on_segment: Callable[[Transcript], None] | None = None, options: DecodeOptions | None = None
    ) -> Job:
        """Queue a recording, decoded with `options` (default: the server's); QueueFull when
        the queue is full."""
        job = Job(audio, Future(), word_times, on_segment, None if options == self.options else options)
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.jobs.maxsize} recordings are waiting") from None
        return job

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)

    def _take(self) -> list[Job] | None:
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

    def _start(self, jobs: list[Job]) -> list[Job]:
        """The jobs still wanted, marked running; the others counted as dropped."""
        live = [j for j in jobs if not j.cancelled.is_set() and j.future.set_running_or_notify_cancel()]
        with self._count:
            self.runs += len(live)
            self.dropped += len(jobs) - len(live)
        return live

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            short = [j for j in batch if not j.long]
            # one group per set of options: each request is searched with its own hotwords
            for opts in dict.fromkeys(j.options for j in short):
                options, decoder = self._search(opts)
                for words in (True, False):
                    group = self._start([j for j in short if j.word_times == words and j.options == opts])
                    if group:
                        self._run(group, lambda g=group, w=words, o=options, d=decoder: recognize(self.model, [j.audio for j in g], o, decoder=d, word_times=w))
            for j in batch:
                if j.long and self._start([j]):
                    self._run([j], lambda j=j: [self._long(j)])

    def _search(self, opts: DecodeOptions | None) -> tuple[DecodeOptions, Any]:
        """The options and decoder of a job's `options` (None: the server's own)."""
        return (self.options, self.decoder) if opts is None else (opts, decoder_for(self.model, opts))

    def _long(self, job: Job) -> Transcript:
        """A recording over LONG_AUDIO_SECONDS, cut at pauses and recognised segment by segment:
        decoded block by block (an `EncodedAudio`), or from its samples (an `Audio`, e.g. Wyoming's PCM)."""
        from asr.segment import segment_stream

        audio = job.audio
        sr = self.model.cfg.features.sample_rate
        options, decoder = self._search(job.options)
        if isinstance(audio, EncodedAudio):
            pieces, rate = audio.segments(sr), audio.sample_rate
        else:
            blocks = (audio.samples[i : i + sr] for i in range(0, len(audio.samples), sr))
            pieces, rate = segment_stream(blocks, sr, sr, max_seconds=LONG_AUDIO_SECONDS), audio.source_rate

        def segments() -> Iterator[Any]:
            for seg in pieces:
                if job.cancelled.is_set():
                    with self._count:
                        self.dropped += 1
                    raise Dropped("dropped between segments")
                yield seg

        return join_segments(self.model, segments(), audio.duration, rate, options, decoder, job.word_times, on_segment=job.on_segment)

    @staticmethod
    def _run(jobs: list[Job], work: Any) -> None:
        try:
            results = work()
        except Exception as e:  # the request fails, the server keeps serving
            for j in jobs:
                j.future.set_exception(e)
            return
        for j, r in zip(jobs, results, strict=True):
            j.future.set_result(r)


# --- responses ------------------------------------------------------------------------------


def openai_error(message: str, status: int, param: str | None = None, code: str | None = None) -> JSONResponse:
    """A JSONResponse in OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`,
    compact (FastAPI's JSON encoding); every error the server sends, at any status, is one."""
    return JSONResponse(error_object(message, status, param, code), status_code=status)


def error_object(message: str, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for `status`: type invalid_request_error below 500, else server_error."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ClientGone(Exception):
    """The client hung up before its answer was ready."""


async def outcome(request: Request, job: Job, timeout: float) -> Transcript:
    """The job's Transcript, once done. The job is cancelled (dropped from the queue, or stopped
    between its segments) when its client disconnects (ClientGone) or after `timeout` seconds
    (TimeoutError); the job's own exception otherwise."""
    done = asyncio.wrap_future(job.future)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        finished, _ = await asyncio.wait({done, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if done in finished:
        return done.result()
    job.cancel()
    done.add_done_callback(lambda f: f.cancelled() or f.exception())  # a stopped job's Dropped: nobody's to read
    if gone in finished:
        raise ClientGone
    raise TimeoutError


async def _disconnect(request: Request) -> None:
    """Return when the client has disconnected (the body is read by then: what comes next is
    the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class TextDeltas:
    """OpenAI's streamed transcription (`stream=true`): server-sent events, each `data:` a JSON
    object, `{"type": "transcript.text.delta", "delta"}` as the text grows, then
    `{"type": "transcript.text.done", "text"}`; the deltas joined are the text, the text the one
    the same request gives without `stream`. A recording over LONG_AUDIO_SECONDS sends a delta
    per segment as each is recognised; a shorter one, one delta. A failure after the events have
    begun is an event `{"error": {...}}` in OpenAI's error shape (what its clients raise)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.pieces: asyncio.Queue[str | None] = asyncio.Queue()

    def segment_done(self, result: Transcript) -> None:
        """Called from the worker with each segment's Transcript."""
        self.loop.call_soon_threadsafe(self.pieces.put_nowait, result.text)

    async def events(self, job: Job, filename: str, timeout: float) -> AsyncIterator[bytes]:
        job.future.add_done_callback(lambda _: self.loop.call_soon_threadsafe(self.pieces.put_nowait, None))
        deadline = self.loop.time() + timeout
        sent = ""
        try:
            while True:
                try:
                    text = await asyncio.wait_for(self.pieces.get(), max(0.0, deadline - self.loop.time()))
                except TimeoutError:
                    yield _event(error_object(f"{filename}: transcription took longer than {timeout:g} s", 504, code="timeout"))
                    return
                if text is None:
                    break
                if text:
                    delta = f" {text}" if sent else text
                    sent += delta
                    yield _event({"type": "transcript.text.delta", "delta": delta})
            try:
                result: Transcript = job.future.result()
            except AudioError as e:
                yield _event(json.loads(audio_error(e).body))
                return
            except Exception as e:  # a server-side failure: its details stay in the server's log
                traceback.print_exception(e, file=sys.stderr)
                yield _event(error_object(f"{filename}: recognition failed ({type(e).__name__})", 500, code="internal_error"))
                return
            if result.text != sent:  # a short recording's text, in one delta
                yield _event({"type": "transcript.text.delta", "delta": result.text[len(sent) :] if result.text.startswith(sent) else result.text})
            yield _event({"type": "transcript.text.done", "text": result.text})
        finally:
            job.cancel()  # a client gone mid-stream, or the time up: the rest is not decoded


def _event(data: dict[str, Any]) -> bytes:
    return format_sse_event(data_str=json.dumps(data, ensure_ascii=False, separators=(",", ":")))


class Refused(Exception):
    """A request answered with `response` (an OpenAI-shaped error) instead of a transcript."""

    def __init__(self, response: Any):
        super().__init__(getattr(response, "status_code", None))
        self.response = response


async def read_upload(request: Request, max_fields: int) -> tuple[Any, Upload, str]:
    """The request's multipart form (parsed in memory, `asr.server_form`), its `file` part and
    the name errors call it by; Refused (400) for a form that does not parse or has no file."""
    try:
        form = parse_form(await request.body(), request.headers.get("content-type", ""), max_fields=max_fields, max_files=1)
    except FormError as e:
        raise Refused(openai_error(f"could not parse the multipart form: {e}", 400, code="invalid_request")) from None
    upload = form.get("file")
    if not isinstance(upload, Upload):
        raise Refused(openai_error("no audio: send the recording as the multipart field 'file'", 400, param="file", code="invalid_request"))
    return form, upload, upload.filename or UNNAMED_UPLOAD


def submit(batcher: Batcher, audio: Audio | EncodedAudio, **job: Any) -> Job:
    """`batcher.submit(audio, **job)`; Refused (503 with Retry-After) when its queue is full."""
    try:
        return batcher.submit(audio, **job)
    except QueueFull as e:
        response = openai_error(f"server busy: {e}; retry later", 503, code="overloaded")
        response.headers["Retry-After"] = "1"
        raise Refused(response) from None


async def transcript_of(request: Request, job: Job, filename: str, timeout: float) -> Transcript:
    """The job's Transcript (`outcome`); Refused with 504 past `timeout`, 499 when the client
    has gone, 400/413 for audio found unusable while decoding, 500 for a server-side failure
    (its details go to the server's log, not to the client)."""
    try:
        return await outcome(request, job, timeout)
    except TimeoutError:
        raise Refused(openai_error(f"{filename}: transcription took longer than {timeout:g} s", 504, code="timeout")) from None
    except ClientGone:
        raise Refused(Response(status_code=499)) from None  # nobody reads it
    except AudioError as e:  # found while decoding a long recording block by block
        raise Refused(audio_error(e)) from None
    except Exception as e:
        traceback.print_exception(e, file=sys.stderr)
        raise Refused(openai_error(f"{filename}: recognition failed ({type(e).__name__})", 500, code="internal_error")) from None


def audio_error(e: AudioError) -> JSONResponse:
    """An upload that cannot be used: 413 past --max-audio-seconds, else 400."""
    if isinstance(e, AudioTooLong):
        return openai_error(f"{e} (--max-audio-seconds)", 413, param="file", code="audio_too_long")
    return openai_error(str(e), 400, param="file", code="invalid_audio")


def open_upload(data: bytes, name: str, model_rate: int, max_seconds: float | None) -> Audio | EncodedAudio:
    """An upload's audio for the batcher: its header checked (AudioTooLong past `max_seconds`),
    decoded whole when it lasts at most LONG_AUDIO_SECONDS, else left encoded, for the worker to
    decode block by block. Raises AudioError naming `name`."""
    encoded = open_bytes(data, name, max_seconds)
    return encoded if encoded.duration > LONG_AUDIO_SECONDS else encoded.decode(model_rate)


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
                return await _send_error(scope, receive, send, 401, "missing or incorrect API key: send Authorization: Bearer <key>", "invalid_api_key")
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.config.max_upload_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await _send_error(scope, receive, send, 400, f"invalid Content-Length {declared.decode('latin-1')!r}", "invalid_request")
            if size > limit:
                return await _send_error(scope, receive, send, 413, f"request body of {size} bytes is over the {self.config.max_upload_mb:g} MB limit (--max-upload-mb)", "file_too_large")
        body = bytearray()
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.config.body_timeout)
            except TimeoutError:
                return await _send_error(scope, receive, send, 408, f"request body stalled for more than {self.config.body_timeout:g} s", "timeout")
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                return await _send_error(scope, receive, send, 413, f"request body is over the {self.config.max_upload_mb:g} MB limit (--max-upload-mb)", "file_too_large")
            if not message.get("more_body", False):
                break
        whole: bytes | None = bytes(body)
        del body

        async def replay() -> dict:
            nonlocal whole
            if whole is not None:
                message = {"type": "http.request", "body": whole, "more_body": False}
                whole = None
                return message
            return await receive()

        await self.app(scope, replay, send)


def key_matches(authorization: str, key: str) -> bool:
    """Whether an Authorization header carries `Bearer <key>`, compared in constant time."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


async def _send_error(scope: dict, receive: Any, send: Any, status: int, message: str, code: str) -> None:
    """An error answered by the middleware itself, before the application sees the request; the
    connection is closed, as the rest of the body is not read."""
    response = openai_error(message, status, code=code)
    response.headers["Connection"] = "close"
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    await response(scope, receive, send)


# --- the application ------------------------------------------------------------------------


def create_app(model: Any, options: DecodeOptions | None = None, config: ServerConfig | None = None, name: str = "asr") -> Any:
    """The FastAPI application serving `model` (a loaded model, `asr.load_model`) with decoding
    `options` (default: the checkpoint's own). `name` is the model id /v1/models lists."""
    config = config or ServerConfig()
    options = options or resolve_options(model.cfg.decode)
    batcher = Batcher(model, options, config.workers, config.queue_size, config.max_batch, config.batch_wait_ms)
    rate_check = SampleRateCheck(training_rate(model))
    rate_lock = threading.Lock()
    created = int(time.time())

    app = FastAPI(title="asr", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        return openai_error(str(exc.detail), exc.status_code, code="not_found" if exc.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> Any:  # a bug: said without its details, which may name server paths
        traceback.print_exception(exc, file=sys.stderr)
        return openai_error("internal server error", 500, code="internal_error")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Any:
        errors = exc.errors()
        first = errors[0] if errors else {}
        param = str(first.get("loc", ["", "?"])[-1]) if first else None
        return openai_error(f"{first.get('msg', 'invalid request')}: {param}", 400, param=param, code="invalid_request")

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok", "model": name, **model_info(model), "sample_rate": model.cfg.features.sample_rate}

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "asr"}]}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> Any:
        return HTMLResponse(resources.files("asr").joinpath("web/index.html").read_text(encoding="utf-8"))

    add_page_routes(app, model, batcher, config)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Any:
        try:
            return await transcription(request)
        except Refused as r:
            return r.response

    async def transcription(request: Request) -> Any:
        form, upload, filename = await read_upload(request, max_fields=32)
        fmt = str(form.get("response_format") or "json")
        if fmt not in RESPONSE_FORMATS:
            return openai_error(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}", 400, param="response_format", code="invalid_request")
        granularities = [str(g) for g in form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")]
        for g in granularities:
            if g not in ("word", "segment"):
                return openai_error(f"timestamp_granularities must be word or segment, got {g!r}", 400, param="timestamp_granularities[]", code="invalid_request")
        streamed = str(form.get("stream") or "false").lower()
        if streamed not in ("true", "false"):
            return openai_error(f"stream must be true or false, got {streamed!r}", 400, param="stream", code="invalid_request")
        if streamed == "true" and fmt not in STREAM_FORMATS:
            return openai_error(f"stream=true sends text events: response_format must be {' or '.join(STREAM_FORMATS)}, got {fmt!r}", 400, param="stream", code="invalid_request")
        try:
            request_options = await asyncio.to_thread(options_from_form, model, options, form, config.prompt_as_hotwords)
        except ValueError as e:
            return openai_error(str(e), 400, param=getattr(e, "param", None), code="invalid_context")
        try:
            audio = await asyncio.to_thread(open_upload, upload.data, filename, model.cfg.features.sample_rate, config.max_audio_seconds)
        except AudioError as e:
            return audio_error(e)
        with rate_lock:
            if rate_check.add(audio.source_rate if isinstance(audio, Audio) else audio.sample_rate):
                rate_check.warn(sys.stderr)
        deltas = TextDeltas() if streamed == "true" else None
        job = submit(batcher, audio, word_times=fmt != "text" and fmt != "json", on_segment=deltas.segment_done if deltas else None, options=request_options)
        if deltas is not None:
            return EventSourceResponse(deltas.events(job, filename, config.request_timeout))
        result = await transcript_of(request, job, filename, config.request_timeout)
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
