"""Load and abuse on `asr serve`, against `asr decode` of the same files in this process.

    python bench/serve_load.py --model exp/an4/model.pt --manifest exp/an4/data/test.jsonl

1. Baseline: the manifest's files decoded in one process as `asr decode` does
   (`asr.decode.decode_items`, batched), with the checkpoint's decoding settings; timed on the
   second pass, the first warms up.
2. `asr serve MODEL` started as a user starts it (a subprocess on a free loopback port, with an
   API key); for each number of concurrent clients (1, 4, 16), every client takes the next file
   and POSTs it to /v1/audio/transcriptions until all are sent (keep-alive connections of the
   standard library's `http.client`, bodies built beforehand: the clients run on the server's
   cores and are kept cheap). Throughput in audio seconds per
   wall second, its ratio to the baseline, median and 95th-percentile latency, errors (non-200
   answers), texts that differ from the baseline's, and the server's peak resident memory
   (VmHWM of its process).
3. Abuse, interleaved with good requests: 0-byte, truncated, non-audio, oversized and stalled
   uploads, malformed multipart, wrong and missing API keys, a WebSocket that sends garbage and
   one that disappears, a decompression bomb (FLAC of silence) past `--max-audio-seconds`. Each
   answer's status against the expected one; every good request must come back with the
   baseline's text. Then, alone, the server's peak RSS (VmHWM, reset before each) for one normal
   upload and for a bomb within the bound (15 min of 48 kHz stereo silence, 0.35 GB of float
   samples in a few hundred kB), each above the RSS it started from.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, extra: list[str]) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "asr", "serve", str(model), "--port", str(port), "--api-key", KEY, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start in 120 s")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def post(client, url: str, data: bytes, name: str = "a.wav", key: str | None = KEY, **fields) -> tuple[int, str, float]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    t0 = time.perf_counter()
    r = client.post(url, files={"file": (name, data)}, data={"model": "asr", **fields}, headers=headers, timeout=600)
    seconds = time.perf_counter() - t0
    text = r.json().get("text", "") if r.headers.get("content-type", "").startswith("application/json") and r.status_code == 200 else r.text
    return r.status_code, text, seconds


def multipart(data: bytes, name: str = "a.wav", **fields: str) -> tuple[bytes, str]:
    """A multipart/form-data body with `file` and the given fields, and its Content-Type."""
    boundary = "asr-bench-" + os.urandom(8).hex()
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def load_run(port: int, files: list[tuple[str, bytes]], clients: int) -> dict:
    """Each of `clients` threads keeps one connection (HTTP/1.1 keep-alive) and sends the next
    file until none is left. The bodies are built beforehand and sent with the standard library's
    `http.client`, the cheapest client at hand: the clients share the server's cores, and every
    millisecond they spend is one the server does not get."""
    import http.client

    bodies = [(uid, *multipart(data, model="asr")) for uid, data in files]
    results: dict[str, tuple[int, str, float]] = {}
    next_file = iter(range(len(files)))
    lock = threading.Lock()

    def client_loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            while True:
                with lock:
                    i = next(next_file, None)
                if i is None:
                    return
                uid, body, content_type = bodies[i]
                t0 = time.perf_counter()
                try:
                    conn.request("POST", "/v1/audio/transcriptions", body, {"Authorization": f"Bearer {KEY}", "Content-Type": content_type})
                    r = conn.getresponse()
                    answer = r.read()
                    seconds = time.perf_counter() - t0
                    text = json.loads(answer).get("text", "") if r.status == 200 else answer.decode("utf-8", "replace")
                    results[uid] = (r.status, text, seconds)
                except (OSError, http.client.HTTPException) as e:
                    results[uid] = (0, type(e).__name__, 0.0)
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        finally:
            conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall": time.perf_counter() - t0, "results": results}


def silence_flac(seconds: float, rate: int = 48000, channels: int = 2) -> bytes:
    """Digital silence as FLAC, written 10 s at a time: a few hundred bytes per second of audio."""
    buf = io.BytesIO()
    block = np.zeros((rate * 10, channels), np.float32)
    with sf.SoundFile(buf, "w", rate, channels, format="FLAC") as f:
        for _ in range(int(seconds // 10)):
            f.write(block)
    return buf.getvalue()


def reset_peak_rss(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux: clear_refs 5); False where refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_of(pid: int, send: Any) -> tuple[float, float]:
    """(RSS before, peak RSS during) `send()`, in MB: the peak is reset first."""
    if not reset_peak_rss(pid):
        return float("nan"), float("nan")
    before = peak_rss_mb(pid)
    send()
    return before, peak_rss_mb(pid)


def bomb_memory(url: str, pid: int, wav: bytes, bomb: bytes) -> str:
    """Peak RSS of the server for one normal upload, then for the bomb (within the bound, so
    decoded whole: block by block), each above the RSS it started from."""
    import httpx

    with httpx.Client() as c:
        base_n, peak_n = peak_rss_of(pid, lambda: post(c, url, wav))
        answers = []
        base_b, peak_b = peak_rss_of(pid, lambda: answers.append(post(c, url, bomb, "bomb.flac")))
    status, text, seconds = answers[0]
    return f"{status}, text {text!r}, {seconds:.1f} s; peak RSS +{peak_b - base_b:.0f} MB (bomb) vs +{peak_n - base_n:.0f} MB (normal upload), from {base_n:.0f} MB"


def abuse_run(url: str, port: int, good: list[tuple[str, bytes]], expected: dict[str, str], max_upload_mb: float, body_timeout: float, pid: int = 0, max_audio_seconds: float = 900.0) -> list[tuple[str, str, str, bool]]:
    """(case, expected, got, ok) rows; good requests run in a thread meanwhile."""
    import httpx

    rows: list[tuple[str, str, str, bool]] = []
    good_results: list[tuple[str, int, str]] = []
    stop = threading.Event()

    def good_loop() -> None:
        with httpx.Client() as c:
            i = 0
            while not stop.is_set():
                uid, data = good[i % len(good)]
                status, text, _ = post(c, url, data)
                good_results.append((uid, status, text))
                i += 1

    runner = threading.Thread(target=good_loop)
    runner.start()
    wav = good[0][1]
    noise = io.BytesIO()
    oversized = int(max_upload_mb * 1e6 / 4 * 1.5)  # float samples: 1.5 times the cap
    sf.write(noise, np.random.default_rng(0).standard_normal(oversized).astype(np.float32) * 0.1, 16000, format="WAV", subtype="FLOAT")
    bomb = silence_flac(2 * max_audio_seconds)  # 48 kHz stereo silence past the bound
    inside = silence_flac(max_audio_seconds - 60)  # and within it
    cases = [
        (f"decompression bomb ({len(bomb) / 1e3:.0f} kB FLAC, {2 * max_audio_seconds / 60:g} min > --max-audio-seconds {max_audio_seconds:g})", 413, lambda c: post(c, url, bomb, "bomb.flac")[0]),
        ("0-byte file", 400, lambda c: post(c, url, b"")[0]),
        ("truncated WAV", 400, lambda c: post(c, url, wav[: len(wav) // 3])[0]),
        ("not audio (text)", 400, lambda c: post(c, url, b"just some text\n" * 100, "notes.wav")[0]),
        ("not audio (random bytes)", 400, lambda c: post(c, url, os.urandom(5000), "noise.wav")[0]),
        (f"oversized ({len(noise.getvalue()) / 1e6:.1f} MB > {max_upload_mb:g} MB)", 413, lambda c: post(c, url, noise.getvalue())[0]),
        ("malformed multipart", 400, lambda c: c.post(url, content=b"--b\r\nnonsense", headers={"Authorization": f"Bearer {KEY}", "Content-Type": "multipart/form-data; boundary=b"}).status_code),
        ("no file field", 400, lambda c: c.post(url, data={"model": "asr"}, headers={"Authorization": f"Bearer {KEY}"}).status_code),
        ("missing API key", 401, lambda c: post(c, url, wav, key=None)[0]),
        ("wrong API key", 401, lambda c: post(c, url, wav, key="nope")[0]),
        ("wrong API key on /v1/models", 401, lambda c: c.get(url.replace("/audio/transcriptions", "/models"), headers={"Authorization": "Bearer nope"}).status_code),
        (f"stalled upload (> {body_timeout:g} s)", 408, lambda c: stalled_upload(port, body_timeout)),
        ("WebSocket sends garbage", "error + close", lambda c: websocket_garbage(port)),
        ("WebSocket disappears mid-stream", "server unharmed", lambda c: websocket_vanishes(port, wav)),
    ]
    with httpx.Client() as c:
        for name, want, run in cases:
            try:
                got = run(c)
            except Exception as e:  # noqa: BLE001  (a bench row, not a crash)
                got = f"{type(e).__name__}: {e}"
            rows.append((name, str(want), str(got), got == want))
    stop.set()
    runner.join()
    if pid:  # alone, so that nothing else moves the peak
        name = f"memory: bomb within the bound ({len(inside) / 1e3:.0f} kB FLAC, {(max_audio_seconds - 60) / 60:g} min of 48 kHz stereo = {(max_audio_seconds - 60) * 48000 * 2 * 4 / 1e9:.2f} GB of float samples)"
        got = bomb_memory(url, pid, wav, inside)
        rows.append((name, "200, text '', peak RSS bounded", got, got.startswith("200, text ''")))
    wrong = [(u, s, t) for u, s, t in good_results if s != 200 or t != expected[u]]
    rows.append((f"good requests interleaved ({len(good_results)})", "200, baseline text", f"{len(good_results) - len(wrong)} right, {len(wrong)} wrong", not wrong and bool(good_results)))
    return rows


def stalled_upload(port: int, body_timeout: float) -> int:
    """Send headers promising a body, a few bytes of it, then nothing: the status that comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=body_timeout + 30) as s:
        s.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
        )
        answer = s.recv(4096).decode("latin-1")
    return int(answer.split()[1]) if answer.startswith("HTTP/") else -1


def websocket_garbage(port: int) -> str:
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/v1/stream", additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        ws.send(b"\x00\x01garbage")
        try:
            message = json.loads(ws.recv(timeout=30))
        except Exception as e:  # noqa: BLE001
            return f"no message ({type(e).__name__})"
        try:
            ws.recv(timeout=10)
            closed = False
        except Exception:  # noqa: BLE001  (ConnectionClosed)
            closed = True
    return "error + close" if message.get("type") == "error" and closed else f"{message} closed={closed}"


def websocket_vanishes(port: int, wav: bytes) -> str:
    import httpx
    from websockets.sync.client import connect

    x, sr = sf.read(io.BytesIO(wav), dtype="int16")
    with connect(f"ws://127.0.0.1:{port}/v1/stream", additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": sr}))
        ws.send(x[: len(x) // 2].tobytes())
        ws.socket.close()  # gone without a close frame
    time.sleep(1.0)
    ok = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    return "server unharmed" if ok else "server unhealthy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True, help="JSONL manifest of the files to send (id, audio).")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the baseline and the server (0: torch's default).")
    parser.add_argument("--lm", type=Path, help="n-gram LM for a beam search, in the baseline and the server alike (with --lexicon).")
    parser.add_argument("--lexicon", type=Path)
    args = parser.parse_args()

    import torch

    import asr
    from asr.audio import audio_info
    from asr.decode import decode_items
    from asr.inference import decoder_for
    from asr.manifest import read_manifest
    from asr.options import resolve_options

    if args.threads:
        torch.set_num_threads(args.threads)
    utts = read_manifest(args.manifest)
    items = [(u.id, u.audio) for u in utts]
    files = [(u.id, Path(u.audio).read_bytes()) for u in utts]
    audio_seconds = sum(audio_info(u.audio).duration for u in utts)
    model = asr.load_model(args.model)
    decoder = decoder_for(model, resolve_options(model.cfg.decode, lm=args.lm, lexicon=args.lexicon))
    baseline = {r.id: r.text for r in decode_items(model, items, decoder, progress=False)}  # warm-up
    t0 = time.perf_counter()
    for _ in decode_items(model, items, decoder, progress=False):
        pass
    base_wall = time.perf_counter() - t0
    base_tput = audio_seconds / base_wall
    del model
    search = f"beam search with {args.lm} and speed views {decoder.speeds}" if args.lm else "greedy"
    print(f"files: {len(items)}, {audio_seconds:.1f} s of audio; torch threads {torch.get_num_threads()}; {search}")
    print(f"asr decode (one process, batched): {base_wall:.2f} s, {base_tput:.1f} audio s per s")

    port = free_port()
    max_upload_mb, body_timeout, max_audio_seconds = 2.0, 3.0, 900.0
    extra = ["--max-upload-mb", str(max_upload_mb), "--body-timeout", str(body_timeout), "--max-audio-seconds", str(max_audio_seconds)] + (["--threads", str(args.threads)] if args.threads else [])
    extra += ["--lm", str(args.lm), "--lexicon", str(args.lexicon)] if args.lm else []
    proc = start_server(args.model, port, extra)
    url = f"http://127.0.0.1:{port}/v1/audio/transcriptions"
    try:
        print()
        print("| clients | wall s | audio s / s | vs asr decode | median latency s | p95 latency s | errors | texts differing | server peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n in [int(c) for c in args.clients.split(",")]:
            run = load_run(port, files, n)
            res = run["results"]
            lat = sorted(r[2] for r in res.values() if r[0] == 200)
            errors = sum(1 for r in res.values() if r[0] != 200)
            differ = sum(1 for uid, r in res.items() if r[0] == 200 and r[1] != baseline[uid])
            tput = audio_seconds / run["wall"]
            p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan")
            print(f"| {n} | {run['wall']:.2f} | {tput:.1f} | {tput / base_tput:.2f} | {statistics.median(lat) if lat else float('nan'):.3f} | {p95:.3f} | {errors} | {differ} | {peak_rss_mb(proc.pid):.0f} |")
        print()
        print("| abuse case | expected | got | right |")
        print("|---|---|---|---|")
        rows = abuse_run(url, port, files[:10], baseline, max_upload_mb, body_timeout, proc.pid, max_audio_seconds)
        for name, want, got, ok in rows:
            print(f"| {name} | {want} | {got} | {'yes' if ok else 'NO'} |")
        print(f"\nserver peak RSS {peak_rss_mb(proc.pid):.0f} MB; still serving: {proc.poll() is None}")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
