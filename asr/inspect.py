"""Looking inside a model: gradients through time (the probe) and LSTM gates over one utterance.

The drawing is in `asr.plots`; everything here returns arrays, so it can be tested and reused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from asr.fileio import atomic_open
from asr.model import CTCModel, ctc_loss

# ------------------------------------------------------------------------ unrolled recurrence


@dataclass
class Unrolled:
    """A recurrent layer run one step at a time: `states[t]` is h_t (B, H), a node of the autograd
    graph that h_{t+1} and the layer's output are computed from; `gates` (LSTM, when asked for)
    holds i, f, o and c per step."""

    output: torch.Tensor  # (B, T, H): the states stacked
    states: list[torch.Tensor]
    gates: dict[str, list[torch.Tensor]] | None = None


def unroll(layer: nn.RNNBase, x: torch.Tensor, keep_gates: bool = False) -> Unrolled:
    """Run a one-layer, one-direction `nn.LSTM`, `nn.GRU` or `nn.RNN` (tanh) over x (B, T, I) from
    zero state with its own weights, step by step, in PyTorch's gate order: LSTM i, f, g, o; GRU
    r, z, n. The fused kernels return h_t as outputs only, so a gradient taken with respect to
    their output at t misses every path through h_{t+1}; here each h_t is a node of the graph and
    `torch.autograd.grad(loss, states)` is the whole d loss / d h_t of backpropagation through time."""
    if layer.num_layers != 1 or layer.bidirectional or getattr(layer, "proj_size", 0) or not layer.batch_first:
        raise ValueError("unroll takes a one-layer, one-direction, batch-first recurrent layer without projection")
    mode = layer.mode  # "LSTM", "GRU", "RNN_TANH", "RNN_RELU"
    w_hh = layer.weight_hh_l0
    b_hh = layer.bias_hh_l0 if layer.bias else None
    x_part = torch.nn.functional.linear(x, layer.weight_ih_l0, layer.bias_ih_l0 if layer.bias else None)  # all steps at once
    batch, frames = x.shape[:2]
    h = x.new_zeros(batch, layer.hidden_size)
    c = torch.zeros_like(h)
    states: list[torch.Tensor] = []
    gates: dict[str, list[torch.Tensor]] | None = {"i": [], "f": [], "o": [], "c": []} if keep_gates and mode == "LSTM" else None
    for t in range(frames):
        h_part = torch.nn.functional.linear(h, w_hh, b_hh)
        if mode == "LSTM":
            i, f, g, o = (x_part[:, t] + h_part).chunk(4, dim=-1)
            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
            c = f * c + i * g
            h = o * c.tanh()
            if gates is not None:
                for k, v in zip("ifoc", (i, f, o, c), strict=True):
                    gates[k].append(v)
        elif mode == "GRU":
            xr, xz, xn = x_part[:, t].chunk(3, dim=-1)
            hr, hz, hn = h_part.chunk(3, dim=-1)
            r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
            h = (1 - z) * (xn + r * hn).tanh() + z * h
        elif mode == "RNN_TANH":
            h = (x_part[:, t] + h_part).tanh()
        else:
            h = (x_part[:, t] + h_part).relu()
        states.append(h)
    output = torch.stack(states, dim=1) if states else x.new_zeros(batch, 0, layer.hidden_size)
    return Unrolled(output, states, gates)


# ------------------------------------------------------------------------ gradients through time

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (log_probs, out_lengths) -> scalar loss


def gradient_norms_through_time(model: CTCModel, x: torch.Tensor, lengths: torch.Tensor, loss_fn: LossFn) -> np.ndarray:
    """||d loss / d h_t|| for every layer and output time step t: (layers, T') float32.

    h_t is a layer's output at step t: for a recurrent layer its hidden state, the gradient
    taking in every path through the later steps (backpropagation through time; see `unroll`),
    both directions together for a bidirectional layer (the norm of the concatenation); for an
    MLP layer its activations. The norm is over the batch and the units. The model runs in eval
    mode (no dropout), with the recurrence unrolled on the same weights, and gradients are taken
    with respect to the states only: parameters and their `.grad` stay as they are."""
    from asr.model import mask_padding, reverse_padded

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            if model.cell == "mlp":
                outputs: list[torch.Tensor] = []
                log_probs, out_lengths = model(x, lengths, layer_outputs=outputs)
                grads = torch.autograd.grad(loss_fn(log_probs, out_lengths), outputs)
                return torch.stack([g.float().pow(2).sum(dim=(0, 2)).sqrt() for g in grads]).cpu().numpy()
            h, out_lengths = model.stack_frames(x, lengths)
            runs: list[tuple[Unrolled, Unrolled | None]] = []
            for i, forward in enumerate(model.forward_layers):
                fwd = unroll(forward, h)
                bwd = unroll(model.backward_layers[i], reverse_padded(h, out_lengths)) if model.backward_layers is not None else None
                h = fwd.output if bwd is None else torch.cat([fwd.output, reverse_padded(bwd.output, out_lengths)], dim=-1)
                runs.append((fwd, bwd))
            log_probs = model.output(h).log_softmax(-1)
            loss = loss_fn(log_probs, out_lengths)
            nodes = [s for fwd, bwd in runs for s in fwd.states + (bwd.states if bwd else [])]
            grads = iter(torch.autograd.grad(loss, nodes, allow_unused=True))
    finally:
        model.train(was_training)
    norms = []
    for fwd, bwd in runs:
        squares = _stacked(grads, fwd.states).pow(2).sum(-1)  # (B, T')
        if bwd is not None:
            back = _stacked(grads, bwd.states)  # in each utterance's reversed time
            squares = squares + reverse_padded(back, out_lengths).pow(2).sum(-1)
        norms.append(mask_padding(squares[:, :, None], out_lengths)[:, :, 0].sum(0).sqrt())
    return torch.stack(norms).float().cpu().numpy()


def _stacked(grads: Iterator[torch.Tensor | None], states: list[torch.Tensor]) -> torch.Tensor:
    """The next len(states) gradients as (B, T, H); an unused state's is zero."""
    taken = [next(grads) for _ in states]
    return torch.stack([g if g is not None else torch.zeros_like(s) for g, s in zip(taken, states, strict=True)], dim=1)


def ctc_probe_loss(targets: torch.Tensor, target_lengths: torch.Tensor) -> LossFn:
    """The training loss (CTC, mean over utterances) as a probe loss."""
    return lambda log_probs, out_lengths: ctc_loss(log_probs, out_lengths, targets.to(log_probs.device), target_lengths.to(log_probs.device))


@dataclass
class Probe:
    """Per-time-step gradient norms of a fixed batch, step after step; saved as `probe.npz`:

    - `steps` (N,) int64: the update after which each probe was taken (0: before training);
    - `norms` (N, layers, T') float32: ||d loss / d h_t|| per probe, layer and output time step;
    - `layers` (layers,) str: layer labels; `lengths` (B,) int64: the batch's output lengths;
      `ids` (B,) str: its utterances.

    Probes are appended in memory (the buffer doubles when full) and the file is rewritten
    atomically after each, so a reader never sees half a file."""

    path: Path
    layers: list[str]
    lengths: np.ndarray
    ids: list[str]
    steps: list[int] = field(default_factory=list)
    _buffer: np.ndarray | None = None

    @property
    def norms(self) -> np.ndarray:
        return self._buffer[: len(self.steps)] if self._buffer is not None else np.zeros((0, len(self.layers), 0), np.float32)

    def append(self, step: int, norms: np.ndarray) -> None:
        n = len(self.steps)
        if self._buffer is None or n == len(self._buffer):
            grown = np.zeros((max(8, 2 * n), *norms.shape), np.float32)
            if self._buffer is not None:
                grown[:n] = self._buffer[:n]
            self._buffer = grown
        self._buffer[n] = norms
        self.steps.append(step)
        self.save()

    def save(self) -> None:
        with atomic_open(self.path, "wb") as f:
            np.savez(
                f,
                steps=np.asarray(self.steps, np.int64),
                norms=self.norms,
                layers=np.asarray(self.layers),
                lengths=np.asarray(self.lengths, np.int64),
                ids=np.asarray(self.ids),
            )

    @classmethod
    def resume(cls, path: Path, layers: list[str], lengths: np.ndarray, ids: list[str], upto: int) -> Probe:
        """A probe log for this batch, keeping the saved probes taken at or before update `upto`
        (those after it are redone by the resumed run); a fresh one when none fits."""
        probe = cls(path, layers, np.asarray(lengths), list(ids))
        if upto > 0 and path.exists():
            saved = load_probe(path)
            if list(saved["ids"]) == probe.ids and list(saved["layers"]) == layers:
                keep = saved["steps"] <= upto
                probe.steps = saved["steps"][keep].tolist()
                probe._buffer = saved["norms"][keep].copy() if keep.any() else None
        return probe


def load_probe(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a `probe.npz` (see `Probe`)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def first_last_ratio(probe: dict[str, np.ndarray], layer: int = 0, index: int = -1) -> float:
    """||d loss / d h_first|| / ||d loss / d h_last|| of one probe and layer, the last step being
    the shortest utterance's last output frame (every utterance of the batch is still there)."""
    norms = probe["norms"][index, layer]
    last = int(probe["lengths"].min()) - 1
    return float(norms[0] / norms[last]) if norms[last] > 0 else float("inf")


# ------------------------------------------------------------------------------- LSTM gates


@dataclass
class GateTrace:
    """One LSTM layer's forward direction over an utterance, each (T', units)."""

    input_gate: np.ndarray
    forget_gate: np.ndarray
    output_gate: np.ndarray
    cell: np.ndarray
    hidden: np.ndarray


@torch.no_grad()
def lstm_gates(lstm: nn.LSTM, x: torch.Tensor) -> GateTrace:
    """Recompute a one-layer `nn.LSTM`'s gates from its weights over a sequence x (T, input):
    i, f, g, o = chunks of W_ih x_t + b_ih + W_hh h_{t-1} + b_hh (PyTorch's order);
    c_t = f c_{t-1} + i g, h_t = o tanh(c_t), from zero state (see `unroll`)."""
    run = unroll(lstm, x[None], keep_gates=True)
    g = {k: torch.stack(v, dim=1)[0].float().cpu().numpy() for k, v in run.gates.items()}
    return GateTrace(g["i"], g["f"], g["o"], g["c"], run.output[0].float().cpu().numpy())


# ----------------------------------------------------------------------- one utterance, inside


@dataclass
class Inspection:
    """What `asr inspect` draws for one utterance."""

    features: np.ndarray  # (T, D) log-mel (or MFCC) features, before normalisation
    frame_seconds: float  # seconds per feature frame
    stack: int  # feature frames per output frame
    log_probs: np.ndarray  # (T', V)
    tokens: list[str]  # the token of each of the V rows (blank first)
    emissions: list[tuple[int, int]]  # greedy decoding: (output frame, token id) where a token starts
    text: str  # the greedy transcript
    kind: str  # model.kind
    layer_names: list[str]
    layer_outputs: list[np.ndarray]  # each (T', units): every layer's output
    gates: list[GateTrace]  # LSTM kinds: each layer's forward direction; empty otherwise


def greedy_emissions(log_probs: np.ndarray, blank: int = 0) -> list[tuple[int, int]]:
    """(frame, token) where greedy CTC decoding emits a token: the best token is not blank and
    differs from the previous frame's best."""
    best = log_probs.argmax(-1)
    return [(t, int(k)) for t, k in enumerate(best) if k != blank and (t == 0 or best[t - 1] != k)]


@torch.no_grad()
def inspect_features(rec, feats: torch.Tensor) -> Inspection:
    """Run a checkpoint's model (`asr.checkpoint.Recognizer`) on one utterance's raw features
    (T, D) and collect its posteriors, layer outputs and, for LSTM kinds, the gates."""
    model: CTCModel = rec.model
    model.eval()
    device = rec.device
    lengths = torch.tensor([feats.shape[0]])
    x = rec.normalizer(feats[None].to(device, torch.float32), lengths)
    outputs: list[torch.Tensor] = []
    log_probs, out_lengths = model(x, lengths, layer_outputs=outputs)
    n = int(out_lengths[0])
    lp = log_probs[0, :n].float().cpu().numpy()
    emissions = greedy_emissions(lp, rec.tokenizer.blank)
    gates = []
    if model.cell == "lstm":
        layer_input, _ = model.stack_frames(x, lengths)
        for i, lstm in enumerate(model.forward_layers):
            gates.append(lstm_gates(lstm, layer_input[0, :n]))
            layer_input = outputs[i]
    return Inspection(
        features=feats.float().cpu().numpy(),
        frame_seconds=rec.cfg.features.hop_ms / 1000,
        stack=model.stack,
        log_probs=lp,
        tokens=list(rec.tokenizer.tokens),
        emissions=emissions,
        text=rec.tokenizer.decode([k for _, k in emissions]),
        kind=rec.cfg.model.kind,
        layer_names=model.layer_names(),
        layer_outputs=[o[0, :n].float().cpu().numpy() for o in outputs],
        gates=gates,
    )


def inspect_audio(model_path: str | Path, audio: str | Path, device: str = "cpu") -> Inspection:
    """Load a checkpoint and inspect it on one audio file."""
    from asr.audio import load_audio
    from asr.checkpoint import Recognizer
    from asr.export import is_exported

    if is_exported(model_path):
        raise ValueError(f"{model_path}: an exported model carries no weights to inspect; give the checkpoint (.pt)")
    rec = Recognizer.from_checkpoint(model_path, device)
    wav = load_audio(audio, rec.cfg.features.sample_rate)
    return inspect_features(rec, rec.extractor(torch.from_numpy(wav)))
