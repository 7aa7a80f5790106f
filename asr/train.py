"""Training: AdamW with warm-up and cosine decay, bucketed batches, gradient clipping,
validation WER every epoch, `best` and `last` checkpoints, resumable.

`train` runs in phases: `setup` builds what stays fixed for the run (a `Run`: data, model,
optimizer, callbacks) and the `TrainState` to start from, fresh or read from last.pt; then every
epoch `train_one_epoch` makes the updates and `end_of_epoch` evaluates on dev and writes the
metrics and checkpoints; `finish` ends the run. The gradient probe, the plots and TensorBoard are
callbacks (`asr.callbacks`); the experiment directory's files are named in `asr.expdir`."""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from asr import distributed
from asr.audio import lowest_sample_rate
from asr.beam import greedy_ids
from asr.callbacks import Callback, EpochResult, StepResult, standard_callbacks
from asr.checkpoint import (
    Recognizer,
    average_checkpoints,
    epoch_checkpoints,
    load_checkpoint,
    model_payload,
    save_checkpoint,
)
from asr.config import Config, ConfigError, to_toml
from asr.data import Key, TrainData, bucket_batches, prepare_data
from asr.distributed import resolve_device
from asr.expdir import ExpDir
from asr.expdir import last_metrics as last_metrics  # where `asr.lab` and older code import it from
from asr.features import FeatureExtractor, Normalizer, spec_augment
from asr.fileio import atomic_write_text
from asr.memory import EpochMemory, PeakMemory, keep_freed_memory
from asr.model import CTCModel, count_parameters, ctc_loss
from asr.scoring import score
from asr.text import Tokenizer

STEPS = ["step", "epoch", "loss", "grad_norm", "grad_norm_clipped", "lr"]
METRICS = ["epoch", "step", "lr", "train_loss", "grad_norm_mean", "grad_norm_max", "clipped", "skipped", "dev_loss", "dev_wer", "dev_cer", "epoch_seconds", "elapsed_seconds", "rss_mb", "peak_rss_mb", "epoch_peak_rss_mb"]


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what is kept."""


# ------------------------------------------------------------------------------- the state


@dataclass
class EpochStats:
    """What the applied updates of one epoch measured."""

    losses: list[float] = field(default_factory=list)  # per update, averaged over processes
    norms: list[float] = field(default_factory=list)  # global gradient norm before clipping, per update
    clipped: int = 0  # updates whose norm was above train.clip_norm
    skipped: int = 0  # updates skipped for a non-finite loss or gradient

    def add(self, loss: float, norm: float, clip_norm: float) -> None:
        self.losses.append(loss)
        self.norms.append(norm)
        self.clipped += norm > clip_norm

    def to_saved(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "norms": list(self.norms), "clipped": int(self.clipped), "skipped": int(self.skipped)}

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> EpochStats:
        return cls(list(d["losses"]), list(d["norms"]), int(d["clipped"]), int(d["skipped"]))


@dataclass
class PartialEpoch:
    """An epoch under way: its batches, how many update groups of them are done, what they measured."""

    batches: list[list[Key]]
    done: int
    stats: EpochStats

    def to_saved(self) -> dict[str, Any]:
        return {"batches": [[(k.utt, k.speed) for k in b] for b in self.batches], "done": self.done, "stats": self.stats.to_saved()}

    @classmethod
    def from_saved(cls, d: dict[str, Any], n: int) -> PartialEpoch:
        """`n`: utterances in the training data. Files written before `Key` hold one integer per
        example, speed * n + utterance."""

        def key(saved: int | Sequence[int]) -> Key:
            return Key(saved % n, saved // n) if isinstance(saved, int) else Key(*saved)

        return cls([[key(k) for k in b] for b in d["batches"]], int(d["done"]), EpochStats.from_saved(d["stats"]))


@dataclass
class TrainState:
    """Where training stands; last.pt keeps it as the `train_state` dict, with the optimizer's state
    and the random generators' (`to_saved`)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # updates applied
    best_wer: float = math.inf  # best.pt's dev WER (%); without a dev set, minus its epoch
    elapsed: float = 0.0  # seconds of training, over every run of this experiment
    partial: PartialEpoch | None = None  # the epoch Ctrl-C interrupted

    def to_saved(self, optimizer: torch.optim.Optimizer, batch_order: torch.Generator) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "best_wer": self.best_wer,
            "elapsed": self.elapsed,
            "optimizer": _cpu(optimizer.state_dict()),
            "generator": batch_order.get_state(),
            "torch_rng": torch.get_rng_state(),
            "partial": self.partial.to_saved() if self.partial else None,
        }

    @classmethod
    def from_saved(cls, d: dict[str, Any], n: int) -> TrainState:
        """The state of a `train_state` dict (the generators' and optimizer's are restored by `setup`);
        `n`: utterances in the training data."""
        partial = d.get("partial")
        return cls(d["epoch"], d["step"], d["best_wer"], d["elapsed"], PartialEpoch.from_saved(partial, n) if partial else None)


@dataclass
class Run:
    """What stays fixed while training runs; built by `setup`."""

    cfg: Config
    exp: ExpDir
    device: torch.device
    ranks: distributed.Dist
    stop: StopRequest
    memory: PeakMemory
    log: Callable[[str], None]  # progress messages (silent on ranks other than 0)
    train_data: TrainData
    dev_data: TrainData | None  # on rank 0 only
    tokenizer: Tokenizer
    normalizer: Normalizer
    model: CTCModel
    trained: torch.nn.Module  # `model`, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    batch_order: torch.Generator  # each epoch's speeds and batch order; the same on every rank
    steps_per_epoch: int  # updates in an epoch (as many as the first epoch's batches give)
    inter_layer: int  # the intermediate CTC layer, from 1; 0: off
    autocast: AbstractContextManager[Any]
    callbacks: list[Callback] = field(default_factory=list)  # on rank 0 only

    @property
    def per_step(self) -> int:
        """Batches per update: `train.accumulate` micro-batches on each process."""
        return self.cfg.train.accumulate * self.ranks.world

    def lr(self, step: int) -> float:
        t = self.cfg.train
        return t.lr * lr_factor(step, t.warmup_steps, self.steps_per_epoch * t.epochs, t.final_lr_ratio)

    def payload(self) -> dict[str, Any]:
        return model_payload(self.cfg, self.tokenizer, self.normalizer, self.model)


@dataclass
class EpochUpdates:
    """What `train_one_epoch` did: its measurements, its last learning rate, when it started (time.time())."""

    stats: EpochStats
    lr: float
    started: float


# -------------------------------------------------------------------------------- the loop


def train(cfg: Config, exp_dir: str | Path, callbacks: Sequence[Callback] = ()) -> Path:
    """Train into `exp_dir` (resuming from its last.pt if there is one); returns best.pt's path.
    `callbacks` run after the configuration's own (`asr.callbacks.standard_callbacks`), on rank 0.

    Under torchrun every process runs this; rank 0 alone takes the lock and writes checkpoints,
    metrics and progress. Ctrl-C saves last.pt and raises KeyboardInterrupt. ConfigError for
    settings that cannot train; TrainingError when training cannot go on."""
    exp = ExpDir(exp_dir)
    exp.root.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.train.device)
    ranks = distributed.init(device)
    lock = experiment_lock(exp.root) if ranks.main else nullcontext()
    with lock, StopRequest().installed() as stop, PeakMemory() as memory:
        run, state = setup(cfg, exp, device, ranks, stop, memory, callbacks)
        for epoch in range(state.epoch + 1, cfg.train.epochs + 1):
            # The time budget ends training at an epoch boundary.
            if out_of_time(run, state):
                break
            # The updates (or the rest of the epoch Ctrl-C interrupted).
            updates = train_one_epoch(run, state, epoch)
            # Dev WER, metrics.csv, best.pt, last.pt, the epoch's weights, the callbacks.
            end_of_epoch(run, state, epoch, updates)
            # Ctrl-C during evaluation or saving stops here, with last.pt written.
            if ranks.any(stop.requested) and epoch < cfg.train.epochs:
                _interrupted(run, f"the end of epoch {epoch}")
        finish(run)
    return exp.best


def setup(
    cfg: Config, exp: ExpDir, device: torch.device, ranks: distributed.Dist, stop: StopRequest, memory: PeakMemory, extra: Sequence[Callback] = ()
) -> tuple[Run, TrainState]:
    """Everything before the first update: data, model, optimizer, the state to start from (last.pt's
    when it exists), the logs and callbacks (rank 0; `extra` after the configuration's own). The
    order keeps a run reproducible: the seed before the model's initial weights, then (resuming)
    the saved random states. ConfigError for settings that cannot train or that differ from last.pt's."""
    inter_layer = _check(cfg)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    log = _log if ranks.main else _quiet
    if cfg.train.keep_freed_memory and not keep_freed_memory():
        log("train.keep_freed_memory: the C library is not glibc; ignored")
    # Data: resuming keeps the checkpoint's tokens and normalisation statistics.
    resume = _load_resume(cfg, exp)
    train_data, dev_data, tokenizer = _load_data(cfg, ranks, Tokenizer(tuple(resume["tokens"])) if resume else None, log)
    if resume:
        normalizer = Normalizer.from_checkpoint(resume["normalizer"], cfg.features)
    else:
        normalizer = Normalizer.fit([train_data[k] for k in train_data.plain_keys()], cfg.features.cmvn == "utterance")
    # The training audio's own lowest rate, saved with the statistics (asr.audio.SampleRateCheck).
    normalizer.audio_rate = int(resume["normalizer"].get("audio_rate", 0)) if resume else lowest_sample_rate(u.audio for u in train_data.utts)
    # Model and optimizer.
    model = CTCModel(FeatureExtractor(cfg.features).dim, len(tokenizer), cfg.model)
    if resume:
        model.load_state_dict(resume["model"])
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    trained = DistributedDataParallel(model) if ranks.enabled else model
    # The schedule's length, from the first epoch's batches.
    first_batches = train_data.epoch_batches(cfg.train.batch_frames, None)
    per_step = cfg.train.accumulate * ranks.world
    if len(first_batches) < per_step:
        raise ConfigError(f"train.batch_frames={cfg.train.batch_frames} gives {len(first_batches)} batches, fewer than train.accumulate x processes = {per_step}")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    batch_order = torch.Generator().manual_seed(cfg.train.seed)
    run = Run(cfg, exp, device, ranks, stop, memory, log, train_data, dev_data, tokenizer, normalizer, model, trained, optimizer, batch_order, len(first_batches) // per_step, inter_layer, autocast)
    # Where to start: last.pt's state, or a fresh one.
    state = _restore(run, resume) if resume else TrainState()
    if not resume and ranks.main:
        atomic_write_text(exp.config, to_toml(cfg.to_dict()))
    log(_summary(run, first_batches))
    # Logs and callbacks: what a resumed run redoes is dropped from them.
    if ranks.main:
        _truncate_csv(exp.metrics, METRICS, "epoch", state.epoch)
        _truncate_csv(exp.steps, STEPS, "step", state.step)
        run.callbacks = [*standard_callbacks(cfg, exp, model, train_data, normalizer, device, state.step, resume is not None), *extra]
    return run, state


def out_of_time(run: Run, state: TrainState) -> bool:
    """Whether `train.max_minutes` of training are spent (on any process; logged). An interrupted
    epoch is finished first."""
    limit = run.cfg.train.max_minutes
    if limit > 0 and not state.partial and run.ranks.any(state.elapsed >= 60 * limit):
        run.log(f"train.max_minutes={limit:g} reached after {state.elapsed / 60:.1f} min of training (epoch {state.epoch}); stopped")
        return True
    return False


def train_one_epoch(run: Run, state: TrainState, epoch: int) -> EpochUpdates:
    """The updates of epoch `epoch`, or the rest of the epoch in `state.partial`. Each update takes
    `run.per_step` batches of the epoch in turn. A non-finite loss or gradient skips the update;
    `train.max_nonfinite` in a row raise TrainingError. Ctrl-C saves last.pt after the current
    update and raises KeyboardInterrupt."""
    cfg, ranks = run.cfg, run.ranks
    run.model.train()
    run.memory.restart()
    started = time.time()
    if state.partial:  # finish the epoch that was interrupted, with its own batches
        part, state.partial = state.partial, None
    else:
        part = PartialEpoch(run.train_data.epoch_batches(cfg.train.batch_frames, run.batch_order), 0, EpochStats())
    augment_rng = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch * 101 + ranks.rank)
    groups = [part.batches[i * run.per_step : (i + 1) * run.per_step] for i in range(len(part.batches) // run.per_step)]
    lr, consecutive_bad = run.lr(state.step), 0
    bar = tqdm(total=len(groups), desc=f"epoch {epoch}/{cfg.train.epochs}", unit="step", leave=False, disable=None if ranks.main else True, initial=part.done)
    with open(run.exp.steps, "a", newline="") if ranks.main else nullcontext() as steps_file:
        steps_csv = csv.writer(steps_file) if steps_file else None
        for group in groups[part.done :]:
            lr = run.lr(state.step)
            loss, norm = _gradients(run, group, lr, augment_rng)
            part.done += 1
            bar.update()
            if not (math.isfinite(norm) and math.isfinite(loss)):  # skip the update
                part.stats.skipped += 1
                consecutive_bad += 1
                if consecutive_bad >= cfg.train.max_nonfinite:
                    raise TrainingError(
                        f"{consecutive_bad} consecutive steps with a non-finite loss or gradient (epoch {epoch}); "
                        f"stopped. The last good checkpoint is {run.exp.last}; try a lower train.lr"
                    )
                continue
            consecutive_bad = 0
            run.optimizer.step()
            state.step += 1
            part.stats.add(loss, norm, cfg.train.clip_norm)
            clipped = norm * min(1.0, cfg.train.clip_norm / (norm + 1e-6))  # what clip_grad_norm_ left
            _record_step(run, StepResult(state.step, epoch, loss, norm, clipped, lr), steps_csv)
            bar.set_postfix(loss=f"{np.mean(part.stats.losses[-20:]):.3f}", gnorm=f"{norm:.2f}")
            if ranks.any(run.stop.requested) and part.done < len(groups):
                bar.close()
                state.elapsed += time.time() - started
                state.partial = part
                save_last(run, state)
                _interrupted(run, f"epoch {epoch}, step {part.done}/{len(groups)} of the epoch")
    bar.close()
    state.elapsed += time.time() - started
    return EpochUpdates(part.stats, lr, started)


def end_of_epoch(run: Run, state: TrainState, epoch: int, updates: EpochUpdates) -> None:
    """Evaluate on dev (rank 0), then append the metrics row, save best.pt when the dev WER improved
    (every epoch without a dev set), last.pt and (`train.average_last`) the epoch's weights, and call
    the callbacks. Every process waits here until rank 0 is done."""
    cfg, ranks = run.cfg, run.ranks
    result = _epoch_result(run, state, epoch, updates)
    memory = run.memory.end_epoch()
    row = _metrics_row(result, time.time() - updates.started, state.elapsed, memory)
    state.epoch = epoch
    if ranks.main:
        _append_csv(run.exp.metrics, METRICS, row)
        dev_wer = result.dev_wer if result.dev_wer is not None else -epoch  # without a dev set, the latest epoch counts as best
        if dev_wer < state.best_wer:
            state.best_wer = dev_wer
            save_checkpoint(run.exp.best, run.payload())
    run.log(
        f"epoch {epoch}: train loss {row['train_loss']}"
        + (f", dev loss {row['dev_loss']}, dev WER {row['dev_wer']}%, CER {row['dev_cer']}%" if result.dev_wer is not None else "")
        + (f", {result.skipped} non-finite steps skipped" if result.skipped else "")
        + f" ({row['epoch_seconds']} s)"
    )
    save_last(run, state)
    if ranks.main and cfg.train.average_last > 0:
        _keep_epoch(run.exp, epoch, run.payload(), cfg.train.average_last)
    for callback in run.callbacks:
        callback.on_epoch_end(result)
    ranks.barrier()  # the others wait while rank 0 evaluates and saves


def finish(run: Run) -> None:
    """After the last epoch: the callbacks' `on_train_end`, then (rank 0, `train.average_last`)
    averaged.pt, the mean of the kept epochs, with its dev WER."""
    for callback in run.callbacks:
        callback.on_train_end()
    if run.ranks.main and run.cfg.train.average_last > 0:
        _write_average(run)


# -------------------------------------------------------------------------- the phases' parts


def _check(cfg: Config) -> int:
    """ConfigError for settings that cannot train; returns the intermediate CTC layer (0: off)."""
    if not cfg.data.train:
        raise ConfigError("data.train: no training manifest given")
    if cfg.train.accumulate < 1:
        raise ConfigError(f"train.accumulate must be at least 1, got {cfg.train.accumulate}")
    return inter_ctc_layer(cfg)


def _load_resume(cfg: Config, exp: ExpDir) -> dict[str, Any] | None:
    """last.pt, or None without one; ConfigError when its model or feature settings are not `cfg`'s."""
    if not exp.last.exists():
        return None
    resume = load_checkpoint(exp.last)
    saved = Config.from_saved(resume["config"], where=f"{exp.last} config")
    if saved.model != cfg.model or saved.features != cfg.features:
        raise ConfigError(f"{exp.last}: model or feature settings differ from the checkpoint's; use a new --out directory")
    return resume


def _load_data(cfg: Config, ranks: distributed.Dist, tokenizer: Tokenizer | None, log: Callable[[str], None]) -> tuple[TrainData, TrainData | None, Tokenizer]:
    """Training data, dev data (rank 0 only) and the tokens: `tokenizer`'s, or the training texts'."""
    if not ranks.main:  # rank 0 computes and caches the features; the others then read the cache
        ranks.barrier()
    train_data = prepare_data(cfg.data.train, "train", cfg, tokenizer, training=True, log=log)
    tokenizer = tokenizer or Tokenizer.from_texts(u.text for u in train_data.utts)
    dev_data = prepare_data(cfg.data.dev, "dev", cfg, tokenizer, training=False, log=log) if cfg.data.dev and ranks.main else None
    if ranks.main:
        ranks.barrier()
    return train_data, dev_data, tokenizer


def _restore(run: Run, resume: dict[str, Any]) -> TrainState:
    """last.pt's training state, with the optimizer's and the random generators' restored."""
    saved = resume["train_state"]
    run.optimizer.load_state_dict(saved["optimizer"])
    state = TrainState.from_saved(saved, run.train_data.n)
    run.batch_order.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    where = f"epoch {state.epoch + 1}, step {state.partial.done + 1} of the epoch" if state.partial else f"after epoch {state.epoch}"
    run.log(f"resuming from {run.exp.last} {where}")
    return state


def _summary(run: Run, first_batches: list[list[Key]]) -> str:
    """One line on the data, the model and the schedule."""
    data, dev, speeds = run.train_data, run.dev_data, run.train_data.speeds
    hours = data.lengths(data.plain_keys()).sum() / 100 / 3600
    distinct = sorted(set(speeds))
    speed_note = f", speeds {'/'.join(f'{x:g}' for x in distinct)}" if len(distinct) > 1 else ""
    if any(data.noisy):
        lo, hi = run.cfg.augment.noise_snr
        speed_note += f", noisy copies at {lo:g} to {hi:g} dB SNR"
    return (
        f"train: {data.n} utts, {hours:.2f} h{speed_note}; "
        f"dev: {f'{dev.n} utts' if dev else 'none (no per-epoch WER)'}; tokens: {len(run.tokenizer)}; "
        f"parameters: {count_parameters(run.model) / 1e6:.2f} M; {len(first_batches)} batches/epoch, "
        f"padding {data.padding(first_batches):.1%}; {run.steps_per_epoch} updates/epoch"
        + (f" over {run.ranks.world} processes" if run.ranks.enabled else "")
        + f"; device {run.device}"
    )


def _gradients(run: Run, group: list[list[Key]], lr: float, augment_rng: torch.Generator) -> tuple[float, float]:
    """Set the learning rate and compute one update's gradients, clipped to train.clip_norm: this
    process's share of `group`, each micro-batch's loss divided by their number. Returns the loss
    averaged over the processes and the global gradient norm before clipping (either may be
    non-finite)."""
    cfg, ranks, device = run.cfg, run.ranks, run.device
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    run.optimizer.zero_grad(set_to_none=True)
    mine = group[ranks.rank * cfg.train.accumulate : (ranks.rank + 1) * cfg.train.accumulate]
    loss_value = 0.0
    for k, keys in enumerate(mine):
        b = run.train_data.batch(keys, run.normalizer)
        x = spec_augment(b.feats, b.lengths, cfg.augment, augment_rng)
        if device.type == "cuda":
            x = x.pin_memory()
        last_micro = k == len(mine) - 1
        with run.trained.no_sync() if ranks.enabled and not last_micro else nullcontext(), run.autocast:
            targets = (b.targets.to(device), b.target_lengths.to(device))
            loss = training_loss(run.trained, run.model, x.to(device, non_blocking=True), b.lengths, *targets, run.inter_layer, cfg.train.inter_ctc_weight)
            loss = loss / len(mine)
        loss.backward()  # also when not finite: every rank must take part in the all-reduce
        loss_value += loss.item()
    norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.train.clip_norm))
    return ranks.mean(loss_value), norm


def _record_step(run: Run, step: StepResult, steps_csv: Any) -> None:
    """steps.csv's row (rank 0), then the callbacks."""
    if steps_csv:
        steps_csv.writerow([step.step, step.epoch, f"{step.loss:.4f}", f"{step.grad_norm:.4f}", f"{step.grad_norm_clipped:.4f}", f"{step.lr:.3e}"])
    for callback in run.callbacks:
        callback.on_step(step)


def _epoch_result(run: Run, state: TrainState, epoch: int, updates: EpochUpdates) -> EpochResult:
    """The epoch's measurements, with the dev set's loss, WER and CER when there is one."""
    s = updates.stats
    losses, norms = s.losses or [math.nan], s.norms or [math.nan]
    dev = evaluate(run.model, run.dev_data, run.normalizer, run.tokenizer, run.cfg.decode.batch_frames) if run.dev_data else (None, None, None)
    final = epoch == run.cfg.train.epochs
    return EpochResult(epoch, state.step, updates.lr, float(np.mean(losses)), float(np.mean(norms)), float(np.max(norms)), s.clipped, s.skipped, final, *dev)


def _metrics_row(r: EpochResult, seconds: float, elapsed: float, memory: EpochMemory) -> dict[str, Any]:
    """metrics.csv's row: `r`, the epoch's seconds (evaluation included), the run's training seconds, memory in MB."""
    row: dict[str, Any] = {
        "epoch": r.epoch,
        "step": r.step,
        "lr": f"{r.lr:.3e}",
        "train_loss": f"{r.train_loss:.4f}",
        "grad_norm_mean": f"{r.grad_norm_mean:.3f}",
        "grad_norm_max": f"{r.grad_norm_max:.3f}",
        "clipped": r.clipped,
        "skipped": r.skipped,
    }
    if r.dev_wer is not None:
        row.update(dev_loss=f"{r.dev_loss:.4f}", dev_wer=f"{r.dev_wer:.2f}", dev_cer=f"{r.dev_cer:.2f}")
    row.update(epoch_seconds=f"{seconds:.1f}", elapsed_seconds=f"{elapsed:.1f}", rss_mb=memory.now, peak_rss_mb=memory.run_peak, epoch_peak_rss_mb=memory.epoch_peak)
    return row


def save_last(run: Run, state: TrainState) -> None:
    """last.pt (rank 0): the model as `model_payload` saves it, and the state to resume from."""
    if not run.ranks.main:
        return
    payload = run.payload()
    payload["train_state"] = state.to_saved(run.optimizer, run.batch_order)
    save_checkpoint(run.exp.last, payload)


def _keep_epoch(exp: ExpDir, epoch: int, payload: dict[str, Any], keep: int) -> None:
    """Save this epoch's weights and delete those older than the last `keep` epochs."""
    exp.epochs.mkdir(exist_ok=True)
    save_checkpoint(exp.epoch_checkpoint(epoch), payload)
    for old in exp.kept_epochs()[:-keep]:
        old.unlink()


def _write_average(run: Run) -> None:
    """averaged.pt, the mean of the kept epochs' weights, with its dev WER next to the best epoch's."""
    exp, cfg = run.exp, run.cfg
    if not exp.kept_epochs():
        return
    kept = epoch_checkpoints(exp.root, cfg.train.average_last)
    average_checkpoints(kept, exp.averaged)
    msg = f"averaged {len(kept)} epochs ({kept[0].stem}..{kept[-1].stem}) -> {exp.averaged}"
    if run.dev_data:
        rec = Recognizer.from_checkpoint(exp.averaged)
        _, wer, cer = evaluate(rec.model, run.dev_data, run.normalizer, run.tokenizer, cfg.decode.batch_frames)
        atomic_write_text(exp.averaged_scores, json.dumps({"epochs": [p.stem for p in kept], "dev_wer": wer, "dev_cer": cer}) + "\n")
        msg += f": dev WER {wer:.2f}%, CER {cer:.2f}%"
    run.log(msg)


def _interrupted(run: Run, where: str) -> NoReturn:
    if run.ranks.main:
        _log(f"interrupted: saved {run.exp.last} at {where}; run the same command to resume")
    raise KeyboardInterrupt


# --------------------------------------------------------------------------- the pieces


def lr_factor(step: int, warmup: int, total: int, final_ratio: float) -> float:
    """Linear warm-up, then cosine decay to `final_ratio`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


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


@torch.inference_mode()
def evaluate(model: CTCModel, data: TrainData, normalizer: Normalizer, tokenizer: Tokenizer, batch_frames: int) -> tuple[float, float, float]:
    """Mean CTC loss per utterance, WER and CER (percent) with greedy decoding, at the plain speed."""
    model.eval()
    device = next(model.parameters()).device
    keys = data.plain_keys()
    total_loss, refs, hyps = 0.0, {}, {}
    for indices in bucket_batches(data.lengths(keys), batch_frames):
        batch_keys = [keys[i] for i in indices]
        b = data.batch(batch_keys, normalizer)
        log_probs, out_lengths = model(b.feats.to(device), b.lengths)
        total_loss += float(ctc_loss(log_probs.float(), out_lengths.to(device), b.targets.to(device), b.target_lengths.to(device))) * len(indices)
        for key, ids, uid in zip(batch_keys, greedy_ids(log_probs, out_lengths), b.ids, strict=True):
            refs[uid] = data.utts[key.utt].text
            hyps[uid] = tokenizer.decode(ids)
    result = score(refs, hyps)
    return total_loss / data.n, result.wer, result.cer


@contextmanager
def experiment_lock(exp: Path) -> Iterator[None]:
    """One training process per experiment directory. flock is released by the kernel when the
    process dies, even by SIGKILL, so a stale lock never blocks a rerun."""
    path = ExpDir(exp).lock
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


def training_complete(exp_dir: str | Path, cfg: Config) -> bool:
    """True when `last.pt` holds the final epoch of this configuration."""
    exp = ExpDir(exp_dir)
    if not exp.last.exists() or not exp.best.exists():
        return False
    return load_checkpoint(exp.last)["train_state"]["epoch"] >= cfg.train.epochs


def export_model(checkpoint: str | Path, out: str | Path) -> None:
    """Copy a checkpoint without its training state: the file to decode and ship with."""
    rec = Recognizer.from_checkpoint(checkpoint)
    save_checkpoint(out, model_payload(rec.cfg, rec.tokenizer, rec.normalizer, rec.model))


def _cpu(obj: Any) -> Any:
    """A copy of a (nested) state dict with every tensor on the CPU, so a checkpoint loads anywhere."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


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


def _append_csv(path: Path, header: list[str], row: dict[str, Any]) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=header).writerow(row)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _quiet(msg: str) -> None:
    pass
