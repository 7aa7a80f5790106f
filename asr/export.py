"""Deployable exports of the acoustic model: TorchScript or ONNX, fp32 or int8.

An export holds the normalisation and the CTC model in one graph: raw (unnormalised) log-mel
features (B, T, D) float32 and their lengths (B,) int64 in, log-probabilities (B, T', V) and
output lengths (B,) out, batch and time dynamic. Feature extraction stays in Python
(`asr.features.FeatureExtractor`), so the file also carries what is needed to rebuild it and to
decode: a JSON document with the config (`Config.to_dict()`) and the token list.

- TorchScript (`.ts`): the JSON is the extra file `asr.json` inside the archive.
- ONNX (`.onnx`): the JSON is the model's `metadata_props` entry `asr`; loading needs only
  onnxruntime (`pip install 'asr[onnx]'`), exporting also onnx.

int8 is dynamic (weight-only) quantization: `torch.ao.quantization.quantize_dynamic` of the Linear
layers and of the layer types the encoder names (`Encoder.dynamic_quantization`: the LSTM kinds'
nn.LSTM) for TorchScript, `onnxruntime.quantization.quantize_dynamic` of the fp32 graph for ONNX.

    export("exp/an4/best.pt", "exp/an4/model.onnx", format="onnx", quantize="int8")
    model = ExportedModel.load("exp/an4/model.onnx")
    log_probs, out_lengths = model.log_probs(feats, lengths)

`ExportedModel.log_probs` and `Recognizer.log_probs` give an export and a checkpoint one interface: both
normalise a zero-padded batch of raw features exactly as the decoder does (each utterance
normalised, then padded with zeros), so an utterance gets the same output alone or in a batch.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from asr.checkpoint import Recognizer
from asr.config import Config, ConfigError
from asr.features import FeatureExtractor, Normalizer
from asr.fileio import atomic_write_bytes
from asr.model import CTCModel
from asr.text import Tokenizer

FORMAT = "asr-export"
VERSION = 1
FORMATS = ("torchscript", "onnx")
QUANTIZE = (None, "int8")
SUFFIXES = {"torchscript": ".ts", "onnx": ".onnx"}
EXTRA_FILE = "asr.json"  # TorchScript: extra file inside the archive
METADATA_KEY = "asr"  # ONNX: metadata_props key
INPUTS = ("features", "lengths")
OUTPUTS = ("log_probs", "out_lengths")
ONNX_OPSET = 17
_INSTALL_HINT = "pip install 'asr[onnx]' (onnx and onnxruntime)"


class ExportError(ValueError):
    """An export that cannot be written or a file that cannot be loaded as one; names the file."""


class ExportModule(nn.Module):
    """What an export computes: normalisation, padding set to zero, time padded to a multiple of
    the model's frame stack, then the CTC model.

    Padding the time axis here (always `stack - 1` frames, then cut to a multiple of `stack`, both
    traceable) means the model's own `stack_frames` never pads, so a trace taken at one length is
    right at every length.
    """

    def __init__(self, normalizer: Normalizer, model: CTCModel):
        super().__init__()
        self.normalizer = normalizer
        self.model = model
        self.stack = model.stack

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalizer(features, lengths)
        s = self.stack
        if s > 1:
            frames = x.shape[1]
            x = F.pad(x, (0, 0, 0, s - 1))[:, : (frames + s - 1) // s * s]
        return self.model(x, lengths)


# --------------------------------------------------------------------------------------- export


def export(
    checkpoint: str | Path | Recognizer,
    out: str | Path,
    format: str = "torchscript",
    quantize: str | None = None,
) -> Path:
    """Export a checkpoint's acoustic model, normalisation included, to `out`; returns `out`.

    `format` is "torchscript" or "onnx" (the usual suffixes are `.ts` and `.onnx`, see
    `SUFFIXES`; `out` is written as given), `quantize` None (fp32) or "int8". The file is written
    through a temporary file in the same folder and a rename, so `out` is either the old file or
    the whole new one. ONNX needs the packages of the `onnx` extra.
    """
    out = Path(out)
    if format not in FORMATS:
        raise ExportError(f"{out}: format must be one of {', '.join(FORMATS)}, got {format!r}")
    if quantize not in QUANTIZE:
        raise ExportError(f"{out}: quantize must be None or 'int8', got {quantize!r}")
    rec = checkpoint if isinstance(checkpoint, Recognizer) else Recognizer.from_checkpoint(checkpoint)
    meta = _metadata(rec, format, quantize)
    # A copy: moving to the CPU and eval() would otherwise change the caller's Recognizer.
    module = copy.deepcopy(ExportModule(rec.normalizer, rec.model)).to("cpu").eval()
    example = _example_inputs(rec.extractor.dim, rec.model.stack)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        if format == "torchscript":
            data = _torchscript_bytes(module, example, quantize, meta)
        else:
            data = _onnx_bytes(module, example, quantize, meta, out)
    atomic_write_bytes(out, data)
    return out


def _metadata(rec: Recognizer, format: str, quantize: str | None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "runtime": format,
        "quantize": quantize,
        "config": rec.cfg.to_dict(),
        "tokens": list(rec.tokenizer.tokens),
        "feature_dim": rec.extractor.dim,
        "inputs": list(INPUTS),
        "outputs": list(OUTPUTS),
        "torch_version": torch.__version__,
    }


def _example_inputs(dim: int, stack: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two utterances of different lengths, neither a multiple of the stack (when it is > 1)."""
    frames = 4 * stack + 1 if stack > 1 else 5
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, frames, dim, generator=gen)
    return feats, torch.tensor([frames, max(1, frames - stack - 1)], dtype=torch.long)


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide the deprecation notices of torch.jit / torch.ao / torch.onnx, the tracer's warning about
    `stack_frames`' padding test (taken care of by ExportModule) and onnxruntime.quantization's
    root-logger advice while exporting or loading; the exports' numbers are checked by the tests."""
    disabled = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)  # quantized-tensor creation notices
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(disabled)


def _torchscript_bytes(module: ExportModule, example: tuple[torch.Tensor, torch.Tensor], quantize: str | None, meta: dict[str, Any]) -> bytes:
    if quantize == "int8":
        layer_types = {nn.Linear, *module.model.encoder.dynamic_quantization}  # the output layer's, and what the encoder names
        module = torch.ao.quantization.quantize_dynamic(module, layer_types, dtype=torch.qint8)
    # Traced, not scripted: the encoders index a ModuleList with a loop variable, which
    # torch.jit.script refuses; the model has no data-dependent control flow left to lose
    # (ExportModule takes care of the frame stacking's padding).
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf, _extra_files={EXTRA_FILE: json.dumps(meta)})
    return buf.getvalue()


def _onnx_bytes(module: ExportModule, example: tuple[torch.Tensor, torch.Tensor], quantize: str | None, meta: dict[str, Any], out: Path) -> bytes:
    try:
        import onnx
    except ImportError:
        raise ExportError(f"{out}: exporting to ONNX needs the onnx package: {_INSTALL_HINT}") from None
    dynamic_axes = {
        "features": {0: "batch", 1: "frames"},
        "lengths": {0: "batch"},
        "log_probs": {0: "batch", 1: "out_frames"},
        "out_lengths": {0: "batch"},
    }
    buf = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad():
        # The TorchScript-based exporter (dynamo=False): nn.LSTM becomes an ONNX LSTM node, and
        # it needs no onnxscript.
        torch.onnx.export(
            module,
            example,
            buf,
            dynamo=False,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes=dynamic_axes,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    if quantize == "int8":
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic
        except ImportError:
            raise ExportError(f"{out}: int8 ONNX export needs onnxruntime: {_INSTALL_HINT}") from None
        with tempfile.TemporaryDirectory(prefix="asr-export-") as tmp:
            fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(proto, fp32)
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
            proto = onnx.load(int8)
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    proto.producer_name = "asr"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


# ------------------------------------------------------------------------------------- loading


def _zip_has_extra(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n == f"extra/{EXTRA_FILE}" or n.endswith(f"/extra/{EXTRA_FILE}") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _looks_like_onnx(path: Path) -> bool:
    """ONNX has no magic number; a ModelProto starts with ir_version (field 1, varint: byte 0x08).
    Taken as ONNX when the file starts so and is named .onnx or carries the asr metadata key."""
    try:
        with open(path, "rb") as f:
            if f.read(1) != b"\x08":
                return False
            if path.suffix.lower() == ".onnx":
                return True
            # metadata_props (field 14) is written after the graph: look near the end.
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - (1 << 20)))
            return f'"format": "{FORMAT}"'.encode() in f.read()
    except OSError:
        return False


def is_exported(path: str | Path) -> bool:
    """Whether `path` is an export (TorchScript or ONNX) rather than a checkpoint, by content:
    a zip holding `extra/asr.json` (TorchScript; a torch.save checkpoint is a zip without it) or
    an ONNX file (see `_looks_like_onnx`). False for a missing file. Whether the file really is a
    usable asr export is checked by `ExportedModel.load`."""
    path = Path(path)
    if not path.is_file():
        return False
    if zipfile.is_zipfile(path):
        return _zip_has_extra(path)
    return _looks_like_onnx(path)


class ExportedModel:
    """A loaded export, with the interface the decoder uses: `cfg`, `tokenizer`, `extractor`,
    `device` (always CPU) and `log_probs(feats, lengths)`."""

    device = torch.device("cpu")

    def __init__(self, path: Path, meta: dict[str, Any], runner: Any, runtime: str):
        self.path = path
        self.meta = meta
        self.runtime = runtime  # "torchscript" or "onnx"
        self.quantize: str | None = meta.get("quantize")
        try:
            self.cfg = Config.from_saved(meta["config"], where=f"{path} config")
            tokens = meta["tokens"]
            if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
                raise ExportError(f"{path}: the export's token list is missing or malformed")
            self.tokenizer = Tokenizer(tuple(tokens))
            self.extractor = FeatureExtractor(self.cfg.features)
        except (KeyError, TypeError, ConfigError) as e:
            raise ExportError(f"{path}: incomplete asr export metadata ({str(e).splitlines()[0]})") from None
        if meta.get("feature_dim", self.extractor.dim) != self.extractor.dim:
            raise ExportError(f"{path}: metadata feature_dim {meta['feature_dim']} does not match the config's {self.extractor.dim}")
        self._runner = runner

    @classmethod
    def load(cls, path: str | Path, threads: int = 0) -> ExportedModel:
        """Load a TorchScript or ONNX export (told apart by content). `threads` > 0 sets
        onnxruntime's intra-op threads; torch's own setting applies to TorchScript."""
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path}: file not found")
        if zipfile.is_zipfile(path):
            return cls._load_torchscript(path)
        if _looks_like_onnx(path):
            return cls._load_onnx(path, threads)
        raise ExportError(f"{path}: not an asr export (neither TorchScript nor ONNX)")

    @classmethod
    def _load_torchscript(cls, path: Path) -> ExportedModel:
        if not _zip_has_extra(path):
            raise ExportError(f"{path}: not an asr export (no {EXTRA_FILE} inside; a checkpoint?)")
        extra = {EXTRA_FILE: ""}
        try:
            with _quiet():
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as e:
            raise ExportError(f"{path}: not a loadable TorchScript export ({type(e).__name__})") from None
        module.eval()
        return cls(path, _parse_meta(path, extra[EXTRA_FILE]), module, "torchscript")

    @classmethod
    def _load_onnx(cls, path: Path, threads: int) -> ExportedModel:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError(f"{path}: an ONNX export needs onnxruntime: {_INSTALL_HINT}") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads > 0:
            opts.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ExportError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ExportError(f"{path}: not an asr export (no '{METADATA_KEY}' metadata)")
        names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if names != (list(INPUTS), list(OUTPUTS)):
            raise ExportError(f"{path}: unexpected model inputs/outputs {names}")
        return cls(path, _parse_meta(path, raw), session, "onnx")

    def log_probs(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A zero-padded (B, T, D) batch of raw (unnormalised) features and its lengths (B,) ->
        log-probabilities (B, T', V) float32 and output lengths (B,) int64, as CPU tensors."""
        if feats.dim() != 3 or feats.shape[2] != self.extractor.dim:
            raise ValueError(f"features must be (batch, frames, {self.extractor.dim}), got {tuple(feats.shape)}")
        if lengths.dim() != 1 or lengths.shape[0] != feats.shape[0]:
            raise ValueError(f"lengths must be ({feats.shape[0]},), got {tuple(lengths.shape)}")
        feats = feats.detach().to(device="cpu", dtype=torch.float32).contiguous()
        lengths = lengths.detach().to(device="cpu", dtype=torch.long).contiguous()
        if self.runtime == "torchscript":
            with torch.inference_mode():
                log_probs, out_lengths = self._runner(feats, lengths)
            return log_probs, out_lengths
        log_probs, out_lengths = self._runner.run(list(OUTPUTS), {"features": feats.numpy(), "lengths": lengths.numpy()})
        return torch.from_numpy(log_probs), torch.from_numpy(out_lengths)

    def __repr__(self) -> str:
        return f"ExportedModel({str(self.path)!r}, runtime={self.runtime!r}, quantize={self.quantize!r})"


def _parse_meta(path: Path, raw: str) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise ExportError(f"{path}: the export's metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExportError(f"{path}: not an asr export")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise ExportError(f"{path}: export version {meta.get('version')!r} is newer than this asr reads ({VERSION})")
    return meta
