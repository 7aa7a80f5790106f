"""Commands that run no model start without importing torch (`asr/__init__.py` imports its names
on first use, `cli/` imports the library inside each command); the Python API still gives every
name as before, and the transcribe path imports nothing it does not use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
# Imported by no command unless it uses them (plots, the server, ONNX, VAD, resampling, scoring tools).
HEAVY = ["librosa", "matplotlib", "fastapi", "uvicorn", "starlette", "scipy", "pandas", "onnx", "onnxruntime", "silero_vad", "jiwer", "sounddevice"]

RUN_ASR = """
import json, runpy, sys
sys.argv = ["asr", *json.loads(sys.argv[1])]
try:
    runpy.run_module("cli.main", run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if "." not in m)}), file=sys.stderr)
"""


def asr_modules(*args: object, cwd: Path | None = None) -> tuple[int, set[str], str]:
    """Run `asr args...` in a fresh interpreter: its exit status, the top-level modules it imported, its stdout."""
    r = subprocess.run([sys.executable, "-c", RUN_ASR, json.dumps([str(a) for a in args])], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=120)
    report = json.loads(r.stderr.strip().splitlines()[-1])
    return report["code"], set(report["modules"]), r.stdout


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("startup")
    (root / "ref.jsonl").write_text('{"id": "a", "text": "yes no yes"}\n{"id": "b", "text": "no"}\n')
    (root / "hyp.txt").write_text("a yes yes\nb no\n")
    return root / "ref.jsonl", root / "hyp.txt"


@pytest.mark.parametrize(
    "args",
    [["--help"], ["prepare", "--help"], ["score", "--help"], ["transcribe", "--help"], ["stream", "--help"], ["serve", "--help"], ["lm", "build", "--help"]],
    ids=lambda a: " ".join(a),
)
def test_help_imports_no_torch(args):
    code, modules, out = asr_modules(*args)
    assert code == 0 and "Usage" in out
    assert "torch" not in modules and "torchaudio" not in modules
    assert not modules & set(HEAVY), modules & set(HEAVY)


def test_score_prepare_lm_and_export_data_import_no_torch(transcripts, tmp_path):
    ref, hyp = transcripts
    code, modules, out = asr_modules("score", ref, hyp)
    assert code == 0 and "WER" in out and "torch" not in modules

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    import numpy as np
    import soundfile as sf

    for i, text in enumerate(["yes", "no yes"]):
        sf.write(corpus / f"u{i}.wav", np.zeros(1600, np.float32), 16000)
        (corpus / f"u{i}.txt").write_text(text)
    code, modules, out = asr_modules("prepare", "folder", corpus, tmp_path / "data")
    assert code == 0 and (tmp_path / "data").is_dir() and "torch" not in modules, out
    manifest = tmp_path / "data" / "all.jsonl"
    code, modules, _ = asr_modules("lm", "build", manifest, "--order", 2, "--out", tmp_path / "lm.arpa")
    assert code == 0 and (tmp_path / "lm.arpa").is_file() and "torch" not in modules
    code, modules, _ = asr_modules("export-data", manifest, tmp_path / "kaldi")
    assert code == 0 and (tmp_path / "kaldi" / "text").is_file() and "torch" not in modules


def test_a_parse_error_imports_no_torch():
    code, modules, _ = asr_modules("transcribe", "model.pt")
    assert code == 2 and "torch" not in modules


def test_transcribe_imports_nothing_it_does_not_use(trained, tone_corpus):
    model = trained / "best.pt"
    clip = next(tone_corpus["test"].parent.glob("*.wav"))
    code, modules, out = asr_modules("transcribe", model, clip)
    assert code == 0 and str(clip) in out
    assert "torch" in modules
    assert not modules & set(HEAVY), modules & set(HEAVY)


API = """
import sys
import asr
assert "torch" not in sys.modules, "import asr imported torch"
from asr import score, score_files, load_config, Config, prepare
from asr.scoring import read_transcripts
assert "torch" not in sys.modules, "the scoring and config names imported torch"
assert asr.score is score and callable(asr.prepare)
from asr.stream import Stream                  # the submodule asr.stream is bound to the package's name here
import asr.train                               # and asr.train
assert callable(asr.stream) and asr.stream.__name__ == "stream", asr.stream
assert callable(asr.train) and asr.train.__name__ == "train", asr.train
from asr import transcribe, load_model, DecodeOptions, resolve_options, Transcript, train, stream
assert asr.transcribe is transcribe and asr.stream is stream and asr.train is train
from asr import lm                             # a submodule, not an exported name
assert lm.__name__ == "asr.lm"
assert set(asr.__all__) <= set(dir(asr)) and "transcribe" in dir(asr)
try:
    asr.no_such_name
except AttributeError as e:
    assert "no_such_name" in str(e)
else:
    raise AssertionError("asr.no_such_name")
print("ok")
"""


def test_python_api_names_stay_the_same():
    r = subprocess.run([sys.executable, "-c", API], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_python_api_transcribes_after_a_lazy_import(trained, tone_corpus):
    code = f"""
import asr
model = asr.load_model({str(trained / "best.pt")!r})
print(asr.transcribe(model, {str(next(tone_corpus["test"].parent.glob("*.wav")))!r}).text)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
