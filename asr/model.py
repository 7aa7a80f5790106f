"""The acoustic model: frame stacking, a bidirectional LSTM, a linear layer to the tokens; CTC loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from asr.config import ModelConfig


class CTCModel(nn.Module):
    def __init__(self, input_dim: int, vocab_size: int, cfg: ModelConfig):
        super().__init__()
        if not 1 <= cfg.stack <= 8:
            raise ValueError(f"model.stack must be between 1 and 8, got {cfg.stack}")
        self.cfg = cfg
        self.stack = cfg.stack
        self.lstm = nn.LSTM(
            input_dim * cfg.stack,
            cfg.hidden,
            num_layers=cfg.layers,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
            bidirectional=cfg.bidirectional,
            batch_first=True,
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.output = nn.Linear(cfg.hidden * (2 if cfg.bidirectional else 1), vocab_size)

    def stack_frames(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate each `stack` consecutive frames into one: (B, T, D) -> (B, ceil(T/s), D*s)."""
        s = self.stack
        batch, frames, dim = x.shape
        pad = (-frames) % s
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(batch, (frames + pad) // s, dim * s), (lengths + s - 1) // s

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T, D) with lengths -> log-probabilities (B, T', V) and their lengths."""
        x, lengths = self.stack_frames(x, lengths)
        # Packing makes the LSTM skip padded frames entirely.
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = self.lstm(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
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
