"""Configuration: dataclasses, TOML on disk, `section.key=value` overrides."""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value that is missing, unknown or of the wrong type; names the key."""


@dataclass
class DataConfig:
    train: str = ""  # training manifest
    dev: str = ""  # validation manifest (WER every epoch, picks `best`)
    max_duration: float = 30.0  # longer training utterances are left out (seconds)
    nj: int = 0  # processes computing the features (0: the cores this process may use)


@dataclass
class FeatureConfig:
    kind: str = "fbank"  # fbank (log-mel) or mfcc
    sample_rate: int = 16000
    n_mels: int = 80
    n_mfcc: int = 40
    win_ms: float = 25.0
    hop_ms: float = 10.0
    # Lowest frequency of the mel filterbank, in Hz (Kaldi's --low-freq, default 20).
    f_min: float = 0.0
    # Mean normalisation: "global" (the training set's mean and variance) or "utterance" (each
    # utterance's own mean removed first, Kaldi's per-utterance apply-cmvn; then the global variance).
    cmvn: str = "global"
    # Subtract each frame's mean (its DC offset) before the window and FFT, as Kaldi's
    # compute-fbank-feats --remove-dc-offset=true (its default): a microphone's constant offset
    # then leaves the features unchanged. Checkpoints saved without this key load with false.
    remove_dc_offset: bool = True


@dataclass
class AugmentConfig:
    """Training data augmentation: SpecAugment masks on batches, speed perturbation and
    additive noise on the audio."""

    freq_masks: int = 2
    freq_width: int = 15  # maximum width of each frequency mask, in bins
    time_masks: int = 2
    time_width: int = 40  # maximum width of each time mask, in frames
    time_ratio: float = 0.1  # ... and at most this fraction of the utterance
    # Speed perturbation (Kaldi's 0.9/1.0/1.1): every epoch draws one of these speeds per training
    # utterance; the features of each speed are computed once and cached. [1.0]: off.
    speeds: list[float] = field(default_factory=lambda: [1.0])
    # Additive noise ([low, high] SNR in dB; []: off): every training utterance, at every speed,
    # also gets one copy with white, pink or brown noise at an SNR drawn from the range (both
    # drawn once per utterance, `asr.noise`), cached like the speeds; every epoch then draws
    # the clean or the noisy copy with equal chance.
    noise_snr: list[float] = field(default_factory=list)


CMVN_KINDS = ("global", "utterance")


@dataclass
class ModelConfig:
    kind: str = "blstm"  # a registered encoder: asr.encoders.encoder_names() lists them
    stack: int = 3  # frames concatenated and subsampled before the network
    hidden: int = 256  # units per direction (recurrent) or per layer (mlp)
    layers: int = 3
    dropout: float = 0.2
    context: int = 5  # mlp only: stacked frames each side of the one it classifies
    # One-direction recurrent kinds (lstm, gru, rnn): stacked frames of look-ahead L; the output
    # for frame t is the layers' output at t + L (the input followed by L zero frames). 0: none.
    lookahead: int = 0
    # lcblstm only: stacked frames per chunk, and frames after each chunk its backward direction
    # also reads (the right context); a frame's output waits for at most chunk - 1 + right_context
    # frames. With stack 3 and 10 ms hops, one stacked frame is 30 ms.
    chunk: int = 20
    right_context: int = 10

    @property
    def bidirectional(self) -> bool:
        """Whether the kind runs a backward direction too (the legacy `bidirectional` key), as
        its encoder declares; ConfigError for a kind that is not registered."""
        from asr.encoders import encoder_class  # the registry imports this module

        return encoder_class(self.kind).bidirectional

    @bidirectional.setter
    def bidirectional(self, value: bool) -> None:
        """The kind of the same family with or without the backward direction ("lstm", True ->
        "blstm"); ConfigError where the family has none (mlp, True)."""
        from asr.encoders import kind_with_direction

        self.kind = kind_with_direction(self.kind, value)


@dataclass
class TrainConfig:
    epochs: int = 30
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    final_lr_ratio: float = 0.02  # cosine decay ends at lr * final_lr_ratio
    clip_norm: float = 5.0
    batch_frames: int = 20000  # padded input frames per batch (bucketed by length)
    max_nonfinite: int = 20  # consecutive non-finite steps (skipped) before training stops
    accumulate: int = 1  # micro-batches per update (per process, when distributed)
    seed: int = 1
    threads: int = 0  # torch threads; 0 keeps torch's default
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    max_minutes: float = 0.0  # stop at the first epoch boundary past this much training time; 0: no limit
    probe_every: int = 0  # every N updates, per-time-step gradient norms of each layer -> probe.npz; 0: off
    plots: bool = True  # write EXP/plots/ at the end of each epoch
    tensorboard: bool = False  # TensorBoard event files in EXP/tensorboard/ (needs the tensorboard package)
    average_last: int = 0  # keep the last N epochs' weights and write averaged.pt, their mean; 0: off
    # glibc only: keep freed memory for reuse instead of handing every large tensor a fresh mmap
    # (faster CPU epochs: far fewer page faults; the process holds more memory)
    keep_freed_memory: bool = False
    # Intermediate CTC (Lee & Watanabe, 2021): loss = (1 - w) * CTC(top) + w * CTC(layer k), where layer
    # k's outputs go through the same output layer. Training only: the model and decoding do not change.
    inter_ctc_weight: float = 0.0  # w; 0: off
    inter_ctc_layer: int = 0  # k, counted from 1; 0: the middle layer, (model.layers + 1) // 2


@dataclass
class DecodeConfig:
    batch_frames: int = 40000  # padded feature frames per decoding batch
    beam_size: int = 50
    beam_threshold: float = 25.0
    lm_weight: float = 2.0
    word_score: float = 0.0
    # Test-time speed perturbation for the beam search: each utterance is also searched played at
    # these speeds (1.0 among them), every view's n best are pooled, and each candidate is rescored
    # by its CTC log-likelihood averaged over the views, plus the LM and word scores. [1.0]: off.
    speeds: list[float] = field(default_factory=lambda: [1.0])
    view_nbest: int = 10  # hypotheses taken from each view's search


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    @classmethod
    def from_saved(cls, d: dict[str, Any], where: str = "config") -> Config:
        """A config saved in a checkpoint or export: `from_dict`, with the defaults of keys that
        did not exist when it was saved set to what that model was trained with (a model saved
        before `features.remove_dc_offset` computed its features with the offset kept)."""
        features = d.get("features", {})
        if isinstance(features, dict) and "remove_dc_offset" not in features:
            d = {**d, "features": {**features, "remove_dc_offset": False}}
        return cls.from_dict(d, where)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> Config:
        cfg = cls()
        for section, values in d.items():
            if section not in _sections():
                raise ConfigError(f"{where}: unknown section [{section}] (known: {', '.join(_sections())})")
            if not isinstance(values, dict):
                raise ConfigError(f"{where}: [{section}] must be a table")
            for key, value in values.items():
                set_value(cfg, f"{section}.{key}", value, where)
        return cfg


def __getattr__(name: str) -> Any:
    """`MODEL_KINDS`, for code written when this module listed the kinds: the registered ones,
    asked of `asr.encoders.encoder_names()` each time."""
    if name == "MODEL_KINDS":
        from asr.encoders import encoder_names

        return encoder_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _sections() -> list[str]:
    return [f.name for f in fields(Config)]


def set_value(cfg: Config, dotted: str, value: Any, where: str = "config") -> None:
    """Set `section.key` to `value`, checking that the key exists and the type fits."""
    section, _, key = dotted.partition(".")
    if section not in _sections() or not key:
        raise ConfigError(f"{where}: unknown key '{dotted}' (sections: {', '.join(_sections())})")
    obj = getattr(cfg, section)
    if dotted == "model.bidirectional":  # legacy key: true -> the kind's bidirectional form, false -> one direction
        try:
            obj.bidirectional = _coerce(value, "bool", f"{where}: {dotted}")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        return
    types = {f.name: f.type for f in fields(obj)}
    if key not in types:
        raise ConfigError(f"{where}: unknown key '{dotted}' (known: {', '.join(types)})")
    if dotted == "augment.noise_snr" and value == []:  # off: the one list that may be empty
        value = []
    else:
        value = _coerce(value, types[key], f"{where}: {dotted}")
    if dotted == "augment.noise_snr":
        check_noise_snr(value, where)
    if dotted == "model.kind":
        from asr.encoders import encoder_class  # the registry of model families imports this module

        try:
            encoder_class(value)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if dotted == "features.cmvn" and value not in CMVN_KINDS:
        raise ConfigError(f"{where}: features.cmvn must be one of {', '.join(CMVN_KINDS)}, got {value!r}")
    if dotted == "decode.speeds" and (1.0 not in value or len(set(value)) < len(value) or any(not 0.5 <= v <= 2.0 for v in value)):
        raise ConfigError(f"{where}: decode.speeds must be distinct factors between 0.5 and 2.0, 1.0 among them, got {value}")
    if dotted in ("decode.view_nbest", "decode.beam_size") and value < 1:
        raise ConfigError(f"{where}: {dotted} must be at least 1, got {value}")
    if dotted == "data.nj" and value < 0:
        raise ConfigError(f"{where}: data.nj must be 0 (the cores) or a number of processes, got {value}")
    if dotted == "decode.beam_threshold" and not value > 0:
        raise ConfigError(f"{where}: decode.beam_threshold must be positive, got {value}")
    if dotted in ("decode.lm_weight", "decode.word_score") and not math.isfinite(value):
        raise ConfigError(f"{where}: {dotted} must be a finite number, got {value}")
    setattr(obj, key, value)


NOISE_SNR_RANGE = (-30.0, 100.0)  # dB; beyond it a "noisy copy" is all noise or no noise


def check_noise_snr(value: list[float], where: str = "config") -> None:
    """ConfigError unless `augment.noise_snr` is [] or [low, high] with low <= high, both within
    NOISE_SNR_RANGE."""
    lo, hi = NOISE_SNR_RANGE
    if value and (len(value) != 2 or not lo <= value[0] <= value[1] <= hi):
        raise ConfigError(f"{where}: augment.noise_snr must be [low, high] in dB with {lo:g} <= low <= high <= {hi:g}, or [] (off), got {value}")


def _coerce(value: Any, type_name: str, what: str) -> Any:
    # Annotations are strings here (from __future__ import annotations).
    if type_name == "bool":
        if isinstance(value, bool):
            return value
    elif type_name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif type_name == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif type_name == "str":
        if isinstance(value, str):
            return value
    elif type_name == "list[float]":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, list) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [float(v) for v in value]
        type_name = "a non-empty list of numbers"
    raise ConfigError(f"{what} must be {type_name}, got {value!r}")


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value`; the value is read as TOML (numbers, booleans) or else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' must look like section.key=value")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file, then `section.key=value` overrides. A recipe's config.toml
    is a training config too: its [recipe] table, which only `asr recipe` reads, is skipped."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        try:
            d = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        d.pop("recipe", None)  # a recipe's own table (corpus, splits, download), read by asr.recipe
        cfg = Config.from_dict(d, where=str(path))
    for text in overrides or []:
        key, value = parse_override(text)
        set_value(cfg, key, value, where="--set")
    return cfg


def load_decode_settings(cfg: DecodeConfig, path: str | Path) -> None:
    """Apply the [decode] table of a TOML file (such as one written by `asr tune-decoder`)."""
    path = Path(path)
    try:
        d = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    holder = Config(decode=cfg)
    for key, value in d.get("decode", {}).items():
        set_value(holder, f"decode.{key}", value, where=str(path))


def to_toml(d: dict[str, dict[str, Any]]) -> str:
    """TOML text for a two-level table of scalars and lists (what Config holds)."""
    lines = []
    for section, values in d.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")
