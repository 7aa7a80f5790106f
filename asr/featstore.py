"""Training features on disk, computed by several processes in blocks, in bounded memory.

A feature set is one `.npy` array (total frames, dim) of float32 plus a `.json` index (the ids
kept, their offsets into the array, the ids whose audio could not be read): the cache format
that `asr.data.load_features` memory-maps. `write_features` builds it without ever holding the
corpus in memory:

1. The utterances are cut into blocks of `BLOCK` utterances in manifest order. `nj` worker
   processes (one torch thread each) compute blocks and write each as `block-K.npy` plus its
   `block-K.json` (written last, atomically, so a block is complete exactly when its `.json`
   exists) in the folder `BASE.parts/`. A worker holds one block's features at a time.
2. Once every block is there, they are copied in order into `BASE.npy` (one block at a time), the index is written, and `BASE.parts/` goes.

A job killed in step 1 leaves its finished blocks; run again, it computes only the blocks
without a `.json` (a half-written `.npy` is written anew). A job killed in step 2 copies again
from the kept blocks. The disk holds the blocks and the final array together only during step 2.

The features of each utterance are computed exactly as one process computes them (one torch
thread, the same code), so they are the same bits whatever `nj` and `BLOCK` are.

lhotse's chunked storage and `DynamicBucketingSampler` solve the wider problem (lazy manifests,
on-the-fly features); this module keeps the toolkit's JSONL manifests and its one-array cache,
which the training loop already memory-maps, and adds only what a large corpus needs from it:
parallel, resumable, bounded-memory preparation.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr.audio import AudioError, load_audio, resample
from asr.config import ConfigError, FeatureConfig
from asr.manifest import Utterance

__all__ = ["BLOCK", "speed_perturb", "feature_jobs", "utterance_features", "write_features", "read_index", "array_path", "index_path", "StoreReport"]

BLOCK = 128  # utterances per block: a worker's memory is one block's features (about 50 MB of 12 s utterances)


def speed_perturb(wav: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """Play `wav` `speed` times faster, tempo and pitch together, as Kaldi's `sox speed`:
    resample as if it had been recorded at sample_rate * speed."""
    return resample(wav, round(sample_rate * speed), sample_rate) if speed != 1.0 else wav


def feature_jobs(nj: int | None) -> int:
    """Processes for feature preparation: `nj`, or for 0/None the cores this process may use.
    ConfigError for a negative count."""
    if nj is None or nj == 0:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
    if nj < 0:
        raise ConfigError(f"data.nj must be 0 (the cores) or a number of processes, got {nj}")
    return int(nj)


def utterance_features(extractor, u: Utterance, cfg: FeatureConfig, speed: float = 1.0, noise_snr: tuple[float, float] | None = None) -> np.ndarray:
    """(frames, dim) float32 features of one utterance: its audio at `cfg.sample_rate`, played at
    `speed`, with its noisy copy's noise at an SNR in `noise_snr` dB when given
    (`asr.noise.noisy_copy`). AudioError when the audio cannot be read."""
    import torch

    from asr.noise import noisy_copy

    wav = load_audio(u.audio, cfg.sample_rate)
    wav = speed_perturb(wav, cfg.sample_rate, speed)
    if noise_snr is not None:
        wav = noisy_copy(wav, u.id, noise_snr)
    return extractor(torch.from_numpy(wav)).numpy()


@dataclass
class StoreReport:
    blocks: int  # blocks of the set
    computed: list[int]  # blocks computed by this call (the others were already on disk)


def _block_paths(parts: Path, k: int) -> tuple[Path, Path]:
    return parts / f"block-{k:06d}.npy", parts / f"block-{k:06d}.json"


def _compute_block(job: tuple) -> int:
    """Compute block k of (k, utts, cfg, speed, noise_snr, parts folder) into its two files."""
    import torch

    from asr.features import FeatureExtractor
    from asr.fileio import atomic_open, atomic_write_text

    k, utts, cfg, speed, noise_snr, parts = job
    torch.set_num_threads(1)
    extractor = FeatureExtractor(cfg)
    kept, chunks, failed = [], [], []
    for u in utts:
        try:
            chunks.append(utterance_features(extractor, u, cfg, speed, noise_snr))
        except AudioError as e:
            failed.append((u.id, e.reason))
            print(f"warning: {e} (skipped)", file=sys.stderr)
            continue
        kept.append(u.id)
    feats = np.concatenate(chunks) if chunks else np.zeros((0, extractor.dim), np.float32)
    npy, meta = _block_paths(Path(parts), k)
    with atomic_open(npy, "wb") as f:
        np.save(f, feats)
    index = {"ids": [u.id for u in utts], "kept": kept, "lengths": [len(c) for c in chunks], "failed": failed, "frames": int(feats.shape[0])}
    atomic_write_text(meta, json.dumps(index))
    return k


def _finished(parts: Path, k: int, ids: list[str]) -> dict | None:
    """Block k's index when the block is complete and made of `ids`; None when it must be computed."""
    npy, meta = _block_paths(parts, k)
    try:
        index = json.loads(meta.read_text())
        shape = np.load(npy, mmap_mode="r").shape
    except (OSError, ValueError):
        return None
    if index.get("ids") != ids or shape[0] != index.get("frames") or sum(index.get("lengths", [])) != shape[0]:
        return None
    return index


def write_features(
    utts: Sequence[Utterance],
    cfg: FeatureConfig,
    base: str | Path,
    speed: float = 1.0,
    noise_snr: tuple[float, float] | None = None,
    nj: int | None = None,
    block: int = BLOCK,
    desc: str = "features",
) -> StoreReport:
    """Compute the features of `utts` into `BASE.npy` (total frames, dim) float32 and its index
    `BASE.json` ({"ids", "offsets", "failed"}), in blocks of `block` utterances by `nj` processes
    (`feature_jobs`; 1: in this process), resuming from the blocks a killed run left in
    `BASE.parts/` (module docstring). Unreadable audio is reported and left out. OSError when
    the folder cannot be written."""
    from tqdm import tqdm

    from asr.fileio import atomic_write_text

    base = Path(base)
    parts = base.with_name(base.name + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    blocks = [list(utts[i : i + block]) for i in range(0, len(utts), block)]
    todo = [k for k, b in enumerate(blocks) if _finished(parts, k, [u.id for u in b]) is None]
    jobs = [(k, blocks[k], cfg, speed, noise_snr, str(parts)) for k in todo]
    workers = min(feature_jobs(nj), len(jobs))
    bar = tqdm(total=len(utts), initial=len(utts) - sum(len(blocks[k]) for k in todo), desc=desc, unit="utt", leave=False, disable=None)
    try:
        if workers <= 1:
            import torch

            threads = torch.get_num_threads()
            try:
                for job in jobs:
                    bar.update(len(blocks[_compute_block(job)]))
            finally:
                torch.set_num_threads(threads)
        else:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = [pool.submit(_compute_block, job) for job in jobs]
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for f in done:
                        bar.update(len(blocks[f.result()]))  # a worker's exception is raised here
    finally:
        bar.close()
    indexes = [_finished(parts, k, [u.id for u in b]) for k, b in enumerate(blocks)]
    if any(i is None for i in indexes):
        if read_index(base) is not None:  # another job on the same set finished it meanwhile
            return StoreReport(len(blocks), todo)
        raise OSError(f"{parts}: a feature block is missing after its computation")
    total = sum(i["frames"] for i in indexes)
    dim = _dim(cfg)
    tmp = base.with_name(f".{base.name}.{os.getpid()}.tmp.npy")  # one per job: two jobs on one set never share it
    try:
        # written, not memory-mapped: mapped pages of the output would count in this process's memory
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (total, dim)})
            for k in range(len(blocks)):
                f.write(np.ascontiguousarray(np.load(_block_paths(parts, k)[0]), dtype=np.float32).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, array_path(base))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    ids = [i for index in indexes for i in index["kept"]]
    offsets = np.concatenate([[0], np.cumsum([n for index in indexes for n in index["lengths"]], dtype=np.int64)]).astype(np.int64)
    failed = [tuple(f) for index in indexes for f in index["failed"]]
    atomic_write_text(index_path(base), json.dumps({"ids": ids, "offsets": offsets.tolist(), "failed": failed}))
    shutil.rmtree(parts, ignore_errors=True)
    return StoreReport(len(blocks), todo)


def array_path(base: str | Path) -> Path:
    """BASE.npy: the features of the set whose files start with `base` (dots in its name kept)."""
    return Path(f"{os.fspath(base)}.npy")


def index_path(base: str | Path) -> Path:
    """BASE.json: the set's index."""
    return Path(f"{os.fspath(base)}.json")


def _dim(cfg: FeatureConfig) -> int:
    from asr.features import FeatureExtractor

    return FeatureExtractor(cfg).dim


def read_index(base: str | Path) -> dict | None:
    """The index of a finished feature set (`BASE.json` beside its `BASE.npy`), or None."""
    base = Path(base)
    if not (index_path(base).exists() and array_path(base).exists()):
        return None
    return json.loads(index_path(base).read_text())
