"""asr: a BiLSTM-CTC speech recognition toolkit for the command line, and its Python API.

    import asr
    model = asr.load_model("exp/an4/model.pt")
    result = asr.transcribe(model, "speech.wav")           # or samples with sample_rate=16000
    print(result.text, [(w.word, w.start, w.end) for w in result.words])

`asr.train(cfg, out)` trains (cfg from `asr.load_config`), `asr.score(refs, hyps)` scores,
`asr.prepare(corpus, src, out)` writes manifests; `asr.DecodeOptions` / `asr.resolve_options`
say how to decode (beam search, lexicon, LM, weights, speed views).

The names are imported on first use (PEP 562), so that `import asr.scoring` or a command that
runs no model does not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asr.config import Config, load_config
    from asr.corpora import prepare
    from asr.decode import load_model
    from asr.inference import Transcript, transcribe
    from asr.options import DecodeOptions, resolve_options
    from asr.scoring import score, score_files
    from asr.stream import stream as stream
    from asr.train import train

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "Config": "asr.config",
    "load_config": "asr.config",
    "prepare": "asr.corpora",
    "load_model": "asr.decode",
    "Transcript": "asr.inference",
    "transcribe": "asr.inference",
    "DecodeOptions": "asr.options",
    "resolve_options": "asr.options",
    "score": "asr.scoring",
    "score_files": "asr.scoring",
    "stream": "asr.stream",
    "train": "asr.train",
}

__all__ = [
    "Config",
    "DecodeOptions",
    "Transcript",
    "load_config",
    "load_model",
    "prepare",
    "resolve_options",
    "score",
    "score_files",
    "train",
    "transcribe",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'asr' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Function:
    """`asr.train` and `asr.stream` name both a submodule and the function the package exports;
    the import system binds the submodule to the package's name when it is first imported: the
    name stays the function (as when the package imported it eagerly)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, package: Any, owner: type | None = None) -> Any:
        if package is None:
            return self
        value = package.__dict__.get(self.name)
        if value is None or isinstance(value, types.ModuleType):
            value = getattr(importlib.import_module(_EXPORTS[self.name]), self.name)
        return value

    def __set__(self, package: Any, value: Any) -> None:
        package.__dict__[self.name] = value

    def __delete__(self, package: Any) -> None:
        package.__dict__.pop(self.name, None)


class _Package(types.ModuleType):
    train = _Function()
    stream = _Function()


sys.modules[__name__].__class__ = _Package
