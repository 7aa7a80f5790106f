"""Figures: training curves, gradients through time, `asr inspect`, the long-dependency task.

matplotlib's object interface with the Agg canvas (no pyplot, no global backend switch), imported
only when a figure is drawn; every file is written atomically. The numbers come from
`asr.inspect`, `asr.lab` and the CSV files that training writes.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from asr.expdir import ExpDir
from asr.fileio import atomic_open

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from asr.callbacks import EpochResult, StepResult
    from asr.inspect import Inspection

DPI = 100


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A figure on the Agg canvas. The training plots pass layout=None and place their axes
    themselves: the constrained layout engine costs more than the drawing."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def _save(fig: Figure, path: Path) -> Path:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], key: str) -> np.ndarray:
    """A numeric column; empty or missing cells are NaN."""
    return np.array([float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows])


def _positive(a: np.ndarray) -> np.ndarray:
    """Zeros and negatives as NaN, for a log axis."""
    return np.where(a > 0, a, np.nan)


# ------------------------------------------------------------------------------- training


def plot_epochs(metrics_csv: Path, out: Path) -> Path | None:
    """Loss (train and dev) and dev WER/CER per epoch, from metrics.csv."""
    rows = _read_csv(metrics_csv)
    if not rows:
        return None
    epochs = _column(rows, "epoch")
    fig = _figure(10, 3.6, layout=None)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.9, wspace=0.2)
    loss_ax, wer_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, _column(rows, "train_loss"), "o-", label="train (with dropout, SpecAugment)")
    dev_loss = _column(rows, "dev_loss")
    if np.isfinite(dev_loss).any():
        loss_ax.plot(epochs, dev_loss, "o-", label="dev")
    loss_ax.set(xlabel="epoch", ylabel="CTC loss per utterance", title="loss")
    loss_ax.legend()
    for key, label in (("dev_wer", "WER"), ("dev_cer", "CER")):
        values = _column(rows, key)
        if np.isfinite(values).any():
            wer_ax.plot(epochs, values, "o-", label=f"dev {label}")
    wer_ax.set(xlabel="epoch", ylabel="%", title="dev error rates (greedy)")
    if wer_ax.lines:
        wer_ax.legend()
    else:
        wer_ax.text(0.5, 0.5, "no dev set", ha="center", va="center", transform=wer_ax.transAxes)
    return _save(fig, out)


def plot_grad_norms(steps_csv: Path, out: Path) -> Path | None:
    """The global gradient norm at every update, before and after clipping, from steps.csv."""
    rows = _read_csv(steps_csv)
    if not rows:
        return None
    steps = _column(rows, "step")
    fig = _figure(10, 3.4, layout=None)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9)
    ax = fig.subplots()
    ax.plot(steps, _positive(_column(rows, "grad_norm")), lw=0.8, label="before clipping")
    if "grad_norm_clipped" in rows[0]:
        ax.plot(steps, _positive(_column(rows, "grad_norm_clipped")), lw=0.8, label="after clipping")
    ax.set_yscale("log")
    ax.set(xlabel="update", ylabel="global gradient norm", title="gradient norm per update")
    ax.legend()
    return _save(fig, out)


def plot_probe(probe: dict[str, np.ndarray], out: Path, title: str = "") -> Path | None:
    """`probe_figure` written to `out`; None (nothing written) before the first probe."""
    fig = probe_figure(probe, title)
    return _save(fig, out) if fig is not None else None


def probe_figure(probe: dict[str, np.ndarray], title: str = "") -> Figure | None:
    """||d loss / d h_t|| against the output time step t for the probe batch (the arrays of
    `asr.inspect.load_probe`): every layer at the latest probe, and the first probe against the
    latest. None before the first probe."""
    norms, steps, layers = probe["norms"], probe["steps"], [str(x) for x in probe["layers"]]
    if len(steps) == 0:
        return None
    shortest = int(probe["lengths"].min())
    t = np.arange(norms.shape[2])
    fig = _figure(12, 3.8, layout=None)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.13, top=0.85, wspace=0.06)
    latest_ax, compare_ax = fig.subplots(1, 2, sharey=True)
    colors = [f"C{i % 10}" for i in range(len(layers))]
    for i, name in enumerate(layers):
        latest_ax.plot(t, _positive(norms[-1, i]), color=colors[i], label=name)
        compare_ax.plot(t, _positive(norms[0, i]), color=colors[i], ls="--", lw=1, label=f"{name}, update {steps[0]}")
        compare_ax.plot(t, _positive(norms[-1, i]), color=colors[i], label=f"{name}, update {steps[-1]}")
    for ax in (latest_ax, compare_ax):
        ax.set_yscale("log")
        ax.axvline(shortest - 1, color="gray", lw=0.8, ls=":")
        ax.set_xlabel("output time step t (shortest utterance ends at the dotted line)")
        ax.legend(fontsize=7)
    latest_ax.set(ylabel="||d loss / d h_t|| over the probe batch", title=f"after update {steps[-1]}")
    compare_ax.set(title=f"update {steps[0]} (dashed) and {steps[-1]} (solid)")
    if title:
        fig.suptitle(title)
    return fig


def figure_pixels(fig: Figure) -> np.ndarray:
    """The figure drawn on the Agg canvas at `DPI`: (height, width, 3) uint8 RGB."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(DPI)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def training_plots(exp: str | Path) -> list[Path]:
    """Write EXP/plots/{epochs,grad_norm,probe}.png from what training has written so far."""
    from asr.inspect import load_probe

    exp = ExpDir(exp)
    out = exp.plots
    written = [plot_epochs(exp.metrics, out / "epochs.png"), plot_grad_norms(exp.steps, out / "grad_norm.png")]
    if exp.probe.exists():
        written.append(plot_probe(load_probe(exp.probe), out / "probe.png", title=f"gradients through time: {exp.root.name}"))
    return [p for p in written if p is not None]


class TrainingPlots:
    """Training's plots, redrawn at the end of an epoch when that stays cheap: not before the time
    since the last drawing (or since training started) is 20 times what a drawing takes (`cost`
    until the first is measured), so plotting takes at most about 5% of the run; `finish`
    draws what was skipped. A failure is a warning, never an error: plots must not stop training.

    A training callback (`asr.callbacks.Callback`): redrawn at each epoch's end, and on the last."""

    def __init__(self, exp: Path, share: float = 0.05, cost: float = 1.0):
        """`share`: the most of the run's time that drawing may take; `cost`: seconds a drawing
        is taken to cost until one has been measured."""
        self.exp, self.share = exp, share
        self.cost = cost
        self.last = time.monotonic()
        self.pending = False
        self.failed = False

    def on_step(self, step: StepResult) -> None:
        pass

    def on_epoch_end(self, epoch: EpochResult) -> None:
        self.update(final=epoch.final)

    def on_train_end(self) -> None:
        self.finish()

    def update(self, final: bool = False) -> None:
        self.pending = True
        if final or time.monotonic() - self.last >= self.cost / self.share:
            self._draw()

    def finish(self) -> None:
        if self.pending:
            self._draw()

    def _draw(self) -> None:
        if self.failed:
            return
        start = time.monotonic()
        try:
            training_plots(self.exp)
        except Exception as e:  # noqa: BLE001 - a plot never stops training
            self.failed = True
            print(f"warning: plots in {ExpDir(self.exp).plots} not written ({type(e).__name__}: {e}); training goes on", file=sys.stderr)
        self.last = time.monotonic()
        self.cost = self.last - start
        self.pending = False


# ------------------------------------------------------------------------------ inspection


def plot_inspection(insp: Inspection, out: str | Path, units: int = 16, title: str = "") -> Path:
    """One figure for one utterance: log-mel spectrogram, CTC posteriorgram with the greedy tokens,
    and per layer either the LSTM gates and cell state (mean over units as lines, a subset of
    units as heatmaps) or, for other kinds, a heatmap of the layer's output."""
    hop = insp.frame_seconds
    out_hop = hop * insp.stack
    n_out = insp.log_probs.shape[0]
    seconds = max(insp.features.shape[0] * hop, n_out * out_hop)
    heights = [2.0, 3.4] + ([1.6, 2.2, 1.4] if insp.gates else [1.6]) * len(insp.layer_names)
    fig = _figure(12, sum(heights) + 0.6)
    axes = list(fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights}))
    axes[0].set_xlim(0, seconds)
    axes[-1].set_xlabel("time (s)")
    extent_out = (0, n_out * out_hop)

    ax = axes.pop(0)
    feats = insp.features
    image = ax.imshow(feats.T, origin="lower", aspect="auto", cmap="magma", extent=(0, feats.shape[0] * hop, 0, feats.shape[1]), interpolation="nearest")
    fig.colorbar(image, ax=ax, pad=0.01, label="log energy")
    ax.set(ylabel="mel bin", title="log-mel spectrogram (input features)")

    ax = axes.pop(0)
    vocab = insp.log_probs.shape[1]
    image = ax.imshow(np.exp(insp.log_probs).T, origin="lower", aspect="auto", cmap="Greys", vmin=0, vmax=1, extent=(*extent_out, -0.5, vocab - 0.5), interpolation="nearest")
    fig.colorbar(image, ax=ax, pad=0.01, label="posterior")
    labels = ["<b>" if i == 0 else ("␣" if tok == "|" else tok) for i, tok in enumerate(insp.tokens)]
    ax.set_yticks(range(vocab), labels, fontsize=6)
    for t, k in insp.emissions:
        x = (t + 0.5) * out_hop
        ax.plot(x, k, "o", mfc="none", mec="tab:red", ms=6)
        ax.annotate(labels[k], (x, vocab - 0.5), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7, color="tab:red", annotation_clip=False)
    ax.set_ylabel("token")
    ax.set_title(f"CTC posteriors; greedy: \u201c{insp.text}\u201d (red)", pad=14)

    for i, name in enumerate(insp.layer_names):
        if insp.gates:
            _plot_gates(fig, axes.pop(0), axes.pop(0), axes.pop(0), insp.gates[i], name, out_hop, units)
        else:
            h = insp.layer_outputs[i][:, :units].T
            ax = axes.pop(0)
            lim = max(float(np.abs(h).max()), 1e-6)
            image = ax.imshow(h, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, extent=(*extent_out, -0.5, h.shape[0] - 0.5), interpolation="nearest")
            fig.colorbar(image, ax=ax, pad=0.01, label="h")
            ax.set(ylabel="unit", title=f"{name}: output h_t, first {h.shape[0]} units")
    fig.suptitle(title or f"inside the {insp.kind} model")
    return _save(fig, Path(out))


def _plot_gates(fig: Figure, lines: Axes, gates_ax: Axes, cell_ax: Axes, g: Any, name: str, out_hop: float, units: int) -> None:
    """One LSTM layer: gate means and the mean |cell|; gates of `units // 2` units stacked; cell of `units` units."""
    t = (np.arange(g.input_gate.shape[0]) + 0.5) * out_hop
    for values, label, color in ((g.input_gate, "input i", "C0"), (g.forget_gate, "forget f", "C1"), (g.output_gate, "output o", "C2")):
        lines.plot(t, values.mean(1), color=color, label=label)
    lines.set(ylim=(0, 1), ylabel="gate mean")
    twin = lines.twinx()
    twin.plot(t, np.abs(g.cell).mean(1), color="C3", ls="--", label="mean |c|")
    twin.set_ylabel("mean |c|", color="C3")
    handles = lines.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    lines.legend(handles, [h.get_label() for h in handles], fontsize=7, ncol=4, loc="upper right")
    lines.set_title(f"{name}, forward direction: gates and cell state, mean over units")

    k = max(1, units // 2)
    stacked = np.concatenate([g.input_gate[:, :k], g.forget_gate[:, :k], g.output_gate[:, :k]], axis=1).T
    extent = (0, g.input_gate.shape[0] * out_hop)
    n = stacked.shape[0] // 3
    image = gates_ax.imshow(stacked, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1, extent=(*extent, -0.5, stacked.shape[0] - 0.5), interpolation="nearest")
    fig.colorbar(image, ax=gates_ax, pad=0.01, label="gate")
    for b in (1, 2):
        gates_ax.axhline(b * n - 0.5, color="white", lw=1)
    gates_ax.set_yticks([n / 2 - 0.5, 1.5 * n - 0.5, 2.5 * n - 0.5], ["i", "f", "o"])
    gates_ax.set_title(f"gates i, f, o of units 1-{n}", fontsize=9)

    c = g.cell[:, :units].T
    lim = max(float(np.abs(c).max()), 1e-6)
    image = cell_ax.imshow(c, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, extent=(*extent, -0.5, c.shape[0] - 0.5), interpolation="nearest")
    fig.colorbar(image, ax=cell_ax, pad=0.01, label="c")
    cell_ax.set(ylabel="unit")
    cell_ax.set_title(f"cell state c of units 1-{c.shape[0]}", fontsize=9)


# ------------------------------------------------------------------------ long dependency


def plot_gradients_vs_time(curves: dict[str, dict[str, np.ndarray]], out: str | Path, title: str) -> Path:
    """One panel per model: ||d loss / d h_t|| against t (log scale), one line per stage
    (e.g. "at initialisation", "after training"), each divided by its value at the last step."""
    fig = _figure(5 * len(curves), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(curves), sharey=True))
    for ax, (model, stages) in zip(axes, curves.items(), strict=True):
        for label, norms in stages.items():
            ax.plot(np.arange(len(norms)), _positive(norms / norms[-1]), label=label)
        ax.set_yscale("log")
        ax.set(title=model, xlabel="time step t (cue at t = 0, answer at the last)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("||dL/dh_t|| / ||dL/dh_last||")
    fig.suptitle(title)
    return _save(fig, Path(out))
