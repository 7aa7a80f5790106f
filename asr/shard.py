"""Decoding split across processes and machines.

A manifest is cut into N shards by utterance id alone (`shard_of`: sha1 of the id, mod N), so
every machine of a SLURM array, a GNU parallel run or a set of torchrun ranks computes the same
split from the same manifest without talking to the others. `asr decode --shard I/N` writes shard
I's hypotheses to its part file (`part_path`: HYP.jsonl.shard-I-of-N); `merge_shards` checks that
all N parts are there, each holding only its own shard's ids and none twice, and writes the
hypotheses in manifest order: the very bytes one process would have written. A failed shard is
rerun alone; the parts of the others stay as they are.

On one machine, `decode_parallel` (`asr decode --nj N`) runs N worker processes of one torch
thread each (forked from the caller, which has loaded the model and built the search once),
each decoding a share balanced by audio duration (`balanced_shares`, deterministic by id), and
merges their parts the same way.

Each utterance is decoded as one process decodes it, but in length-bucketed batches with other
companions; the model's output for an utterance does not depend on them (padding never reaches
real frames, `asr.model`), and the tests check that the written bytes are the same.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.manifest import ManifestError, Utterance, read_manifest, require_unique_ids

__all__ = ["ShardError", "parse_shard", "shard_of", "part_path", "balanced_shares", "merge_shards", "merge_parts", "decode_parallel"]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(ValueError):
    """A shard specification, a part file or a worker that cannot be used; one line naming it."""


def parse_shard(text: str) -> tuple[int, int]:
    """"I/N" -> (I, N), with 0 <= I < N; ShardError otherwise."""
    m = _SHARD.match(text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ShardError(f"--shard expects I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def shard_of(uid: str, n: int) -> int:
    """The shard (0..n-1) of utterance `uid`: the sha1 of its UTF-8 bytes (file-name bytes that
    are not UTF-8 as themselves), as an integer, mod n. The same on every machine and Python."""
    digest = hashlib.sha1(uid.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest, "big") % n


def part_path(out: str | Path, index: int, n: int) -> Path:
    """Where shard `index` of `n` writes the hypotheses that go to `out`: OUT.shard-I-of-N."""
    return Path(f"{os.fspath(out)}.shard-{index}-of-{n}")


def balanced_shares(utts: Sequence[Utterance], n: int) -> list[set[str]]:
    """`n` sets of ids with about equal audio duration each: longest first (ties by id), each to
    the share with the least audio so far (then the fewest utterances, then the lowest index).
    Depends only on the ids and durations, not on the manifest's order."""
    shares: list[set[str]] = [set() for _ in range(n)]
    loads = [(0.0, 0)] * n
    for u in sorted(utts, key=lambda u: (-u.duration, u.id)):
        k = min(range(n), key=lambda i: (loads[i], i))
        shares[k].add(u.id)
        loads[k] = (loads[k][0] + u.duration, loads[k][1] + 1)
    return shares


@dataclass
class MergeReport:
    written: int  # hypotheses written
    missing: list[str]  # manifest ids that no part holds (audio their shard could not read)


def _part_lines(path: Path) -> list[tuple[str, str]]:
    """(id, raw line) of a hypothesis part, lines kept as written."""
    import json

    from asr.fileio import read_text

    rows = []
    for n, line in enumerate(read_text(path, ShardError).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise ShardError(f"{path}:{n}: not valid JSON (a damaged part: rerun its shard)") from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise ShardError(f"{path}:{n}: expected a JSON object with a string \"id\"")
        rows.append((row["id"], line + "\n"))
    return rows


def merge_parts(utts: Sequence[Utterance], parts: Sequence[Path], owner: Callable[[str], int], out: str | Path) -> MergeReport:
    """Write the hypotheses of `parts` (parts[k] holds the ids with owner(id) == k) to `out` in
    the order of `utts`, each line as its part has it. ShardError (one line) for a part that is
    missing (all missing ones named), an id that is not in `utts`, that belongs to another part,
    or that two lines hold."""
    from asr.fileio import atomic_write_text

    absent = [(k, p) for k, p in enumerate(parts) if not p.is_file()]
    if absent:
        n = len(parts)
        names = ", ".join(f"{k}/{n} ({p})" for k, p in absent)
        raise ShardError(f"{out}: {len(absent)} of {n} shard parts missing: {names}; decode {'it' if len(absent) == 1 else 'them'} with --shard I/{n}")
    known = {u.id for u in utts}
    lines: dict[str, str] = {}
    for k, p in enumerate(parts):
        for uid, line in _part_lines(p):
            if uid not in known:
                raise ShardError(f"{p}: id {uid!r} is not in the manifest (a part of another manifest?)")
            if owner(uid) != k:
                raise ShardError(f"{p}: id {uid!r} belongs to shard {owner(uid)}/{len(parts)}, not {k}/{len(parts)} (a part of another split?)")
            if uid in lines:
                raise ShardError(f"{p}: id {uid!r} appears twice")
            lines[uid] = line
    atomic_write_text(out, "".join(lines[u.id] for u in utts if u.id in lines), errors="surrogateescape")
    return MergeReport(len(lines), [u.id for u in utts if u.id not in lines])


def merge_shards(manifest: str | Path, out: str | Path, n: int) -> MergeReport:
    """Merge the N parts `part_path(out, i, n)` of `asr decode --shard i/N` into `out`, in the
    manifest's order (`merge_parts`): the file one process decoding the whole manifest writes.
    ShardError naming every missing part; ManifestError for an unreadable manifest."""
    if n < 1:
        raise ShardError(f"the number of shards must be at least 1, got {n}")
    utts = read_manifest(manifest)
    require_unique_ids(manifest, utts)
    return merge_parts(utts, [part_path(out, i, n) for i in range(n)], lambda uid: shard_of(uid, n), out)


# ------------------------------------------------------------------------------ one machine, N processes

START_METHOD: str | None = None  # how workers start: None, fork where there is fork (else spawn)
_INHERITED: dict[str, Any] = {}  # the parent's model and search, which forked workers use as they are


def _worker(conn: Any, job: dict) -> None:
    """Decode one share into its part; send back ("ok", DecodeReport, rates) or ("error", message)."""
    try:
        import torch

        from asr.audio import SampleRateCheck, training_rate
        from asr.decode import decode_manifest, load_model
        from asr.options import make_decoder

        torch.set_num_threads(job["threads"])
        model, decoder = _INHERITED.get("model"), _INHERITED.get("decoder")
        if model is None:  # spawned, or an exported model (its runtime's threads do not survive a fork)
            model = load_model(job["model_path"], job["device"])
            decoder = make_decoder(model.tokenizer, job["options"])
        check = SampleRateCheck(training_rate(model))
        share = job["share"]
        report = decode_manifest(model, job["manifest"], job["part"], decoder, job["batch_frames"], job["nbest"], rate_check=check, select=share.__contains__)
        conn.send(("ok", report, dict(check.rates)))
    except BaseException as e:  # noqa: BLE001 - the parent reports it in one line
        conn.send(("error", f"{type(e).__name__}: {e}" if not isinstance(e, (ValueError, OSError, RuntimeError)) else str(e)))
    finally:
        conn.close()


def decode_parallel(
    model_path: str | Path,
    manifest: str | Path,
    out: str | Path,
    nj: int,
    model: Any = None,
    options: Any = None,
    batch_frames: int | None = None,
    nbest: int = 1,
    threads: int = 1,
    device: str = "cpu",
    select: Callable[[str], bool] | None = None,
) -> Any:
    """`asr.decode.decode_manifest` in `nj` processes of `threads` torch threads each: the
    manifest's utterances (those `select` accepts) in `balanced_shares`, each worker writing its
    part in a temporary folder beside `out`, then merged in manifest order into `out` (the bytes
    one process writes). `model` (loaded from `model_path`) and `options` (`DecodeOptions`) are
    the caller's; forked workers use them as they are, spawned ones load them again.

    Returns the DecodeReport of the whole run (failed utterances from every worker; seconds of
    wall time). ShardError (one line, naming the share) when a worker fails; nothing is written
    to `out` then. CPU only: a CUDA model is refused."""
    from asr.audio import SampleRateCheck, training_rate
    from asr.checkpoint import Recognizer
    from asr.decode import DecodeReport, load_model
    from asr.options import make_decoder, resolve_options

    t0 = time.time()
    if nj < 1:
        raise ShardError(f"--nj must be at least 1, got {nj}")
    utts = read_manifest(manifest)
    require_unique_ids(manifest, utts)
    if os.path.exists(out) and os.path.samefile(out, manifest):
        raise ManifestError(f"{out}: the hypotheses would overwrite the manifest {manifest}; write them elsewhere")
    chosen = [u for u in utts if select is None or select(u.id)]
    model = model if model is not None else load_model(model_path, device)
    if getattr(getattr(model, "device", None), "type", "cpu") != "cpu":
        raise ShardError("--nj runs CPU worker processes; decode on a GPU in one process (or one --shard per GPU)")
    options = options if options is not None else resolve_options(model.cfg.decode)
    ctx = mp.get_context(START_METHOD or ("fork" if "fork" in mp.get_all_start_methods() else "spawn"))
    _INHERITED.clear()
    if ctx.get_start_method() == "fork" and isinstance(model, Recognizer):
        _INHERITED.update(model=model, decoder=make_decoder(model.tokenizer, options))
    shares = balanced_shares(chosen, nj)
    parent = Path(out).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{Path(out).name}.nj-", dir=parent) as tmp:
            parts = [Path(tmp) / f"part-{k}-of-{nj}.jsonl" for k in range(nj)]
            workers = []
            for k in range(nj):
                receive, send = ctx.Pipe(duplex=False)
                job = dict(model_path=os.fspath(model_path), device=device, options=options, manifest=os.fspath(manifest), part=os.fspath(parts[k]),
                           share=shares[k], batch_frames=batch_frames, nbest=nbest, threads=threads)
                proc = ctx.Process(target=_worker, args=(send, job), name=f"asr-decode-{k}-of-{nj}")
                proc.start()
                send.close()
                workers.append((proc, receive))
            results: dict[int, tuple] = {}
            waiting = {receive: k for k, (_, receive) in enumerate(workers)}
            while waiting:  # as they come, so that a failure stops the others at once
                for receive in mp_connection.wait(list(waiting)):
                    k = waiting.pop(receive)
                    try:
                        result = receive.recv()
                    except EOFError:
                        result = ("error", f"the worker ended without a result (exit status {workers[k][0].exitcode})")
                    workers[k][0].join()
                    if result[0] != "ok":
                        for other, _ in workers:
                            if other.is_alive():
                                other.terminate()
                                other.join()
                        raise ShardError(f"{manifest}: decode worker {k} of {nj} failed: {result[1]}")
                    results[k] = result
            share_of = {uid: k for k, share in enumerate(shares) for uid in share}
            merge_parts(utts, parts, lambda uid: share_of.get(uid, -1), out)
    finally:
        _INHERITED.clear()
    check = SampleRateCheck(training_rate(model))
    failed = []
    for _, report, rates in results.values():
        failed += report.failed
        for rate, count in rates.items():
            check.add(rate, count)
    check.warn()
    order = {u.id: i for i, u in enumerate(utts)}
    failed.sort(key=lambda f: order[f[0]])
    decoded = sum(r.decoded for _, r, _ in results.values())
    return DecodeReport(decoded, failed, sum(r.audio_seconds for _, r, _ in results.values()), time.time() - t0)
