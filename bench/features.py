"""Feature extraction speed, as multiples of real time (audio seconds per second of work).

    python bench/features.py [--manifest exp/an4/data/train.jsonl] [--threads 2]

Runs the toolkit's own path (`asr.data.compute_features`: read audio, resample, log-mel) over a
manifest: AN4's training set when prepared, otherwise 10 minutes of generated audio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asr.config import FeatureConfig
from asr.data import compute_features
from asr.manifest import Utterance, read_manifest


def generated(root: Path, minutes: float = 10.0) -> list[Utterance]:
    rng = np.random.default_rng(0)
    utts = []
    for i in range(int(minutes * 60 / 3)):
        path = root / f"{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(48000)).astype(np.float32), 16000)
        utts.append(Utterance(str(i), str(path), 3.0, "X"))
    return utts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, default=Path("exp/an4/data/train.jsonl"))
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--kind", default="fbank")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        utts = read_manifest(args.manifest) if args.manifest.exists() else generated(Path(tmp))
        source = args.manifest if args.manifest.exists() else "generated audio"
        audio_seconds = sum(u.duration for u in utts)
        cfg = FeatureConfig(kind=args.kind)
        compute_features(utts[:20], cfg)  # warm-up
        t0 = time.perf_counter()
        fs = compute_features(utts, cfg)
        took = time.perf_counter() - t0
    print(f"{source}: {len(fs)} utterances, {audio_seconds:.0f} s of audio, {fs.feats.shape[0]} frames of {fs.feats.shape[1]} {args.kind}")
    print(f"feature extraction (read + resample + {args.kind}) with {args.threads} threads: {took:.2f} s = {audio_seconds / took:.0f}x real time")


if __name__ == "__main__":
    main()
