"""`asr serve`: the OpenAI-compatible route (through FastAPI's test client and through the
official `openai` client on a real uvicorn server), the limits, bad input, batching and restarts."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import WORDS, tone_utterance

SR = 16000


def _wav_bytes(x: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


@pytest.fixture(scope="module")
def model(trained: Path):
    import asr

    return asr.load_model(trained / "best.pt")


@pytest.fixture(scope="module")
def utterances() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [tone_utterance([WORDS[i % len(WORDS)], WORDS[(i + 3) % len(WORDS)]], rng) for i in range(6)]


def _client(model, **config):
    from fastapi.testclient import TestClient

    from asr.server import ServerConfig, create_app

    return TestClient(create_app(model, config=ServerConfig(**config), name="tones"))


@pytest.fixture(scope="module")
def client(model):
    with _client(model) as c:
        yield c


def _post(client, data: bytes, filename: str = "a.wav", headers: dict | None = None, **fields):
    fields.setdefault("model", "asr")
    return client.post("/v1/audio/transcriptions", files={"file": (filename, data, "audio/wav")}, data=fields, headers=headers or {})


def test_health_models_and_page(client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tones" and health["kind"] == "blstm" and health["streaming"] is False
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tones"]
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text and "/v1/audio/transcriptions" in page.text


def test_every_response_format_matches_asr_transcribe(client, model, utterances) -> None:
    import asr

    x = utterances[0]
    expected = asr.transcribe(model, x, sample_rate=SR)
    assert expected.text
    data = _wav_bytes(x)
    assert _post(client, data).json() == {"text": expected.text}
    assert _post(client, data, response_format="text").text.strip() == expected.text
    srt = _post(client, data, response_format="srt").text
    assert srt.startswith("1\n00:00:") and expected.text.split()[0] in srt
    vtt = _post(client, data, response_format="vtt").text
    assert vtt.startswith("WEBVTT\n\n")
    verbose = _post(client, data, response_format="verbose_json", **{"timestamp_granularities[]": "word"}).json()
    assert verbose["text"] == expected.text and abs(verbose["duration"] - len(x) / SR) < 0.01
    assert [w["word"] for w in verbose["words"]] == expected.text.split()
    assert all(0 <= w["start"] <= w["end"] <= verbose["duration"] for w in verbose["words"])
    assert " ".join(s["text"] for s in verbose["segments"]) == expected.text
    assert "words" not in _post(client, data, response_format="verbose_json").json()


def test_other_formats_and_rates_are_read(client, model, utterances) -> None:
    import asr

    x = utterances[1]
    expected = asr.transcribe(model, x, sample_rate=SR).text
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="FLAC")
    assert _post(client, buf.getvalue(), "a.flac").json()["text"] == expected
    stereo = _wav_bytes(np.stack([x, x], 1))
    assert _post(client, stereo).json()["text"] == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"hello, this is not audio\n" * 10, "not readable as audio (looks like text)"),
        (_wav_bytes(np.zeros(16000, np.float32))[:1000], "truncated: the header declares 16000 frames"),
        (_wav_bytes(np.full(800, np.nan, np.float32), subtype="FLOAT"), "NaN"),
        (b"RIFF\x00\x00\x00\x00WAVEjunk", "not readable as audio"),
    ],
    ids=["empty", "text", "truncated", "nan", "bad-header"],
)
def test_bad_audio_is_a_400_naming_the_file_and_the_problem(client, utterances, data: bytes, message: str) -> None:
    r = _post(client, data, "upload.wav")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["message"].startswith("upload.wav: ") and message in error["message"], error
    assert error["type"] == "invalid_request_error" and error["param"] == "file"
    assert _post(client, _wav_bytes(utterances[0])).status_code == 200  # and the server keeps serving


def test_request_errors_in_openai_shape(client, utterances) -> None:
    r = client.post("/v1/audio/transcriptions", data={"model": "asr"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = _post(client, _wav_bytes(utterances[0]), response_format="mp4")
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    r = client.post("/v1/audio/transcriptions", content=b"--xx\r\ngarbage", headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 400 and "multipart" in r.json()["error"]["message"]
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_upload_cap_answers_413_before_reading_the_body(model) -> None:
    with _client(model, max_upload_mb=0.01) as c:
        r = _post(c, b"\0" * 20_000)
        assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(100):
                yield b"\0" * 1000

        r = c.post("/v1/audio/transcriptions", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=zz"})
        assert r.status_code == 413


def test_api_key(model, utterances) -> None:
    with _client(model, api_key="s3cret") as c:
        assert c.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"}):
            r = c.get("/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", headers
            assert _post(c, _wav_bytes(utterances[0]), headers=headers).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert _post(c, _wav_bytes(utterances[0]), headers=ok).status_code == 200


def test_cors_off_unless_asked(model) -> None:
    with _client(model) as c:
        r = c.get("/health", headers={"Origin": "https://example.org"})
        assert "access-control-allow-origin" not in r.headers
    with _client(model, cors_origins=("https://example.org",)) as c:
        r = c.get("/health", headers={"Origin": "https://example.org"})
        assert r.headers["access-control-allow-origin"] == "https://example.org"


def test_concurrent_requests_are_batched_and_each_gets_its_own_result(model, utterances, monkeypatch) -> None:
    import asr
    import asr.server

    expected = [asr.transcribe(model, x, sample_rate=SR, word_times=False).text for x in utterances]
    batches: list[int] = []
    real = asr.server.recognize

    def counting(model, audios, *args, **kwargs):
        batches.append(len(audios))
        return real(model, audios, *args, **kwargs)

    monkeypatch.setattr(asr.server, "recognize", counting)
    with _client(model, batch_wait_ms=200) as c, ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda x: _post(c, _wav_bytes(x)).json()["text"], utterances))
    assert got == expected
    assert sum(batches) == len(utterances) and max(batches) > 1, batches


def test_full_queue_answers_503_with_retry_after(model, utterances, monkeypatch) -> None:
    import asr.server

    release = threading.Event()
    real = asr.server.recognize

    def slow(*args, **kwargs):
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(asr.server, "recognize", slow)
    with _client(model, queue_size=1, max_batch=1, batch_wait_ms=0) as c:
        data = _wav_bytes(utterances[0])
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(_post, c, data)  # taken by the worker, which waits
            time.sleep(0.5)
            second = pool.submit(_post, c, data)  # waits in the queue
            time.sleep(0.5)
            third = _post(c, data)
            assert third.status_code == 503 and third.headers["Retry-After"] == "1"
            assert third.json()["error"]["code"] == "overloaded"
            release.set()
            assert first.result().status_code == 200 and second.result().status_code == 200


def test_no_temporary_file_is_left_behind(client, utterances) -> None:
    before = set(os.listdir(tempfile.gettempdir()))
    big = _wav_bytes(np.tile(utterances[0], 16), subtype="FLOAT")  # over a megabyte: spooled past memory
    assert len(big) > 1_000_000
    assert _post(client, big).status_code == 200
    assert set(os.listdir(tempfile.gettempdir())) - before == set()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(model):
    """A real uvicorn server on a free loopback port, in a thread."""
    import uvicorn

    from asr.server import ServerConfig, create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(model, config=ServerConfig(port=port, api_key="k"), name="tones"), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_official_openai_client_in_every_response_format(live_server, model, utterances, tmp_path: Path) -> None:
    """The `openai` package (a client nobody here wrote) pointed at the server with base_url."""
    import openai

    import asr

    wav = tmp_path / "tones.wav"
    sf.write(wav, utterances[2], SR)
    expected = asr.transcribe(model, wav).text
    client = openai.OpenAI(base_url=f"{live_server}/v1", api_key="k", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tones"]
    with wav.open("rb") as f:
        assert client.audio.transcriptions.create(model="tones", file=f).text == expected
    for fmt in ("text", "srt", "vtt"):
        with wav.open("rb") as f:
            out = client.audio.transcriptions.create(model="tones", file=f, response_format=fmt)
        assert isinstance(out, str) and expected.split()[-1] in out, (fmt, out)
    with wav.open("rb") as f:
        verbose = client.audio.transcriptions.create(model="tones", file=f, response_format="verbose_json", timestamp_granularities=["word"], language="en", prompt="tones")
    assert verbose.text == expected and [w.word for w in verbose.words] == expected.split()
    bad = openai.OpenAI(base_url=f"{live_server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError), wav.open("rb") as f:
        bad.audio.transcriptions.create(model="tones", file=f)
    with pytest.raises(openai.BadRequestError, match="empty file"):
        client.audio.transcriptions.create(model="tones", file=("empty.wav", b""))


def _start_server(model_path: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "asr", "serve", str(model_path), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode())
    proc.kill()
    raise AssertionError("server did not start")


def test_killed_mid_request_then_restarted_serves_again(trained: Path, utterances) -> None:
    """`asr serve` as users start it: killed with requests in flight (none was acknowledged,
    so the client sees an error, not a wrong answer), started again, serving again."""
    import httpx

    port = _free_port()
    data = _wav_bytes(np.tile(utterances[3], 3))
    proc = _start_server(trained / "best.pt", port)
    url = f"http://127.0.0.1:{port}/v1/audio/transcriptions"
    good = httpx.post(url, files={"file": ("a.wav", data)}, data={"model": "asr"}, timeout=60).json()["text"]
    outcomes = []

    def request():
        try:
            outcomes.append(httpx.post(url, files={"file": ("a.wav", data)}, data={"model": "asr"}, timeout=60).json()["text"])
        except httpx.HTTPError as e:
            outcomes.append(type(e).__name__)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    for t in threads:
        t.join(60)
    assert all(o == good or o.endswith("Error") for o in outcomes), outcomes  # never a wrong text
    proc = _start_server(trained / "best.pt", port)
    try:
        assert httpx.post(url, files={"file": ("a.wav", data)}, data={"model": "asr"}, timeout=60).json()["text"] == good
    finally:
        proc.terminate()
        proc.wait(10)


# ------------------------------------------------------------------------- WebSocket /v1/stream


def _pcm(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def test_websocket_of_a_model_that_cannot_stream_says_so_and_closes(client) -> None:
    from starlette.websockets import WebSocketDisconnect

    with client.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "start", "sample_rate": SR})
        message = ws.receive_json()
        assert message["type"] == "error" and "cannot stream" in message["message"] and "lstm" in message["message"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1000


@pytest.fixture(scope="module")
def streaming_model(trained_streaming: Path):
    import asr

    return asr.load_model(trained_streaming / "best.pt")


def test_websocket_streams_partials_and_finals_as_the_python_api(streaming_model) -> None:
    import asr

    rng = np.random.default_rng(11)
    x = np.concatenate([tone_utterance(["CAB", "DAD"], rng), np.zeros(int(1.5 * SR), np.float32), tone_utterance(["BAD"], rng), np.zeros(SR // 2, np.float32)])
    pcm = _pcm(x)
    reference = asr.stream(streaming_model)
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    for i in range(0, len(samples), 1234):
        reference.accept(samples[i : i + 1234], SR)
    last = reference.finish()
    expected = [f.text for f in reference.pop_finals()] + ([last.text] if last.text else [])
    assert expected
    with _client(streaming_model) as c, c.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "start", "sample_rate": SR})
        assert ws.receive_json()["type"] == "ready"
        for i in range(0, len(pcm), 2469):  # odd sizes: samples split across messages
            ws.send_bytes(pcm[i : i + 2469])
        ws.send_json({"type": "stop"})
        messages = []
        while True:
            try:
                messages.append(ws.receive_json())
            except Exception:  # noqa: BLE001  (the server closed the socket)
                break
    finals = [m["text"] for m in messages if m["type"] == "final"]
    assert finals == expected, messages
    assert any(m["type"] == "partial" and m["text"] for m in messages)
    assert all(set(m) == {"type", "text", "start", "end", "words"} for m in messages)


@pytest.mark.parametrize(
    ("first", "message"),
    [
        (b"\x00\x01garbage", "expected a start message"),
        ("not json", "not JSON"),
        ({"type": "start", "sample_rate": 0, "api_key": "k"}, "sample_rate"),
        ({"type": "start", "sample_rate": SR, "api_key": "wrong"}, "API key"),
    ],
    ids=["binary-first", "not-json", "bad-rate", "wrong-key"],
)
def test_websocket_protocol_errors_close_with_a_reason(streaming_model, first, message: str) -> None:
    from starlette.websockets import WebSocketDisconnect

    with _client(streaming_model, api_key="k") as c, c.websocket_connect("/v1/stream", headers={} if isinstance(first, dict) else {"Authorization": "Bearer k"}) as ws:
        if isinstance(first, bytes):
            ws.send_bytes(first)
        elif isinstance(first, str):
            ws.send_text(first)
        else:
            ws.send_json(first)
        reply = ws.receive_json()
        assert reply["type"] == "error" and message in reply["message"], reply
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008
        assert c.get("/health").status_code == 200


def test_websocket_idle_timeout_and_a_client_that_vanishes(streaming_model) -> None:
    from starlette.websockets import WebSocketDisconnect

    with _client(streaming_model, body_timeout=0.5) as c:
        with c.websocket_connect("/v1/stream") as ws:
            ws.send_json({"type": "start", "sample_rate": SR})
            assert ws.receive_json()["type"] == "ready"
            reply = ws.receive_json()  # nothing sent: the server gives up
            assert reply["type"] == "error" and "no message" in reply["message"]
            with pytest.raises(WebSocketDisconnect):
                ws.receive_json()
        with c.websocket_connect("/v1/stream") as ws:  # gone mid-stream
            ws.send_json({"type": "start", "sample_rate": SR})
            ws.receive_json()
            ws.send_bytes(_pcm(np.zeros(SR // 4, np.float32)))
        assert c.get("/health").status_code == 200


def _talk_without_pause() -> np.ndarray:
    """Tone words and then no pause long enough for an endpoint: the utterance is still open."""
    rng = np.random.default_rng(12)
    return tone_utterance(["CAB", "DAD"], rng)


def _expected_last(streaming_model, x: np.ndarray) -> str:
    import asr

    stream = asr.stream(streaming_model)
    stream.accept(np.frombuffer(_pcm(x), "<i2"), SR)
    assert not stream.pop_finals()
    return stream.finish().text


def _messages_until_closed(ws) -> tuple[list[dict], int | None]:
    from starlette.websockets import WebSocketDisconnect

    messages = []
    while True:
        try:
            messages.append(ws.receive_json())
        except WebSocketDisconnect as e:
            return messages, e.code


@pytest.mark.parametrize(
    ("ending", "code", "reason"),
    [("idle", 1001, "no message"), ("text", 1008, "unexpected message"), ("not-json", 1008, "must be JSON")],
)
def test_websocket_sends_the_last_final_however_the_stream_ends(streaming_model, ending: str, code: int, reason: str) -> None:
    x = _talk_without_pause()
    want = _expected_last(streaming_model, x)
    assert want
    with _client(streaming_model, body_timeout=1.0) as c, c.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "start", "sample_rate": SR})
        assert ws.receive_json()["type"] == "ready"
        ws.send_bytes(_pcm(x))
        if ending == "text":
            ws.send_json({"type": "pause"})
        elif ending == "not-json":
            ws.send_text("stop")
        messages, closed = _messages_until_closed(ws)
    finals = [m for m in messages if m["type"] == "final"]
    assert [m["text"] for m in finals] == [want], messages
    assert messages[-1]["type"] == "error" and reason in messages[-1]["message"] and closed == code
    assert messages.index(finals[-1]) < len(messages) - 1  # the final before the error


def test_websocket_streams_get_their_finals_when_the_server_stops(streaming_model) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from asr.server import ServerConfig, create_app, uvicorn_server

    x = _talk_without_pause()
    want = _expected_last(streaming_model, x)
    port = _free_port()
    server = uvicorn_server(create_app(streaming_model, config=ServerConfig(port=port), name="tones"), "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started
    stack = contextlib.ExitStack()
    clients = [stack.enter_context(connect(f"ws://127.0.0.1:{port}/v1/stream")) for _ in range(2)]
    for ws in clients:
        ws.send('{"type": "start", "sample_rate": 16000}')
        assert '"ready"' in ws.recv(10)
        ws.send(_pcm(x))
    for ws in clients:  # the audio has been heard: a partial came back
        assert '"partial"' in ws.recv(10)
    server.should_exit = True
    for ws in clients:
        messages = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                messages.append(json.loads(ws.recv(10)))
        finals = [m["text"] for m in messages if m["type"] == "final"]
        assert finals == [want], messages
        assert messages[-1]["type"] == "error" and "shutting down" in messages[-1]["message"]
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    stack.close()
    thread.join(15)
    assert not thread.is_alive()


@pytest.mark.parametrize(("rate", "ok"), [(16000.0, True), (8000.0, True), (16000, True), (16000.5, False), ("16000", False), (True, False)])
def test_websocket_sample_rate_whole_number_floats(streaming_model, rate: object, ok: bool) -> None:
    with _client(streaming_model) as c, c.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "start", "sample_rate": rate})
        reply = ws.receive_json()
        if not ok:
            assert reply["type"] == "error" and "whole number of Hz" in reply["message"] and repr(rate) in reply["message"]
            return
        assert reply["type"] == "ready"
        ws.send_bytes(_pcm(np.zeros(int(rate) // 10, np.float32)))
        ws.send_json({"type": "stop"})
        messages, closed = _messages_until_closed(ws)
        assert closed == 1000 and all(m["type"] != "error" for m in messages)
