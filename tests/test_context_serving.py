"""Hotwords and grammars per request (HTTP form fields, OpenAI's prompt, the WebSocket start
message), isolation of concurrent requests in one batch, and the Wyoming server through the
`wyoming` package's own client."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import tone_utterance

SR = 16000


def _wav(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model(trained: Path):
    import asr

    return asr.load_model(trained / "best.pt")


@pytest.fixture(scope="module")
def bad_audio() -> np.ndarray:
    return tone_utterance(["BAD", "DC"], np.random.default_rng(3))


def _client(model, **config):
    from fastapi.testclient import TestClient

    from asr.server import ServerConfig, create_app

    return TestClient(create_app(model, config=ServerConfig(**config), name="tones"))


def _post(client, data: bytes, **fields):
    return client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data, "audio/wav")}, data={"model": "asr", **fields})


def test_request_hotwords_and_grammar(model, bad_audio) -> None:
    import asr

    plain = asr.transcribe(model, bad_audio, sample_rate=SR).text
    assert plain and "DAD" not in plain.split()
    with _client(model) as c:
        assert _post(c, _wav(bad_audio)).json()["text"] == plain  # no fields: the server's search
        assert "DAD" in _post(c, _wav(bad_audio), hotwords="DAD:8, CAB").json()["text"].split()
        assert _post(c, _wav(bad_audio), prompt="DAD:8").json()["text"] == plain  # prompt ignored without the flag
        assert _post(c, _wav(bad_audio), grammar="CAD AB\n").json()["text"] == ""
        assert _post(c, _wav(bad_audio), grammar=plain).json()["text"] == plain
        assert _post(c, _wav(bad_audio)).json()["text"] == plain  # nothing stays behind
    with _client(model, prompt_as_hotwords=True) as c:
        assert "DAD" in _post(c, _wav(bad_audio), prompt="DAD:8").json()["text"].split()


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"hotwords": ""}, "hotwords", "no hotwords given"),
        ({"hotwords": "DAD:loud"}, "hotwords", "the boost of 'DAD' is not a number"),
        ({"hotwords": "NOVEMBER"}, "hotwords", "'NOVEMBER' has characters the model has no token for"),
        ({"grammar": "( AB | CAB"}, "grammar", "grammar:1: '(' is not closed"),
    ],
    ids=["empty", "boost", "unspellable", "grammar"],
)
def test_bad_request_context_is_a_400(model, bad_audio, fields: dict, param: str, message: str) -> None:
    with _client(model) as c:
        r = _post(c, _wav(bad_audio), **fields)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert message in error["message"] and error["param"] == param and "\n" not in error["message"]


def test_concurrent_requests_with_different_hotwords_each_get_their_own(model, bad_audio, monkeypatch) -> None:
    import asr
    from asr.context import parse_hotwords
    from asr.options import resolve_options
    from asr.server import Batcher

    rng = np.random.default_rng(9)
    clips = [bad_audio, tone_utterance(["BAD"], rng), tone_utterance(["DC", "BAD"], rng)]
    fields = [{}, {"hotwords": "DAD:8"}, {"grammar": "CAD AB"}, {"hotwords": "CAB"}]
    jobs = [(clip, f) for clip in clips for f in fields]
    expected = []
    for clip, f in jobs:
        options = resolve_options(model.cfg.decode)
        if "hotwords" in f:
            options = resolve_options(model.cfg.decode, hotwords=parse_hotwords(f["hotwords"].split(",")))
        if "grammar" in f:
            from asr.context import Grammar

            options = resolve_options(model.cfg.decode, grammar=Grammar.parse(f["grammar"]))
        expected.append(asr.transcribe(model, clip, sample_rate=SR, options=options).text)
    assert len(set(expected)) > 2
    sizes = []
    run = Batcher._run

    def spy(jobs_, work):
        sizes.append(len(jobs_))
        return run(jobs_, work)

    monkeypatch.setattr(Batcher, "_run", staticmethod(spy))
    with _client(model, max_batch=16, batch_wait_ms=300) as c, ThreadPoolExecutor(len(jobs)) as pool:
        c.app.state.batcher.wait = 0.3
        got = list(pool.map(lambda j: _post(c, _wav(j[0]), **j[1]).json()["text"], jobs))
    assert got == expected
    assert max(sizes) > 1  # requests met in one batch


def test_websocket_start_message_hotwords_and_errors(trained_streaming: Path, bad_audio) -> None:
    import asr

    model = asr.load_model(trained_streaming / "best.pt")
    pcm = (np.clip(bad_audio, -1, 1) * 32767).astype("<i2").tobytes()

    def finals(start: dict) -> list[dict]:
        with _client(model) as c, c.websocket_connect("/v1/stream") as ws:
            ws.send_json({"type": "start", "sample_rate": SR, **start})
            first = ws.receive_json()
            if first["type"] == "error":
                return [first]
            for i in range(0, len(pcm), 3200):
                ws.send_bytes(pcm[i : i + 3200])
            ws.send_json({"type": "stop"})
            out = []
            while True:
                try:
                    out.append(ws.receive_json())
                except Exception:  # noqa: BLE001  (closed)
                    return out

    plain = " ".join(m["text"] for m in finals({}) if m["type"] == "final")
    assert plain and "DAD" not in plain.split()
    assert "DAD" in " ".join(m["text"] for m in finals({"hotwords": ["DAD:8"]}) if m["type"] == "final").split()
    for bad, message in [({"hotwords": []}, "no hotwords given"), ({"hotwords": ["DAD:x"]}, "not a number"), ({"hotwords": [1]}, "list of strings"), ({"grammar": "( A"}, "not closed")]:
        reply = finals(bad)
        assert reply[0]["type"] == "error" and message in reply[0]["message"], (bad, reply)


# ----------------------------------------------------------------------------------- Wyoming


@pytest.fixture(scope="module")
def wyoming_server(model):
    """A Wyoming server (asr.wyoming, no HTTP) on a free port, in a thread of its own."""
    from asr.options import resolve_options
    from asr.server import Batcher, ServerConfig
    from asr.wyoming import run_wyoming

    options = resolve_options(model.cfg.decode)
    config = ServerConfig(max_upload_mb=0.5, body_timeout=2.0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    batcher = Batcher(model, options, 1)
    loop = asyncio.new_event_loop()
    task = loop.create_task(run_wyoming(f"tcp://127.0.0.1:{port}", model, options, batcher, config, "tones", ("en",)))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port

    async def stop() -> None:
        task.cancel()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    batcher.close()


def _exchange(port: int, events: list, wait_for: tuple[str, ...] = ("transcript", "error", "info")) -> list:
    from wyoming.client import AsyncTcpClient

    async def go() -> list:
        got = []
        async with AsyncTcpClient("127.0.0.1", port) as client:
            for e in events:
                await client.write_event(e.event())
            while True:
                event = await asyncio.wait_for(client.read_event(), 30)
                if event is None:
                    return got
                got.append(event)
                if event.type in wait_for:
                    return got

    return asyncio.run(go())


def _audio_events(x: np.ndarray, rate: int = SR, width: int = 2, channels: int = 1, chunk: int = 4000) -> list:
    from wyoming.audio import AudioChunk, AudioStart, AudioStop

    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    return [AudioStart(rate=rate, width=width, channels=channels)] + [AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[i : i + chunk]) for i in range(0, len(pcm), chunk)] + [AudioStop()]


def test_wyoming_describe_and_transcribe(model, wyoming_server, bad_audio) -> None:
    from wyoming.asr import Transcribe, Transcript
    from wyoming.info import Describe, Info

    import asr

    info = Info.from_event(_exchange(wyoming_server, [Describe()])[-1])
    assert [p.name for p in info.asr] == ["asr"] and info.asr[0].models[0].name == "tones" and info.asr[0].models[0].languages == ["en"]
    expected = asr.transcribe(model, bad_audio, sample_rate=SR).text
    got = _exchange(wyoming_server, [Transcribe(), *_audio_events(bad_audio)])[-1]
    assert Transcript.is_type(got.type) and Transcript.from_event(got).text == expected
    # 8 kHz stereo audio is resampled and mixed down, without an audio-start
    import soxr

    x8 = soxr.resample(bad_audio, SR, 8000).astype(np.float32)
    stereo = np.repeat(x8, 2)
    got = _exchange(wyoming_server, [Transcribe(), *_audio_events(stereo, rate=8000, channels=2)[1:]])[-1]
    assert Transcript.is_type(got.type)
    # Home Assistant's names become hotwords; those the model cannot spell are left out
    got = _exchange(wyoming_server, [Transcribe(transcript_names=["Kitchen", "DAD"], context={"hotwords": ["DAD:8"]}), *_audio_events(bad_audio)])[-1]
    assert "DAD" in Transcript.from_event(got).text.split()


def test_wyoming_errors(wyoming_server, bad_audio) -> None:
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioStart, AudioStop
    from wyoming.error import Error

    def error_of(events) -> Error:
        got = _exchange(wyoming_server, events)[-1]
        assert Error.is_type(got.type), got
        return Error.from_event(got)

    assert error_of([AudioStart(rate=SR, width=3, channels=1), AudioStop()]).code == "invalid_audio"
    assert "no audio" in error_of([AudioStart(rate=SR, width=2, channels=1), AudioStop()]).text
    long = np.tile(bad_audio, 20)  # over the 0.5 MB cap
    assert error_of([Transcribe(), *_audio_events(long)]).code == "too_large"
    e = error_of([Transcribe(context={"hotwords": ["DAD:loud"]}), *_audio_events(bad_audio)])
    assert e.code == "invalid_context" and "not a number" in e.text
    e = error_of([Transcribe(context={"grammar": "( AB"}), *_audio_events(bad_audio)])
    assert "not closed" in e.text
    # the connection and the server carry on
    got = _exchange(wyoming_server, [Transcribe(), *_audio_events(bad_audio)])[-1]
    assert Transcript.is_type(got.type)
