"""Encoders, the model families: what the acoustic model runs between frame stacking and the
output layer, and the registry that maps `model.kind` to them.

`asr.model.CTCModel` is frame stacking + an encoder + a linear output layer. An encoder is an
`Encoder` subclass registered under the kind's name; nothing else in the toolkit lists the kinds:
configuration checks `model.kind` against `encoder_names()`, and `asr inspect`, `asr lab` and
`asr export` ask the encoder for what they need (its layer names, its gates, its gradients
through time, whether it can stream, which of its layers dynamic quantization handles).

A new model family is one class here (or anywhere imported before the config is read):

    @register_encoder("conv")
    class ConvEncoder(Encoder):
        def __init__(self, input_dim: int, cfg: ModelConfig):
            super().__init__(input_dim, cfg)
            self.conv = nn.Conv1d(input_dim, cfg.hidden, 3, padding=1)
            self.output_dim = cfg.hidden

        def forward(self, x, lengths, layer_outputs=None):
            y = self.conv(x.transpose(1, 2)).transpose(1, 2).relu()
            if layer_outputs is not None:
                layer_outputs.append(y)
            return y, lengths

        def layer_names(self) -> list[str]:
            return [f"layer 1 (conv, {self.output_dim} units)"]

The built-in kinds: blstm, lstm, bgru, gru, brnn, rnn (LSTM, GRU or tanh Elman RNN layers; b: both
directions; the one-direction kinds with `model.lookahead` frames of look-ahead), mlp (ReLU layers
over a window of stacked frames) and lcblstm (the latency-controlled BLSTM: both directions over
chunks of `model.chunk` frames plus `model.right_context`). The kinds that can stream (lstm, gru,
rnn, lcblstm) run a chunk at a time through `init_state`/`step`/`finish`; `asr.streaming` runs
them on live audio.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from asr.config import ConfigError, ModelConfig


class NotStreamingError(ValueError):
    """Streaming asked of an encoder that needs the whole utterance (see `Encoder.streaming`)."""


# ------------------------------------------------------------------------------ tensor helpers


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a (B, T, D) batch within its own length; padding stays at the end."""
    steps = torch.arange(x.shape[1], device=x.device)
    idx = lengths.to(x.device)[:, None] - 1 - steps[None, :]
    idx = torch.where(idx >= 0, idx, steps[None, :])
    return x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[2]))


def mask_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Frames of a (B, T, D) batch past each length set to zero."""
    real = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
    return x * real[:, :, None].to(x.dtype)


def context_window(x: torch.Tensor, context: int) -> torch.Tensor:
    """(B, T, D) -> (B, T, (2c+1)D): each frame with the `context` frames before and after it
    (frames t-c .. t+c in order), zeros beyond the edges."""
    if context == 0:
        return x
    frames = x.shape[1]
    padded = F.pad(x, (0, 0, context, context))
    return torch.cat([padded[:, k : k + frames] for k in range(2 * context + 1)], dim=-1)


# ------------------------------------------------------------------------ the encoder interface

LossOfTop = Callable[[torch.Tensor], torch.Tensor]  # the encoder's top output (B, T', output_dim) -> scalar loss


@dataclass
class GateTrace:
    """One LSTM layer's forward direction over an utterance, each (T', units)."""

    input_gate: np.ndarray
    forget_gate: np.ndarray
    output_gate: np.ndarray
    cell: np.ndarray
    hidden: np.ndarray


class Encoder(nn.Module):
    """The network between frame stacking and the output layer of `asr.model.CTCModel`.

    A subclass implements:

    - `__init__(input_dim, cfg)`: calls `super().__init__(input_dim, cfg)`, creates its parameters
      (with a seeded generator, in a fixed order: a model's initial weights depend on it) and sets
      `output_dim`, the width of its outputs;
    - `forward(x, lengths, layer_outputs=None) -> (y, lengths)`: x (B, T', input_dim) are stacked
      frames, zero past each utterance's length T' (`lengths`, (B,) int64); y (B, T'', output_dim)
      and T'' (most encoders keep T'' = T'). With a list as `layer_outputs`, each layer's output
      (B, T'', output_dim) is appended, in order: intermediate CTC, `asr inspect` and the default
      `gradient_norms` read them, through the same output layer as the top one;
    - `layer_names()` when its layers are not `cfg.layers` of width `output_dim`.

    and may override `gates`, `gradient_norms`, `recurrent_layers` and, for a streaming encoder,
    `init_state`, `step`, `finish` and `lookahead_frames`: a stream is `init_state`, then `step`
    on each new piece of input, then `finish`; the outputs of all these calls together are those
    of `forward` on the whole input (eval mode), each frame's output as soon as it is final. Its state-dict entries are stored at the top level of a checkpoint's
    `model` (see `CTCModel`), so no entry may be named `output`.
    """

    streaming: ClassVar[bool] = False  # whether init_state/step can run it a chunk at a time
    bidirectional: ClassVar[bool] = False  # whether it also runs backward in time (the legacy model.bidirectional key)
    # Kinds that differ only in direction share a family; the legacy `model.bidirectional` key
    # moves between them (see `kind_with_direction`). "": no sibling kinds.
    family: ClassVar[str] = ""
    # Layer types besides nn.Linear that `asr export --quantize int8` quantizes (TorchScript,
    # `torch.ao.quantization.quantize_dynamic`).
    dynamic_quantization: ClassVar[tuple[type[nn.Module], ...]] = ()

    def __init__(self, input_dim: int, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.input_dim = input_dim
        self.output_dim = 0  # set by the subclass

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, layer_outputs: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def layer_names(self) -> list[str]:
        """One label per layer, in the order `forward` appends their outputs."""
        return [f"layer {i + 1} ({self.cfg.kind}, {self.output_dim} units)" for i in range(self.cfg.layers)]

    def recurrent_layers(self) -> list[nn.RNNBase]:
        """The encoder's `nn.LSTM`/`nn.GRU`/`nn.RNN` modules (forward directions first); none here."""
        return []

    def gates(self, x: torch.Tensor) -> list[GateTrace]:
        """LSTM gates of each layer over one utterance's stacked frames x (T', input_dim), for
        `asr inspect`; empty for an encoder without them. Run in eval mode."""
        return []

    def gradient_norms(self, x: torch.Tensor, lengths: torch.Tensor, loss_of_top: LossOfTop) -> torch.Tensor:
        """||d loss / d h_t|| for every layer and output step t: (layers, T'').

        x (B, T', input_dim) and `lengths` as for `forward`; `loss_of_top` maps the top layer's
        output to the loss. h_t is the layer's output at step t, the norm over the batch and the
        units. This default differentiates with respect to each layer's whole output, which is
        d loss / d h_t when no later step is computed from h_t (a feed-forward encoder); a
        recurrent encoder overrides it to follow every path through time."""
        outputs: list[torch.Tensor] = []
        top, _ = self(x, lengths, outputs)
        grads = torch.autograd.grad(loss_of_top(top), outputs)
        return torch.stack([g.float().pow(2).sum(dim=(0, 2)).sqrt() for g in grads])

    def init_state(self, batch: int, device: torch.device | str | None = None) -> Any:
        """The state a streaming encoder starts `batch` utterances from (zeros), for `step`.
        Raises NotStreamingError for an encoder that needs the whole utterance."""
        raise NotStreamingError(f"model.kind {self.cfg.kind!r} cannot stream: it needs the whole utterance (streaming kinds: {', '.join(streaming_names()) or 'none'})")

    def step(self, x: torch.Tensor, state: Any, gates: list[dict[str, torch.Tensor]] | None = None) -> tuple[torch.Tensor, Any]:
        """The next chunk x (B, n, input_dim) of stacked frames from `state` -> the outputs that
        are final now (B, m, output_dim), in order from the first frame of the stream on, and the
        state after it (m = n for an encoder without look-ahead; one with look-ahead holds
        frames back until the input they wait for has come). Chunk after chunk and then
        `finish`, the outputs of `forward` on the whole (eval mode: no dropout). With a list as
        `gates`, one dict per layer is appended to it: the layer's state at the output frames,
        computed in the same run (an LSTM's "input", "forget", "output" gates and "cell" state
        of its forward direction, another layer's "hidden" output), each (B, m, H); empty for a
        layer without such values. Nothing is kept when `gates` is None. Raises
        NotStreamingError where `streaming` is false."""
        raise NotStreamingError(f"model.kind {self.cfg.kind!r} cannot stream: it needs the whole utterance (streaming kinds: {', '.join(streaming_names()) or 'none'})")

    def finish(self, state: Any, gates: list[dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
        """The outputs still held back at the end of the input (B, m, output_dim), computed as
        `forward` computes the end of an utterance (the input padded with zeros); `gates` as for
        `step`. Raises
        NotStreamingError where `streaming` is false."""
        raise NotStreamingError(f"model.kind {self.cfg.kind!r} cannot stream: it needs the whole utterance (streaming kinds: {', '.join(streaming_names()) or 'none'})")

    def lookahead_frames(self) -> int:
        """The most input frames past frame t that the output for t waits for (0: none); the
        latency a stream adds, in stacked frames."""
        return 0


# ---------------------------------------------------------------------------------- registry

ENCODERS: dict[str, type[Encoder]] = {}  # model.kind -> its class, in registration order
E = TypeVar("E", bound=type[Encoder])


@overload
def register_encoder(kind: str, cls: None = None, *, replace: bool = False) -> Callable[[E], E]: ...
@overload
def register_encoder(kind: str, cls: E, *, replace: bool = False) -> E: ...


def register_encoder(kind: str, cls: E | None = None, *, replace: bool = False) -> E | Callable[[E], E]:
    """Make `kind` a `model.kind` that builds the `Encoder` subclass `cls`: as a call,
    `register_encoder("conv", ConvEncoder)`, or as a class decorator, `@register_encoder("conv")`.
    Returns the class (the call) or the decorator.

    Raises ValueError for a name that is not a plain lowercase identifier, a class that is not an
    Encoder, or a kind already registered to another class (unless `replace`)."""
    if not kind.isidentifier() or kind != kind.lower():
        raise ValueError(f"an encoder kind must be a lowercase identifier, got {kind!r}")

    def register(cls: E) -> E:
        if not (isinstance(cls, type) and issubclass(cls, Encoder)):
            raise ValueError(f"register_encoder({kind!r}) takes an Encoder subclass, got {cls!r}")
        if kind in ENCODERS and not replace and ENCODERS[kind] is not cls:
            raise ValueError(f"model.kind {kind!r} is already registered ({ENCODERS[kind].__name__}); pass replace=True to replace it")
        ENCODERS[kind] = cls
        return cls

    return register if cls is None else register(cls)


def encoder_names() -> tuple[str, ...]:
    """Every registered `model.kind`, in registration order."""
    return tuple(ENCODERS)


def streaming_names() -> tuple[str, ...]:
    """The registered kinds whose encoders can stream."""
    return tuple(k for k, cls in ENCODERS.items() if cls.streaming)


def encoder_class(kind: str) -> type[Encoder]:
    """The class registered as `kind`; a one-line ConfigError naming the known kinds otherwise."""
    try:
        return ENCODERS[kind]
    except (KeyError, TypeError):
        raise ConfigError(f"model.kind must be one of {', '.join(ENCODERS)}, got {kind!r}") from None


def build_encoder(input_dim: int, cfg: ModelConfig) -> Encoder:
    """The encoder of `cfg.kind` for inputs of width `input_dim` (stacked frames)."""
    return encoder_class(cfg.kind)(input_dim, cfg)


def kind_with_direction(kind: str, bidirectional: bool) -> str:
    """The kind of `kind`'s family that runs one direction or both (the legacy
    `model.bidirectional` key): kind_with_direction("lstm", True) == "blstm". ConfigError when
    the family has no such kind (mlp with both directions) or `kind` is not registered."""
    cls = encoder_class(kind)
    if cls.bidirectional == bidirectional:
        return kind
    for other, other_cls in ENCODERS.items():
        if cls.family and other_cls.family == cls.family and other_cls.bidirectional == bidirectional:
            return other
    raise ConfigError(f"model.bidirectional = {'true' if bidirectional else 'false'} does not apply to model.kind = {kind!r}")


# ------------------------------------------------------------------------------ recurrent kinds


@dataclass
class Unrolled:
    """A recurrent layer run one step at a time: `states[t]` is h_t (B, H), a node of the autograd
    graph that h_{t+1} and the layer's output are computed from; `gates` (LSTM, when asked for)
    holds i, f, o and c per step."""

    output: torch.Tensor  # (B, T, H): the states stacked
    states: list[torch.Tensor]
    gates: dict[str, list[torch.Tensor]] | None = None


def unroll(layer: nn.RNNBase, x: torch.Tensor, keep_gates: bool = False, initial: Any = None) -> Unrolled:
    """Run a one-layer, one-direction `nn.LSTM`, `nn.GRU` or `nn.RNN` (tanh) over x (B, T, I) from
    zero state (or from `initial`: h (B, H), for an LSTM the pair h, c) with its own weights, step
    by step, in PyTorch's gate order: LSTM i, f, g, o; GRU r, z, n. The fused kernels return h_t as outputs only, so a gradient taken with respect to
    their output at t misses every path through h_{t+1}; here each h_t is a node of the graph and
    `torch.autograd.grad(loss, states)` is the whole d loss / d h_t of backpropagation through time."""
    if layer.num_layers != 1 or layer.bidirectional or getattr(layer, "proj_size", 0) or not layer.batch_first:
        raise ValueError("unroll takes a one-layer, one-direction, batch-first recurrent layer without projection")
    mode = layer.mode  # "LSTM", "GRU", "RNN_TANH", "RNN_RELU"
    w_hh = layer.weight_hh_l0
    b_hh = layer.bias_hh_l0 if layer.bias else None
    x_part = torch.nn.functional.linear(x, layer.weight_ih_l0, layer.bias_ih_l0 if layer.bias else None)  # all steps at once
    batch, frames = x.shape[:2]
    if initial is None:
        h = x.new_zeros(batch, layer.hidden_size)
        c = torch.zeros_like(h)
    elif mode == "LSTM":
        h, c = initial
    else:
        h = initial
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


@torch.no_grad()
def lstm_gates(lstm: nn.LSTM, x: torch.Tensor) -> GateTrace:
    """Recompute a one-layer `nn.LSTM`'s gates from its weights over a sequence x (T, input):
    i, f, g, o = chunks of W_ih x_t + b_ih + W_hh h_{t-1} + b_hh (PyTorch's order);
    c_t = f c_{t-1} + i g, h_t = o tanh(c_t), from zero state (see `unroll`)."""
    run = unroll(lstm, x[None], keep_gates=True)
    g = {k: torch.stack(v, dim=1)[0].float().cpu().numpy() for k, v in run.gates.items()}
    return GateTrace(g["i"], g["f"], g["o"], g["c"], run.output[0].float().cpu().numpy())


SHORT_RUN = 16  # at most this many steps: `run_layer` steps an LSTM itself when no gradient is needed


def run_layer(layer: nn.RNNBase, x: torch.Tensor, state: Any = None, gates: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, Any]:
    """`layer(x, state)` for a one-layer, one-direction, batch-first recurrent layer: outputs
    (B, T, H) and the state after them. Without autograd, an LSTM over at most SHORT_RUN steps
    is stepped here with its own weights (the same arithmetic, PyTorch's gate order): on a CPU
    the fused kernel has a fixed cost per call that outweighs a few steps, and a few steps are
    what a stream runs on each new piece of audio.

    With a dict as `gates`, an LSTM is stepped here whatever the length, and the dict gets its
    gates and cell state at every step, "input", "forget", "output", "cell", each (B, T, H)
    (`GateSteps`); another cell puts its outputs as "hidden". The outputs are the same."""
    frames = x.shape[1]
    if gates is not None and (layer.mode != "LSTM" or not frames or getattr(layer, "proj_size", 0)):
        y, state = layer(x, state)
        gates["hidden"] = y
        return y, state
    if gates is None and (layer.mode != "LSTM" or torch.is_grad_enabled() or not 0 < frames <= SHORT_RUN or getattr(layer, "proj_size", 0)):
        return layer(x, state)
    if state is None:
        h = x.new_zeros(x.shape[0], layer.hidden_size)
        c = torch.zeros_like(h)
    else:
        h, c = state[0][0], state[1][0]
    x_part = F.linear(x, layer.weight_ih_l0, layer.bias_ih_l0)
    w_hh, b_hh = layer.weight_hh_l0.t(), layer.bias_hh_l0
    outputs = []
    if gates is not None:
        steps: dict[str, list[torch.Tensor]] = {"input": [], "forget": [], "output": [], "cell": []}
        for t in range(frames):
            i, f, g, o = torch.addmm(b_hh, h, w_hh).add_(x_part[:, t]).chunk(4, dim=-1)
            i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
            c = f * c + i * torch.tanh(g)
            h = o * torch.tanh(c)
            outputs.append(h)
            for name, v in zip(("input", "forget", "output", "cell"), (i, f, o, c), strict=True):
                steps[name].append(v)
        gates.update({name: torch.stack(v, dim=1) for name, v in steps.items()})
        return torch.stack(outputs, dim=1), (h[None], c[None])
    for t in range(frames):
        i, f, g, o = torch.addmm(b_hh, h, w_hh).add_(x_part[:, t]).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, dim=1), (h[None], c[None])


GateSteps = dict[str, torch.Tensor]  # one layer's forward direction over a stream's frames: "input", "forget", "output", "cell" (LSTM) or "hidden", each (B, m, H)


def _frames_of(steps: list[GateSteps], start: int, stop: int | None = None) -> list[GateSteps]:
    """Each layer's gate steps, frames start:stop."""
    return [{k: v[:, start:stop] for k, v in layer.items()} for layer in steps]


def _stacked(grads: Iterator[torch.Tensor | None], states: list[torch.Tensor]) -> torch.Tensor:
    """The next len(states) gradients of the iterator `grads` as (B, T, H); an unused state's is zero."""
    taken = [next(grads) for _ in states]
    return torch.stack([g if g is not None else torch.zeros_like(s) for g, s in zip(taken, states, strict=True)], dim=1)


@dataclass
class RecurrentState:
    """Where a one-direction recurrent encoder stands in a stream (`init_state`, `step`): each
    layer's state, h (1, B, H) (LSTM: the pair h, c), and how many outputs of the layers are still
    to be dropped before the first one of the stream (the look-ahead, `model.lookahead`)."""

    layers: list[Any]
    to_drop: int


class RecurrentEncoder(Encoder):
    """`cfg.layers` recurrent layers of `cfg.hidden` units per direction, one `cell` module per
    layer and direction (`forward_layers`, and `backward_layers` when bidirectional, else None),
    dropout between layers; a bidirectional layer's output is both directions concatenated
    (forward first), output_dim = hidden * directions.

    The backward direction of each layer runs on every utterance reversed within its own length,
    so padding always comes after the real frames and never reaches them: a batched utterance gets
    exactly the output it gets alone. On a CPU this is faster than packed sequences
    (bench/model_step.py compares them), and length bucketing keeps the padding itself small.

    One-direction kinds stream: `init_state`/`step` carry each layer's hidden (and LSTM cell)
    state from chunk to chunk. They may look ahead `cfg.lookahead` frames L by delaying the
    output: the layers run over the input followed by L zero frames, and the output for frame t
    is the top layer's at t + L (each layer's, for `layer_outputs`), so it has seen the input up
    to t + L. Lengths are unchanged; the padding of a batch is zero (`CTCModel` zeroes it), so a
    batched utterance still gets the output it gets alone. With L = 0 nothing is padded or cut."""

    cell: ClassVar[type[nn.RNNBase]]

    def __init__(self, input_dim: int, cfg: ModelConfig):
        super().__init__(input_dim, cfg)
        lookahead = getattr(cfg, "lookahead", 0)
        if lookahead and (self.bidirectional or not self.streaming):
            raise ValueError(f"model.lookahead applies to the one-direction recurrent kinds (lstm, gru, rnn), not to model.kind {cfg.kind!r}; set it to 0")
        if not 0 <= lookahead <= 100:
            raise ValueError(f"model.lookahead must be between 0 and 100 frames, got {lookahead}")
        self.lookahead = lookahead
        directions = 2 if self.bidirectional else 1
        sizes = [input_dim] + [cfg.hidden * directions] * (cfg.layers - 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.forward_layers = nn.ModuleList(self.cell(n, cfg.hidden, batch_first=True) for n in sizes)
        self.backward_layers = nn.ModuleList(self.cell(n, cfg.hidden, batch_first=True) for n in sizes) if self.bidirectional else None
        self.output_dim = cfg.hidden * directions

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, layer_outputs: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ahead = self.lookahead
        if ahead:
            x = F.pad(x, (0, 0, 0, ahead))
        for i, forward in enumerate(self.forward_layers):
            if i > 0:
                x = self.dropout(x)
            y, _ = forward(x)
            if self.backward_layers is not None:
                yb, _ = self.backward_layers[i](reverse_padded(x, lengths))
                y = torch.cat([y, reverse_padded(yb, lengths)], dim=-1)
            x = y
            if layer_outputs is not None:
                layer_outputs.append(x[:, ahead:] if ahead else x)
        # The top output is the very tensor appended last (gradients are taken with respect to it).
        return (layer_outputs[-1] if layer_outputs is not None else x[:, ahead:] if ahead else x), lengths

    def lookahead_frames(self) -> int:
        return self.lookahead

    def layer_names(self) -> list[str]:
        n = self.cfg.hidden
        units = f"2 x {n}" if self.backward_layers is not None else f"{n}"
        return [f"layer {i + 1} ({self.cfg.kind}, {units} units)" for i in range(self.cfg.layers)]

    def recurrent_layers(self) -> list[nn.RNNBase]:
        return list(self.forward_layers) + list(self.backward_layers or [])

    def gradient_norms(self, x: torch.Tensor, lengths: torch.Tensor, loss_of_top: LossOfTop) -> torch.Tensor:
        """As `Encoder.gradient_norms`, with the recurrence unrolled on the same weights (see
        `unroll`): h_t's gradient takes in every path through the later steps (backpropagation
        through time), both directions together for a bidirectional layer (the norm of the
        concatenation), steps past each length left out. No dropout. With a look-ahead L, h_t is
        the state at t + L, the one output for frame t."""
        ahead = self.lookahead
        h = F.pad(x, (0, 0, 0, ahead)) if ahead else x
        runs: list[tuple[Unrolled, Unrolled | None]] = []
        for i, forward in enumerate(self.forward_layers):
            fwd = unroll(forward, h)
            bwd = unroll(self.backward_layers[i], reverse_padded(h, lengths)) if self.backward_layers is not None else None
            h = fwd.output if bwd is None else torch.cat([fwd.output, reverse_padded(bwd.output, lengths)], dim=-1)
            runs.append((fwd, bwd))
        loss = loss_of_top(h[:, ahead:])
        nodes = [s for fwd, bwd in runs for s in fwd.states + (bwd.states if bwd else [])]
        grads = iter(torch.autograd.grad(loss, nodes, allow_unused=True))
        norms = []
        for fwd, bwd in runs:
            squares = _stacked(grads, fwd.states).pow(2).sum(-1)  # (B, T' + L)
            if bwd is not None:
                back = _stacked(grads, bwd.states)  # in each utterance's reversed time
                squares = squares + reverse_padded(back, lengths).pow(2).sum(-1)
            squares = squares[:, ahead:]
            norms.append(mask_padding(squares[:, :, None], lengths)[:, :, 0].sum(0).sqrt())
        return torch.stack(norms).float()

    def gates(self, x: torch.Tensor) -> list[GateTrace]:
        """LSTM kinds: each layer's forward direction over x (T', input_dim), its input the layer
        below's output (both directions); other cells have no gates to show here. With a
        look-ahead L, step t shows the state at t + L (the one output for frame t)."""
        if self.cell is not nn.LSTM:
            return []
        ahead = self.lookahead
        outputs: list[torch.Tensor] = []
        with torch.no_grad():
            self(x[None], torch.tensor([x.shape[0]]), outputs)
        if not ahead:
            layer_inputs = [x] + [o[0] for o in outputs[:-1]]
            return [lstm_gates(lstm, h) for lstm, h in zip(self.forward_layers, layer_inputs, strict=True)]
        traces, h = [], F.pad(x, (0, 0, 0, ahead))
        for lstm in self.forward_layers:
            g = lstm_gates(lstm, h)
            traces.append(GateTrace(*(a[ahead:] for a in (g.input_gate, g.forget_gate, g.output_gate, g.cell, g.hidden))))
            with torch.no_grad():
                h = lstm(h[None])[0][0]
        return traces

    def init_state(self, batch: int, device: torch.device | str | None = None) -> RecurrentState:
        """One-direction kinds: per layer, zeros h (1, B, H) (LSTM: the pair h, c), and the
        look-ahead's outputs still to drop."""
        if not self.streaming:
            return super().init_state(batch, device)
        device = device if device is not None else self.forward_layers[0].weight_ih_l0.device
        dtype = self.forward_layers[0].weight_ih_l0.dtype
        zeros = [torch.zeros(1, batch, self.cfg.hidden, device=device, dtype=dtype) for _ in self.forward_layers]
        return RecurrentState([(h, torch.zeros_like(h)) if self.cell is nn.LSTM else h for h in zeros], self.lookahead)

    def step(self, x: torch.Tensor, state: RecurrentState, gates: list[GateSteps] | None = None) -> tuple[torch.Tensor, RecurrentState]:
        """The next frames x (B, n, input_dim) -> the outputs now final (B, n - dropped,
        output_dim): the first `lookahead` outputs of a stream belong to no frame and are dropped,
        so output k is the one for input frame k; `finish` gives the last `lookahead`. With a
        list as `gates`, each layer's `GateSteps` for the output frames are appended to it (the
        values `gates()` gives for those frames)."""
        if not self.streaming:
            return super().step(x, state)
        if x.shape[1] == 0:
            if gates is not None:
                gates.extend({} for _ in self.forward_layers)
            return x.new_zeros(x.shape[0], 0, self.output_dim), state
        layers, steps = [], []
        for i, (layer, s) in enumerate(zip(self.forward_layers, state.layers, strict=True)):
            if i > 0:
                x = self.dropout(x)
            trace: GateSteps | None = {} if gates is not None else None
            x, s = run_layer(layer, x, s, trace)
            layers.append(s)
            steps.append(trace)
        drop = min(state.to_drop, x.shape[1])
        if gates is not None:
            gates.extend(_frames_of(steps, drop))
        return x[:, drop:], RecurrentState(layers, state.to_drop - drop)

    def finish(self, state: RecurrentState, gates: list[GateSteps] | None = None) -> torch.Tensor:
        """The outputs of the last `lookahead` frames (B, lookahead, output_dim) or fewer when
        the stream was shorter: the layers run over `lookahead` zero frames, as `forward` pads.
        `gates` as for `step`."""
        if not self.streaming:
            return super().finish(state)
        first = state.layers[0][0] if self.cell is nn.LSTM else state.layers[0]
        if not self.lookahead:
            if gates is not None:
                gates.extend({} for _ in self.forward_layers)
            return first.new_zeros(first.shape[1], 0, self.output_dim)
        y, _ = self.step(first.new_zeros(first.shape[1], self.lookahead, self.input_dim), state, gates)
        return y


@register_encoder("blstm")
class BLSTMEncoder(RecurrentEncoder):
    """LSTM layers, both directions."""

    cell = nn.LSTM
    family = "lstm"
    bidirectional = True
    dynamic_quantization = (nn.LSTM,)


@register_encoder("lstm")
class LSTMEncoder(RecurrentEncoder):
    """LSTM layers, one direction."""

    cell = nn.LSTM
    family = "lstm"
    streaming = True
    dynamic_quantization = (nn.LSTM,)


@register_encoder("bgru")
class BGRUEncoder(RecurrentEncoder):
    """GRU layers, both directions."""

    cell = nn.GRU
    family = "gru"
    bidirectional = True


@register_encoder("gru")
class GRUEncoder(RecurrentEncoder):
    """GRU layers, one direction."""

    cell = nn.GRU
    family = "gru"
    streaming = True


@register_encoder("brnn")
class BRNNEncoder(RecurrentEncoder):
    """tanh (Elman) RNN layers, both directions."""

    cell = nn.RNN
    family = "rnn"
    bidirectional = True


@register_encoder("rnn")
class RNNEncoder(RecurrentEncoder):
    """tanh (Elman) RNN layers, one direction."""

    cell = nn.RNN
    family = "rnn"
    streaming = True


# ---------------------------------------------------------------------------------- mlp


@register_encoder("mlp")
class MLPEncoder(Encoder):
    """`cfg.layers` ReLU layers of `cfg.hidden` units (`hidden_layers`, dropout before all but the
    first) on a window of `2 * cfg.context + 1` stacked frames centred on each one; the window sees
    zeros past an utterance's end (CTCModel zeroes the padding), so a batched utterance gets
    exactly the output it gets alone. Looks ahead `cfg.context` frames: it does not stream."""

    family = "mlp"

    def __init__(self, input_dim: int, cfg: ModelConfig):
        super().__init__(input_dim, cfg)
        if not 0 <= cfg.context <= 50:
            raise ValueError(f"model.context must be between 0 and 50, got {cfg.context}")
        if getattr(cfg, "lookahead", 0):
            raise ValueError("model.lookahead applies to the one-direction recurrent kinds (lstm, gru, rnn), not to model.kind 'mlp' (its look-ahead is model.context); set it to 0")
        sizes = [input_dim * (2 * cfg.context + 1)] + [cfg.hidden] * (cfg.layers - 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.hidden_layers = nn.ModuleList(nn.Linear(n, cfg.hidden) for n in sizes)
        self.output_dim = cfg.hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, layer_outputs: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = context_window(x, self.cfg.context)
        for i, layer in enumerate(self.hidden_layers):
            x = torch.relu(layer(self.dropout(x) if i > 0 else x))
            if layer_outputs is not None:
                layer_outputs.append(x)
        return x, lengths

    def lookahead_frames(self) -> int:
        return self.cfg.context


# ------------------------------------------------------------------ latency-controlled BLSTM


@dataclass
class ChunkState:
    """Where a latency-controlled BLSTM stands in a stream: each layer's forward state (h, c),
    each (1, B, H), at the end of the last chunk output, and the input frames after it that are
    not output yet (B, n, input_dim): fewer than a chunk and its right context."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    pending: torch.Tensor


def _window_frames(x: torch.Tensor, chunks: int, chunk: int, right: int) -> torch.Tensor:
    """x (B, >= chunks*chunk + right, D) -> the right context of each chunk, (B, chunks, right, D):
    frames (k+1)*chunk .. (k+1)*chunk + right - 1 for chunk k."""
    idx = (torch.arange(1, chunks + 1, device=x.device)[:, None] * chunk + torch.arange(right, device=x.device)[None, :]).reshape(-1)
    return x[:, idx].reshape(x.shape[0], chunks, right, x.shape[2])


@register_encoder("lcblstm")
class LCBLSTMEncoder(RecurrentEncoder):
    """Latency-controlled BLSTM (Chen & Huo 2016, "Training deep bidirectional LSTM acoustic
    model for LVCSR by a context-sensitive-chunk BPTT approach"; Xue & Yan 2017, "Improving
    latency-controlled BLSTM acoustic models for online speech recognition"): LSTM layers in both
    directions, the input cut into chunks of `cfg.chunk` stacked frames C, each seen with the
    `cfg.right_context` frames R after it. Per layer:

    - the forward direction runs over the chunks in order, its state carried from one to the
      next (over the whole utterance it is a plain LSTM);
    - the backward direction runs over each window (a chunk and its right context) from a zero
      state, so the output for frame t waits only for the end of its chunk plus R frames;
    - the forward direction also runs over each chunk's right-context frames from the state at
      the chunk's end (that state then discarded), so the next layer's window has inputs for its
      right-context frames computed from that window alone.

    The output of a layer for a chunk's frames is both directions concatenated (forward first);
    the right-context frames' outputs feed only the next layer's window. `forward` computes
    exactly this (training is chunked as the stream runs): the forward direction chunk by
    chunk, the windows of all chunks and utterances in one batch for the backward direction and
    the right-context frames. The input is treated as zero past its end up to a whole window
    (CTCModel zeroes the padding of a batch), so an utterance gets the same output alone or in a
    batch, and `init_state`/`step`/`finish` give the same outputs as `forward`, a chunk's frames
    once its right context has arrived. The parameters are named as blstm's (`forward_layers`,
    `backward_layers`), so a blstm's weights load into it."""

    cell = nn.LSTM
    family = "lstm"
    bidirectional = True
    streaming = True
    dynamic_quantization = (nn.LSTM,)

    def __init__(self, input_dim: int, cfg: ModelConfig):
        chunk, right = getattr(cfg, "chunk", 0), getattr(cfg, "right_context", 0)
        if chunk < 1:
            raise ValueError(f"model.chunk must be at least 1 (stacked frames per chunk) for model.kind 'lcblstm', got {chunk}")
        if right < 0:
            raise ValueError(f"model.right_context must be at least 0 for model.kind 'lcblstm', got {right}")
        super().__init__(input_dim, cfg)
        self.chunk, self.right_context = chunk, right

    def lookahead_frames(self) -> int:
        return self.chunk - 1 + self.right_context

    def _layer(self, i: int, main: torch.Tensor, right: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None, gates: GateSteps | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Layer i over whole chunks: main (B, n*C, D) the chunks' frames, right (B, n, R, D) each
        chunk's right-context frames as its window sees them, `state` the forward state before
        the first chunk (None: zeros) -> the outputs for both (B, n*C, 2H) and (B, n, R, 2H),
        and the forward state after the last chunk. A dict as `gates` gets the forward
        direction's `GateSteps` over the chunks' frames (B, n*C, H)."""
        fwd, bwd = self.forward_layers[i], self.backward_layers[i]
        batch, frames, dim = main.shape
        c, r = self.chunk, self.right_context
        n = frames // c
        outs, ends, traces = [], [], []
        for k in range(n):
            trace: GateSteps | None = {} if gates is not None else None
            y, state = run_layer(fwd, main[:, k * c : (k + 1) * c], state, trace)
            outs.append(y)
            ends.append(state)
            traces.append(trace)
        if gates is not None and traces:
            gates.update({name: torch.cat([t[name] for t in traces], dim=1) for name in traces[0]})
        f_main = torch.cat(outs, dim=1)
        hidden = f_main.shape[-1]
        window = torch.cat([main.reshape(batch, n, c, dim), right], dim=2).reshape(batch * n, c + r, dim)
        b_all = run_layer(bwd, window.flip(1))[0].flip(1).reshape(batch, n, c + r, hidden)
        out_main = torch.cat([f_main, b_all[:, :, :c].reshape(batch, n * c, hidden)], dim=-1)
        if r:
            # Chunk-end states (1, B, H) per chunk -> (1, B*n, H), utterance-major as the windows.
            h0 = torch.cat([h for h, _ in ends], dim=0).transpose(0, 1).reshape(1, batch * n, hidden)
            c0 = torch.cat([cc for _, cc in ends], dim=0).transpose(0, 1).reshape(1, batch * n, hidden)
            f_right = run_layer(fwd, right.reshape(batch * n, r, dim), (h0.contiguous(), c0.contiguous()))[0].reshape(batch, n, r, hidden)
            out_right = torch.cat([f_right, b_all[:, :, c:]], dim=-1)
        else:
            out_right = main.new_zeros(batch, n, 0, 2 * hidden)
        return out_main, out_right, state

    def _run(self, x: torch.Tensor, states: list[Any] | None, layer_outputs: list[torch.Tensor] | None = None, gates: list[GateSteps] | None = None) -> tuple[torch.Tensor, list[Any]]:
        """x (B, n*C + R, input_dim): whole windows -> the top layer's outputs for the n chunks
        (B, n*C, output_dim) and each layer's forward state after them; `states` those before
        (None: zeros). A list as `gates` gets each layer's forward `GateSteps` over the n*C frames."""
        n = (x.shape[1] - self.right_context) // self.chunk
        main, right = x[:, : n * self.chunk], _window_frames(x, n, self.chunk, self.right_context)
        new_states = []
        for i in range(len(self.forward_layers)):
            if i > 0:
                main, right = self.dropout(main), self.dropout(right)
            trace: GateSteps | None = {} if gates is not None else None
            main, right, s = self._layer(i, main, right, None if states is None else states[i], trace)
            if gates is not None:
                gates.append(trace)
            new_states.append(s)
            if layer_outputs is not None:
                layer_outputs.append(main)
        return main, new_states

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) with zeros after it up to whole windows: (B, ceil(T/C)*C + R, D)."""
        chunks = -(-x.shape[1] // self.chunk)
        return F.pad(x, (0, 0, 0, chunks * self.chunk + self.right_context - x.shape[1]))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, layer_outputs: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.jit.is_tracing():
            raise ValueError("model.kind 'lcblstm' cannot be exported: its number of chunks follows the input's length, which a traced graph would fix")
        frames = x.shape[1]
        if frames == 0:
            if layer_outputs is not None:
                layer_outputs.extend(x.new_zeros(x.shape[0], 0, self.output_dim) for _ in self.forward_layers)
            return x.new_zeros(x.shape[0], 0, self.output_dim), lengths
        if layer_outputs is None:
            return self._run(self._padded(x), None)[0][:, :frames], lengths
        outputs: list[torch.Tensor] = []
        self._run(self._padded(x), None, outputs)
        layer_outputs.extend(o[:, :frames] for o in outputs)
        return layer_outputs[-1], lengths  # the very tensor appended last (gradients are taken with respect to it)

    def gradient_norms(self, x: torch.Tensor, lengths: torch.Tensor, loss_of_top: LossOfTop) -> torch.Tensor:
        """As `Encoder.gradient_norms`, the chunked computation of `forward` unrolled on the same
        weights (see `unroll`): h_t is a chunk frame's output, its forward state (whose gradient
        takes in the later chunks and the right-context runs started from it) and its backward
        state in its own window; the right-context frames' copies are not counted. No dropout."""
        frames, c, r = x.shape[1], self.chunk, self.right_context
        xp = self._padded(x)
        batch, n = x.shape[0], (xp.shape[1] - r) // c
        main, right = xp[:, : n * c], _window_frames(xp, n, c, r)
        runs: list[tuple[Unrolled, Unrolled]] = []
        for fwd_layer, bwd_layer in zip(self.forward_layers, self.backward_layers, strict=True):
            dim, hidden = main.shape[-1], fwd_layer.hidden_size
            fwd = unroll(fwd_layer, main, keep_gates=True)
            window = torch.cat([main.reshape(batch, n, c, dim), right], dim=2).reshape(batch * n, c + r, dim)
            bwd = unroll(bwd_layer, window.flip(1))
            b_all = bwd.output.flip(1).reshape(batch, n, c + r, hidden)
            new_main = torch.cat([fwd.output, b_all[:, :, :c].reshape(batch, n * c, hidden)], dim=-1)
            if r:
                ends = [(k + 1) * c - 1 for k in range(n)]
                h0 = torch.stack([fwd.states[t] for t in ends], dim=1).reshape(batch * n, hidden)
                c0 = torch.stack([fwd.gates["c"][t] for t in ends], dim=1).reshape(batch * n, hidden)
                f_right = unroll(fwd_layer, right.reshape(batch * n, r, dim), initial=(h0, c0)).output.reshape(batch, n, r, hidden)
                right = torch.cat([f_right, b_all[:, :, c:]], dim=-1)
            main = new_main
            runs.append((fwd, bwd))
        loss = loss_of_top(main[:, :frames])
        nodes = [s for fwd, bwd in runs for s in fwd.states + bwd.states]
        grads = iter(torch.autograd.grad(loss, nodes, allow_unused=True))
        norms = []
        for fwd, bwd in runs:
            squares = _stacked(grads, fwd.states).pow(2).sum(-1)  # (B, n*C)
            back = _stacked(grads, bwd.states).flip(1).reshape(batch, n, c + r, -1)[:, :, :c]  # (B, n, C, H), window time
            squares = (squares + back.pow(2).sum(-1).reshape(batch, n * c))[:, :frames]
            norms.append(mask_padding(squares[:, :, None], lengths)[:, :, 0].sum(0).sqrt())
        return torch.stack(norms).float()

    def init_state(self, batch: int, device: torch.device | str | None = None) -> ChunkState:
        """Zero forward states per layer and no pending input."""
        device = device if device is not None else self.forward_layers[0].weight_ih_l0.device
        dtype = self.forward_layers[0].weight_ih_l0.dtype
        zeros = [torch.zeros(1, batch, self.cfg.hidden, device=device, dtype=dtype) for _ in self.forward_layers]
        return ChunkState([(h, torch.zeros_like(h)) for h in zeros], torch.zeros(batch, 0, self.input_dim, device=device, dtype=dtype))

    def step(self, x: torch.Tensor, state: ChunkState, gates: list[GateSteps] | None = None) -> tuple[torch.Tensor, ChunkState]:
        """The next frames x (B, n, input_dim) -> the outputs of every chunk whose right context
        has now arrived (B, m*C, output_dim), all of them in one run; the frames after them wait.
        With a list as `gates`, each layer's forward-direction `GateSteps` for the output frames
        are appended to it (the values `gates()` gives for those frames)."""
        pending = torch.cat([state.pending, x], dim=1)
        ready = max(0, (pending.shape[1] - self.right_context) // self.chunk)
        if not ready:
            if gates is not None:
                gates.extend({} for _ in self.forward_layers)
            return pending.new_zeros(pending.shape[0], 0, self.output_dim), ChunkState(state.layers, pending)
        y, layers = self._run(pending[:, : ready * self.chunk + self.right_context], state.layers, gates=gates)
        return y, ChunkState(layers, pending[:, ready * self.chunk :])

    def finish(self, state: ChunkState, gates: list[GateSteps] | None = None) -> torch.Tensor:
        """The outputs of the pending frames (B, n, output_dim), the input padded with zeros to
        whole windows as `forward` pads it. `gates` as for `step`."""
        frames = state.pending.shape[1]
        if not frames:
            if gates is not None:
                gates.extend({} for _ in self.forward_layers)
            return state.pending.new_zeros(state.pending.shape[0], 0, self.output_dim)
        steps: list[GateSteps] | None = [] if gates is not None else None
        y, _ = self._run(self._padded(state.pending), state.layers, gates=steps)
        if gates is not None:
            gates.extend(_frames_of(steps, 0, frames))
        return y[:, :frames]
