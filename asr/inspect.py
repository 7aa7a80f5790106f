"""Looking inside a model: gradients through time (the probe) and LSTM gates over one utterance.

The drawing is in `asr.plots`; everything here returns arrays, so it can be tested and reused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asr.encoders import GateTrace, Unrolled, lstm_gates, unroll
from asr.fileio import atomic_open
from asr.model import CTCModel, ctc_loss

__all__ = [
    "GateTrace",
    "Inspection",
    "Probe",
    "Unrolled",
    "ctc_probe_loss",
    "first_last_ratio",
    "gradient_norms_through_time",
    "greedy_emissions",
    "inspect_audio",
    "inspect_features",
    "load_probe",
    "lstm_gates",
    "unroll",
]

# ------------------------------------------------------------------------ gradients through time

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (log_probs, out_lengths) -> scalar loss


def gradient_norms_through_time(model: CTCModel, x: torch.Tensor, lengths: torch.Tensor, loss_fn: LossFn) -> np.ndarray:
    """||d loss / d h_t|| for every layer and output time step t: (layers, T') float32.

    h_t is a layer's output at step t; what that takes in is the encoder's to say
    (`Encoder.gradient_norms`): for a recurrent layer its hidden state, the gradient taking in
    every path through the later steps (backpropagation through time; see `unroll`), both
    directions together for a bidirectional layer (the norm of the concatenation); for an MLP
    layer its activations. The norm is over the batch and the units. The model runs in eval mode
    (no dropout), and gradients are taken with respect to the states only: parameters and their
    `.grad` stay as they are."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            h, out_lengths = model.encoder_input(x, lengths)
            norms = model.encoder.gradient_norms(h, out_lengths, lambda top: loss_fn(model.layer_log_probs(top), out_lengths))
    finally:
        model.train(was_training)
    return norms.float().cpu().numpy()


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
    gates: list[GateTrace]  # what the encoder shows (LSTM kinds: each layer's forward direction); may be empty


def greedy_emissions(log_probs: np.ndarray, blank: int = 0) -> list[tuple[int, int]]:
    """(frame, token) where greedy CTC decoding emits a token: the best token is not blank and
    differs from the previous frame's best."""
    best = log_probs.argmax(-1)
    return [(t, int(k)) for t, k in enumerate(best) if k != blank and (t == 0 or best[t - 1] != k)]


@torch.no_grad()
def inspect_features(rec, feats: torch.Tensor) -> Inspection:
    """Run a checkpoint's model (`asr.checkpoint.Recognizer`) on one utterance's raw features
    (T, D) and collect its posteriors, layer outputs and the gates its encoder has (LSTM kinds)."""
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
    stacked, _ = model.encoder_input(x, lengths)
    gates = model.encoder.gates(stacked[0, :n])
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
