"""`asr lab ...` and `asr inspect`: argument parsing only; the work is in asr.lab, asr.inspect, asr.plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

lab_app = typer.Typer(help="The RNN laboratory: a long-dependency task (RNN against LSTM) and model families on AN4.", no_args_is_help=True)


def inspect_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint (.pt).")],
    audio: Annotated[Path, typer.Argument(help="One audio file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The figure to write (.png).")],
    units: Annotated[int, typer.Option(help="Units shown in the heatmaps.")] = 16,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
) -> None:
    """Draw what the model does with one utterance: spectrogram, CTC posteriors with the greedy
    tokens, and per layer the LSTM gates and cell state (other kinds: the layer outputs)."""
    from asr.inspect import inspect_audio
    from asr.plots import plot_inspection

    if units < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--units")
    insp = inspect_audio(model, audio, device)
    plot_inspection(insp, out, units=units, title=f"{audio.name} through {model} ({insp.kind})")
    typer.echo(f"{audio}: \u201c{insp.text}\u201d -> {out}")


@lab_app.command("long-dependency")
def long_dependency_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for results.md, results.json and gradient_vs_time.png.")],
    steps: Annotated[int, typer.Option(help="Updates per model and delay.")] = 1000,
    delay: Annotated[list[int] | None, typer.Option(help="Frames between the cue and the answer (repeatable). \\[default: 5, 20, 50]")] = None,
    hidden: Annotated[int, typer.Option(help="Units of the one recurrent layer (the same for every model).")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 3e-3,
    forget_bias: Annotated[float, typer.Option(help="Initial LSTM forget-gate bias (PyTorch's init is about 0).")] = 5.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Remember a cue across D noise frames: a plain tanh RNN against an LSTM, accuracy per delay and
    the gradient that reaches each time step."""
    from asr.lab import DEFAULT_DELAYS, long_dependency

    delays = tuple(delay or DEFAULT_DELAYS)
    if steps < 1 or min(delays) < 0:
        raise typer.BadParameter("steps must be at least 1 and delays not negative")
    long_dependency(out, steps=steps, delays=delays, hidden=hidden, lr=lr, forget_bias=forget_bias, seed=seed)
    typer.echo((out / "results.md").read_text(encoding="utf-8"), nl=False)
    typer.echo(f"plot: {out / 'gradient_vs_time.png'}")


@lab_app.command("compare")
def compare_cmd(
    data: Annotated[Path, typer.Option(help="The AN4 corpus on disk.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment folder: data/, one folder per kind, RESULTS.md.")],
    minutes_per_model: Annotated[float, typer.Option(help="Training time per model (stops at the first epoch boundary past it).")] = 10.0,
    kinds: Annotated[list[str] | None, typer.Option(help="Model kinds, repeatable or comma-separated. \\[default: every one-direction kind, then blstm (asr.lab.compare_kinds)]")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a config value of the an4 recipe: section.key=value.")] = None,
    probe_every: Annotated[int, typer.Option(help="Gradient probe every N updates (train.probe_every).")] = 50,
) -> None:
    """Train every model kind on AN4 at a similar parameter budget and time, decode dev and test
    greedily, and write a Markdown table (re-running resumes)."""
    from asr.lab import compare

    chosen = [k.strip() for value in kinds or [] for k in value.split(",") if k.strip()] or None
    table = compare(data, out, minutes_per_model=minutes_per_model, kinds=chosen, overrides=overrides, probe_every=probe_every)
    typer.echo(table.read_text(encoding="utf-8"), nl=False)
