"""Training features at scale (asr.featstore, asr.data): computed by several processes straight
to disk, the same bits as one process; a killed job resumes from its finished blocks; subsets
stay memory-mapped; memory does not grow with the corpus."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from asr.audio import load_audio
from asr.config import Config, ConfigError, FeatureConfig
from asr.data import compute_features, load_features, prepare_data
from asr.featstore import _block_paths, _compute_block, feature_jobs, write_features
from asr.features import FeatureExtractor
from asr.manifest import Utterance, read_manifest
from asr.noise import noisy_copy
from tests.conftest import make_tone_corpus

CFG = FeatureConfig(n_mels=24)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """22 tone utterances and one unreadable file (entry 7)."""
    root = tmp_path_factory.mktemp("featstore")
    manifest = make_tone_corpus(root, 22, seed=5)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    (root / "broken.wav").write_bytes(b"not audio at all")
    rows.insert(7, {"id": "broken", "audio": "broken.wav", "duration": 1.0, "text": "AB"})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def reference(utts: list[Utterance], cfg: FeatureConfig, speed: float = 1.0, noise: tuple[float, float] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """What one process computed before the feature store: each readable utterance in turn,
    one torch thread, concatenated (ids, feats, offsets)."""
    from asr.data import speed_perturb

    extractor, ids, chunks = FeatureExtractor(cfg), [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for u in utts:
            try:
                wav = load_audio(u.audio, cfg.sample_rate)
            except Exception:
                continue
            wav = speed_perturb(wav, cfg.sample_rate, speed)
            if noise:
                wav = noisy_copy(wav, u.id, noise)
            ids.append(u.id)
            chunks.append(extractor(torch.from_numpy(wav)).numpy())
    finally:
        torch.set_num_threads(threads)
    return ids, np.concatenate(chunks), np.concatenate([[0], np.cumsum([len(c) for c in chunks])])


@pytest.mark.parametrize(("speed", "noise", "nj", "block"), [(1.0, None, 2, 3), (0.9, None, 3, 5), (1.1, (10.0, 20.0), 2, 4), (1.0, None, 1, 2)])
def test_features_are_the_bits_of_one_process(corpus: Path, speed: float, noise: tuple[float, float] | None, nj: int, block: int, tmp_path: Path) -> None:
    utts = read_manifest(corpus)
    ids, feats, offsets = reference(utts, CFG, speed, noise)
    report = write_features(utts, CFG, tmp_path / "f", speed, noise, nj=nj, block=block)
    assert report.blocks == -(-len(utts) // block) and report.computed == list(range(report.blocks))
    stored = np.load(tmp_path / "f.npy", mmap_mode="r")
    index = json.loads((tmp_path / "f.json").read_text())
    assert stored.dtype == np.float32 and stored.tobytes() == feats.tobytes()
    assert index["ids"] == ids and index["offsets"] == offsets.tolist() and [f[0] for f in index["failed"]] == ["broken"]
    assert not (tmp_path / "f.parts").exists()
    fs = compute_features(utts, CFG, speed=speed, noise_snr=noise, nj=nj)
    assert isinstance(fs.feats, np.memmap) and fs.feats.tobytes() == feats.tobytes() and [u.id for u in fs.utts] == ids


def test_load_features_caches_in_blocks_with_several_processes(corpus: Path) -> None:
    utts = read_manifest(corpus)
    first = load_features(corpus, utts, CFG, nj=2)
    again = load_features(corpus, utts, CFG, nj=1)
    assert isinstance(again.feats, np.memmap) and again.feats.tobytes() == first.feats.tobytes() == reference(utts, CFG)[1].tobytes()
    assert len(first) == len(utts) - 1 and first.failed[0][0] == "broken"


def test_a_killed_job_computes_only_the_missing_blocks(corpus: Path, tmp_path: Path) -> None:
    utts = read_manifest(corpus)
    base, block = tmp_path / "f", 4
    parts = tmp_path / "f.parts"
    blocks = [utts[i : i + block] for i in range(0, len(utts), block)]  # 23 utterances: 6 blocks
    for k in (0, 1, 3):
        _compute_block((k, blocks[k], CFG, 1.0, None, str(parts)))
    _compute_block((5, blocks[4], CFG, 1.0, None, str(parts)))  # block 5's files, made of other utterances
    npy, _ = _block_paths(parts, 2)
    npy.write_bytes(b"\x93NUMPY half a block")  # killed while writing block 2: its .json never came
    report = write_features(utts, CFG, base, nj=2, block=block)
    assert report.computed == [2, 4, 5]
    assert np.load(base.with_suffix(".npy")).tobytes() == reference(utts, CFG)[1].tobytes()


def _die_at_block(utts: list[Utterance], base: Path, block: int, at: int) -> None:
    import asr.featstore as store

    compute = store._compute_block

    def dying(job: tuple) -> int:
        if job[0] == at:
            os._exit(9)  # as a kill: nothing cleaned up, nothing flushed
        return compute(job)

    store._compute_block = dying
    write_features(utts, CFG, base, nj=1, block=block)


def test_resume_after_the_process_dies(corpus: Path, tmp_path: Path) -> None:
    utts = read_manifest(corpus)
    base = tmp_path / "f"
    proc = mp.get_context("fork").Process(target=_die_at_block, args=(utts, base, 3, 4))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 9 and not base.with_suffix(".npy").exists()
    assert sorted(p.name for p in (tmp_path / "f.parts").glob("*.json")) == [f"block-{k:06d}.json" for k in range(4)]
    report = write_features(utts, CFG, base, nj=2, block=3)
    assert report.computed == [4, 5, 6, 7]
    assert np.load(base.with_suffix(".npy")).tobytes() == reference(utts, CFG)[1].tobytes()


def test_subset_keeps_the_memory_mapped_file(corpus: Path) -> None:
    utts = read_manifest(corpus)
    fs = load_features(corpus, utts, CFG, nj=1)
    keep = [i for i in range(len(fs)) if i != 3][::-1]
    sub = fs.subset(keep)
    assert sub.feats is fs.feats and isinstance(sub.feats, np.memmap)
    assert [u.id for u in sub.utts] == [fs.utts[i].id for i in keep]
    assert sub.lengths().tolist() == fs.lengths()[keep].tolist()
    assert all(torch.equal(sub[j], fs[i]) for j, i in enumerate(keep))
    assert sub.subset([0, 2]).lengths().tolist() == [sub.lengths()[0], sub.lengths()[2]]
    assert torch.equal(sub.subset([0, 2])[1], fs[keep[2]])


def test_training_data_that_leaves_utterances_out_stays_on_disk(corpus: Path) -> None:
    cfg = Config()
    cfg.features = CFG
    cfg.data.max_duration = 1.5
    cfg.augment.speeds = [1.0, 1.1]
    durations = [u.duration for u in read_manifest(corpus) if u.id != "broken"]
    assert min(durations) < 1.5 < max(durations)
    data = prepare_data(str(corpus), "train", cfg, None, training=True, log=lambda _: None)
    assert 0 < data.n < len(durations) and all(u.duration <= 1.5 for u in data.utts)
    assert all(isinstance(v.feats, np.memmap) for v in data.versions)


def test_memory_does_not_grow_with_the_corpus(corpus: Path, tmp_path: Path) -> None:
    utts = [u for u in read_manifest(corpus) if u.id != "broken"]
    peaks = []
    for copies in (1, 4):
        many = [Utterance(f"{u.id}-{c}", u.audio, u.duration, u.text) for c in range(copies) for u in utts]
        tracemalloc.start()
        write_features(many, CFG, tmp_path / f"x{copies}", nj=1, block=4)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    corpus_bytes = np.load(tmp_path / "x1.npy", mmap_mode="r").nbytes
    assert peaks[1] < 1.25 * peaks[0] + 0.1 * corpus_bytes, (peaks, corpus_bytes)


def test_nj_zero_means_the_cores_and_negative_is_refused() -> None:
    assert feature_jobs(0) == feature_jobs(None) == len(os.sched_getaffinity(0))
    assert feature_jobs(3) == 3
    with pytest.raises(ConfigError, match="data.nj"):
        feature_jobs(-1)


def test_data_nj_is_checked_where_it_is_set(tmp_path: Path) -> None:
    import subprocess
    import sys

    from asr.config import load_config

    config = tmp_path / "c.toml"
    config.write_text("[data]\nnj = 2\n")
    assert load_config(config).data.nj == 2
    with pytest.raises(ConfigError, match=r"data.nj must be 0 \(the cores\) or a number of processes, got -2"):
        load_config(config, ["data.nj=-2"])
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "asr", "train", str(config), "--out", str(tmp_path / "exp"), "--nj", "-1"], capture_output=True, text=True, cwd=root)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "data.nj must be 0" in proc.stderr.strip().splitlines()[-1]


def test_manifests_with_dots_in_their_names_get_their_own_cache(corpus: Path) -> None:
    rows = corpus.read_text().splitlines()
    a, b = corpus.parent / "an4.first.jsonl", corpus.parent / "an4.second.jsonl"
    a.write_text("\n".join(rows[:8]) + "\n")
    b.write_text("\n".join(rows[8:]) + "\n")
    fa = load_features(a, read_manifest(a), CFG, nj=1)
    fb = load_features(b, read_manifest(b), CFG, nj=1)
    assert [u.id for u in fb.utts] == [u.id for u in read_manifest(b)]
    assert fb.feats.tobytes() == reference(read_manifest(b), CFG)[1].tobytes()
    assert load_features(a, read_manifest(a), CFG).feats.tobytes() == fa.feats.tobytes() == reference(read_manifest(a), CFG)[1].tobytes()
    assert sorted(p.name.split("-")[0] for p in (corpus.parent / ".feats").glob("an4.*.npy")) == ["an4.first", "an4.second"]
