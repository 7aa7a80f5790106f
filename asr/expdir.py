"""The experiment directory: the one place that names its files. Training writes them; checkpoint
averaging, recipes, the plots and the command line find them here.

    EXP/config.toml       the configuration the run started with
    EXP/best.pt           the epoch with the lowest dev WER (the latest epoch without a dev set)
    EXP/last.pt           the latest epoch (or the point Ctrl-C stopped at), with the training state
    EXP/epochs/           epoch-NNN.pt, the last `train.average_last` epochs' weights
    EXP/averaged.pt       their mean; EXP/averaged.json its dev WER and CER
    EXP/metrics.csv       one row per epoch; EXP/steps.csv one row per update
    EXP/probe.npz         the gradient probe (`train.probe_every`)
    EXP/plots/            the training plots (`train.plots`)
    EXP/tensorboard/      TensorBoard event files (`train.tensorboard`)
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.toml"
BEST = "best.pt"
LAST = "last.pt"
EPOCHS = "epochs"
AVERAGED = "averaged.pt"
AVERAGED_SCORES = "averaged.json"
METRICS = "metrics.csv"
STEPS = "steps.csv"
PROBE = "probe.npz"
PLOTS = "plots"
TENSORBOARD = "tensorboard"
LOCK = ".lock"


@dataclass(frozen=True)
class ExpDir:
    """The paths of one experiment directory (nothing is created or read here)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def best(self) -> Path:
        return self.root / BEST

    @property
    def last(self) -> Path:
        return self.root / LAST

    @property
    def epochs(self) -> Path:
        return self.root / EPOCHS

    def epoch_checkpoint(self, epoch: int) -> Path:
        """EXP/epochs/epoch-NNN.pt: the weights after `epoch` (from 1)."""
        return self.epochs / f"epoch-{epoch:03d}.pt"

    def kept_epochs(self) -> list[Path]:
        """The epoch checkpoints on disk, oldest first (none when the folder does not exist)."""
        return sorted(self.epochs.glob("epoch-*.pt"))

    @property
    def averaged(self) -> Path:
        return self.root / AVERAGED

    @property
    def averaged_scores(self) -> Path:
        return self.root / AVERAGED_SCORES

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def steps(self) -> Path:
        return self.root / STEPS

    @property
    def probe(self) -> Path:
        return self.root / PROBE

    @property
    def plots(self) -> Path:
        return self.root / PLOTS

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def lock(self) -> Path:
        return self.root / LOCK


def last_metrics(exp_dir: str | Path) -> dict[str, str] | None:
    """The last epoch's row of EXP/metrics.csv, or None before the first epoch."""
    path = ExpDir(exp_dir).metrics
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else None
