"""Training memory across epochs: resident memory after each epoch and the peak within it.

    python bench/train_memory.py [--manifest exp/an4/data/train.jsonl] [--recipe an4] [--epochs 12]
    python bench/train_memory.py --exp exp/an4/train     # read a finished run's metrics.csv

Trains with `asr.train.train` itself (the recipe's model, augmentation and batches; no dev set)
and prints, per epoch, `rss_mb` (resident memory after the epoch) and `epoch_peak_rss_mb` (the
highest resident memory during the epoch) from metrics.csv, then how much each grew from the
second epoch to the last (the first epoch loads features and warms the allocator up) and the
range over the second half of the run.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from asr.config import parse_override, set_value
from asr.recipe import load_recipe


def report(metrics: Path) -> None:
    rows = list(csv.DictReader(open(metrics)))
    if not rows or not rows[0].get("rss_mb"):
        raise SystemExit(f"{metrics}: no memory columns (rss_mb); written by asr train")
    keys = [k for k in ("rss_mb", "epoch_peak_rss_mb") if rows[0].get(k)]  # runs before the epoch peak have rss_mb only
    print(f"{metrics}: {len(rows)} epochs")
    print("epoch" + "".join(f"  {k:>17}" for k in keys))
    for r in rows:
        print(f"{int(r['epoch']):5d}" + "".join(f"  {int(r[k]):17d}" for k in keys))
    if len(rows) >= 3:
        first, last = rows[1], rows[-1]
        for key in keys:
            values = [int(r[key]) for r in rows[1:]]
            print(
                f"{key}: epoch {first['epoch']} {first[key]} MB -> epoch {last['epoch']} {last[key]} MB "
                f"(change {int(last[key]) - int(first[key]):+d} MB; range {min(values)}-{max(values)} MB)"
            )
            half = rows[len(rows) // 2 :]
            values = [int(r[key]) for r in half]
            print(f"{key} over the second half (epochs {half[0]['epoch']}-{last['epoch']}): {min(values)}-{max(values)} MB")
    print(f"peak of the whole run: {rows[-1]['peak_rss_mb']} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, default=Path("exp/an4/data/train.jsonl"))
    p.add_argument("--recipe", default="an4", help="recipe whose model and training settings to use")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value (repeatable)")
    p.add_argument("--exp", type=Path, help="report an existing training directory instead of training")
    args = p.parse_args()
    if args.exp:
        report(args.exp / "metrics.csv")
        return
    if not args.manifest.exists():
        raise SystemExit(f"{args.manifest}: not found; prepare AN4 first: asr prepare an4 ../shared/data/an4 exp/an4/data")
    cfg = load_recipe(args.recipe).config
    for key, value in [("data.train", str(args.manifest)), ("data.dev", ""), ("train.epochs", args.epochs), ("train.average_last", 0)]:
        set_value(cfg, key, value)
    for override in args.overrides:
        set_value(cfg, *parse_override(override))
    with tempfile.TemporaryDirectory() as tmp:
        from asr.train import train

        train(cfg, tmp)
        report(Path(tmp) / "metrics.csv")


if __name__ == "__main__":
    main()
