"""Transcribing one long file: real-time factor and peak RSS, to show memory does not grow with length.

    python bench/long_audio.py --model exp/an4/model.pt --corpus exp/an4/data/test.jsonl --minutes 60

Builds a file of the requested length by joining the corpus's utterances with 0.3-1.5 s of
silence (written block by block), then runs `asr transcribe --format json` on it in a child
process and reports its wall time, RTF and peak RSS. Run it with --minutes 10 and 60 to compare.
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

import numpy as np
import soundfile as sf


def build_file(manifest: Path, minutes: float, out: Path, sr: int = 16000) -> float:
    from asr.audio import load_audio
    from asr.manifest import read_manifest

    utts = read_manifest(manifest)
    rng = np.random.default_rng(0)
    target = int(minutes * 60 * sr)
    written = 0
    with sf.SoundFile(out, "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        while written < target:
            for u in utts:
                piece = np.concatenate([np.zeros(int(rng.uniform(0.3, 1.5) * sr), np.float32), load_audio(u.audio, sr)])
                piece = piece[: target - written]
                f.write(piece)
                written += len(piece)
                if written >= target:
                    break
    return written / sr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("exp/an4/model.pt"))
    p.add_argument("--corpus", type=Path, default=Path("exp/an4/data/test.jsonl"))
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long.wav"
        seconds = build_file(args.corpus, args.minutes, wav)
        cmd = [sys.executable, "-c", f"import torch; torch.set_num_threads({args.threads}); from cli.main import main; main()", "transcribe", str(args.model), str(wav), "--format", "json"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        took = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"transcribe failed: {out.stderr.strip()[-500:]}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        row = json.loads(out.stdout)
    print(f"audio {seconds / 60:.1f} min ({wav.name}, {seconds * 16000 * 2 / 1e6:.0f} MB as 16-bit PCM)")
    print(f"transcribe: {took:.1f} s wall, RTF {took / seconds:.4f}, peak RSS {peak_mb:.0f} MB, {len(row['words'])} words, last word ends at {row['words'][-1]['end'] if row['words'] else 0:.1f} s")


if __name__ == "__main__":
    main()
