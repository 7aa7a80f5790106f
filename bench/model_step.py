"""Why the model does not use packed sequences: forward + backward time of a 3 x 256 BiLSTM on one
length-bucketed batch, with PyTorch's packed sequences against the model's in-length reversal.

    python bench/model_step.py [--batch 27] [--frames 100] [--repeats 5]

Both give exact outputs for the real frames (padding never reaches them); the model's way runs
each direction as a plain unidirectional LSTM over a padded batch.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from asr.config import ModelConfig
from asr.model import CTCModel


def timed(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=27)
    p.add_argument("--frames", type=int, default=100, help="stacked frames of the longest utterance")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    dim, hidden, layers = 240, 256, 3
    x = torch.randn(args.batch, args.frames, dim)
    lengths = torch.randint(int(args.frames * 0.85), args.frames + 1, (args.batch,))
    lengths[0] = args.frames

    packed_lstm = nn.LSTM(dim, hidden, layers, bidirectional=True, batch_first=True)

    def packed() -> None:
        y, _ = packed_lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        pad_packed_sequence(y, batch_first=True)[0].square().mean().backward()

    model = CTCModel(dim, 28, ModelConfig(stack=1, hidden=hidden, layers=layers, dropout=0.0))

    def reversal() -> None:
        model.encode(x, lengths)[0].square().mean().backward()

    t_packed, t_model = timed(packed, args.repeats), timed(reversal, args.repeats)
    print(f"batch {args.batch} x {args.frames} frames, 3 x {hidden} BiLSTM, forward + backward, {torch.get_num_threads()} threads")
    print(f"packed sequences:     {t_packed * 1000:7.1f} ms")
    print(f"in-length reversal:   {t_model * 1000:7.1f} ms  ({t_packed / t_model:.2f}x faster)")


if __name__ == "__main__":
    main()
