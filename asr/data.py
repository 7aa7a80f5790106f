"""Training data: features computed once and cached, length-bucketed batches, padding."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from asr.audio import AudioError, load_audio, resample
from asr.config import FeatureConfig
from asr.features import FeatureExtractor, one_thread
from asr.manifest import Utterance


@dataclass
class FeatureSet:
    """Features of the usable utterances of a manifest, concatenated, with offsets."""

    utts: list[Utterance]
    feats: np.ndarray  # (total_frames, dim), float32
    offsets: np.ndarray  # (n + 1,)
    failed: list[tuple[str, str]]  # (id, reason) of utterances whose audio could not be read

    def __len__(self) -> int:
        return len(self.utts)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.feats[self.offsets[i] : self.offsets[i + 1]])

    @staticmethod
    def concat(sets: list[FeatureSet]) -> FeatureSet:
        """One set holding every utterance of each set in turn (entry i of set k at k * n + i for equal n)."""
        lengths = np.concatenate([s.lengths() for s in sets])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return FeatureSet([u for s in sets for u in s.utts], np.concatenate([s.feats for s in sets]), offsets, sets[0].failed)

    def subset(self, keep: list[int]) -> FeatureSet:
        lengths = self.lengths()[keep]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        feats = np.concatenate([self.feats[self.offsets[i] : self.offsets[i + 1]] for i in keep]) if keep else self.feats[:0]
        return FeatureSet([self.utts[i] for i in keep], feats, offsets, self.failed)


def speed_perturb(wav: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """Play `wav` `speed` times faster, tempo and pitch together, as Kaldi's `sox speed`:
    resample as if it had been recorded at sample_rate * speed."""
    return resample(wav, round(sample_rate * speed), sample_rate) if speed != 1.0 else wav


def compute_features(utts: list[Utterance], cfg: FeatureConfig, desc: str = "features", speed: float = 1.0) -> FeatureSet:
    """Read every utterance's audio (speed-perturbed by `speed`) and extract features;
    unreadable audio is reported, not fatal."""
    extractor = FeatureExtractor(cfg)
    kept, chunks, failed = [], [], []
    with one_thread():
        for u in tqdm(utts, desc=desc, unit="utt", leave=False, disable=None):
            try:
                wav = load_audio(u.audio, cfg.sample_rate)
            except AudioError as e:
                failed.append((u.id, e.reason))
                print(f"warning: {e} (skipped)", file=sys.stderr)
                continue
            kept.append(u)
            chunks.append(extractor(torch.from_numpy(speed_perturb(wav, cfg.sample_rate, speed))).numpy())
    lengths = [len(c) for c in chunks]
    dim = extractor.dim
    feats = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    return FeatureSet(kept, feats, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), failed)


def load_features(manifest: str | Path, utts: list[Utterance], cfg: FeatureConfig, cache: bool = True, speed: float = 1.0) -> FeatureSet:
    """Features for a manifest, cached in `<manifest dir>/.feats/`; the cache key covers the
    manifest's content, the feature configuration and the speed, so a change to any recomputes."""
    manifest = Path(manifest)
    settings = {k: v for k, v in asdict(cfg).items() if k != "cmvn"}  # applied after the cache
    keyed = [[asdict(u) for u in utts], settings] + ([speed] if speed != 1.0 else [])
    key = hashlib.sha1(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    base = manifest.parent / ".feats" / f"{manifest.stem}-{key}"
    if cache and base.with_suffix(".json").exists():
        meta = json.loads(base.with_suffix(".json").read_text())
        by_id = {u.id: u for u in utts}
        feats = np.load(base.with_suffix(".npy"), mmap_mode="c")
        return FeatureSet([by_id[i] for i in meta["ids"]], feats, np.asarray(meta["offsets"], np.int64), [tuple(f) for f in meta["failed"]])
    fs = compute_features(utts, cfg, desc=f"features {manifest.stem}" + (f" x{speed:g}" if speed != 1.0 else ""), speed=speed)
    if cache:
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            tmp = base.with_name(base.name + ".tmp.npy")
            np.save(tmp, fs.feats)
            os.replace(tmp, base.with_suffix(".npy"))
            meta = {"ids": [u.id for u in fs.utts], "offsets": fs.offsets.tolist(), "failed": fs.failed}
            tmp_meta = base.with_name(base.name + ".tmp.json")
            tmp_meta.write_text(json.dumps(meta))
            os.replace(tmp_meta, base.with_suffix(".json"))
        except OSError:  # a read-only corpus folder: keep the features in memory only
            pass
    return fs


def bucket_batches(lengths: np.ndarray, batch_frames: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """Group utterances of similar length so that each batch's padded size stays under
    `batch_frames`. With a generator, lengths are jittered and the batch order shuffled, so
    every epoch sees different batches with little padding."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if generator is not None:
        jitter = 1 + 0.1 * (torch.rand(len(lengths), generator=generator, dtype=torch.float64).numpy() - 0.5)
        order = np.argsort(lengths * jitter, kind="stable")
    else:
        order = np.argsort(lengths, kind="stable")
    batches, current, longest = [], [], 0.0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        if current and longest_if_added * (len(current) + 1) > batch_frames:
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(int(i))
        longest = longest_if_added
    if current:
        batches.append(current)
    if generator is not None:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[p] for p in perm]
    return batches


def pad_batch(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, max_frames, dim) zero-padded features and their lengths."""
    lengths = torch.tensor([len(x) for x in items], dtype=torch.long)
    return torch.nn.utils.rnn.pad_sequence(items, batch_first=True), lengths


def padding_fraction(lengths: np.ndarray, batches: list[list[int]]) -> float:
    """Share of frames in the padded batches that are padding."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / padded if padded else 0.0


def ctc_feasible(n_frames: int, targets: list[int]) -> bool:
    """CTC needs one frame per token plus one between each pair of repeated tokens."""
    repeats = sum(a == b for a, b in zip(targets, targets[1:], strict=False))
    return len(targets) + repeats <= n_frames


def subsampled_length(n_frames: int, stack: int) -> int:
    return math.ceil(n_frames / stack)
