"""Self-contained checkpoints: weights, config, tokens and normalisation statistics in one file,
loadable with `torch.load(weights_only=True)`."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from asr.config import Config, ConfigError
from asr.expdir import EPOCHS, ExpDir
from asr.features import FeatureExtractor, Normalizer
from asr.fileio import atomic_open
from asr.model import CTCModel
from asr.text import Tokenizer

FORMAT = "asr-ctc"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; names the file and the reason."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save via a temporary file and a rename, so a crash never leaves half a checkpoint."""
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with weights_only=True: a file carrying pickled code is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or ["unsafe content"])[0]
        raise CheckpointError(f"{path}: refused, not a plain-weights checkpoint ({first[:200]})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an asr checkpoint")
    return ckpt


def model_payload(cfg: Config, tokenizer: Tokenizer, normalizer: Normalizer, model: CTCModel) -> dict[str, Any]:
    """Everything needed to use the model, and nothing about how training stood. The normaliser's
    entry also keeps the lowest sample rate of the training audio (`audio_rate`, Hz; 0 unknown),
    against which inputs are checked for narrowband audio (`asr.audio.SampleRateCheck`)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.to_dict(),
        "tokens": list(tokenizer.tokens),
        "normalizer": {"mean": normalizer.mean.cpu(), "std": normalizer.std.cpu(), "audio_rate": int(getattr(normalizer, "audio_rate", 0))},
        "model": {k: v.cpu() for k, v in model.state_dict().items()},
    }


@dataclass
class Recognizer:
    """A trained model with its feature extraction and token set: audio in, log-probabilities out."""

    cfg: Config
    tokenizer: Tokenizer
    extractor: FeatureExtractor
    normalizer: Normalizer
    model: CTCModel

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> Recognizer:
        ckpt = load_checkpoint(path)
        try:
            cfg = Config.from_saved(ckpt["config"], where=f"{path} config")
            tokenizer = Tokenizer(tuple(ckpt["tokens"]))
            normalizer = Normalizer.from_checkpoint(ckpt["normalizer"], cfg.features)
            normalizer.audio_rate = int(ckpt["normalizer"].get("audio_rate", 0))
            extractor = FeatureExtractor(cfg.features)
            model = CTCModel(extractor.dim, len(tokenizer), cfg.model)
            model.load_state_dict(ckpt["model"])
        except (KeyError, RuntimeError, ConfigError) as e:
            raise CheckpointError(f"{path}: incomplete or mismatched checkpoint ({str(e).splitlines()[0]})") from None
        model.eval()
        return cls(cfg, tokenizer, extractor, normalizer.to(device), model.to(device))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def log_probs(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (unnormalised) zero-padded features (B, T, D) and lengths -> log-probabilities
        (B, T', V) and lengths T', on the CPU."""
        log_probs, out_lengths = self.model(self.normalizer(feats.to(self.device, torch.float32), lengths), lengths)
        return log_probs.float().cpu(), out_lengths.cpu()


def average_checkpoints(paths: list[str | Path], out: str | Path) -> None:
    """Write the element-wise mean of the weights of `paths` (the same model and settings) to
    `out`, as ESPnet's and icefall's model averaging; config, tokens and statistics are the first's."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    first = load_checkpoint(paths[0])
    total = {k: v.double() for k, v in first["model"].items()}
    for path in paths[1:]:
        ckpt = load_checkpoint(path)
        if ckpt["tokens"] != first["tokens"] or ckpt["model"].keys() != total.keys() or any(ckpt["model"][k].shape != v.shape for k, v in total.items()):
            raise CheckpointError(f"{path}: a different model from {paths[0]}; cannot average them")
        for k, v in ckpt["model"].items():
            total[k] += v.double()
    payload = {k: v for k, v in first.items() if k != "train_state"}
    payload["model"] = {k: (v / len(paths)).to(first["model"][k].dtype) for k, v in total.items()}
    save_checkpoint(out, payload)


def epoch_checkpoints(exp: str | Path, last: int) -> list[Path]:
    """The last `last` epoch checkpoints an experiment kept (train.average_last), oldest first."""
    found = ExpDir(exp).kept_epochs()
    if not found:
        raise CheckpointError(f"{exp}: no {EPOCHS}/epoch-*.pt (train with train.average_last = N to keep them)")
    if last < 1:
        raise CheckpointError(f"--last must be at least 1, got {last}")
    return found[-last:]
