"""Start-up time and memory of the `asr` commands: `asr --help`, `asr prepare --help`, `asr score`
on two short files, and a cold `asr transcribe MODEL FILE`, each in a fresh process, against
`python -c "import torch"` run the same way; then the `python -X importtime` breakdown of each
command: whether it imported torch, the time of its imports outside torch's own, and the largest.

    python bench/startup.py [--model exp/an4/model.pt] [--runs 5]

Without --model a small model is trained on generated tones first (a few seconds; its size, not
its accuracy, is what the load costs). Figures are the median wall time of --runs runs and the
largest peak RSS of them; each command's own ratio to the `import torch` baseline is printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
ASR = [sys.executable, "-m", "cli.main"]


def timed(cmd: list[str], runs: int) -> tuple[float, float]:
    """Median wall seconds and the largest peak RSS (MB) of `runs` fresh runs of cmd."""
    walls, rss = [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - start)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}: {proc.stderr.read().decode()}")
        proc.stderr.close()
        rss.append(usage.ru_maxrss / 1024)
    return statistics.median(walls), max(rss)


TORCH = {"torch", "torchaudio"}


def importtime(cmd: list[str], top: int) -> tuple[bool, float, list[tuple[float, str]]]:
    """Whether `cmd` imported torch; milliseconds of imports outside torch's and torchaudio's own
    (what they import themselves counts as theirs); and the `top` largest top-level imports with
    torch's part taken out (ms)."""
    r = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True, env=ENV)
    torch, rows, below = False, [], {}  # below[d]: the part outside torch of the nodes at depth d so far
    for line in r.stderr.splitlines():  # children come before their parent, one level deeper
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        name = fields[2].rstrip()
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        name = name.strip()
        torch |= name == "torch"
        children = below.pop(depth + 1, 0.0)
        own = 0.0 if name.split(".")[0] in TORCH else int(fields[0]) / 1000 + children
        below[depth] = below.get(depth, 0.0) + own
        if depth == 0 and own > 0:
            rows.append((own, name))
    return torch, below.get(0, 0.0), sorted(rows, reverse=True)[:top]


def tone_model(root: Path) -> Path:
    """A small model trained for one epoch on generated tones (its load, not its accuracy, matters)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        t = np.arange(int(0.6 * 16000)) / 16000
        sf.write(root / f"t{i}.wav", (0.3 * np.sin(2 * np.pi * (300 + 100 * i) * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32), 16000)
        rows.append(f'{{"id": "t{i}", "audio": "t{i}.wav", "duration": 0.6, "text": "{"AB"[i % 2]}"}}\n')
    (root / "train.jsonl").write_text("".join(rows))
    (root / "tiny.toml").write_text("[model]\nhidden = 32\nlayers = 1\n[train]\nepochs = 1\nbatch_frames = 2000\n")
    subprocess.run([*ASR, "train", str(root / "tiny.toml"), "--out", str(root / "exp"), "--set", f"data.train={root / 'train.jsonl'}",
                    "--set", f"data.dev={root / 'train.jsonl'}"], check=True, env=ENV, stdout=subprocess.DEVNULL)
    return root / "exp" / "best.pt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="The model for the cold transcribe (default: a small tone model trained here).")
    p.add_argument("--runs", type=int, default=5, help="Fresh runs per command (the median is shown).")
    p.add_argument("--top", type=int, default=6, help="Largest top-level imports shown per command.")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = args.model or tone_model(root)
        (root / "ref.jsonl").write_text('{"id": "a", "text": "yes no yes"}\n{"id": "b", "text": "no no"}\n')
        (root / "hyp.jsonl").write_text('{"id": "a", "text": "yes yes"}\n{"id": "b", "text": "no no"}\n')
        audio = root / "clip.wav"
        sf.write(audio, (0.1 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32), 16000)
        commands = {
            "import torch (baseline)": [sys.executable, "-c", "import torch"],
            "asr --help": [*ASR, "--help"],
            "asr prepare --help": [*ASR, "prepare", "--help"],
            "asr score REF HYP": [*ASR, "score", str(root / "ref.jsonl"), str(root / "hyp.jsonl")],
            "load_model(MODEL)": [sys.executable, "-c", f"from asr.decode import load_model; load_model({str(model)!r})"],
            "asr transcribe MODEL FILE": [*ASR, "transcribe", str(model), str(audio)],
        }
        print(f"model: {model}; {args.runs} runs each, median wall, largest peak RSS\n")
        print(f"{'command':<28} {'wall s':>7} {'x torch':>8} {'peak MB':>8} {'other imports ms':>17}  torch imported")
        base = None
        breakdown = {}
        for name, cmd in commands.items():
            wall, rss = timed(cmd, args.runs)
            base = base or wall
            torch, other, rows = importtime(cmd, args.top)
            breakdown[name] = rows
            print(f"{name:<28} {wall:7.2f} {wall / base:8.2f} {rss:8.0f} {other:17.0f}  {'yes' if torch else 'no'}")
        print("\nlargest top-level imports outside torch's own (python -X importtime, cumulative ms, torch's part taken out):")
        for name, rows in breakdown.items():
            print(f"  {name}: " + ", ".join(f"{mod} {ms:.0f}" for ms, mod in rows))


if __name__ == "__main__":
    main()
