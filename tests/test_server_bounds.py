"""`asr serve` bounds what it decodes and how it answers: one JSON shape for every error,
error messages that name the client's file and nothing of the server's, uploads kept in memory,
decoded audio bounded, abandoned requests dropped, OpenAI's streamed transcription."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from tests.test_server import SR, _client, _post, _wav_bytes, client, live_server, model, utterances  # noqa: F401  (fixtures)


def _compact(body: bytes) -> bool:
    """Whether a JSON body is written as FastAPI's JSONResponse writes it."""
    return body == json.dumps(json.loads(body), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _asgi(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes], stall: float = 0.0) -> tuple[int, bytes]:
    """One request straight through the ASGI app: the body in `chunks`, then (with `stall`) a
    client that sends nothing more for that long. Returns the status and the body."""
    out: dict[str, Any] = {"body": b""}

    async def run() -> None:
        pieces = list(chunks)

        async def receive() -> dict:
            if pieces:
                return {"type": "http.request", "body": pieces.pop(0), "more_body": bool(pieces) or stall > 0}
            await asyncio.sleep(stall or 3600)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                out["status"] = message["status"]
            elif message["type"] == "http.response.body":
                out["body"] += message.get("body", b"")

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path, "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        await app(scope, receive, send)

    asyncio.run(run())
    return out["status"], out["body"]


def test_every_error_status_has_the_same_compact_json_body(model, utterances, monkeypatch) -> None:  # noqa: F811
    from asr.server import ServerConfig, create_app

    seen: dict[int, bytes] = {}
    with _client(model, api_key="k", max_upload_mb=0.05, request_timeout=0.5) as c:
        key = {"Authorization": "Bearer k"}
        seen[400] = _post(c, b"not audio", headers=key).content
        seen[401] = c.get("/v1/models").content
        seen[404] = c.get("/v1/nothing", headers=key).content
        seen[405] = c.delete("/v1/models", headers=key).content
        seen[413] = _post(c, b"\0" * 60_000, headers=key).content
    app = create_app(model, config=ServerConfig(body_timeout=0.2), name="tones")
    multipart = [(b"content-type", b"multipart/form-data; boundary=b")]
    status, seen[408] = _asgi(app, "POST", "/v1/audio/transcriptions", multipart, [b"--b\r\n"], stall=5)
    assert status == 408
    status, body = _asgi(app, "POST", "/v1/audio/transcriptions", [*multipart, (b"content-length", b"12x")], [b"--b\r\n"])
    assert status == 400
    seen[4000] = body  # the middleware's 400, beside the application's
    import asr.server

    real = asr.server.recognize

    def slow(*args: Any, **kwargs: Any) -> Any:
        import time

        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(asr.server, "recognize", slow)
    with _client(model, request_timeout=0.3) as c:
        r = _post(c, _wav_bytes(utterances[0]))
        assert r.status_code == 504
        seen[504] = r.content
    for status, body in seen.items():
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}, (status, body)
        assert _compact(body), (status, body)


def test_a_large_upload_is_parsed_in_memory_without_a_temporary_folder(model, utterances, tmp_path, monkeypatch) -> None:  # noqa: F811
    """Starlette spools file parts over 1 MB to $TMPDIR: with none usable, such an upload failed
    with a 400 naming a server path. Held in memory, it needs no folder, and none is touched."""
    import tempfile

    import asr

    x = np.tile(utterances[0], 16)
    expected = asr.transcribe(model, x, sample_rate=SR).text
    spool = tmp_path / "spool"
    spool.mkdir()
    big = _wav_bytes(x, subtype="FLOAT")
    assert len(big) > 1_000_000
    with _client(model) as c:
        for tmp in (spool, tmp_path / "missing"):
            monkeypatch.setenv("TMPDIR", str(tmp))
            monkeypatch.setattr(tempfile, "tempdir", str(tmp))
            r = _post(c, big, "big.wav")
            assert r.status_code == 200, r.text
            assert r.json()["text"] == expected
            assert list(spool.iterdir()) == []


def _multipart(parts: list[tuple[str, bytes]], boundary: str = "asr-test-boundary") -> tuple[bytes, dict[str, str]]:
    """A multipart body from (Content-Disposition and further headers, part bytes) pairs, and its Content-Type header."""
    body = b"".join(f"--{boundary}\r\nContent-Disposition: {headers}\r\n\r\n".encode() + data + b"\r\n" for headers, data in parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.parametrize(
    "disposition",
    ['form-data; name="file"', 'form-data; name="file"\r\nContent-Type: audio/wav', 'form-data; name="file"; filename=""'],
    ids=["no-filename", "no-filename-with-type", "empty-filename"],
)
def test_a_file_part_without_a_file_name_is_transcribed(client, model, utterances, disposition: str) -> None:  # noqa: F811
    import asr

    x = utterances[1]
    expected = asr.transcribe(model, x, sample_rate=SR).text
    body, headers = _multipart([('form-data; name="model"', b"asr"), (disposition, _wav_bytes(x))])
    r = client.post("/v1/audio/transcriptions", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"text": expected}
    body, headers = _multipart([(disposition, b"not audio at all")])
    error = client.post("/v1/audio/transcriptions", content=body, headers=headers).json()["error"]
    assert error["param"] == "file" and error["message"].startswith("upload: not readable as audio"), error


def test_curl_sends_the_file_as_a_plain_field(live_server, model, utterances, tmp_path) -> None:  # noqa: F811
    """`curl -F 'file=<clip.wav'`: the file's bytes as a field without a file name."""
    import shutil
    import subprocess

    import asr

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    wav = tmp_path / "clip.wav"
    wav.write_bytes(_wav_bytes(utterances[2]))
    expected = asr.transcribe(model, wav).text
    for form in ("file=<", "file=@"):
        out = subprocess.run(["curl", "-sS", "-H", "Authorization: Bearer k", "-F", f"{form}{wav}", "-F", "model=asr", f"{live_server}/v1/audio/transcriptions"], capture_output=True, text=True, timeout=60)
        assert json.loads(out.stdout) == {"text": expected}, (form, out.stdout, out.stderr)


def _encoded(x: np.ndarray, fmt: str, subtype: str | None = None) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, SR, format=fmt, subtype=subtype)
    return buf.getvalue()


def _bad_uploads() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(SR) * 0.1).astype(np.float32)
    flac, ogg, wav = _encoded(x, "FLAC"), _encoded(x, "OGG"), _encoded(x, "WAV")
    return {
        "empty": b"",
        "text": b"hello, this is not audio\n" * 10,
        "random": rng.bytes(3000),
        "id3-then-noise": b"ID3\x03\x00\x00\x00\x00\x00\x00" + rng.bytes(500),
        "truncated-wav": wav[:1000],
        "truncated-flac": flac[: len(flac) // 2],
        "flac-header-only": flac[:50],
        "ogg-header-only": ogg[:60],
        "corrupt-ogg": ogg[:100] + rng.bytes(len(ogg) - 100),
        "wav-without-data": b"RIFF\x00\x00\x00\x00WAVEjunk",
        "nan": _encoded(np.full(800, np.nan, np.float32), "WAV", "FLOAT"),
    }


@pytest.mark.parametrize("case", list(_bad_uploads()))
def test_errors_name_the_clients_file_and_nothing_of_the_server(client, case: str) -> None:  # noqa: F811
    import re
    import sys
    import tempfile
    from pathlib import Path

    data = _bad_uploads()[case]
    server_paths = {tempfile.gettempdir(), str(Path.cwd()), sys.prefix, str(Path(__file__).resolve().parents[1]), "/tmp"}
    named = _post(client, data, "my clip.wav")
    body, headers = _multipart([('form-data; name="file"', data)])
    unnamed = client.post("/v1/audio/transcriptions", content=body, headers=headers)
    for r, name in ((named, "my clip.wav"), (unnamed, "upload")):
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert message.startswith(f"{name}: "), message
        assert not re.search(r"0x[0-9a-fA-F]{6,}", message) and "BytesIO" not in message and "<_io" not in message, message
        assert not any(p in message for p in server_paths), message


def _silence_flac(seconds: float, rate: int = 48000, channels: int = 2) -> bytes:
    """Digital silence as FLAC, written block by block: a few hundred bytes per second of audio."""
    import io

    import soundfile as sf

    buf = io.BytesIO()
    block = np.zeros((rate * 10, channels), np.float32)
    with sf.SoundFile(buf, "w", rate, channels, format="FLAC") as f:
        for _ in range(int(seconds // 10)):
            f.write(block)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """10 minutes of 48 kHz stereo silence: 0.23 GB of float samples in about 110 kB."""
    data = _silence_flac(10 * 60)
    assert len(data) < 200_000
    return data


@pytest.fixture()
def decoded_blocks(monkeypatch) -> list[int]:
    """The length of every block the server decodes (`asr.audio.bytes_blocks`), as it goes."""
    import asr.inference

    seen: list[int] = []
    real = asr.inference.bytes_blocks

    def counting(*args: Any, **kwargs: Any) -> Any:
        for block in real(*args, **kwargs):
            seen.append(len(block))
            yield block

    monkeypatch.setattr(asr.inference, "bytes_blocks", counting)
    return seen


def test_a_decompression_bomb_is_refused_from_its_header_without_decoding(model, bomb, decoded_blocks) -> None:  # noqa: F811
    with _client(model, max_audio_seconds=300) as c:
        r = _post(c, bomb, "bomb.flac")
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "audio_too_long" and error["param"] == "file"
    assert error["message"].startswith("bomb.flac: 600.0 s of audio") and "300 s" in error["message"] and "--max-audio-seconds" in error["message"]
    assert decoded_blocks == []  # not one block decoded
    assert _compact(r.content)


@pytest.mark.parametrize(("seconds", "status", "message"), [(600, 413, "more audio than its header declares, over the limit of 100 s (--max-audio-seconds)"), (300, 400, "implausible length: decodes to more than 60 s where the header declares 30.0 s")], ids=["long", "short"])
def test_audio_longer_than_its_header_says_is_stopped_while_decoding(model, monkeypatch, decoded_blocks, seconds: int, status: int, message: str) -> None:  # noqa: F811
    """The frames are counted as they are decoded: a header that says less than the data hold
    (here, one made to say a tenth) does not get past the bound, whether the header makes the
    recording long (decoded by the worker) or short (decoded whole)."""
    from dataclasses import replace

    import asr.inference

    real = asr.inference.bytes_info
    monkeypatch.setattr(asr.inference, "bytes_info", lambda data, name: replace(real(data, name), frames=real(data, name).frames // 10))
    data = _silence_flac(seconds, rate=16000, channels=1)
    with _client(model, max_audio_seconds=100) as c:
        r = _post(c, data, "liar.flac")
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"].startswith(f"liar.flac: {message}"), r.text
    assert sum(decoded_blocks) <= min(100, 2 * seconds / 10) * 16000 + max(decoded_blocks)  # it stopped at the bound


def test_a_long_upload_is_decoded_block_by_block_as_asr_transcribe_reads_a_file(model, utterances, decoded_blocks, tmp_path) -> None:  # noqa: F811
    import soundfile as sf

    import asr

    pause = np.zeros(SR // 2, np.float32)
    x = np.concatenate([np.concatenate([u, pause]) for u in utterances * 4])
    assert len(x) / SR > 35
    wav = tmp_path / "long.wav"
    sf.write(wav, x, SR)
    expected = asr.transcribe(model, wav).text
    with _client(model) as c:
        r = _post(c, wav.read_bytes(), "long.wav")
        assert r.status_code == 200 and r.json()["text"] == expected, r.text
        assert max(decoded_blocks) <= 2 * SR  # blocks of two seconds, as the file reader's
        decoded_blocks.clear()
        r = _post(c, _silence_flac(300), "bomb.flac")  # within the default bound: decoded, in blocks, to nothing
        assert r.status_code == 200 and r.json() == {"text": ""}
        assert sum(decoded_blocks) == 300 * 48000 and max(decoded_blocks) <= 2 * 48000


@pytest.fixture()
def held_recognize(monkeypatch):
    """`recognize` (the batcher's, and that of long recordings' segments) made to wait for
    `release` (an Event) before each call, counting calls."""
    import threading

    import asr.inference
    import asr.server

    release = threading.Event()
    calls: list[int] = []
    real = asr.server.recognize

    def held(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[1]))
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(asr.server, "recognize", held)
    monkeypatch.setattr(asr.inference, "recognize", held)
    return release, calls


def _until(condition: Any, seconds: float = 20.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_requests_whose_clients_hung_up_are_dropped_before_they_run(model, utterances, held_recognize) -> None:  # noqa: F811
    """One request holds the only worker; eight more are sent whole and their clients hang up;
    a live request sent after them is decoded next, and the eight never are."""
    import socket
    import threading

    import httpx
    import uvicorn

    from asr.server import ServerConfig, create_app
    from tests.test_server import _free_port
    from tests.test_server_bounds import _multipart

    release, calls = held_recognize
    port = _free_port()
    app = create_app(model, config=ServerConfig(port=port, workers=1, max_batch=1, batch_wait_ms=0), name="tones")
    batcher = app.state.batcher
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert _until(lambda: server.started)
    url = f"http://127.0.0.1:{port}/v1/audio/transcriptions"
    data = _wav_bytes(utterances[0])
    try:
        first: dict[str, Any] = {}
        holder = threading.Thread(target=lambda: first.update(r=httpx.post(url, files={"file": ("a.wav", data)}, data={"model": "asr"}, timeout=60)))
        holder.start()
        assert _until(lambda: len(calls) == 1)  # the worker is busy with it
        body, headers = _multipart([('form-data; name="file"; filename="gone.wav"', data)])
        head = f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {headers['Content-Type']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        for _ in range(8):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(head + body)
                assert _until(lambda n=batcher.jobs.qsize(): batcher.jobs.qsize() > n, 10)  # queued
        assert _until(lambda: all(j.cancelled.is_set() for j in list(batcher.jobs.queue)))  # the server saw them go
        release.set()
        holder.join(60)
        assert first["r"].status_code == 200
        live = httpx.post(url, files={"file": ("live.wav", data)}, data={"model": "asr"}, timeout=60)
        assert live.status_code == 200
        assert batcher.runs == 2 and batcher.dropped == 8 and len(calls) == 2, (batcher.runs, batcher.dropped, calls)
    finally:
        release.set()
        server.should_exit = True
        thread.join(10)


def test_a_request_answered_504_stops_its_work(model, utterances, held_recognize) -> None:  # noqa: F811
    """A queued recording past the timeout is never decoded; a long one being decoded stops at
    its next segment."""
    import threading

    release, calls = held_recognize
    pause = np.zeros(SR // 2, np.float32)
    long = _wav_bytes(np.concatenate([np.concatenate([u, pause]) for u in utterances * 4]))
    short = _wav_bytes(utterances[0])
    with _client(model, request_timeout=0.5, workers=1, max_batch=1, batch_wait_ms=0) as c:
        batcher = c.app.state.batcher
        r = _post(c, long, "long.wav")  # its first segment waits for `release`
        assert r.status_code == 504, r.text
        r = _post(c, short, "queued.wav")  # waits behind it, and times out
        assert r.status_code == 504, r.text
        threading.Timer(0.2, release.set).start()
        assert _until(lambda: batcher.dropped == 2)
        assert batcher.runs == 1 and len(calls) <= 2, (batcher.runs, calls)  # the long one stopped at its next segment
        assert _post(c, short).status_code == 200


@pytest.mark.parametrize("length", ["short", "long"])
def test_openai_stream_true_sends_text_deltas_then_the_text(live_server, model, utterances, tmp_path, length: str) -> None:  # noqa: F811
    """The official client's `stream=True` reads OpenAI's transcription events: the deltas joined
    are the done event's text, which is the text the request gives without `stream`."""
    import openai
    import soundfile as sf

    pause = np.zeros(SR // 2, np.float32)
    x = utterances[3] if length == "short" else np.concatenate([np.concatenate([u, pause]) for u in utterances * 4])
    wav = tmp_path / "clip.wav"
    sf.write(wav, x, SR)
    oa = openai.OpenAI(base_url=f"{live_server}/v1", api_key="k", max_retries=0)
    with wav.open("rb") as f:
        plain = oa.audio.transcriptions.create(model="tones", file=f).text
    assert plain
    for fmt in ("json", "text"):
        with wav.open("rb") as f:
            events = list(oa.audio.transcriptions.create(model="tones", file=f, stream=True, response_format=fmt))
        types = [e.type for e in events]
        assert types[-1] == "transcript.text.done" and set(types[:-1]) == {"transcript.text.delta"}, types
        assert "".join(e.delta for e in events[:-1]) == events[-1].text == plain
        if length == "long":
            assert len(events) > 2  # a delta per segment, as each is done


def test_stream_true_refusals_and_failures_are_openai_errors(live_server, client, utterances) -> None:  # noqa: F811
    import openai

    data = _wav_bytes(utterances[0])
    r = _post(client, data, stream="true", response_format="srt")
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream" and "json or text" in r.json()["error"]["message"]
    r = _post(client, data, stream="maybe")
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    r = _post(client, b"not audio", "bad.wav", stream="true")  # refused before the events begin
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("bad.wav: ")
    sse = openai.OpenAI(base_url=f"{live_server}/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="empty file"):
        list(sse.audio.transcriptions.create(model="tones", file=("empty.wav", b""), stream=True))
    r = _post(client, data, stream="true")
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [json.loads(line[len("data: ") :]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in lines] == ["transcript.text.delta", "transcript.text.done"]
