"""Training callbacks: what watches training without steering it. The gradient probe, the plots
and TensorBoard are callbacks; `asr.train` calls them on rank 0 only, after every update
(`on_step`), after every epoch's metrics and checkpoints are written (`on_epoch_end`), and once
when the last epoch is done (`on_train_end`; not after Ctrl-C or an error).

A callback must leave the model, the optimizer and the random number generators as it found them,
so that training gives the same weights with or without it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from asr.config import Config, ConfigError
from asr.data import Batch, TrainData
from asr.expdir import ExpDir
from asr.features import Normalizer
from asr.inspect import Probe, ctc_probe_loss, first_last_ratio, gradient_norms_through_time
from asr.model import CTCModel


@dataclass(frozen=True)
class StepResult:
    """One optimizer update, as EXP/steps.csv records it (skipped updates are not reported)."""

    step: int  # updates so far, this one included
    epoch: int  # from 1
    loss: float  # the update's CTC loss per utterance, averaged over its micro-batches and processes
    grad_norm: float  # global gradient norm before clipping
    grad_norm_clipped: float  # ... and after clipping to train.clip_norm
    lr: float  # the learning rate of this update


@dataclass(frozen=True)
class EpochResult:
    """One finished epoch, as EXP/metrics.csv records it (timing and memory aside)."""

    epoch: int  # from 1
    step: int  # updates so far
    lr: float  # the learning rate of the epoch's last update
    train_loss: float  # mean of the updates' losses; NaN when every update was skipped
    grad_norm_mean: float  # over the epoch's updates, before clipping; NaN as train_loss
    grad_norm_max: float
    clipped: int  # updates whose gradient norm was above train.clip_norm
    skipped: int  # updates skipped for a non-finite loss or gradient
    final: bool  # the configuration's last epoch
    dev_loss: float | None = None  # CTC loss per dev utterance; None without a dev set
    dev_wer: float | None = None  # greedy WER on dev, percent
    dev_cer: float | None = None  # greedy CER on dev, percent


class Callback(Protocol):
    """What training calls; a class that subclasses this one overrides only the hooks it needs."""

    def on_step(self, step: StepResult) -> None:
        """After an update that was applied (its row is in steps.csv)."""

    def on_epoch_end(self, epoch: EpochResult) -> None:
        """After the epoch's metrics row and its checkpoints are written."""

    def on_train_end(self) -> None:
        """After the last epoch (or the epoch where `train.max_minutes` ran out)."""


class GradientProbe(Callback):
    """`train.probe_every = N`: every N updates, ||d loss / d h_t|| of each layer and output time
    step on a fixed batch, appended to EXP/probe.npz (`asr.inspect.Probe`). The batch is the first
    batch of the first epoch, without augmentation, so a resumed run probes the same one."""

    def __init__(self, model: CTCModel, batch: Batch, device: torch.device, log: Probe, every: int):
        self.model, self.batch, self.device, self.log, self.every = model, batch, device, log, every

    @classmethod
    def start(cls, cfg: Config, exp: ExpDir, model: CTCModel, data: TrainData, normalizer: Normalizer, device: torch.device, step: int) -> GradientProbe:
        """The probe of a run at update `step` (0: a fresh run): the probes saved up to `step` are
        kept, and one is taken now when there is none (always at step 0)."""
        keys = data.epoch_batches(cfg.train.batch_frames, torch.Generator().manual_seed(cfg.train.seed))[0]
        batch = data.batch(keys, normalizer)
        out_lengths = ((batch.lengths + model.stack - 1) // model.stack).numpy()
        probe = cls(model, batch, device, Probe.resume(exp.probe, model.layer_names(), out_lengths, batch.ids, step), cfg.train.probe_every)
        if step == 0 or not probe.log.steps:
            probe.take(step)
        return probe

    def take(self, step: int) -> None:
        """Probe the model as it is after update `step` and save probe.npz."""
        x = self.batch.feats.to(self.device)
        loss = ctc_probe_loss(self.batch.targets, self.batch.target_lengths)
        self.log.append(step, gradient_norms_through_time(self.model, x, self.batch.lengths, loss))

    def arrays(self) -> dict[str, np.ndarray]:
        """The probes so far, as `asr.inspect.load_probe` reads them from probe.npz."""
        log = self.log
        return {"steps": np.asarray(log.steps, np.int64), "norms": log.norms, "layers": np.asarray(log.layers), "lengths": np.asarray(log.lengths), "ids": np.asarray(log.ids)}

    def on_step(self, step: StepResult) -> None:
        if step.step % self.every == 0:
            self.take(step.step)


class TensorBoard(Callback):
    """`train.tensorboard = true`: event files in EXP/tensorboard/ (`tensorboard --logdir EXP`),
    every value at the update count it belongs to:

    - each update: train/loss, train/lr, train/grad_norm, train/grad_norm_clipped;
    - each epoch: epoch (its number), epoch/train_loss, epoch/grad_norm_mean, epoch/grad_norm_max,
      epoch/skipped, and with a dev set dev/loss, dev/wer, dev/cer (percent);
    - with the probe: probe/first_last_ratio/layerN at each probe (||d loss / d h_first|| over
      ||d loss / d h_last||, see `asr.inspect.first_last_ratio`), and at each epoch's end the image
      probe/gradients_through_time, the curves of `asr.plots.probe_figure`.

    A resumed run drops what an earlier run logged after the update it resumes from.
    ConfigError when the tensorboard package is not installed."""

    def __init__(self, folder: Path, step: int, resumed: bool, probe: GradientProbe | None = None):
        """`step`: the updates done when training (re)starts; `probe`: the run's probe, if any."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard = true needs the tensorboard package: pip install 'asr[tensorboard]'") from None
        self.writer = SummaryWriter(str(folder), purge_step=step + 1 if resumed else None)
        self.probe = probe
        self.probes_logged = step if resumed else -1  # the last probe step already in the event files

    def on_step(self, step: StepResult) -> None:
        for name in ("loss", "lr", "grad_norm", "grad_norm_clipped"):
            self.writer.add_scalar(f"train/{name}", getattr(step, name), step.step)
        self._log_probes()

    def on_epoch_end(self, epoch: EpochResult) -> None:
        w, step = self.writer, epoch.step
        w.add_scalar("epoch", epoch.epoch, step)
        for name in ("train_loss", "grad_norm_mean", "grad_norm_max", "skipped"):
            w.add_scalar(f"epoch/{name}", getattr(epoch, name), step)
        for name in ("loss", "wer", "cer"):
            value = getattr(epoch, f"dev_{name}")
            if value is not None:
                w.add_scalar(f"dev/{name}", value, step)
        self._log_probes()
        if self.probe is not None and self.probe.log.steps:
            from asr.plots import figure_pixels, probe_figure

            fig = probe_figure(self.probe.arrays())
            if fig is not None:
                w.add_image("probe/gradients_through_time", figure_pixels(fig), self.probe.log.steps[-1], dataformats="HWC")
        w.flush()

    def on_train_end(self) -> None:
        self.writer.close()

    def _log_probes(self) -> None:
        """The first/last ratio of every probe taken since the last call."""
        if self.probe is None:
            return
        arrays = None
        for index, step in enumerate(self.probe.log.steps):
            if step <= self.probes_logged:
                continue
            arrays = arrays or self.probe.arrays()
            for layer in range(len(self.probe.log.layers)):
                ratio = first_last_ratio(arrays, layer, index)
                if math.isfinite(ratio):
                    self.writer.add_scalar(f"probe/first_last_ratio/layer{layer + 1}", ratio, step)
            self.probes_logged = step


def standard_callbacks(
    cfg: Config, exp: ExpDir, model: CTCModel, data: TrainData, normalizer: Normalizer, device: torch.device, step: int, resumed: bool
) -> list[Callback]:
    """The callbacks the configuration asks for, in the order they run: the probe
    (`train.probe_every`), TensorBoard (`train.tensorboard`, which logs the probe too), the plots
    (`train.plots`). `step`: updates done; `resumed`: whether training resumes from last.pt."""
    from asr.plots import TrainingPlots

    callbacks: list[Callback] = []
    probe = GradientProbe.start(cfg, exp, model, data, normalizer, device, step) if cfg.train.probe_every > 0 else None
    if probe is not None:
        callbacks.append(probe)
    if cfg.train.tensorboard:
        callbacks.append(TensorBoard(exp.tensorboard, step, resumed, probe))
    if cfg.train.plots:
        callbacks.append(TrainingPlots(exp.root))
    return callbacks
