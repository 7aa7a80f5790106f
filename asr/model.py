"""The acoustic model: frame stacking, an encoder (one of the model families of `asr.encoders`,
picked by `model.kind`), a linear layer to the tokens; CTC loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from asr.config import ModelConfig
from asr.encoders import build_encoder, context_window, mask_padding, reverse_padded

__all__ = ["CTCModel", "context_window", "count_parameters", "ctc_loss", "mask_padding", "reverse_padded"]


class CTCModel(nn.Module):
    """Features (B, T, D) -> padding zeroed -> `stack` frames concatenated into one -> the encoder
    of `cfg.kind` (`encoder`, see `asr.encoders`) -> linear `output` -> log-softmax over the tokens.

    Checkpoints keep the layout they had before encoders were modules of their own: the encoder's
    state-dict entries sit at the top level (`forward_layers.0.weight_ih_l0`, `hidden_layers.0.bias`,
    ...) beside `output.*`. `state_dict()` writes them so and `load_state_dict()` takes them so;
    this is the one place that maps them. Attributes the model does not have are looked up on its
    encoder (`model.forward_layers` is `model.encoder.forward_layers`).

    Raises ValueError for a stack outside 1-8, fewer than one layer or unit, and ConfigError (a
    ValueError) for a kind that is not registered; the encoder checks its own settings.
    """

    def __init__(self, input_dim: int, vocab_size: int, cfg: ModelConfig):
        super().__init__()
        if not 1 <= cfg.stack <= 8:
            raise ValueError(f"model.stack must be between 1 and 8, got {cfg.stack}")
        if cfg.layers < 1 or cfg.hidden < 1:
            raise ValueError(f"model.layers and model.hidden must be at least 1, got {cfg.layers} and {cfg.hidden}")
        self.cfg = cfg
        self.stack = cfg.stack
        self.dropout = nn.Dropout(cfg.dropout)
        # Parameters are created encoder first, then the output layer: seeded initial weights
        # depend on the order.
        self.encoder = build_encoder(input_dim * cfg.stack, cfg)
        self.output = nn.Linear(self.encoder.output_dim, vocab_size)
        clash = {k.split(".", 1)[0] for k in self.encoder.state_dict()} & {"output"}
        if clash:
            raise ValueError(f"model.kind {cfg.kind!r}: the encoder's state-dict entries {sorted(clash)} would clash with the model's own")
        self.register_state_dict_post_hook(_encoder_entries_at_top)
        self.register_load_state_dict_pre_hook(_encoder_entries_from_top)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            encoder = self.__dict__.get("_modules", {}).get("encoder")
            if encoder is None or name.startswith("__") or not hasattr(encoder, name):
                raise
            return getattr(encoder, name)

    def stack_frames(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate each `stack` consecutive frames into one: (B, T, D) -> (B, ceil(T/s), D*s)."""
        s = self.stack
        batch, frames, dim = x.shape
        pad = (-frames) % s
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        return x.reshape(batch, (frames + pad) // s, dim * s), (lengths + s - 1) // s

    def encoder_input(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the encoder reads: features (B, T, D) with frames past each length set to zero,
        stacked: (B, T', D*stack) and lengths T' = ceil(T/stack). Zeroing first means whatever a
        batch holds in its padding never reaches the encoder, not even through the last stacked
        frame of an utterance whose length is not a multiple of the stack."""
        return self.stack_frames(mask_padding(x, lengths), lengths)

    def encode(self, x: torch.Tensor, lengths: torch.Tensor, layer_outputs: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T, D) -> the encoder's top outputs (B, T', encoder.output_dim) and lengths T'.

        With a list as `layer_outputs`, every encoder layer's output is appended to it, e.g. to
        take gradients with respect to them."""
        x, lengths = self.encoder_input(x, lengths)
        return self.encoder(x, lengths, layer_outputs)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, layer_outputs: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T, D) with lengths -> log-probabilities (B, T', V) and their lengths."""
        y, lengths = self.encode(x, lengths, layer_outputs)
        return self.layer_log_probs(y), lengths

    def layer_log_probs(self, layer_output: torch.Tensor) -> torch.Tensor:
        """An encoder layer's outputs (B, T', encoder.output_dim) through the output layer:
        log-probabilities (B, T', V), as intermediate CTC needs them."""
        return self.output(self.dropout(layer_output)).log_softmax(-1)

    def layer_names(self) -> list[str]:
        """One label per encoder layer, in the order `encode` appends their outputs."""
        return self.encoder.layer_names()


def _encoder_entries_at_top(module: CTCModel, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any]) -> None:
    """state_dict post-hook: `encoder.X` -> `X`, in place and in order (the model's entries are the
    last ones written when it runs, so re-inserting them keeps the order of the whole dict)."""
    inner = prefix + "encoder."
    mine = [k for k in state_dict if k.startswith(prefix)]
    if not any(k.startswith(inner) for k in mine):
        return
    for key in mine:
        value = state_dict.pop(key)
        state_dict[prefix + key[len(inner) :] if key.startswith(inner) else key] = value


def _encoder_entries_from_top(module: CTCModel, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: every entry under `prefix` but the model's own (`output.*`) is
    the encoder's: `X` -> `encoder.X`."""
    own = tuple(f"{prefix}{name}." for name in module._modules if name != "encoder") + tuple(prefix + n for n in (*module._parameters, *module._buffers))
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(own)]:
        state_dict[f"{prefix}encoder.{key[len(prefix) :]}"] = state_dict.pop(key)


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
