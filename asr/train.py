"""Training: AdamW with warm-up and cosine decay, bucketed batches, gradient clipping,
validation WER every epoch, `best` and `last` checkpoints, resumable."""

from __future__ import annotations

import csv
import ctypes
import fcntl
import json
import math
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from asr import distributed
from asr.beam import greedy_ids
from asr.checkpoint import (
    Recognizer,
    average_checkpoints,
    epoch_checkpoints,
    load_checkpoint,
    model_payload,
    save_checkpoint,
)
from asr.config import Config, ConfigError, to_toml
from asr.data import (
    FeatureSet,
    bucket_batches,
    ctc_feasible,
    load_features,
    pad_batch,
    padding_fraction,
    subsampled_length,
)
from asr.distributed import resolve_device
from asr.features import FeatureExtractor, Normalizer, spec_augment
from asr.fileio import atomic_write_text
from asr.inspect import Probe, ctc_probe_loss, gradient_norms_through_time
from asr.manifest import read_manifest
from asr.model import CTCModel, count_parameters, ctc_loss
from asr.plots import TrainingPlots
from asr.scoring import score
from asr.text import Tokenizer

STEPS = ["step", "epoch", "loss", "grad_norm", "grad_norm_clipped", "lr"]
METRICS = ["epoch", "step", "lr", "train_loss", "grad_norm_mean", "grad_norm_max", "clipped", "skipped", "dev_loss", "dev_wer", "dev_cer", "epoch_seconds", "elapsed_seconds", "rss_mb", "peak_rss_mb", "epoch_peak_rss_mb"]


@dataclass
class Batch:
    feats: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    ids: list[str]


@dataclass
class TrainData:
    """Features and targets. With speed perturbation, `features` holds `copies` versions of
    the `n` utterances one after the other: utterance i at speed k is entry k * n + i, and its
    targets are targets[i]."""

    features: FeatureSet
    targets: list[list[int]]  # one per utterance
    copies: int = 1
    plain_copy: int = 0  # the copy at speed 1.0 (or the first)

    @property
    def n(self) -> int:
        return len(self.features) // self.copies

    def epoch_entries(self, generator: torch.Generator | None) -> np.ndarray:
        """One entry per utterance: a random copy each with a generator, else the plain copy."""
        if self.copies == 1:
            return np.arange(self.n)
        if generator is None:
            return self.plain_copy * self.n + np.arange(self.n)
        return torch.randint(self.copies, (self.n,), generator=generator).numpy() * self.n + np.arange(self.n)

    def epoch_batches(self, batch_frames: int, generator: torch.Generator | None) -> list[list[int]]:
        entries = self.epoch_entries(generator)
        return [[int(entries[i]) for i in b] for b in bucket_batches(self.features.lengths()[entries], batch_frames, generator)]

    def batch(self, indices: list[int], normalizer: Normalizer) -> Batch:
        x, lengths = pad_batch([self.features[i] for i in indices])
        x = normalizer(x, lengths)
        tgt = [self.targets[i % self.n] for i in indices]
        return Batch(
            x,
            lengths,
            torch.tensor([t for seq in tgt for t in seq], dtype=torch.long),
            torch.tensor([len(seq) for seq in tgt], dtype=torch.long),
            [self.features.utts[i].id for i in indices],
        )


def prepare_data(manifest: str, name: str, cfg: Config, tokenizer: Tokenizer | None, training: bool, log=None) -> TrainData:
    """Features and targets of a manifest. Utterances that are too long, spell characters outside
    the token set, or have more tokens than frames (CTC cannot learn them) are left out and counted.
    Training data gets one feature copy per speed of `augment.speeds`."""
    speeds = cfg.augment.speeds if training else [1.0]
    if any(not 0.5 <= s <= 2.0 for s in speeds) or len(set(speeds)) < len(speeds):
        raise ConfigError(f"augment.speeds must be distinct factors between 0.5 and 2.0, got {speeds}")
    utts = read_manifest(manifest)
    copies = [load_features(manifest, utts, cfg.features, speed=s) for s in speeds]
    features = copies[0]
    tok = tokenizer or Tokenizer.from_texts(u.text for u in features.utts)
    keep, targets, dropped = [], [], {}
    shortest = np.min([c.lengths() for c in copies], axis=0)  # the same utterances fail to read at every speed
    for i, u in enumerate(features.utts):
        reason = None
        unknown = tok.unknown(u.text)
        if unknown:
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
    copies = [c.subset(keep) if len(keep) < len(c) else c for c in copies]
    if len(copies) == 1:
        return TrainData(copies[0], targets)
    plain = speeds.index(1.0) if 1.0 in speeds else 0
    return TrainData(FeatureSet.concat(copies), targets, len(copies), plain)


def lr_factor(step: int, warmup: int, total: int, final_ratio: float) -> float:
    """Linear warm-up, then cosine decay to `final_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.inference_mode()
def evaluate(model: CTCModel, data: TrainData, normalizer: Normalizer, tokenizer: Tokenizer, batch_frames: int) -> tuple[float, float, float]:
    """Mean CTC loss per utterance, WER and CER (percent) with greedy decoding."""
    model.eval()
    total_loss, refs, hyps = 0.0, {}, {}
    for indices in bucket_batches(data.features.lengths(), batch_frames):
        b = data.batch(indices, normalizer)
        device = next(model.parameters()).device
        log_probs, out_lengths = model(b.feats.to(device), b.lengths)
        total_loss += float(ctc_loss(log_probs.float(), out_lengths.to(device), b.targets.to(device), b.target_lengths.to(device))) * len(indices)
        for i, ids, uid in zip(indices, greedy_ids(log_probs, out_lengths), b.ids, strict=True):
            refs[uid] = data.features.utts[i].text
            hyps[uid] = tokenizer.decode(ids)
    result = score(refs, hyps)
    return total_loss / len(data.features), result.wer, result.cer


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what is kept."""


@contextmanager
def experiment_lock(exp: Path) -> Iterator[None]:
    """One training process per experiment directory. flock is released by the kernel when the
    process dies, even by SIGKILL, so a stale lock never blocks a rerun."""
    path = exp / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            raise TrainingError(f"{exp}: another training process (pid {pid}) is using this directory") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class StopRequest:
    """Ctrl-C (SIGINT) asks training to stop after the current step, so the checkpoint written
    on the way out is consistent; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        try:
            previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def train(cfg: Config, exp_dir: str | Path) -> Path:
    """Train into `exp_dir` (resuming from `exp_dir/last.pt` if it exists); returns the best checkpoint's path.

    Under torchrun every process runs this; rank 0 alone takes the lock and writes checkpoints,
    metrics and progress."""
    exp = Path(exp_dir)
    exp.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.train.device)
    ranks = distributed.init(device)
    lock = experiment_lock(exp) if ranks.main else nullcontext()
    with lock, StopRequest().installed() as stop, PeakMemory() as memory:
        return _train(cfg, exp, stop, device, ranks, memory)


def inter_ctc_layer(cfg: Config) -> int:
    """The layer (from 1) whose outputs get the intermediate CTC loss; 0 when it is off."""
    w, k, layers = cfg.train.inter_ctc_weight, cfg.train.inter_ctc_layer, cfg.model.layers
    if not 0 <= w < 1:
        raise ConfigError(f"train.inter_ctc_weight must be at least 0 and below 1, got {w}")
    if w == 0:
        return 0
    k = k or (layers + 1) // 2
    if not 1 <= k < layers:
        raise ConfigError(f"train.inter_ctc_layer must be a layer below the top one (1 to {layers - 1}), got {k}")
    return k


def training_loss(
    trained: torch.nn.Module, model: CTCModel, x: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor, inter_layer: int = 0, inter_weight: float = 0.0
) -> torch.Tensor:
    """CTC loss of one batch; with `inter_layer`, (1 - w) * CTC(top) + w * CTC(that layer through the
    output layer). `trained` is `model` itself or its DistributedDataParallel wrapper."""
    hidden: list[torch.Tensor] | None = [] if inter_layer else None
    log_probs, out_lengths = trained(x, lengths, hidden)
    loss = ctc_loss(log_probs, out_lengths, targets, target_lengths)
    if not inter_layer:
        return loss
    inter = ctc_loss(model.layer_log_probs(hidden[inter_layer - 1]), out_lengths, targets, target_lengths)
    return (1 - inter_weight) * loss + inter_weight * inter


def _train(cfg: Config, exp: Path, stop: StopRequest, device: torch.device, ranks: distributed.Dist, memory: PeakMemory) -> Path:
    if not cfg.data.train:
        raise ConfigError("data.train: no training manifest given")
    if cfg.train.accumulate < 1:
        raise ConfigError(f"train.accumulate must be at least 1, got {cfg.train.accumulate}")
    inter_layer = inter_ctc_layer(cfg)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    log = _log if ranks.main else _quiet
    if cfg.train.keep_freed_memory and not keep_freed_memory():
        log("train.keep_freed_memory: the C library is not glibc; ignored")

    last_path, best_path = exp / "last.pt", exp / "best.pt"
    resume = load_checkpoint(last_path) if last_path.exists() else None
    if resume is not None:
        saved = Config.from_saved(resume["config"], where=f"{last_path} config")
        if saved.model != cfg.model or saved.features != cfg.features:
            raise ConfigError(f"{last_path}: model or feature settings differ from the checkpoint's; use a new --out directory")
    tokenizer = Tokenizer(tuple(resume["tokens"])) if resume else None

    if not ranks.main:  # rank 0 computes and caches the features; the others then read the cache
        ranks.barrier()
    train_data = prepare_data(cfg.data.train, "train", cfg, tokenizer, training=True, log=log)
    tokenizer = tokenizer or Tokenizer.from_texts(u.text for u in train_data.features.utts)
    dev_data = prepare_data(cfg.data.dev, "dev", cfg, tokenizer, training=False, log=log) if cfg.data.dev and ranks.main else None
    if ranks.main:
        ranks.barrier()

    if resume:
        normalizer = Normalizer.from_checkpoint(resume["normalizer"], cfg.features)
    else:
        normalizer = Normalizer.fit([train_data.features[i] for i in train_data.epoch_entries(None)], cfg.features.cmvn == "utterance")
    dim = FeatureExtractor(cfg.features).dim
    model = CTCModel(dim, len(tokenizer), cfg.model)
    if resume:
        model.load_state_dict(resume["model"])
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    # Each rank runs `accumulate` micro-batches per update; DDP averages the ranks' gradients.
    trained = DistributedDataParallel(model) if ranks.enabled else model
    per_step = cfg.train.accumulate * ranks.world

    lengths = train_data.features.lengths()[train_data.epoch_entries(None)]
    first_batches = train_data.epoch_batches(cfg.train.batch_frames, None)
    steps_per_epoch = len(first_batches) // per_step
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_frames={cfg.train.batch_frames} gives {len(first_batches)} batches, fewer than train.accumulate x processes = {per_step}")
    total_steps = steps_per_epoch * cfg.train.epochs
    start_epoch, step, best_wer, elapsed, partial = 1, 0, math.inf, 0.0, None
    batch_order = torch.Generator().manual_seed(cfg.train.seed)  # the same on every rank
    if resume:
        state = resume["train_state"]
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, best_wer, elapsed = state["epoch"] + 1, state["step"], state["best_wer"], state["elapsed"]
        batch_order.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        partial = state.get("partial")
        where = f"epoch {start_epoch}, step {partial['done'] + 1} of the epoch" if partial else f"after epoch {state['epoch']}"
        log(f"resuming from {last_path} {where}")
    elif ranks.main:
        atomic_write_text(exp / "config.toml", to_toml(cfg.to_dict()))

    speeds = f", speeds {'/'.join(f'{x:g}' for x in cfg.augment.speeds)}" if train_data.copies > 1 else ""
    log(
        f"train: {train_data.n} utts, {lengths.sum() / 100 / 3600:.2f} h{speeds}; "
        f"dev: {f'{len(dev_data.features)} utts' if dev_data else 'none (no per-epoch WER)'}; tokens: {len(tokenizer)}; "
        f"parameters: {count_parameters(model) / 1e6:.2f} M; {len(first_batches)} batches/epoch, "
        f"padding {padding_fraction(train_data.features.lengths(), first_batches):.1%}; {steps_per_epoch} updates/epoch"
        + (f" over {ranks.world} processes" if ranks.enabled else "")
        + f"; device {device}"
    )
    metrics_path = exp / "metrics.csv"
    steps_path = exp / "steps.csv"
    if ranks.main:
        _truncate_csv(metrics_path, METRICS, "epoch", start_epoch - 1)
        _truncate_csv(steps_path, STEPS, "step", step)
    probe = _start_probe(cfg, exp, model, train_data, normalizer, device, step) if ranks.main and cfg.train.probe_every > 0 else None
    plotter = TrainingPlots(exp) if ranks.main and cfg.train.plots else None

    def save_last(epoch_done: int, partial_state: dict | None = None) -> None:
        if not ranks.main:
            return
        payload = model_payload(cfg, tokenizer, normalizer, model)
        payload["train_state"] = {
            "epoch": epoch_done,
            "step": step,
            "best_wer": best_wer,
            "elapsed": elapsed,
            "optimizer": _cpu(optimizer.state_dict()),
            "generator": batch_order.get_state(),
            "torch_rng": torch.get_rng_state(),
            "partial": partial_state,
        }
        save_checkpoint(last_path, payload)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        if cfg.train.max_minutes > 0 and not partial and ranks.any(elapsed >= 60 * cfg.train.max_minutes):
            log(f"train.max_minutes={cfg.train.max_minutes:g} reached after {elapsed / 60:.1f} min of training (epoch {epoch - 1}); stopped")
            break
        model.train()
        memory.restart()
        t0 = time.time()
        if partial:  # finish the epoch that was interrupted, with its own batches
            batches, done, stats = partial["batches"], partial["done"], partial["stats"]
            partial = None
        else:
            batches, done, stats = train_data.epoch_batches(cfg.train.batch_frames, batch_order), 0, {"losses": [], "norms": [], "clipped": 0, "skipped": 0}
        augment_rng = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch * 101 + ranks.rank)
        groups = [batches[i * per_step : (i + 1) * per_step] for i in range(len(batches) // per_step)]
        consecutive_bad = 0
        bar = tqdm(total=len(groups), desc=f"epoch {epoch}/{cfg.train.epochs}", unit="step", leave=False, disable=None if ranks.main else True, initial=done)
        with open(steps_path, "a", newline="") if ranks.main else nullcontext() as steps_file:
            steps_csv = csv.writer(steps_file) if steps_file else None
            for group in groups[done:]:
                lr = cfg.train.lr * lr_factor(step, cfg.train.warmup_steps, total_steps, cfg.train.final_lr_ratio)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                mine = group[ranks.rank * cfg.train.accumulate : (ranks.rank + 1) * cfg.train.accumulate]
                loss_value = 0.0
                for k, indices in enumerate(mine):
                    b = train_data.batch(indices, normalizer)
                    x = spec_augment(b.feats, b.lengths, cfg.augment, augment_rng)
                    if device.type == "cuda":
                        x = x.pin_memory()
                    last_micro = k == len(mine) - 1
                    with trained.no_sync() if ranks.enabled and not last_micro else nullcontext(), autocast:
                        targets = (b.targets.to(device), b.target_lengths.to(device))
                        loss = training_loss(trained, model, x.to(device, non_blocking=True), b.lengths, *targets, inter_layer, cfg.train.inter_ctc_weight)
                        loss = loss / len(mine)
                    loss.backward()  # also when not finite: every rank must take part in the all-reduce
                    loss_value += loss.item()
                norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm))
                loss_value = ranks.mean(loss_value)
                done += 1
                bar.update()
                if not (math.isfinite(norm) and math.isfinite(loss_value)):  # skip the update
                    stats["skipped"] += 1
                    consecutive_bad += 1
                    if consecutive_bad >= cfg.train.max_nonfinite:
                        raise TrainingError(
                            f"{consecutive_bad} consecutive steps with a non-finite loss or gradient (epoch {epoch}); "
                            f"stopped. The last good checkpoint is {last_path}; try a lower train.lr"
                        )
                    continue
                consecutive_bad = 0
                optimizer.step()
                step += 1
                stats["losses"].append(loss_value)
                stats["norms"].append(norm)
                stats["clipped"] += norm > cfg.train.clip_norm
                if steps_csv:
                    clipped_norm = norm * min(1.0, cfg.train.clip_norm / (norm + 1e-6))  # what clip_grad_norm_ left
                    steps_csv.writerow([step, epoch, f"{loss_value:.4f}", f"{norm:.4f}", f"{clipped_norm:.4f}", f"{lr:.3e}"])
                if probe and step % cfg.train.probe_every == 0:
                    probe.take(step)
                bar.set_postfix(loss=f"{np.mean(stats['losses'][-20:]):.3f}", gnorm=f"{norm:.2f}")
                if ranks.any(stop.requested) and done < len(groups):
                    bar.close()
                    elapsed += time.time() - t0
                    save_last(epoch - 1, {"batches": batches, "done": done, "stats": stats})
                    _interrupted(last_path, f"epoch {epoch}, step {done}/{len(groups)} of the epoch", ranks)
        bar.close()
        elapsed += time.time() - t0
        losses, norms = stats["losses"] or [math.nan], stats["norms"] or [math.nan]
        row = {
            "epoch": epoch,
            "step": step,
            "lr": f"{lr:.3e}",
            "train_loss": f"{np.mean(losses):.4f}",
            "grad_norm_mean": f"{np.mean(norms):.3f}",
            "grad_norm_max": f"{np.max(norms):.3f}",
            "clipped": stats["clipped"],
            "skipped": stats["skipped"],
        }
        if dev_data:
            dev_loss, dev_wer, dev_cer = evaluate(model, dev_data, normalizer, tokenizer, cfg.decode.batch_frames)
            row.update(dev_loss=f"{dev_loss:.4f}", dev_wer=f"{dev_wer:.2f}", dev_cer=f"{dev_cer:.2f}")
        else:
            dev_wer = -epoch  # without a dev set, the latest epoch counts as best
        _release_free_memory()
        rss = _rss_mb()
        epoch_peak = max(memory.restart(), rss)
        run_peak = max(memory.run_peak, epoch_peak, _peak_rss_mb())  # the kernel's high-water mark can miss a sampled peak
        row.update(epoch_seconds=f"{time.time() - t0:.1f}", elapsed_seconds=f"{elapsed:.1f}", rss_mb=rss, peak_rss_mb=run_peak, epoch_peak_rss_mb=epoch_peak)
        if ranks.main:
            _append_csv(metrics_path, METRICS, row)
            if dev_wer < best_wer:
                best_wer = dev_wer
                save_checkpoint(best_path, model_payload(cfg, tokenizer, normalizer, model))
        log(
            f"epoch {epoch}: train loss {row['train_loss']}"
            + (f", dev loss {row['dev_loss']}, dev WER {row['dev_wer']}%, CER {row['dev_cer']}%" if dev_data else "")
            + (f", {stats['skipped']} non-finite steps skipped" if stats["skipped"] else "")
            + f" ({row['epoch_seconds']} s)"
        )
        save_last(epoch)
        if ranks.main and cfg.train.average_last > 0:
            _keep_epoch(exp / "epochs", epoch, model_payload(cfg, tokenizer, normalizer, model), cfg.train.average_last)
        if plotter:
            plotter.update(final=epoch == cfg.train.epochs)
        ranks.barrier()  # the others wait while rank 0 evaluates and saves
        if ranks.any(stop.requested) and epoch < cfg.train.epochs:
            _interrupted(last_path, f"the end of epoch {epoch}", ranks)
    if plotter:
        plotter.finish()
    if ranks.main and cfg.train.average_last > 0:
        _write_average(exp, dev_data, normalizer, tokenizer, cfg, log)
    return best_path


def _keep_epoch(folder: Path, epoch: int, payload: dict, keep: int) -> None:
    """Save this epoch's weights and delete those older than the last `keep` epochs."""
    folder.mkdir(exist_ok=True)
    save_checkpoint(folder / f"epoch-{epoch:03d}.pt", payload)
    for old in sorted(folder.glob("epoch-*.pt"))[:-keep]:
        old.unlink()


def _write_average(exp: Path, dev_data: TrainData | None, normalizer: Normalizer, tokenizer: Tokenizer, cfg: Config, log) -> None:
    """averaged.pt, the mean of the kept epochs' weights, with its dev WER next to the best epoch's."""
    if not any((exp / "epochs").glob("epoch-*.pt")):
        return
    kept = epoch_checkpoints(exp, cfg.train.average_last)
    average_checkpoints(kept, exp / "averaged.pt")
    msg = f"averaged {len(kept)} epochs ({kept[0].stem}..{kept[-1].stem}) -> {exp / 'averaged.pt'}"
    if dev_data:
        rec = Recognizer.from_checkpoint(exp / "averaged.pt")
        _, wer, cer = evaluate(rec.model, dev_data, normalizer, tokenizer, cfg.decode.batch_frames)
        atomic_write_text(exp / "averaged.json", json.dumps({"epochs": [p.stem for p in kept], "dev_wer": wer, "dev_cer": cer}) + "\n")
        msg += f": dev WER {wer:.2f}%, CER {cer:.2f}%"
    log(msg)


@dataclass
class _ProbeRun:
    """The gradient probe of a training run: its fixed batch and the log it appends to."""

    model: CTCModel
    batch: Batch
    device: torch.device
    log: Probe

    def take(self, step: int) -> None:
        x = self.batch.feats.to(self.device)
        loss = ctc_probe_loss(self.batch.targets, self.batch.target_lengths)
        self.log.append(step, gradient_norms_through_time(self.model, x, self.batch.lengths, loss))


def _start_probe(cfg: Config, exp: Path, model: CTCModel, data: TrainData, normalizer: Normalizer, device: torch.device, step: int) -> _ProbeRun:
    """The probe batch is the first batch of the first epoch (no augmentation), the same on resuming."""
    indices = data.epoch_batches(cfg.train.batch_frames, torch.Generator().manual_seed(cfg.train.seed))[0]
    batch = data.batch(indices, normalizer)
    out_lengths = ((batch.lengths + model.stack - 1) // model.stack).numpy()
    probe = _ProbeRun(model, batch, device, Probe.resume(exp / "probe.npz", model.layer_names(), out_lengths, batch.ids, step))
    if step == 0 or not probe.log.steps:
        probe.take(step)
    return probe


def _interrupted(last_path: Path, where: str, ranks: distributed.Dist) -> None:
    if ranks.main:
        _log(f"interrupted: saved {last_path} at {where}; run the same command to resume")
    raise KeyboardInterrupt


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _quiet(msg: str) -> None:
    pass


def _release_free_memory() -> None:
    """Hand the allocator's free pages back to the OS (glibc's malloc_trim). Batches of varying
    shapes leave freed blocks scattered over the heap; glibc keeps them, so without this the
    resident memory creeps up over the first tens of epochs although nothing is leaked."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse: large blocks come from the heap instead of a fresh
    mmap each (M_MMAP_THRESHOLD 256 MB), and the heap's top is trimmed only past 1 GB (M_TRIM_THRESHOLD,
    M_TOP_PAD). By default each large tensor is mapped, zero-filled page by page and unmapped: in an
    AN4 recipe run on 2 cores, 518 s of system time against 4031 s of user time. Lasts for the
    process; False where the C library is not glibc."""
    if _LIBC is None or not hasattr(_LIBC, "mallopt"):
        return False
    settings = ((_M_MMAP_THRESHOLD, 256 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 256 << 20))
    return all(_LIBC.mallopt(param, value) == 1 for param, value in settings)


def _load_libc() -> ctypes.CDLL | None:
    """The C library this process already uses, if it is glibc (musl and macOS have no malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


def _rss_mb() -> int:
    """Resident memory now (Linux /proc; 0 elsewhere): with the peak, shows whether memory grows."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)
    except (OSError, ValueError, IndexError):
        return 0


class PeakMemory:
    """Highest resident memory since the last `restart`, sampled by a daemon thread. (Linux's own
    high-water mark can be reset, but only together with the ru_maxrss that `/usr/bin/time`
    reports for the whole run, so it is left alone.)"""

    def __init__(self, interval: float = 0.05):
        self.peak = self.run_peak = _rss_mb()
        # A sample read before a restart must not land after it, or one epoch's peak leaks into the next.
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True, name="peak-memory")
        self._thread.start()

    def _sample(self, interval: float) -> None:
        while not self._done.wait(interval):
            with self._lock:
                self.peak = max(self.peak, _rss_mb())

    def restart(self) -> int:
        """The peak since the last restart (MB); a new one starts from the memory now.
        `run_peak` keeps the highest of them."""
        with self._lock:
            now = _rss_mb()
            peak, self.peak = max(self.peak, now), now
            self.run_peak = max(self.run_peak, peak)
        return peak

    def __enter__(self) -> PeakMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()


def _peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _cpu(obj):
    """A copy of a (nested) state dict with every tensor on the CPU, so a checkpoint loads anywhere."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


def training_complete(exp_dir: str | Path, cfg: Config) -> bool:
    """True when `last.pt` holds the final epoch of this configuration."""
    last = Path(exp_dir) / "last.pt"
    if not last.exists() or not (Path(exp_dir) / "best.pt").exists():
        return False
    return load_checkpoint(last)["train_state"]["epoch"] >= cfg.train.epochs


def export_model(checkpoint: str | Path, out: str | Path) -> None:
    """Copy a checkpoint without its training state: the file to decode and ship with."""
    rec = Recognizer.from_checkpoint(checkpoint)
    save_checkpoint(out, model_payload(rec.cfg, rec.tokenizer, rec.normalizer, rec.model))


def last_metrics(exp_dir: str | Path) -> dict[str, str] | None:
    """The last epoch's row of EXP/metrics.csv, or None before the first epoch."""
    path = Path(exp_dir) / "metrics.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else None


def _truncate_csv(path: Path, header: list[str], key: str, keep_upto: int) -> None:
    """Start a CSV, or drop rows written after the checkpoint we resume from."""
    rows = []
    if path.exists() and keep_upto > 0:
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r[key]) <= keep_upto]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)


def _append_csv(path: Path, header: list[str], row: dict) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=header).writerow(row)
