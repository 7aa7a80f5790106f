"""The acoustic model: frame stacking, a (bi)directional LSTM, a linear layer to the tokens; CTC loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from asr.config import ModelConfig


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of a (B, T, D) batch within its own length; padding stays at the end."""
    steps = torch.arange(x.shape[1], device=x.device)
    idx = lengths.to(x.device)[:, None] - 1 - steps[None, :]
    idx = torch.where(idx >= 0, idx, steps[None, :])
    return x.gather(1, idx[:, :, None].expand(-1, -1, x.shape[2]))


class CTCModel(nn.Module):
    """Stacked frames -> LSTM layers -> linear -> log-softmax over the tokens.

    The backward direction of each layer runs on every utterance reversed within its own length,
    so padding always comes after the real frames and never reaches them: a batched utterance gets
    exactly the output it gets alone. On a CPU this is about 1.7x faster than packed sequences
    (bench/model_step.py), and length bucketing keeps the padding itself to a few per cent.
    """

    def __init__(self, input_dim: int, vocab_size: int, cfg: ModelConfig):
        super().__init__()
        if not 1 <= cfg.stack <= 8:
            raise ValueError(f"model.stack must be between 1 and 8, got {cfg.stack}")
        self.cfg = cfg
        self.stack = cfg.stack
        directions = 2 if cfg.bidirectional else 1
        sizes = [input_dim * cfg.stack] + [cfg.hidden * directions] * (cfg.layers - 1)
        self.forward_layers = nn.ModuleList(nn.LSTM(n, cfg.hidden, batch_first=True) for n in sizes)
        self.backward_layers = nn.ModuleList(nn.LSTM(n, cfg.hidden, batch_first=True) for n in sizes) if cfg.bidirectional else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(cfg.hidden * directions, vocab_size)

    def stack_frames(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate each `stack` consecutive frames into one: (B, T, D) -> (B, ceil(T/s), D*s)."""
        s = self.stack
        batch, frames, dim = x.shape
        pad = (-frames) % s
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(batch, (frames + pad) // s, dim * s), (lengths + s - 1) // s

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T, D) -> top LSTM layer's outputs (B, T', H*directions) and lengths T'."""
        x, lengths = self.stack_frames(x, lengths)
        for i, forward in enumerate(self.forward_layers):
            if i > 0:
                x = self.dropout(x)
            y, _ = forward(x)
            if self.backward_layers is not None:
                yb, _ = self.backward_layers[i](reverse_padded(x, lengths))
                y = torch.cat([y, reverse_padded(yb, lengths)], dim=-1)
            x = y
        return x, lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T, D) with lengths -> log-probabilities (B, T', V) and their lengths."""
        y, lengths = self.encode(x, lengths)
        return self.output(self.dropout(y)).log_softmax(-1), lengths


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
