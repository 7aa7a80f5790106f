"""asr: a BiLSTM-CTC speech recognition toolkit for the command line, and its Python API.

    import asr
    model = asr.load_model("exp/an4/model.pt")
    result = asr.transcribe(model, "speech.wav")           # or samples with sample_rate=16000
    print(result.text, [(w.word, w.start, w.end) for w in result.words])

`asr.train(cfg, out)` trains (cfg from `asr.load_config`), `asr.score(refs, hyps)` scores,
`asr.prepare(corpus, src, out)` writes manifests; `asr.DecodeOptions` / `asr.resolve_options`
say how to decode (beam search, lexicon, LM, weights, speed views).
"""

from asr.config import Config, load_config
from asr.corpora import prepare
from asr.decode import load_model
from asr.inference import Transcript, transcribe
from asr.options import DecodeOptions, resolve_options
from asr.scoring import score, score_files
from asr.stream import stream as stream
from asr.train import train

__version__ = "0.1.0"

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
