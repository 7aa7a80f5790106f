"""Scale: decoding and feature preparation over several processes, against one process.

    python bench/scale.py decode [--exp exp/an4] [--set test] [--lm] [--repeats 3]

`decode`: `asr decode` of a test set in one process of one torch thread against `--nj 2` (two
workers of one thread each), each as its own command; prints the wall time of each command and
the decoding time it reports, the ratio one process / two (target: >= 1.7), and whether the two
outputs are the same bytes. Each is run `--repeats` times, alternating, and the fastest is kept
(the machine may be shared). Needs a finished recipe run (model.pt, data/<set>.jsonl; lm/ for
--lm), e.g. `asr recipe run an4 --data ../shared/data/an4 --out exp/an4`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DECODED = re.compile(r"decoded (\d+) utterances \((\d+) failed\) in ([\d.]+) s")


def asr(*args: object) -> tuple[float, str]:
    """Run `asr ARGS` (this checkout's code) as its own process; (wall seconds, stdout)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "asr", *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"asr {' '.join(map(str, args))} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return wall, out.stdout


def bench_decode(args: argparse.Namespace) -> None:
    exp = args.exp
    manifest, model = exp / "data" / f"{args.set}.jsonl", args.model or exp / "model.pt"
    extra: list[object] = []
    if args.lm:
        lm = sorted((exp / "lm").glob("*gram.arpa"))
        extra = ["--lm", lm[-1], "--lexicon", exp / "lm" / "lexicon.txt"] + (["--decoder-config", exp / "lm" / "decode.toml"] if (exp / "lm" / "decode.toml").exists() else [])
    runs = {"1 process x 1 thread": ["--threads", "1"], "--nj 2 x 1 thread": ["--nj", "2"]}
    best: dict[str, tuple[float, float]] = {}
    outputs: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, flags in runs.items():
                hyp = Path(tmp) / f"{len(outputs)}-{r}.jsonl"
                wall, stdout = asr("decode", model, manifest, "--out", hyp, *extra, *flags)
                m = DECODED.search(stdout)
                if not m:
                    raise SystemExit(f"unexpected output of asr decode: {stdout!r}")
                seconds = float(m.group(3))
                if name not in best or seconds < best[name][1]:
                    best[name] = (wall, seconds)
                outputs[name] = hyp.read_bytes()
    print(f"asr decode {manifest} ({'beam + LM' if args.lm else 'greedy'}), fastest of {args.repeats}")
    print(f"{'run':24} {'command s':>10} {'decode s':>9}")
    for name, (wall, seconds) in best.items():
        print(f"{name:24} {wall:10.2f} {seconds:9.2f}")
    (w1, d1), (w2, d2) = best.values()
    ratio = d1 / d2
    print(f"--nj 2 speed-up: {ratio:.2f}x decoding ({w1 / w2:.2f}x whole command); target >= 1.7x: " + ("met" if ratio >= 1.7 else f"{1.7 - ratio:.2f} short"))
    same = len(set(outputs.values())) == 1
    print(f"outputs identical: {'yes' if same else 'NO'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="section", required=True)
    d = sub.add_parser("decode", help="asr decode --nj 2 against one process")
    d.add_argument("--exp", type=Path, default=Path("exp/an4"))
    d.add_argument("--model", type=Path, help="default: EXP/model.pt")
    d.add_argument("--set", default="test")
    d.add_argument("--lm", action="store_true", help="beam search with the recipe's LM and lexicon")
    d.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    {"decode": bench_decode}[args.section](args)


if __name__ == "__main__":
    main()
