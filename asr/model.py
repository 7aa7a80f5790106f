"""The acoustic model: frame stacking, a recurrent network (LSTM, GRU or tanh RNN, one or both
directions) or a feed-forward network over a window of frames, a linear layer to the tokens; CTC loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asr.config import MODEL_KINDS, ModelConfig

CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a (B, T, D) batch within its own length; padding stays at the end."""
    steps = torch.arange(x.shape[1], device=x.device)
    idx = lengths.to(x.device)[:, None] - 1 - steps[None, :]
    idx = torch.where(idx >= 0, idx, steps[None, :])
    return x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[2]))


def cell_type(kind: str) -> str:
    """The family of a model kind: "lstm", "gru", "rnn" or "mlp" ("blstm" -> "lstm")."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"model.kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    return kind if kind == "mlp" else kind.removeprefix("b")


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


class CTCModel(nn.Module):
    """Stacked frames -> recurrent layers (or a feed-forward network) -> linear -> log-softmax over the tokens.

    `model.kind` picks the network: blstm (default), lstm, bgru, gru, brnn, rnn (b: both
    directions) run one `nn.LSTM`/`nn.GRU`/`nn.RNN` per layer and direction (`forward_layers`,
    `backward_layers`); mlp runs `layers` ReLU layers (`hidden_layers`) on a window of
    `2 * context + 1` stacked frames.

    The backward direction of each layer runs on every utterance reversed within its own length,
    so padding always comes after the real frames and never reaches them; the MLP's window sees
    zeros past an utterance's end. Either way a batched utterance gets exactly the output it gets
    alone. On a CPU this is about 1.7-2x faster than packed sequences (bench/model_step.py), and
    length bucketing keeps the padding itself to a few per cent.
    """

    def __init__(self, input_dim: int, vocab_size: int, cfg: ModelConfig):
        super().__init__()
        if not 1 <= cfg.stack <= 8:
            raise ValueError(f"model.stack must be between 1 and 8, got {cfg.stack}")
        if cfg.layers < 1 or cfg.hidden < 1:
            raise ValueError(f"model.layers and model.hidden must be at least 1, got {cfg.layers} and {cfg.hidden}")
        self.cfg = cfg
        self.stack = cfg.stack
        self.cell = cell_type(cfg.kind)
        self.dropout = nn.Dropout(cfg.dropout)
        frame_dim = input_dim * cfg.stack
        if self.cell == "mlp":
            if not 0 <= cfg.context <= 50:
                raise ValueError(f"model.context must be between 0 and 50, got {cfg.context}")
            sizes = [frame_dim * (2 * cfg.context + 1)] + [cfg.hidden] * (cfg.layers - 1)
            self.hidden_layers = nn.ModuleList(nn.Linear(n, cfg.hidden) for n in sizes)
            self.output = nn.Linear(cfg.hidden, vocab_size)
            return
        directions = 2 if cfg.bidirectional else 1
        sizes = [frame_dim] + [cfg.hidden * directions] * (cfg.layers - 1)
        cell = CELLS[self.cell]
        self.forward_layers = nn.ModuleList(cell(n, cfg.hidden, batch_first=True) for n in sizes)
        self.backward_layers = nn.ModuleList(cell(n, cfg.hidden, batch_first=True) for n in sizes) if cfg.bidirectional else None
        self.output = nn.Linear(cfg.hidden * directions, vocab_size)

    def stack_frames(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate each `stack` consecutive frames into one: (B, T, D) -> (B, ceil(T/s), D*s)."""
        s = self.stack
        batch, frames, dim = x.shape
        pad = (-frames) % s
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(batch, (frames + pad) // s, dim * s), (lengths + s - 1) // s

    def encode(self, x: torch.Tensor, lengths: torch.Tensor, layer_outputs: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T, D) -> top layer's outputs (B, T', H*directions) and lengths T'.

        With a list as `layer_outputs`, every layer's output (both directions concatenated) is
        appended to it, e.g. to take gradients with respect to them."""
        if self.cell == "mlp":
            x, lengths = self.stack_frames(mask_padding(x, lengths), lengths)
            x = context_window(x, self.cfg.context)
            for i, layer in enumerate(self.hidden_layers):
                x = torch.relu(layer(self.dropout(x) if i > 0 else x))
                if layer_outputs is not None:
                    layer_outputs.append(x)
            return x, lengths
        x, lengths = self.stack_frames(x, lengths)
        for i, forward in enumerate(self.forward_layers):
            if i > 0:
                x = self.dropout(x)
            y, _ = forward(x)
            if self.backward_layers is not None:
                yb, _ = self.backward_layers[i](reverse_padded(x, lengths))
                y = torch.cat([y, reverse_padded(yb, lengths)], dim=-1)
            x = y
            if layer_outputs is not None:
                layer_outputs.append(x)
        return x, lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, layer_outputs: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T, D) with lengths -> log-probabilities (B, T', V) and their lengths."""
        y, lengths = self.encode(x, lengths, layer_outputs)
        return self.layer_log_probs(y), lengths

    def layer_log_probs(self, layer_output: torch.Tensor) -> torch.Tensor:
        """A hidden layer's outputs (B, T', H*directions) through the output layer: log-probabilities
        (B, T', V), as intermediate CTC needs them."""
        return self.output(self.dropout(layer_output)).log_softmax(-1)

    def layer_names(self) -> list[str]:
        """One label per layer, in the order `encode` appends their outputs."""
        kind, n = self.cfg.kind, self.cfg.hidden
        if self.cell == "mlp":
            return [f"layer {i + 1} (mlp, {n} units)" for i in range(self.cfg.layers)]
        units = f"2 x {n}" if self.backward_layers is not None else f"{n}"
        return [f"layer {i + 1} ({kind}, {units} units)" for i in range(self.cfg.layers)]


def ctc_loss(log_probs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Mean over utterances of the CTC loss summed over each utterance's frames."""
    loss = F.ctc_loss(
        log_probs.transpose(0, 1).float(),
        targets,
        lengths,
        target_lengths,
        blank=0,
        reduction="sum",
        zero_infinity=True,
    )
    return loss / log_probs.shape[0]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
