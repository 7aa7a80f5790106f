"""The network seen while it listens: gates, cell state and CTC posteriors of a stream or a file,
shaped for the wire (`asr serve`'s WebSocket and the page's upload route).

A stream asks with `"inspect": {"layer": N}` in its start message (`inspect_request`); its
acoustic model then runs as `LiveInspector`, an `asr.streaming.OnlineEmissions` that keeps the
encoder's gates of the frames each call returns (computed in the same run, `Encoder.step`), and
the server sends one `inspect` message per piece of audio (`LiveInspector.messages`):

    {"type": "inspect", "layer": 1, "frame": 120, "frames": 3,
     "forward": {"input": B64, "forget": B64, "output": B64, "cell": B64, "means": B64},
     "posteriors": B64}

- `frame`, `frames`: the output frames covered, counted from the stream's start (frame k covers
  [k, k + 1) * frame_seconds); after an endpoint the model starts afresh and the frames from
  there on are sent again: a later message replaces an earlier one's frames.
- `forward` (and `backward` for a bidirectional layer of a file): each value base64 of a
  row-major (frames, k) array of the layer's k shown units (`ready`'s `units`, in that order):
  the gates as uint8, value = q / 255; the cell state as little-endian float16; a layer
  without gates (GRU, RNN, MLP) has `hidden`, its output, as float16 instead. `means`: float16
  (frames, 4) of the means over all the layer's units of the input, forget and output gates and
  of |cell| (a layer without gates: 1 column, mean |hidden|).
- `posteriors`: uint8 (frames, V), value = q / 255: the CTC posteriors (softmax of the
  log-probabilities), blank first, of the tokens in `ready`'s `tokens` order.

`ready_info(model)` is what the `ready` message (and the upload's answer) says once: the tokens,
frame_seconds, the encodings and, per layer, its name, directions and the indices of its shown
units: the k units (64 by default) whose outputs the layer above (or the output layer) weighs
most (largest column norm of its input weights), the same units for a file and a stream.

Bandwidth: with k units and V tokens a frame costs 3k + 2k + 8 + V bytes before base64 (4/3);
the AN4 streaming model (33 frames per second, k = 64, V = 28) sends 17.1 kB of JSON per second
of audio (`bench/inspect_stream.py`, docs/rnn.md "Watching it live").
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["DEFAULT_UNITS", "InspectRequest", "LiveInspector", "file_inspection", "inspect_request", "layer_message", "ready_info", "shown_units"]

DEFAULT_UNITS = 64
GATES = ("input", "forget", "output")


@dataclass(frozen=True)
class InspectRequest:
    """What a client asked to see: `layer` counted from 1, `units` shown per layer."""

    layer: int
    units: int = DEFAULT_UNITS


def _layers(model: Any) -> list[str]:
    encoder = getattr(getattr(model, "model", None), "encoder", None)
    if encoder is None:
        raise ValueError("an exported model carries no weights to inspect; serve the checkpoint (.pt)")
    return encoder.layer_names()


def check_layer(model: Any, layer: Any) -> int:
    """`layer` (counted from 1) if `model` has it; ValueError naming the layers it has otherwise."""
    names = _layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= len(names):
        raise ValueError(f"inspect layer must be a whole number from 1 to {len(names)} (this model's layers: {'; '.join(names)}), got {layer!r}")
    return layer


def inspect_request(header: dict[str, Any], model: Any) -> InspectRequest | None:
    """The `inspect` field of a start message: None when absent; ValueError (one line) for a
    field that is not `{"layer": N}` (optionally `"units": K`, 1-256) or names a layer the
    model lacks."""
    asked = header.get("inspect")
    if asked is None:
        return None
    if not isinstance(asked, dict) or set(asked) - {"layer", "units"}:
        raise ValueError(f'inspect must be {{"layer": N}} (optionally "units": K), got {str(asked)[:80]!r}')
    layer = check_layer(model, asked.get("layer"))
    units = asked.get("units", DEFAULT_UNITS)
    if isinstance(units, bool) or not isinstance(units, int) or not 1 <= units <= 256:
        raise ValueError(f"inspect units must be a whole number from 1 to 256, got {units!r}")
    return InspectRequest(layer, units)


# ------------------------------------------------------------------------------- the units


def _readers(model: Any, layer: int) -> torch.Tensor | None:
    """The weights that read layer `layer`'s output (0-based): (out, in) of the next layer's
    input weights (both directions), or the output layer's for the top; None when unknown."""
    net = model.model
    encoder = net.encoder
    nexts = []
    for name in ("forward_layers", "backward_layers"):
        stack = getattr(encoder, name, None)
        if stack is not None and layer + 1 < len(stack):
            nexts.append(stack[layer + 1].weight_ih_l0)
    hidden = getattr(encoder, "hidden_layers", None)
    if hidden is not None and layer + 1 < len(hidden):
        nexts.append(hidden[layer + 1].weight)
    if not nexts and layer + 1 == len(encoder.layer_names()):
        nexts.append(net.output.weight)
    return torch.cat(nexts).detach().float() if nexts else None


def _directions(model: Any) -> list[str]:
    encoder = model.model.encoder
    return ["forward", "backward"] if getattr(encoder, "backward_layers", None) is not None else ["forward"]


def shown_units(model: Any, layer: int, units: int = DEFAULT_UNITS) -> dict[str, list[int]]:
    """Per direction, the indices (within that direction, 0-based) of the `units` units of
    layer `layer` (counted from 1) whose outputs the layer above weighs most, strongest first."""
    encoder = model.model.encoder
    width = encoder.cfg.hidden
    readers = _readers(model, layer - 1)
    out = {}
    for d, direction in enumerate(_directions(model)):
        if readers is None or readers.shape[1] < (d + 1) * width:
            order = list(range(width))
        else:
            norms = readers[:, d * width : (d + 1) * width].norm(dim=0)
            order = torch.argsort(norms, descending=True, stable=True).tolist()
        out[direction] = order[: min(units, width)]
    return out


def ready_info(model: Any, units: int = DEFAULT_UNITS) -> dict[str, Any]:
    """What the page needs once to read `inspect` messages (see the module docstring)."""
    names = _layers(model)
    has_gates = _has_gates(model)
    return {
        "tokens": list(model.tokenizer.tokens),
        "frame_seconds": float(model.model.stack * model.cfg.features.hop_ms / 1000),
        "layers": [
            {"layer": i + 1, "name": name, "values": [*GATES, "cell"] if has_gates else ["hidden"], "units": shown_units(model, i + 1, units)}
            for i, name in enumerate(names)
        ],
        "encoding": {
            "gates": "uint8, value = q / 255",
            "cell": "float16",
            "hidden": "float16",
            "means": "float16: input, forget, output, |cell| (or |hidden|) over all units",
            "posteriors": "uint8, value = q / 255",
            "layout": "base64 of a row-major (frames, units) array",
        },
    }


def _has_gates(model: Any) -> bool:
    from torch import nn

    return getattr(model.model.encoder, "cell", None) is nn.LSTM


# ------------------------------------------------------------------------------- encoding


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _u8(a: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(a, 0.0, 1.0) * 255).astype(np.uint8)


def _f16(a: np.ndarray) -> np.ndarray:
    return np.clip(a, -65000, 65000).astype("<f2")


def encode_direction(values: dict[str, np.ndarray], units: list[int]) -> dict[str, str]:
    """One direction's values {name: (frames, H) float} -> the wire form (module docstring)."""
    if "cell" in values:
        out = {g: _b64(_u8(values[g][:, units])) for g in GATES}
        out["cell"] = _b64(_f16(values["cell"][:, units]))
        means = np.stack([values[g].mean(1) for g in GATES] + [np.abs(values["cell"]).mean(1)], 1)
    else:
        out = {"hidden": _b64(_f16(values["hidden"][:, units]))}
        means = np.abs(values["hidden"]).mean(1, keepdims=True)
    out["means"] = _b64(_f16(means))
    return out


def layer_message(layer: int, frame: int, directions: dict[str, dict[str, np.ndarray]], units: dict[str, list[int]], log_probs: np.ndarray | None) -> dict[str, Any]:
    """An `inspect` message: `layer` (from 1), frames from `frame` on, each direction's values
    {name: (frames, H)}, and the log-probabilities (frames, V) (None: no posteriors)."""
    frames = next(iter(next(iter(directions.values())).values())).shape[0] if directions else 0
    message: dict[str, Any] = {"type": "inspect", "layer": layer, "frame": frame, "frames": frames}
    for name, values in directions.items():
        message[name] = encode_direction(values, units[name])
    if log_probs is not None:
        message["posteriors"] = _b64(_u8(np.exp(log_probs)))
    return message


# ------------------------------------------------------------------------------- a stream


class LiveInspector:
    """`asr.streaming.OnlineEmissions(model, gates=True)` for `asr.stream.Stream(emissions=...)`,
    keeping what each call returned; `messages()` -> the `inspect` messages of the calls since the
    last one, for `layer` (settable between calls). Raises NotStreamingError as OnlineEmissions."""

    def __init__(self, model: Any, request: InspectRequest):
        from asr.streaming import OnlineEmissions

        self.online = OnlineEmissions(model, gates=True)
        self.model, self.layer, self.units = model, request.layer, request.units
        self._shown = {i + 1: shown_units(model, i + 1, request.units) for i in range(len(_layers(model)))}
        self._records: list[tuple[int, torch.Tensor, list[dict[str, torch.Tensor]]]] = []

    def __getattr__(self, name: str) -> Any:  # frame_seconds, frames, vocab, sample_rate, ...
        return getattr(self.__dict__["online"], name)

    def reset(self, frame: int = 0) -> None:
        self.online.reset(frame)

    def accept(self, samples: Any) -> torch.Tensor:
        return self._keep(self.online.frames, self.online.accept(samples))

    def finish(self) -> torch.Tensor:
        return self._keep(self.online.frames, self.online.finish())

    def _keep(self, first: int, log_probs: torch.Tensor) -> torch.Tensor:
        if len(log_probs):
            self._records.append((first, log_probs, self.online.last_gates))
        return log_probs

    def traces(self) -> list[tuple[int, torch.Tensor, list[dict[str, torch.Tensor]]]]:
        """(first frame, log-probabilities (n, V), per layer {name: (n, H)}) of each call since
        the last `messages()` or `traces()`, before quantisation; they are dropped."""
        records, self._records = self._records, []
        return records

    def messages(self) -> list[dict[str, Any]]:
        out = []
        for first, log_probs, gates in self.traces():
            values = {k: v.numpy() for k, v in gates[self.layer - 1].items()}
            out.append(layer_message(self.layer, first, {"forward": values}, self._shown[self.layer], log_probs.numpy()))
        return out


# ------------------------------------------------------------------------------- a file


def file_gates(rec: Any, feats: torch.Tensor) -> tuple[Any, list[dict[str, dict[str, np.ndarray]]]]:
    """`asr.inspect.inspect_features` on one utterance's features (T, D), and per layer its
    directions' values {name: (T', H)}: an LSTM's forward direction as `asr inspect` plots it
    (the same `GateTrace`), the backward direction of a bidirectional one recomputed the same way
    on the reversed input (blstm; lcblstm's backward direction, chunk by chunk, is left out);
    layers without gates: their outputs, split by direction."""
    from asr.encoders import lstm_gates
    from asr.inspect import inspect_features

    insp = inspect_features(rec, feats)
    encoder = rec.model.encoder
    width = encoder.cfg.hidden
    layers: list[dict[str, dict[str, np.ndarray]]] = []
    backward = getattr(encoder, "backward_layers", None)
    chunked = hasattr(encoder, "chunk")
    for i, out in enumerate(insp.layer_outputs):
        if i < len(insp.gates):
            g = insp.gates[i]
            layer = {"forward": {"input": g.input_gate, "forget": g.forget_gate, "output": g.output_gate, "cell": g.cell}}
            if backward is not None and not chunked:
                with torch.no_grad():
                    x = _stacked_input(rec, feats) if i == 0 else torch.from_numpy(insp.layer_outputs[i - 1])
                    b = lstm_gates(backward[i], x.flip(0))
                layer["backward"] = {"input": b.input_gate[::-1], "forget": b.forget_gate[::-1], "output": b.output_gate[::-1], "cell": b.cell[::-1]}
        else:
            layer = {"forward": {"hidden": out[:, :width]}}
            if out.shape[1] >= 2 * width:
                layer["backward"] = {"hidden": out[:, width : 2 * width]}
        layers.append(layer)
    return insp, layers


def _stacked_input(rec: Any, feats: torch.Tensor) -> torch.Tensor:
    lengths = torch.tensor([feats.shape[0]])
    x = rec.normalizer(feats[None].to(rec.device, torch.float32), lengths)
    stacked, out_lengths = rec.model.encoder_input(x, lengths)
    return stacked[0, : int(out_lengths[0])].float().cpu()


def file_inspection(model: Any, samples: np.ndarray, units: int = DEFAULT_UNITS, layers: list[int] | None = None) -> dict[str, Any]:
    """The whole of one recording (mono float32 at the model's rate): {"info": `ready_info`,
    "messages": one `inspect` message per layer of `layers` (counted from 1; None: all) over all
    its frames, the posteriors in the first}. ValueError for an export."""
    names = _layers(model)
    layers = layers or list(range(1, len(names) + 1))
    feats = model.extractor(torch.from_numpy(np.ascontiguousarray(samples, np.float32)))
    insp, values = file_gates(model, feats)
    info = ready_info(model, units)
    messages = [layer_message(n, 0, values[n - 1], info["layers"][n - 1]["units"], insp.log_probs if k == 0 else None) for k, n in enumerate(layers)]
    return {"info": info, "messages": messages}
