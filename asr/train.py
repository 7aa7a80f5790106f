"""Training: AdamW with warm-up and cosine decay, bucketed batches, gradient clipping,
validation WER every epoch, `best` and `last` checkpoints, resumable."""

from __future__ import annotations

import csv
import fcntl
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from asr.beam import greedy_ids
from asr.checkpoint import Recognizer, load_checkpoint, model_payload, save_checkpoint
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
from asr.features import FeatureExtractor, Normalizer, spec_augment
from asr.fileio import atomic_write_text
from asr.manifest import read_manifest
from asr.model import CTCModel, count_parameters, ctc_loss
from asr.scoring import score
from asr.text import Tokenizer

METRICS = ["epoch", "step", "lr", "train_loss", "grad_norm_mean", "grad_norm_max", "clipped", "skipped", "dev_loss", "dev_wer", "dev_cer", "epoch_seconds", "elapsed_seconds"]


@dataclass
class Batch:
    feats: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    ids: list[str]


@dataclass
class TrainData:
    features: FeatureSet
    targets: list[list[int]]

    def batch(self, indices: list[int], normalizer: Normalizer) -> Batch:
        x, lengths = pad_batch([self.features[i] for i in indices])
        x = normalizer(x, lengths)
        tgt = [self.targets[i] for i in indices]
        return Batch(
            x,
            lengths,
            torch.tensor([t for seq in tgt for t in seq], dtype=torch.long),
            torch.tensor([len(seq) for seq in tgt], dtype=torch.long),
            [self.features.utts[i].id for i in indices],
        )


def prepare_data(manifest: str, name: str, cfg: Config, tokenizer: Tokenizer | None, training: bool) -> TrainData:
    """Features and targets of a manifest. Utterances that are too long, spell characters outside
    the token set, or have more tokens than frames (CTC cannot learn them) are left out and counted."""
    utts = read_manifest(manifest)
    features = load_features(manifest, utts, cfg.features)
    tok = tokenizer or Tokenizer.from_texts(u.text for u in features.utts)
    keep, targets, dropped = [], [], {}
    lengths = features.lengths()
    for i, u in enumerate(features.utts):
        reason = None
        unknown = tok.unknown(u.text)
        if unknown:
            reason = "characters outside the token set"
        elif training and u.duration > cfg.data.max_duration:
            reason = f"longer than data.max_duration={cfg.data.max_duration}s"
        elif training and not ctc_feasible(subsampled_length(int(lengths[i]), cfg.model.stack), tok.encode(u.text)):
            reason = "more tokens than frames after subsampling"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
        else:
            keep.append(i)
            targets.append(tok.encode(u.text))
    for reason, n in dropped.items():
        print(f"{name}: left out {n} utterance(s): {reason}", file=sys.stderr)
    if features.failed:
        print(f"{name}: {len(features.failed)} utterance(s) with unreadable audio left out", file=sys.stderr)
    if not keep:
        raise ConfigError(f"{manifest}: no usable utterances")
    fs = features.subset(keep) if len(keep) < len(features) else features
    return TrainData(fs, targets)


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
        log_probs, out_lengths = model(b.feats, b.lengths)
        total_loss += float(ctc_loss(log_probs, out_lengths, b.targets, b.target_lengths)) * len(indices)
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
    """Train into `exp_dir` (resuming from `exp_dir/last.pt` if it exists); returns the best checkpoint's path."""
    exp = Path(exp_dir)
    exp.mkdir(parents=True, exist_ok=True)
    with experiment_lock(exp), StopRequest().installed() as stop:
        return _train(cfg, exp, stop)


def _train(cfg: Config, exp: Path, stop: StopRequest) -> Path:
    if not cfg.data.train:
        raise ConfigError("data.train: no training manifest given")
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)

    last_path, best_path = exp / "last.pt", exp / "best.pt"
    resume = load_checkpoint(last_path) if last_path.exists() else None
    if resume is not None:
        saved = Config.from_dict(resume["config"], where=f"{last_path} config")
        if saved.model != cfg.model or saved.features != cfg.features:
            raise ConfigError(f"{last_path}: model or feature settings differ from the checkpoint's; use a new --out directory")
    tokenizer = Tokenizer(tuple(resume["tokens"])) if resume else None

    train_data = prepare_data(cfg.data.train, "train", cfg, tokenizer, training=True)
    tokenizer = tokenizer or Tokenizer.from_texts(u.text for u in train_data.features.utts)
    dev_data = prepare_data(cfg.data.dev, "dev", cfg, tokenizer, training=False) if cfg.data.dev else None

    if resume:
        normalizer = Normalizer(resume["normalizer"]["mean"], resume["normalizer"]["std"])
    else:
        normalizer = Normalizer.fit([train_data.features[i] for i in range(len(train_data.features))])
    dim = FeatureExtractor(cfg.features).dim
    model = CTCModel(dim, len(tokenizer), cfg.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    lengths = train_data.features.lengths()
    first_batches = bucket_batches(lengths, cfg.train.batch_frames)
    total_steps = len(first_batches) * cfg.train.epochs
    start_epoch, step, best_wer, elapsed, partial = 1, 0, math.inf, 0.0, None
    generator = torch.Generator().manual_seed(cfg.train.seed)
    if resume:
        state = resume["train_state"]
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, best_wer, elapsed = state["epoch"] + 1, state["step"], state["best_wer"], state["elapsed"]
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        partial = state.get("partial")
        where = f"epoch {start_epoch}, batch {partial['done'] + 1}" if partial else f"after epoch {state['epoch']}"
        print(f"resuming from {last_path} {where}", file=sys.stderr)
    else:
        atomic_write_text(exp / "config.toml", to_toml(cfg.to_dict()))

    print(
        f"train: {len(train_data.features)} utts, {lengths.sum() / 100 / 3600:.2f} h; "
        f"dev: {len(dev_data.features) if dev_data else 0} utts; tokens: {len(tokenizer)}; "
        f"parameters: {count_parameters(model) / 1e6:.2f} M; {len(first_batches)} batches/epoch, "
        f"padding {padding_fraction(lengths, first_batches):.1%}",
        file=sys.stderr,
    )
    metrics_path = exp / "metrics.csv"
    steps_path = exp / "steps.csv"
    _truncate_csv(metrics_path, METRICS, "epoch", start_epoch - 1)
    _truncate_csv(steps_path, ["step", "epoch", "loss", "grad_norm", "lr"], "step", step)

    def save_last(epoch_done: int, partial_state: dict | None = None) -> None:
        payload = model_payload(cfg, tokenizer, normalizer, model)
        payload["train_state"] = {
            "epoch": epoch_done,
            "step": step,
            "best_wer": best_wer,
            "elapsed": elapsed,
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "partial": partial_state,
        }
        save_checkpoint(last_path, payload)

    for epoch in range(start_epoch, cfg.train.epochs + 1):
        model.train()
        t0 = time.time()
        if partial:  # finish the epoch that was interrupted, with its own batches
            batches, done, stats = partial["batches"], partial["done"], partial["stats"]
            partial = None
        else:
            batches, done, stats = bucket_batches(lengths, cfg.train.batch_frames, generator), 0, {"losses": [], "norms": [], "clipped": 0, "skipped": 0}
        consecutive_bad = 0
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.train.epochs}", unit="batch", leave=False, disable=None, initial=done)
        with open(steps_path, "a", newline="") as steps_file:
            steps_csv = csv.writer(steps_file)
            for indices in batches[done:]:
                lr = cfg.train.lr * lr_factor(step, cfg.train.warmup_steps, total_steps, cfg.train.final_lr_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                b = train_data.batch(indices, normalizer)
                x = spec_augment(b.feats, b.lengths, cfg.augment, generator)
                log_probs, out_lengths = model(x, b.lengths)
                loss = ctc_loss(log_probs, out_lengths, b.targets, b.target_lengths)
                optimizer.zero_grad(set_to_none=True)
                norm = math.nan
                if torch.isfinite(loss):
                    loss.backward()
                    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm))
                done += 1
                bar.update()
                if not math.isfinite(norm):  # a non-finite loss or gradient: skip the update
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
                stats["losses"].append(loss.item())
                stats["norms"].append(norm)
                stats["clipped"] += norm > cfg.train.clip_norm
                steps_csv.writerow([step, epoch, f"{stats['losses'][-1]:.4f}", f"{norm:.4f}", f"{lr:.3e}"])
                bar.set_postfix(loss=f"{np.mean(stats['losses'][-20:]):.3f}", gnorm=f"{norm:.2f}")
                if stop.requested and done < len(batches):
                    bar.close()
                    elapsed += time.time() - t0
                    save_last(epoch - 1, {"batches": batches, "done": done, "stats": stats})
                    _interrupted(last_path, f"epoch {epoch}, batch {done}/{len(batches)}")
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
        row.update(epoch_seconds=f"{time.time() - t0:.1f}", elapsed_seconds=f"{elapsed:.1f}")
        _append_csv(metrics_path, METRICS, row)
        print(
            f"epoch {epoch}: train loss {row['train_loss']}"
            + (f", dev loss {row['dev_loss']}, dev WER {row['dev_wer']}%, CER {row['dev_cer']}%" if dev_data else "")
            + (f", {stats['skipped']} non-finite steps skipped" if stats["skipped"] else "")
            + f" ({row['epoch_seconds']} s)",
            file=sys.stderr,
        )
        if dev_wer < best_wer:
            best_wer = dev_wer
            save_checkpoint(best_path, model_payload(cfg, tokenizer, normalizer, model))
        save_last(epoch)
        if stop.requested and epoch < cfg.train.epochs:
            _interrupted(last_path, f"the end of epoch {epoch}")
    return best_path


def _interrupted(last_path: Path, where: str) -> None:
    print(f"interrupted: saved {last_path} at {where}; run the same command to resume", file=sys.stderr)
    raise KeyboardInterrupt


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
