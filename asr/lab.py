"""The RNN laboratory: a synthetic long-dependency task (plain RNN against LSTM) and a comparison
of the model families on AN4 at a similar parameter budget.

    long_dependency("lab/long")          # a few minutes at most on 2 CPU cores
    compare("../shared/data/an4", "lab/an4", minutes_per_model=10)
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from asr.config import Config, ConfigError, ModelConfig, parse_override, set_value
from asr.encoders import encoder_class, encoder_names
from asr.fileio import atomic_write_text
from asr.inspect import first_last_ratio, gradient_norms_through_time, load_probe
from asr.model import CTCModel, count_parameters

# ---------------------------------------------------------------------- long-dependency task

DEFAULT_DELAYS = (10, 30, 60)


def cue_batch(n: int, delay: int, classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences of `delay + 2` frames and `2 * classes + 1` channels: the cue, a one-hot of class
    y on the first `classes` channels at t = 0; Gaussian noise on the next `classes` channels for
    the `delay` frames after it; the last channel set at the final frame, where y is due.
    Returns (x, y)."""
    frames = delay + 2
    y = torch.randint(0, classes, (n,), generator=generator)
    x = torch.zeros(n, frames, 2 * classes + 1)
    x[torch.arange(n), 0, y] = 1.0
    x[:, 1 : delay + 1, classes : 2 * classes] = torch.randn(n, delay, classes, generator=generator)
    x[:, -1, -1] = 1.0
    return x, y


def _last_frame_loss(y: torch.Tensor):
    """Cross-entropy of the model's distribution at the final frame (the answer) against y."""
    return lambda log_probs, lengths: F.nll_loss(log_probs[:, -1], y)


def set_forget_bias(model: CTCModel, value: float) -> None:
    """Start every LSTM forget gate of the encoder at sigmoid(value) (b_ih = value, b_hh = 0 for
    the f chunk); an encoder without `nn.LSTM` layers is left as it is."""
    layers = [m for m in model.encoder.recurrent_layers() if isinstance(m, nn.LSTM)]
    with torch.no_grad():
        for lstm in layers:
            h = lstm.hidden_size
            lstm.bias_ih_l0[h : 2 * h] = value
            lstm.bias_hh_l0[h : 2 * h] = 0.0


@dataclass
class DependencyRun:
    kind: str
    delay: int
    accuracy: float  # percent, on held-out sequences
    ratio_init: float  # ||dL/dh_0|| / ||dL/dh_last|| at initialisation
    ratio_trained: float  # ... after training
    seconds: float
    norms_init: np.ndarray  # (T,) ||dL/dh_t|| at initialisation
    norms_trained: np.ndarray  # (T,) after training


def train_dependency(
    kind: str,
    delay: int,
    steps: int,
    hidden: int = 32,
    classes: int = 4,
    batch: int = 32,
    lr: float = 3e-3,
    forget_bias: float = 5.0,
    seed: int = 0,
) -> DependencyRun:
    """Train a one-layer `kind` model (rnn or lstm; any CTCModel kind works) on the cue task:
    Adam, gradient norm clipped at 1, fresh sequences every update; accuracy on 512 held-out
    ones. LSTM forget gates start at sigmoid(forget_bias) (PyTorch's own init: about 0.5)."""
    torch.manual_seed(seed)
    model = CTCModel(2 * classes + 1, classes, ModelConfig(kind=kind, stack=1, hidden=hidden, layers=1, dropout=0.0))
    set_forget_bias(model, forget_bias)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    data = torch.Generator().manual_seed(seed + 1)
    test_x, test_y = cue_batch(512, delay, classes, torch.Generator().manual_seed(seed + 2))
    lengths = torch.full((512,), delay + 2)
    norms_init = gradient_norms_through_time(model, test_x, lengths, _last_frame_loss(test_y))[0]
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        x, y = cue_batch(batch, delay, classes, data)
        log_probs, _ = model(x, torch.full((batch,), delay + 2))
        loss = F.nll_loss(log_probs[:, -1], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        accuracy = float((model(test_x, lengths)[0][:, -1].argmax(-1) == test_y).float().mean()) * 100
    norms_trained = gradient_norms_through_time(model, test_x, lengths, _last_frame_loss(test_y))[0]
    return DependencyRun(kind, delay, accuracy, _ratio(norms_init), _ratio(norms_trained), seconds, norms_init, norms_trained)


def _ratio(norms: np.ndarray) -> float:
    return float(norms[0] / norms[-1]) if norms[-1] > 0 else float("inf")


def long_dependency(
    out: str | Path,
    steps: int = 1000,
    delays: tuple[int, ...] | list[int] = DEFAULT_DELAYS,
    kinds: tuple[str, ...] = ("rnn", "lstm"),
    hidden: int = 32,
    classes: int = 4,
    lr: float = 3e-3,
    forget_bias: float = 5.0,
    seed: int = 0,
    log=None,
) -> list[DependencyRun]:
    """Train each kind at each delay; write OUT/results.md (accuracy per model and delay, gradient
    ratios), OUT/results.json and OUT/gradient_vs_time.png (the longest delay, every kind, at
    initialisation and after training)."""
    from asr.plots import plot_gradients_vs_time

    log = log or _log
    out = Path(out)
    runs = []
    for delay in delays:
        for kind in kinds:
            run = train_dependency(kind, delay, steps, hidden=hidden, classes=classes, lr=lr, forget_bias=forget_bias, seed=seed)
            log(f"{kind:>5} delay {delay:4d}: accuracy {run.accuracy:5.1f}% (chance {100 / classes:.0f}%), "
                f"||dL/dh_0|| / ||dL/dh_last|| {run.ratio_init:.2e} at init, {run.ratio_trained:.2e} trained ({run.seconds:.1f} s)")
            runs.append(run)
    longest = max(delays)
    curves = {
        f"{r.kind} (hidden {hidden})": {"at initialisation": r.norms_init, f"after {steps} updates": r.norms_trained}
        for r in runs
        if r.delay == longest
    }
    plot_gradients_vs_time(curves, out / "gradient_vs_time.png", f"gradient reaching each time step, cue {longest} frames before the answer")
    atomic_write_text(out / "results.md", _dependency_table(runs, steps, hidden, classes, lr, forget_bias, seed))
    rows = [{k: v for k, v in vars(r).items() if not k.startswith("norms")} for r in runs]
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2) + "\n")
    return runs


def _dependency_table(runs: list[DependencyRun], steps: int, hidden: int, classes: int, lr: float, forget_bias: float, seed: int) -> str:
    lines = [
        "# Long-dependency task",
        "",
        f"A one-hot cue (one of {classes} classes) at t = 0, Gaussian noise on other channels for `delay` frames, the cue's class due "
        f"at the last frame. One layer, {hidden} units, unidirectional; LSTM forget-gate bias initialised to {forget_bias:g}; "
        f"Adam (lr {lr:g}), {steps} updates of 32 sequences, gradient norm clipped at 1; accuracy on 512 held-out sequences "
        f"(chance {100 / classes:.0f}%); seed {seed}.",
        "",
        "| model | delay | accuracy % | ‖∂L/∂h_0‖ / ‖∂L/∂h_last‖ at init | after training | training s |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(f"| {r.kind} | {r.delay} | {r.accuracy:.1f} | {r.ratio_init:.2e} | {r.ratio_trained:.2e} | {r.seconds:.1f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- AN4 comparison


def parameter_count(cfg: ModelConfig, input_dim: int, vocab: int) -> int:
    """Parameters of a CTCModel, counted without allocating its weights."""
    with torch.device("meta"):
        return count_parameters(CTCModel(input_dim, vocab, cfg))


def matching_hidden(cfg: ModelConfig, input_dim: int, vocab: int, target: int) -> int:
    """The hidden size that brings `cfg`'s kind closest to `target` parameters (layers, stack
    and context as in cfg)."""
    def count(h: int) -> int:
        return parameter_count(replace(cfg, hidden=h), input_dim, vocab)

    lo, hi = 1, 1
    while count(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # the count grows with the hidden size
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda h: abs(count(h) - target))


@dataclass
class CompareRow:
    kind: str
    hidden: int
    parameters: int
    relative: float  # parameters / the reference kind's (blstm's)
    epochs: int
    train_seconds: float
    dev_wer: float
    test_wer: float
    grad_ratio: float  # ||dL/dh_first|| / ||dL/dh_last||, layer 1, latest probe


REFERENCE_KIND = ModelConfig().kind  # the default kind: the others get hidden sizes that match its parameter count


def compare_kinds() -> tuple[str, ...]:
    """The kinds `compare` trains by default: every registered kind that runs one direction, the
    last registered first (mlp, rnn, gru, lstm for the built-in ones: one of each family), then
    the reference kind (blstm). The other two-direction kinds (bgru, brnn) on request."""
    one_way = [k for k in reversed(encoder_names()) if not encoder_class(k).bidirectional and k != REFERENCE_KIND]
    return (*one_way, REFERENCE_KIND)


def compare(
    data: str | Path,
    out: str | Path,
    minutes_per_model: float = 10.0,
    kinds: list[str] | tuple[str, ...] | None = None,
    overrides: list[str] | None = None,
    recipe: str = "an4",
    probe_every: int = 50,
    log=None,
) -> Path:
    """Prepare the recipe's corpus from `data`, train every kind (default: `compare_kinds()`) for
    `minutes_per_model` (stopped at the first epoch boundary past it; re-running resumes) with
    hidden sizes that match the reference kind's (blstm's) parameter count, decode dev and test
    greedily and write OUT/RESULTS.md. ConfigError for a kind that is not registered."""
    from asr.corpora import prepare
    from asr.features import FeatureExtractor
    from asr.manifest import read_manifest
    from asr.recipe import load_recipe
    from asr.text import Tokenizer
    from asr.train import last_metrics, train

    log = log or _log
    kinds = compare_kinds() if kinds is None else kinds
    known = encoder_names()
    unknown = [k for k in kinds if k not in known]
    if unknown or not kinds:
        raise ConfigError(f"--kinds: unknown kind(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    out = Path(out)
    rec = load_recipe(recipe)
    base = rec.config
    base.train.max_minutes = minutes_per_model
    base.train.probe_every = probe_every
    # The comparison keeps the settings it was measured with (docs/rnn.md), not the recipe's later
    # accuracy tuning: one speed, dropout 0.2, and a learning-rate schedule laid out for 50 epochs.
    base.augment.speeds, base.train.epochs, base.train.average_last = [1.0], 50, 0
    base.model.dropout = 0.2
    for text in overrides or []:
        key, value = parse_override(text)
        set_value(base, key, value, where="--set")
    data_dir = out / "data"
    sets = {"train": rec.train_set, "dev": rec.dev_set, "test": rec.test_sets[0]}
    if not all((data_dir / f"{s}.jsonl").exists() for s in sets.values()):
        log(f"preparing {rec.corpus}: {prepare(rec.corpus, data, data_dir).summary()}")
    base.data.train, base.data.dev = str(data_dir / f"{sets['train']}.jsonl"), str(data_dir / f"{sets['dev']}.jsonl")

    input_dim = FeatureExtractor(base.features).dim
    vocab = len(Tokenizer.from_texts(u.text for u in read_manifest(base.data.train)))
    reference = parameter_count(replace(base.model, kind=REFERENCE_KIND), input_dim, vocab)
    rows = []
    for kind in kinds:
        cfg = copy.deepcopy(base)
        cfg.model.kind = kind
        if kind != REFERENCE_KIND:
            cfg.model.hidden = matching_hidden(cfg.model, input_dim, vocab, reference)
        n = parameter_count(cfg.model, input_dim, vocab)
        log(f"{kind}: hidden {cfg.model.hidden}, {n / 1e6:.2f} M parameters ({n / reference:.0%} of {REFERENCE_KIND}'s); training for {minutes_per_model:g} min")
        exp = out / kind
        best = train(cfg, exp)
        dev_wer, test_wer = (_greedy_wer(best, data_dir / f"{sets[s]}.jsonl", exp / "decode" / s) for s in ("dev", "test"))
        last = last_metrics(exp) or {"epoch": 0, "elapsed_seconds": 0.0}
        epochs, seconds = int(last["epoch"]), float(last["elapsed_seconds"])
        ratio = first_last_ratio(load_probe(exp / "probe.npz")) if (exp / "probe.npz").exists() else float("nan")
        rows.append(CompareRow(kind, cfg.model.hidden, n, n / reference, epochs, seconds, dev_wer, test_wer, ratio))
        log(f"{kind}: {epochs} epochs in {seconds / 60:.1f} min; dev WER {dev_wer:.2f}%, test WER {test_wer:.2f}%")
    table = _compare_table(rows, base, minutes_per_model, recipe)
    atomic_write_text(out / "RESULTS.md", table)
    atomic_write_text(out / "results.json", json.dumps([vars(r) for r in rows], indent=2) + "\n")
    return out / "RESULTS.md"


def _greedy_wer(model: Path, manifest: Path, out_dir: Path) -> float:
    from asr.decode import decode_manifest
    from asr.scoring import score_files

    hyp = out_dir / "hyp.jsonl"
    decode_manifest(model, manifest, hyp)
    result = score_files(manifest, hyp)
    atomic_write_text(out_dir / "score.json", json.dumps(result.to_json(), indent=2) + "\n")
    return result.wer


def _compare_table(rows: list[CompareRow], base: Config, minutes: float, recipe: str) -> str:
    m = base.model
    lines = [
        f"# Model families on {recipe}",
        "",
        f"Each kind trained for {minutes:g} min (stopped at the first epoch boundary past it), {m.layers} layers, stack {m.stack}, "
        f"dropout {m.dropout}, mlp context ±{m.context} stacked frames; hidden sizes chosen to match the {REFERENCE_KIND}'s parameter count. "
        "Greedy decoding of best.pt (lowest dev WER). Gradient ratio: ‖∂L/∂h_first‖ / ‖∂L/∂h_last‖ of layer 1 on the probe batch "
        f"at the last probe (train.probe_every = {base.train.probe_every}).",
        "",
        f"| kind | hidden | parameters | vs {REFERENCE_KIND} | epochs | training time | dev WER % | test WER % | gradient ratio first/last |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.kind} | {r.hidden} | {r.parameters / 1e6:.2f} M | {r.relative:.0%} | {r.epochs} | {r.train_seconds / 60:.1f} min | "
            f"{r.dev_wer:.2f} | {r.test_wer:.2f} | {r.grad_ratio:.2e} |"
        )
    return "\n".join(lines) + "\n"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
