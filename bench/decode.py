"""Decoding speed and memory on a test set: real-time factor (processing time / audio time),
WER and peak RSS for greedy, beam, beam + LM, beam + LM with test-time speed views
(0.9/1.0/1.1), and the exported / int8-quantized model.

    python bench/decode.py --exp exp/an4 [--set test] [--threads 1]

Each mode runs in its own process, so its peak RSS is its own. Needs a finished recipe run
(model.pt, data/<set>.jsonl, lm/), e.g. `asr recipe run an4 --data ../shared/data/an4 --out exp/an4`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ["greedy", "beam", "beam+lm", "beam+lm+views", "torchscript", "torchscript-int8", "onnx-int8", "torchscript-int8+lm"]


def run_mode(exp: Path, test_set: str, mode: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from asr.decode import decode_manifest, load_model
    from asr.export import export
    from asr.options import make_decoder, resolve_options
    from asr.scoring import score_files

    manifest = exp / "data" / f"{test_set}.jsonl"
    lm = sorted((exp / "lm").glob("*gram.arpa"))
    lexicon, tuned = exp / "lm" / "lexicon.txt", exp / "lm" / "decode.toml"
    model_path = exp / "model.pt"
    with tempfile.TemporaryDirectory() as tmp:
        if mode.startswith(("torchscript", "onnx")):
            fmt = "onnx" if mode.startswith("onnx") else "torchscript"
            model_path = export(model_path, Path(tmp) / f"model.{'onnx' if fmt == 'onnx' else 'ts'}", fmt, "int8" if "int8" in mode else None)
        t0 = time.perf_counter()
        model = load_model(model_path)
        use_lm = mode.endswith(("lm", "lm+views"))
        options = resolve_options(
            model.cfg.decode,
            tuned if use_lm and tuned.exists() else None,
            beam=mode != "greedy" and not mode.startswith(("torchscript", "onnx")),
            lexicon=lexicon if use_lm else None,
            lm=lm[-1] if use_lm else None,
            speeds=[0.9, 1.0, 1.1] if mode.endswith("+views") else [1.0],  # whatever the checkpoint carries
        )
        decoder = make_decoder(model.tokenizer, options)
        load_seconds = time.perf_counter() - t0
        hyp = Path(tmp) / "hyp.jsonl"
        report = decode_manifest(model, manifest, hyp, decoder)
        result = score_files(manifest, hyp)
    return {
        "mode": mode,
        "utterances": report.decoded,
        "audio_s": round(report.audio_seconds, 1),
        "decode_s": round(report.seconds, 2),
        "rtf": round(report.seconds / report.audio_seconds, 4),
        "load_s": round(load_seconds, 2),
        "wer": result.wer,
        "cer": result.cer,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", type=Path, default=Path("exp/an4"))
    p.add_argument("--set", default="test")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 = one core)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode in this process
    args = p.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.exp, args.set, args.mode, args.threads)))
        return
    print(f"{'mode':22} {'utts':>5} {'audio s':>8} {'decode s':>9} {'RTF':>8} {'WER %':>6} {'CER %':>6} {'peak RSS MB':>12}")
    rows = []
    for mode in args.modes.split(","):
        if mode.startswith("onnx"):
            try:
                import onnxruntime  # noqa: F401
            except ImportError:
                print(f"{mode:22} skipped: onnxruntime not installed (pip install -e '.[onnx]')")
                continue
        out = subprocess.run([sys.executable, __file__, "--exp", str(args.exp), "--set", args.set, "--threads", str(args.threads), "--mode", mode], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{mode:22} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['mode']:22} {r['utterances']:5d} {r['audio_s']:8.1f} {r['decode_s']:9.2f} {r['rtf']:8.4f} {r['wer']:6.2f} {r['cer']:6.2f} {r['peak_rss_mb']:12d}")
    base = next((r for r in rows if r["mode"] == "greedy"), None)
    if base:
        for r in rows:
            if r is not base:
                print(f"{r['mode']}: {r['decode_s'] / base['decode_s']:.2f}x the greedy checkpoint's time, WER {r['wer'] - base['wer']:+.2f}")


if __name__ == "__main__":
    main()
