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
import torch

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


def test_health_describes_the_model_and_what_it_can_do(client, model, streaming_model) -> None:
    health = client.get("/health").json()
    assert health["description"] == f"blstm, 1 layer x 64 units per direction, {len(model.tokenizer.tokens) - 2} character tokens, trained on " + "/".join(Path(model.cfg.data.train).parts[-3:])
    assert health["layers"] == ["layer 1 (blstm, 2 x 64 units)"] and health["streaming"] is False
    with _client(streaming_model) as c:
        health = c.get("/health").json()
    assert health["streaming"] is True and health["kind"] == "lstm" and health["description"].startswith("lstm, 1 layer x 64 units, ")


def test_favicon_is_an_icon_and_needs_no_key(model) -> None:
    with _client(model, api_key="s3cret") as c:
        r = c.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml") and r.text.startswith("<svg")


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


# ------------------------------------------------------------------- inspect: the network, live


def _stream_messages(model, x: np.ndarray, start: dict, piece: int = 3200, control: list | None = None) -> list[dict]:
    """Every message the WebSocket sends for `x` after `start` (the ready message first)."""
    pcm = _pcm(x)
    with _client(model) as c, c.websocket_connect("/v1/stream") as ws:
        ws.send_json(start)
        messages = [ws.receive_json()]
        for i in range(0, len(pcm), piece):
            ws.send_bytes(pcm[i : i + piece])
            if control and i == 0:
                for m in control:
                    ws.send_json(m)
        ws.send_json({"type": "stop"})
        while True:
            try:
                messages.append(ws.receive_json())
            except Exception:  # noqa: BLE001  (the server closed the socket)
                break
    return messages


def _decode(message: dict, info: dict) -> dict[str, np.ndarray]:
    """An inspect message's arrays: gates in [0, 1], cell float, posteriors (frames, V)."""
    import base64

    n, k, vocab = message["frames"], len(info["layers"][message["layer"] - 1]["units"]["forward"]), len(info["tokens"])
    raw = {name: base64.b64decode(v) for name, v in message["forward"].items()}
    out = {g: np.frombuffer(raw[g], np.uint8).reshape(n, k) / 255 for g in ("input", "forget", "output")}
    out["cell"] = np.frombuffer(raw["cell"], "<f2").reshape(n, k).astype(np.float32)
    out["means"] = np.frombuffer(raw["means"], "<f2").reshape(n, 4).astype(np.float32)
    out["posteriors"] = np.frombuffer(base64.b64decode(message["posteriors"]), np.uint8).reshape(n, vocab) / 255
    return out


def test_websocket_inspect_messages_carry_the_gates_and_posteriors_and_nothing_else_changes(streaming_model) -> None:
    """Asked with "inspect": {"layer": 1}, the stream sends its usual messages, the very same as
    a stream that does not ask, and besides them per piece of audio an inspect message: frames
    counted from the start, gates and cell state of the shown units, posteriors that sum to 1;
    together they cover every output frame, and their values are those `asr inspect` computes."""
    from asr.inspect import inspect_features

    rng = np.random.default_rng(5)
    x = tone_utterance(["CAB", "DAD"], rng)
    plain = _stream_messages(streaming_model, x, {"type": "start", "sample_rate": SR})
    asked = _stream_messages(streaming_model, x, {"type": "start", "sample_rate": SR, "inspect": {"layer": 1}})
    assert set(plain[0]) == {"type", "sample_rate", "model"} and all(m["type"] != "inspect" for m in plain)
    ready = asked[0]
    assert {k: v for k, v in ready.items() if k != "inspect"} == plain[0]
    assert [m for m in asked[1:] if m["type"] != "inspect"] == plain[1:]
    info = ready["inspect"]
    hidden = streaming_model.cfg.model.hidden
    assert info["tokens"] == list(streaming_model.tokenizer.tokens) and info["layer"] == 1
    assert info["frame_seconds"] == pytest.approx(streaming_model.model.stack * streaming_model.cfg.features.hop_ms / 1000)
    units = info["layers"][0]["units"]["forward"]
    assert sorted(units) == list(range(hidden)) and info["layers"][0]["name"] == "layer 1 (lstm, 64 units)"
    inspects = [m for m in asked if m["type"] == "inspect"]
    assert inspects and all(set(m) == {"type", "layer", "frame", "frames", "forward", "posteriors"} and m["layer"] == 1 for m in inspects)
    assert all(set(m["forward"]) == {"input", "forget", "output", "cell", "means"} for m in inspects)
    want = inspect_features(streaming_model, streaming_model.extractor(torch.from_numpy(np.frombuffer(_pcm(x), "<i2").astype(np.float32) / 32768)))
    frames = np.zeros(len(want.log_probs), int)
    for m in inspects:
        got = _decode(m, info)
        span = slice(m["frame"], m["frame"] + m["frames"])
        frames[span] += 1
        g = want.gates[0]
        for name, ref in (("input", g.input_gate), ("forget", g.forget_gate), ("output", g.output_gate)):
            assert np.abs(got[name] - ref[span][:, units]).max() <= 0.5 / 255 + 1e-3, name  # uint8 steps
            assert np.abs(got["means"][:, ("input", "forget", "output").index(name)] - ref[span].mean(1)).max() < 2e-3
        assert np.allclose(got["cell"], g.cell[span][:, units], rtol=1e-3, atol=1e-3)  # float16
        assert np.abs(got["posteriors"] - np.exp(want.log_probs[span])).max() <= 0.5 / 255 + 1e-3
        assert np.abs(got["posteriors"].sum(1) - 1).max() <= len(info["tokens"]) * 0.5 / 255
    assert (frames == 1).all(), "each output frame once (no endpoint inside this utterance)"


def test_live_inspector_gates_equal_asr_inspect_before_quantisation(streaming_model) -> None:
    """`asr.stream` with the inspecting acoustic model in odd pieces: the gates and cell state
    of every frame equal `asr inspect`'s for the same model and layer within 1e-3."""
    import asr
    from asr.inspect import inspect_features
    from asr.live_inspect import InspectRequest, LiveInspector

    x = tone_utterance(["BAD", "CAB", "ADD"], np.random.default_rng(8))
    inspector = LiveInspector(streaming_model, InspectRequest(1))
    stream = asr.stream(streaming_model, emissions=inspector)
    for i in range(0, len(x), 777):
        stream.accept(x[i : i + 777], SR)
    stream.finish()
    records = inspector.traces()
    want = inspect_features(streaming_model, streaming_model.extractor(torch.from_numpy(x)))
    assert [r[0] for r in records] == list(np.cumsum([0] + [len(r[1]) for r in records[:-1]]))
    g = want.gates[0]
    for name, ref in (("input", g.input_gate), ("forget", g.forget_gate), ("output", g.output_gate), ("cell", g.cell)):
        got = np.concatenate([r[2][0][name].numpy() for r in records])
        assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-3, name
    assert np.abs(torch.cat([r[1] for r in records]).numpy() - want.log_probs).max() < 1e-3


@pytest.mark.parametrize(
    ("start", "control", "message"),
    [
        ({"inspect": {"layer": 2}}, None, "from 1 to 1 (this model's layers: layer 1 (lstm, 64 units)), got 2"),
        ({"inspect": {"layer": 0}}, None, "got 0"),
        ({"inspect": {"layer": "1"}}, None, "got '1'"),
        ({"inspect": 1}, None, 'inspect must be {"layer": N}'),
        ({"inspect": {"layer": 1, "units": 0}}, None, "units"),
        ({"inspect": {"layer": 1}}, [{"type": "inspect", "layer": 7}], "got 7"),
    ],
    ids=["missing-layer", "zero", "string", "not-a-dict", "no-units", "switch-to-missing"],
)
def test_websocket_inspect_of_a_layer_the_model_lacks_is_an_error_and_a_clean_close(streaming_model, start: dict, control, message: str) -> None:
    from starlette.websockets import WebSocketDisconnect

    with _client(streaming_model) as c, c.websocket_connect("/v1/stream") as ws:
        ws.send_json({"type": "start", "sample_rate": SR, **start})
        if control:
            assert ws.receive_json()["type"] == "ready"
            ws.send_bytes(_pcm(np.zeros(SR // 10, np.float32)))
            for m in control:
                ws.send_json(m)
        reply = ws.receive_json()
        while reply["type"] == "inspect" or reply["type"] == "partial":
            reply = ws.receive_json()
        assert reply["type"] == "error" and message in reply["message"], reply
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008
        assert c.get("/health").status_code == 200


def test_websocket_inspect_switches_layer_mid_stream(trained_streaming: Path, tmp_path: Path) -> None:
    """{"type": "inspect", "layer": N} mid-stream: later inspect messages are of layer N."""
    import asr

    model = asr.load_model(trained_streaming / "best.pt")
    layers = len(model.model.encoder.layer_names())
    x = tone_utterance(["CAB"], np.random.default_rng(2))
    messages = _stream_messages(model, x, {"type": "start", "sample_rate": SR, "inspect": {"layer": 1}}, control=[{"type": "inspect", "layer": layers}])
    seen = [m["layer"] for m in messages if m["type"] == "inspect"]
    assert seen and seen[-1] == layers


def test_page_route_gives_the_text_words_and_every_layer_both_directions(client, model, utterances) -> None:
    """POST /v1/page/transcribe: the text and words of `asr transcribe`, and with inspect=all the
    BLSTM's layers in both directions, the forward one `asr inspect`'s gates, the backward one
    the gates whose hidden state is the model's backward output."""
    import base64

    import asr
    from asr.inspect import inspect_features
    from asr.live_inspect import file_gates

    x = utterances[2]
    expected = asr.transcribe(model, x, sample_rate=SR)
    r = client.post("/v1/page/transcribe", files={"file": ("a.wav", _wav_bytes(x), "audio/wav")})
    assert r.status_code == 200 and r.json()["text"] == expected.text and "inspect" not in r.json()
    assert [w["word"] for w in r.json()["words"]] == expected.text.split()
    assert all(abs(w["confidence"] - e.confidence) < 1e-3 for w, e in zip(r.json()["words"], expected.words, strict=True))
    body = client.post("/v1/page/transcribe", files={"file": ("a.wav", _wav_bytes(x), "audio/wav")}, data={"inspect": "all"}).json()
    info, messages = body["inspect"]["info"], body["inspect"]["messages"]
    samples = np.frombuffer(_wav_bytes(x)[44:], "<i2").astype(np.float32) / 32768
    want = inspect_features(model, model.extractor(torch.from_numpy(samples)))
    assert [m["layer"] for m in messages] == [1] and set(messages[0]) == {"type", "layer", "frame", "frames", "forward", "backward", "posteriors"}
    m = messages[0]
    assert m["frame"] == 0 and m["frames"] == len(want.log_probs)
    units = info["layers"][0]["units"]
    forget = np.frombuffer(base64.b64decode(m["forward"]["forget"]), np.uint8).reshape(m["frames"], -1) / 255
    assert np.abs(forget - want.gates[0].forget_gate[:, units["forward"]]).max() <= 0.5 / 255 + 1e-3
    _, layers = file_gates(model, model.extractor(torch.from_numpy(samples)))
    hidden = model.cfg.model.hidden
    back = layers[0]["backward"]
    h = back["output"] * np.tanh(back["cell"])  # h_t = o tanh(c_t): the backward run's own output
    assert np.abs(h - want.layer_outputs[0][:, hidden:]).max() < 1e-4
    for bad in ("2", "x", "0"):
        r = client.post("/v1/page/transcribe", files={"file": ("a.wav", _wav_bytes(x), "audio/wav")}, data={"inspect": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "inspect" and "layer" in r.json()["error"]["message"], bad


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
