"""The Wyoming protocol (Home Assistant's voice pipeline) for `asr serve --wyoming URI`.

A client connects (tcp://HOST:PORT, unix://PATH) and sends events (the `wyoming` package's
types):

- `describe` -> `info`: one ASR program, `asr`, with one model (the server's name and kind, its
  languages);
- `transcribe` (optional; its `transcript_names` and `transcript_terms`, which Home Assistant
  fills with the names of its entities, become hotwords: names boosted more than terms, the
  ones the model cannot spell left out; its `context` may carry `"hotwords": [...]` and
  `"grammar": "..."` of our own, checked as strictly as the HTTP fields), then `audio-start`,
  `audio-chunk`s (PCM of any rate, 1, 2 or 4 bytes a sample, any channels) and `audio-stop` ->
  `transcript` with the text.

Recordings go to the same batcher as the HTTP routes (`asr.server.Batcher`), with the same
limits: at most `max_upload_mb` of PCM, `request_timeout` seconds of recognition,
`body_timeout` seconds between events of an open recording. Anything that cannot be used gets an
`error` event (text, code) and the recording is dropped; the connection stays open.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from typing import Any

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.server import AsyncEventHandler, AsyncServer

from asr.audio import AudioError
from asr.context import DEFAULT_BOOST, ContextError, Hotword, check_spellable
from asr.options import DecodeOptions, with_context

__all__ = ["info_event", "WyomingHandler", "check_uri", "run_wyoming", "NAME_BOOST"]

_LOG = logging.getLogger("asr.wyoming")
NAME_BOOST = 1.5 * DEFAULT_BOOST  # transcript_names take priority over transcript_terms
WIDTHS = (1, 2, 4)


def check_uri(uri: str) -> str:
    """`uri` if the wyoming package can serve it (tcp://HOST:PORT, unix://PATH, stdio://);
    ValueError (one line) otherwise."""
    try:
        AsyncServer.from_uri(uri)
    except ValueError as e:
        raise ValueError(f"--wyoming {uri}: {e}") from None
    return uri


def info_event(model: Any, name: str, languages: tuple[str, ...] = ("en",)) -> Event:
    """The `info` answer to `describe`: the program `asr` and its one model."""
    from asr import __version__

    attribution = Attribution(name="asr", url="https://github.com/")
    kind = model.cfg.model.kind
    asr_model = AsrModel(
        name=name, attribution=attribution, installed=True, description=f"{kind} CTC acoustic model ({model.cfg.features.sample_rate} Hz)", version=__version__, languages=list(languages)
    )
    program = AsrProgram(
        name="asr", attribution=attribution, installed=True, description="asr: CTC speech recognition", version=__version__, models=[asr_model], supports_transcript_streaming=False
    )
    return Info(asr=[program]).event()


class WyomingHandler(AsyncEventHandler):
    """One client connection (see the module docstring). `batcher`: the server's
    `asr.server.Batcher`; `config`: its `asr.server.ServerConfig`; `info`: `info_event(...)`."""

    def __init__(self, reader: Any, writer: Any, *, model: Any, options: DecodeOptions, batcher: Any, config: Any, info: Event):
        super().__init__(reader, writer)
        self.model, self.base_options, self.batcher, self.config, self.info = model, options, batcher, config, info
        self._reset()

    def _reset(self) -> None:
        self.options = self.base_options
        self.pcm: bytearray | None = None  # 16-bit PCM (self.rate, self.channels) while a recording is open
        self.rate: int | None = None
        self.channels = 1
        self.converter = AudioChunkConverter(width=2)
        self.failed = False  # the open recording had an error: its chunks are dropped until audio-stop

    async def run(self) -> None:
        """Receive events until the client goes, with the body timeout between the events of an
        open recording."""
        from wyoming.event import async_read_event

        self._is_running = True
        try:
            while self._is_running:
                timeout = self.config.body_timeout if self.pcm is not None else None
                try:
                    event = await asyncio.wait_for(async_read_event(self.reader), timeout)
                except TimeoutError:
                    await self._error(f"no event for {self.config.body_timeout:g} s during a recording", "timeout")
                    break
                except (ValueError, UnicodeDecodeError) as e:  # not a Wyoming event
                    await self._error(f"not a Wyoming event: {str(e)[:120]}", "invalid_event")
                    break
                if event is None or not await self.handle_event(event):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await self.disconnect()
            self.writer.close()

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(self.info)
        elif Transcribe.is_type(event.type):
            self._reset()
            try:
                self.options = await asyncio.to_thread(self._options_of, Transcribe.from_event(event))
            except ValueError as e:
                self.failed = True
                await self._error(str(e), "invalid_context")
        elif AudioStart.is_type(event.type):
            start = AudioStart.from_event(event)
            self.pcm, self.rate = bytearray(), None
            problem = _format_problem(start.rate, start.width, start.channels)
            if problem and not self.failed:
                await self._fail(problem, "invalid_audio")
        elif AudioChunk.is_type(event.type):
            await self._chunk(event)
        elif AudioStop.is_type(event.type):
            await self._stop()
        return True

    def _options_of(self, request: Transcribe) -> DecodeOptions:
        from asr.context_fields import request_options

        tokens = list(self.model.tokenizer.tokens)
        found: dict[tuple[str, ...], Hotword] = {}
        for items, boost in ((request.transcript_terms, DEFAULT_BOOST), (request.transcript_names, NAME_BOOST)):
            for text in items or []:
                try:
                    h = Hotword.of(str(text), boost, "transcribe")
                    check_spellable(h.words, tokens, "transcribe")
                except ContextError:
                    _LOG.info("left out of the hotwords: %r", text)
                    continue
                found[h.words] = h
        options = self.base_options
        if found:
            options = with_context(options, tuple({h.words: h for h in (*options.hotwords, *found.values())}.values()), options.grammar)
        context = request.context if isinstance(request.context, dict) else {}
        return request_options(self.model, options, context.get("hotwords"), context.get("grammar"))

    async def _chunk(self, event: Event) -> None:
        if self.failed:
            return
        if self.pcm is None:  # chunks without audio-start: the first chunk opens the recording
            self.pcm = bytearray()
        try:
            chunk = AudioChunk.from_event(event)
        except (KeyError, TypeError) as e:
            return await self._fail(f"malformed audio-chunk ({e})", "invalid_audio")
        problem = _format_problem(chunk.rate, chunk.width, chunk.channels)
        if problem:
            return await self._fail(problem, "invalid_audio")
        if len(chunk.audio) % (chunk.width * chunk.channels):
            return await self._fail(f"an audio-chunk of {len(chunk.audio)} bytes is not whole samples of {chunk.width} bytes x {chunk.channels} channels", "invalid_audio")
        if self.rate is None:
            self.rate, self.channels = chunk.rate, chunk.channels
        elif (chunk.rate, chunk.channels) != (self.rate, self.channels):
            return await self._fail(f"the recording's audio is {self.rate} Hz, {self.channels} channel(s); a chunk came as {chunk.rate} Hz, {chunk.channels}", "invalid_audio")
        self.pcm += self.converter.convert(chunk).audio
        seconds = len(self.pcm) / (2 * self.rate * self.channels)
        if len(self.pcm) > self.config.max_upload_bytes:
            await self._fail(f"the recording is over the {self.config.max_upload_mb:g} MB limit (--max-upload-mb)", "too_large")
        elif self.config.max_audio_seconds is not None and seconds > self.config.max_audio_seconds:
            await self._fail(f"the recording is over {self.config.max_audio_seconds:g} s (--max-audio-seconds)", "audio_too_long")

    async def _fail(self, text: str, code: str) -> None:
        self.failed = True
        self.pcm = bytearray()
        await self._error(text, code)

    async def _stop(self) -> None:
        from asr.inference import read_audio
        from asr.server import QueueFull

        pcm, rate, channels, failed, options = self.pcm, self.rate, self.channels, self.failed, self.options
        self._reset()
        if failed:
            return
        if not pcm or rate is None:
            return await self._error("no audio between audio-start and audio-stop", "invalid_audio")
        samples = np.frombuffer(bytes(pcm), dtype="<i2").astype(np.float32).reshape(-1, channels).mean(axis=1) / 32768.0
        try:
            audio = await asyncio.to_thread(read_audio, samples, rate, self.model.cfg.features.sample_rate)
        except AudioError as e:
            return await self._error(str(e), "invalid_audio")
        try:
            job = self.batcher.submit(audio, word_times=False, options=options)
        except QueueFull as e:
            return await self._error(f"server busy: {e}; retry later", "overloaded")
        try:
            result = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job.future)), self.config.request_timeout)
        except TimeoutError:
            job.cancel()
            return await self._error(f"transcription took longer than {self.config.request_timeout:g} s", "timeout")
        except Exception as e:  # a server-side failure: its details stay in the server's log
            traceback.print_exception(e, file=sys.stderr)
            return await self._error(f"recognition failed ({type(e).__name__})", "internal_error")
        await self.write_event(Transcript(text=result.text).event())

    async def _error(self, text: str, code: str) -> None:
        try:
            await self.write_event(Error(text=text, code=code).event())
        except (ConnectionError, RuntimeError):
            pass


def _format_problem(rate: Any, width: Any, channels: Any) -> str | None:
    if isinstance(rate, int) and 1000 <= rate <= 768000 and width in WIDTHS and isinstance(channels, int) and 1 <= channels <= 64:
        return None
    return f"unusable audio format: rate {rate!r} Hz, width {width!r} bytes, {channels!r} channels (rate 1000-768000 Hz, width 1, 2 or 4 bytes)"


async def run_wyoming(uri: str, model: Any, options: DecodeOptions, batcher: Any, config: Any, name: str, languages: tuple[str, ...] = ("en",)) -> None:
    """Serve the Wyoming protocol on `uri` until cancelled."""
    info = info_event(model, name, languages)
    server = AsyncServer.from_uri(uri)

    def handler(reader: Any, writer: Any) -> WyomingHandler:
        return WyomingHandler(reader, writer, model=model, options=options, batcher=batcher, config=config, info=info)

    await server.run(handler)


def serve(model: Any, options: DecodeOptions, config: Any, name: str, wyoming: str, http: bool = True, languages: tuple[str, ...] = ("en",)) -> None:
    """Run the Wyoming server on `wyoming`, and with `http` the HTTP server of `asr.server`
    beside it in the same event loop and over the same batcher, until interrupted."""
    from asr.server import Batcher, create_app, uvicorn_server

    async def main() -> None:
        if not http:
            batcher = Batcher(model, options, config.workers, config.queue_size, config.max_batch, config.batch_wait_ms)
            return await run_wyoming(wyoming, model, options, batcher, config, name, languages)
        app = create_app(model, options, config, name)
        task = asyncio.create_task(run_wyoming(wyoming, model, options, app.state.batcher, config, name, languages))
        web = uvicorn_server(app, host=config.host, port=config.port)
        try:
            await web.serve()
        finally:
            task.cancel()
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()

    asyncio.run(main())
