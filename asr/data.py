"""Training data: features computed once and cached, a manifest's usable utterances with their
targets (one feature set per perturbation speed), length-bucketed batches, padding."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from asr.config import Config, ConfigError, FeatureConfig, check_noise_snr
from asr.featstore import array_path, read_index, write_features
from asr.featstore import speed_perturb as speed_perturb  # where asr.views and callers find it
from asr.features import Normalizer
from asr.manifest import Utterance, read_manifest
from asr.text import Tokenizer


@dataclass
class FeatureSet:
    """Features of the usable utterances of a manifest: utterance i is stored utterance
    `rows[i]` (i itself without `rows`), the frames feats[offsets[j]:offsets[j + 1]] of stored
    utterance j. `subset` only narrows `rows`, so a memory-mapped set stays on disk."""

    utts: list[Utterance]
    feats: np.ndarray  # (total_frames, dim), float32: every stored utterance's frames in turn
    offsets: np.ndarray  # (stored + 1,) int64
    failed: list[tuple[str, str]]  # (id, reason) of utterances whose audio could not be read
    rows: np.ndarray | None = None  # (n,) int64: which stored utterance each one is; None: all, in order

    def __len__(self) -> int:
        return len(self.utts)

    def _stored(self, i: int) -> int:
        return int(self.rows[i]) if self.rows is not None else i

    def lengths(self) -> np.ndarray:
        """(n,) int64: frames of each utterance."""
        lengths = np.diff(self.offsets)
        return lengths[self.rows] if self.rows is not None else lengths

    def __getitem__(self, i: int) -> torch.Tensor:
        """(frames, dim) float32: a view of the stored frames (copy-on-write for a cached set)."""
        j = self._stored(i)
        return torch.from_numpy(self.feats[self.offsets[j] : self.offsets[j + 1]])

    def subset(self, keep: list[int]) -> FeatureSet:
        """The utterances at positions `keep`, in that order, over the same stored frames (no copy)."""
        rows = np.arange(len(self.offsets) - 1, dtype=np.int64) if self.rows is None else self.rows
        return FeatureSet([self.utts[i] for i in keep], self.feats, self.offsets, self.failed, rows[np.asarray(keep, dtype=np.int64)])


def compute_features(
    utts: list[Utterance],
    cfg: FeatureConfig,
    desc: str = "features",
    speed: float = 1.0,
    noise_snr: tuple[float, float] | None = None,
    nj: int | None = 1,
) -> FeatureSet:
    """Read every utterance's audio (speed-perturbed by `speed`, then with its noisy copy's noise
    at an SNR in `noise_snr` dB, `asr.noise.noisy_copy`, when given) and extract features, in
    `nj` processes (None or 0: the cores), into a temporary file that the returned set
    memory-maps (`asr.featstore.write_features`: memory holds one block at a time, not the
    corpus); unreadable audio is reported, not fatal."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="asr-feats-") as tmp:
        base = Path(tmp) / "features"
        write_features(utts, cfg, base, speed, noise_snr, nj, desc=desc)
        return _open_features(base, utts)  # the mapping outlives the file's name (POSIX)


def _open_features(base: Path, utts: list[Utterance]) -> FeatureSet:
    meta = read_index(base)
    if meta is None:
        raise OSError(f"{base}.npy: no finished feature set")
    by_id = {u.id: u for u in utts}
    feats = np.load(array_path(base), mmap_mode="c")
    return FeatureSet([by_id[i] for i in meta["ids"]], feats, np.asarray(meta["offsets"], np.int64), [tuple(f) for f in meta["failed"]])


def load_features(
    manifest: str | Path,
    utts: list[Utterance],
    cfg: FeatureConfig,
    cache: bool = True,
    speed: float = 1.0,
    noise_snr: tuple[float, float] | None = None,
    nj: int | None = None,
) -> FeatureSet:
    """Features for a manifest, cached in `<manifest dir>/.feats/`; the cache key covers the
    manifest's content, the feature configuration, the speed and the noise, so a change to any
    recomputes. They are computed by `nj` processes (None or 0: the cores) straight to disk,
    and a killed computation resumes from its finished blocks (`asr.featstore`); where the
    manifest's folder cannot be written, into a temporary file instead."""
    manifest = Path(manifest)
    settings = {k: v for k, v in asdict(cfg).items() if k != "cmvn"}  # applied after the cache
    keyed = [[asdict(u) for u in utts], settings] + ([speed] if speed != 1.0 else []) + ([["noise", *noise_snr]] if noise_snr else [])
    key = hashlib.sha1(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    base = manifest.parent / ".feats" / f"{manifest.stem}-{key}"
    if cache and read_index(base) is not None:
        return _open_features(base, utts)
    desc = f"features {manifest.stem}" + (f" x{speed:g}" if speed != 1.0 else "") + (" noisy" if noise_snr else "")
    if cache:
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            writable = os.access(base.parent, os.W_OK)
        except OSError:
            writable = False
        if writable:
            write_features(utts, cfg, base, speed, noise_snr, nj, desc=desc)
            return _open_features(base, utts)
    # a read-only corpus folder: a temporary file instead
    return compute_features(utts, cfg, desc=desc, speed=speed, noise_snr=noise_snr, nj=nj)


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


# ------------------------------------------------------------------------------ training data


class Key(NamedTuple):
    """One example of the training data: utterance `utt` (its position among the usable
    utterances) in version `speed` of it (a position in `TrainData.speeds`: a speed, and with
    `TrainData.noisy`, clean or noisy)."""

    utt: int
    speed: int = 0


@dataclass
class Batch:
    """Padded, normalised features and CTC targets of some examples."""

    feats: torch.Tensor  # (B, T, D) float32, zero-padded
    lengths: torch.Tensor  # (B,) int64, frames
    targets: torch.Tensor  # (sum of target_lengths,) int64: the token ids of every example in turn
    target_lengths: torch.Tensor  # (B,) int64
    ids: list[str]  # utterance ids


@dataclass
class TrainData:
    """Features and targets of a manifest's usable utterances: versions of every utterance (a
    speed of `speeds`; clean, or noisy where `noisy` says so), each feature set holding the same
    utterances in the same order. An example is a `Key`."""

    versions: list[FeatureSet]  # versions[k]: every utterance at speeds[k] (with noise if noisy[k])
    targets: list[list[int]]  # token ids, one list per utterance
    speeds: list[float]
    noisy: list[bool] = field(default_factory=list)  # empty: all clean

    def __post_init__(self) -> None:
        if not self.noisy:
            self.noisy = [False] * len(self.speeds)
        if len(self.versions) != len(self.speeds) or len(self.noisy) != len(self.speeds) or any(len(v) != len(self.targets) for v in self.versions):
            raise ValueError("TrainData: one feature set per version (speed, noise), each with one entry per target")

    @property
    def n(self) -> int:
        """Number of utterances (each at every speed)."""
        return len(self.targets)

    @property
    def utts(self) -> list[Utterance]:
        return self.versions[0].utts

    @property
    def plain(self) -> int:
        """The version that evaluation, normalisation statistics and the epoch-size estimate
        use: clean at 1.0, or the first clean speed when 1.0 is not among them."""
        clean = [k for k, noisy in enumerate(self.noisy) if not noisy]
        return next((k for k in clean if self.speeds[k] == 1.0), clean[0])

    def __getitem__(self, key: Key) -> torch.Tensor:
        """The (frames, dim) features of one example."""
        return self.versions[key.speed][key.utt]

    def lengths(self, keys: list[Key]) -> np.ndarray:
        """(len(keys),) int64: frames of each example."""
        per_speed = [v.lengths() for v in self.versions]
        return np.array([per_speed[k.speed][k.utt] for k in keys], dtype=np.int64)

    def plain_keys(self) -> list[Key]:
        """Every utterance once, at the plain speed."""
        return [Key(i, self.plain) for i in range(self.n)]

    def epoch_keys(self, generator: torch.Generator | None) -> list[Key]:
        """Every utterance once: in a version (speed, noise) drawn from `generator` for each, or
        without one in the plain version."""
        if len(self.speeds) == 1 or generator is None:
            return self.plain_keys()
        drawn = torch.randint(len(self.speeds), (self.n,), generator=generator).tolist()
        return [Key(i, s) for i, s in enumerate(drawn)]

    def epoch_batches(self, batch_frames: int, generator: torch.Generator | None) -> list[list[Key]]:
        """An epoch's batches (`bucket_batches`): with a generator, random speeds and a shuffled order."""
        keys = self.epoch_keys(generator)
        return [[keys[i] for i in b] for b in bucket_batches(self.lengths(keys), batch_frames, generator)]

    def padding(self, batches: list[list[Key]]) -> float:
        """Share of the padded batches' frames that are padding (`padding_fraction`)."""
        lengths = {k: int(n) for b in batches for k, n in zip(b, self.lengths(b), strict=True)}
        return padding_fraction(lengths, batches)

    def batch(self, keys: list[Key], normalizer: Normalizer) -> Batch:
        x, lengths = pad_batch([self[k] for k in keys])
        x = normalizer(x, lengths)
        tgt = [self.targets[k.utt] for k in keys]
        return Batch(
            x,
            lengths,
            torch.tensor([t for seq in tgt for t in seq], dtype=torch.long),
            torch.tensor([len(seq) for seq in tgt], dtype=torch.long),
            [self.utts[k.utt].id for k in keys],
        )


def prepare_data(
    manifest: str, name: str, cfg: Config, tokenizer: Tokenizer | None, training: bool, log: Callable[[str], None] | None = None
) -> TrainData:
    """Features and targets of a manifest, `name` ("train", "dev") labelling what `log` reports.
    Utterances that are too long, spell characters outside the token set (of `tokenizer`, or of
    the manifest's own texts without one), or have more tokens than frames (CTC cannot learn them)
    are left out and counted. Training data gets one feature set per speed of `augment.speeds`.
    ConfigError for bad speeds or when no utterance is left."""
    speeds = cfg.augment.speeds if training else [1.0]
    if any(not 0.5 <= s <= 2.0 for s in speeds) or len(set(speeds)) < len(speeds):
        raise ConfigError(f"augment.speeds must be distinct factors between 0.5 and 2.0, got {speeds}")
    snr = cfg.augment.noise_snr if training else []
    check_noise_snr(snr)
    utts = read_manifest(manifest)
    versions = [load_features(manifest, utts, cfg.features, speed=s, nj=cfg.data.nj) for s in speeds]
    noisy = [False] * len(speeds)
    if snr:
        versions += [load_features(manifest, utts, cfg.features, speed=s, noise_snr=(float(snr[0]), float(snr[1])), nj=cfg.data.nj) for s in speeds]
        noisy += [True] * len(speeds)
        speeds = list(speeds) * 2
    features = versions[0]
    tok = tokenizer or Tokenizer.from_texts(u.text for u in features.utts)
    keep, targets, dropped = [], [], {}
    shortest = np.min([v.lengths() for v in versions], axis=0)  # the same utterances fail to read at every speed
    for i, u in enumerate(features.utts):
        reason = None
        if tok.unknown(u.text):
            reason = "characters outside the token set"
        elif training and u.duration > cfg.data.max_duration:
            reason = f"longer than data.max_duration={cfg.data.max_duration}s"
        elif training and not ctc_feasible(subsampled_length(int(shortest[i]), cfg.model.stack), tok.encode(u.text)):
            reason = "more tokens than frames after subsampling"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
        else:
            keep.append(i)
            targets.append(tok.encode(u.text))
    log = log or _log
    for reason, n in dropped.items():
        log(f"{name}: left out {n} utterance(s): {reason}")
    if features.failed:
        log(f"{name}: {len(features.failed)} utterance(s) with unreadable audio left out")
    if not keep:
        raise ConfigError(f"{manifest}: no usable utterances")
    versions = [v.subset(keep) if len(keep) < len(v) else v for v in versions]
    return TrainData(versions, targets, list(speeds), noisy)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
