"""Training throughput: the toolkit's real training against a bare PyTorch loop on the same shapes.

    python bench/train_throughput.py [--manifest exp/an4/data/train.jsonl] [--recipe an4]

(a) bare loop: the same CTCModel, random features and targets of the real utterances' lengths,
    bucketed into the same batch sizes, CTC loss, AdamW: forward, backward, step. The floor.
(b) toolkit: `asr.train.train` itself for two epochs on the prepared data (cached features,
    normalisation, SpecAugment, CTC, clipping, logging, checkpoints); the second epoch is timed.
Both run in this process with the same threads. Prints feature frames per second (10 ms frames),
their ratio, achieved GFLOP/s and that as a fraction of a measured fp32 matmul peak.
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asr.config import set_value
from asr.data import bucket_batches, load_features
from asr.features import FeatureExtractor
from asr.manifest import read_manifest
from asr.model import CTCModel, ctc_loss
from asr.recipe import load_recipe
from asr.text import Tokenizer


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def flops_per_frame(model: CTCModel, input_dim: int, vocab: int) -> float:
    """Forward FLOPs per (stacked) frame: LSTM gates 8H(I+H) per direction and layer, plus the output layer."""
    cfg = model.cfg
    directions = 2 if cfg.bidirectional else 1
    total, inp = 0.0, input_dim * cfg.stack
    for _ in range(cfg.layers):
        total += directions * 8 * cfg.hidden * (inp + cfg.hidden)
        inp = cfg.hidden * directions
    return total + 2 * inp * vocab


def bare_loop(model: CTCModel, batches: list[list[int]], lengths: np.ndarray, target_lengths: list[int], dim: int, vocab: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for batch in batches:
        n = torch.tensor([int(lengths[i]) for i in batch])
        x = torch.randn(len(batch), int(n.max()), dim)
        tl = torch.tensor([target_lengths[i] for i in batch])
        targets = torch.randint(1, vocab, (int(tl.sum()),))
        log_probs, out_lengths = model(x, n)
        loss = ctc_loss(log_probs, out_lengths, targets, tl)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, default=Path("exp/an4/data/train.jsonl"))
    p.add_argument("--recipe", default="an4", help="recipe whose model and training settings to use")
    args = p.parse_args()
    if not args.manifest.exists():
        raise SystemExit(f"{args.manifest}: not found; prepare AN4 first: asr prepare an4 ../shared/data/an4 exp/an4/data")
    cfg = load_recipe(args.recipe).config
    for key, value in [("data.train", str(args.manifest)), ("data.dev", ""), ("train.epochs", 2)]:
        set_value(cfg, key, value)
    utts = read_manifest(args.manifest)
    fs = load_features(args.manifest, utts, cfg.features)
    tokenizer = Tokenizer.from_texts(u.text for u in fs.utts)
    lengths = fs.lengths()
    target_lengths = [len(tokenizer.encode(u.text)) for u in fs.utts]
    dim = FeatureExtractor(cfg.features).dim
    batches = bucket_batches(lengths, cfg.train.batch_frames, torch.Generator().manual_seed(0))
    frames = int(lengths.sum())
    padded_stacked = sum(len(b) * math.ceil(max(lengths[i] for i in b) / cfg.model.stack) for b in batches)

    torch.manual_seed(0)
    model = CTCModel(dim, len(tokenizer), cfg.model)
    bare_loop(model, batches[:3], lengths, target_lengths, dim, len(tokenizer))  # warm-up
    bare_seconds = bare_loop(model, batches, lengths, target_lengths, dim, len(tokenizer))

    with tempfile.TemporaryDirectory() as tmp:
        from asr.train import train

        train(cfg, tmp)
        rows = list(csv.DictReader(open(Path(tmp) / "metrics.csv")))
        toolkit_seconds = float(rows[-1]["epoch_seconds"])

    peak = matmul_peak()
    train_flops = 3 * flops_per_frame(model, dim, len(tokenizer)) * padded_stacked  # forward + backward (2x)
    threads = torch.get_num_threads()
    print(f"data: {args.manifest}, {len(fs)} utterances, {frames} frames ({frames / 100 / 3600:.2f} h), {len(batches)} batches, {threads} threads")
    print(f"model: {cfg.model.layers} x {cfg.model.hidden} {'bi' if cfg.model.bidirectional else 'uni'}directional LSTM, stack {cfg.model.stack}")
    print(f"fp32 matmul peak (2048^3): {peak:.0f} GFLOP/s")
    for name, seconds in [("bare PyTorch loop", bare_seconds), ("toolkit training", toolkit_seconds)]:
        gflops = train_flops / seconds / 1e9
        print(f"{name:18}: {seconds:6.1f} s/epoch, {frames / seconds:8.0f} frames/s, {gflops:5.0f} GFLOP/s = {gflops / peak:.0%} of the matmul peak")
    print(f"ratio toolkit / bare loop (frames per second): {bare_seconds / toolkit_seconds:.3f}")


if __name__ == "__main__":
    main()
