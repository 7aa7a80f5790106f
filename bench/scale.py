"""Scale: feature preparation and decoding over several processes, and on corpora of growing size.

    python bench/scale.py decode [--exp exp/an4] [--set test] [--lm] [--repeats 3]
    python bench/scale.py features [--manifest exp/an4/data/train.jsonl] [--repeats 2]
    python bench/scale.py corpus [--src exp/an4/data/train.jsonl] [--hours 1,4] [--work DIR]

`decode`: `asr decode` of a test set in one process of one torch thread against `--nj 2` (two
workers of one thread each), each as its own command; prints the wall time of each command and
the decoding time it reports, the ratio one process / two (target: >= 1.7), and whether the two
outputs are the same bytes. Needs a finished recipe run (model.pt, data/<set>.jsonl; lm/ for
--lm), e.g. `asr recipe run an4 --data ../shared/data/an4 --out exp/an4`.

`features`: the training features of a manifest (`asr.featstore.write_features`, 80 fbank) with
1 process against 2; ratio (target: >= 1.7) and whether the bytes are the same.

`corpus`: synthetic corpora of the given hours built from the source manifest's audio (each
utterance again at a speed of 0.9-1.1, with white noise at 5-30 dB and a gain, written as new
16-bit files; pitch is not varied apart from speed), then for each: peak resident memory (the largest process) and seconds per audio hour of
feature preparation (2 processes) and of `asr decode` (--nj 1 and --nj 2, one thread each, with
EXP/model.pt), against the issue's targets: peak memory at the largest corpus <= 1.25 x at the
smallest, seconds per audio hour within 15 %.

Every section runs each measurement `--repeats` times where it says so and keeps the fastest; the
machine may be shared with other work, which the figures then include.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's asr, also where another one is installed
DECODED = re.compile(r"decoded (\d+) utterances \((\d+) failed\) in ([\d.]+) s")


# Runs a command and then says the largest peak resident memory of any of its processes (kB).
_PEAK = "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"


def asr(*args: object) -> tuple[float, str, int]:
    """Run `asr ARGS` (this checkout's code) as its own process; (wall seconds, stdout, peak RSS
    in MB of its largest process)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "asr", *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"asr {' '.join(map(str, args))} failed: {out.stderr.strip().splitlines()[-2] if out.stderr.strip() else out.returncode}")
    peak = int(re.findall(r"PEAK_RSS_KB (\d+)", out.stderr)[-1])
    return wall, out.stdout, round(peak / 1024)


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
                wall, stdout, _ = asr("decode", model, manifest, "--out", hyp, *extra, *flags)
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


def _feature_run(manifest: Path, nj: int, out: Path) -> dict:
    """One feature preparation in this process (the `--one` mode of `features`)."""
    from asr.config import FeatureConfig
    from asr.featstore import write_features
    from asr.manifest import read_manifest

    utts = read_manifest(manifest)
    t0 = time.perf_counter()
    write_features(utts, FeatureConfig(), out, nj=nj)
    seconds = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": seconds, "audio_s": sum(u.duration for u in utts), "peak_rss_mb": round(max(own, workers) / 1024)}


def features_once(manifest: Path, nj: int, out: Path) -> dict:
    """`_feature_run` in its own process, so that its peak memory is its own."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, "features", "--manifest", str(manifest), "--one", str(nj), "--to", str(out)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"feature preparation of {manifest} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_features(args: argparse.Namespace) -> None:
    if args.one:
        print(json.dumps(_feature_run(args.manifest, args.one, args.to)))
        return
    best: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for nj in (1, 2):
                run = features_once(args.manifest, nj, Path(tmp) / f"nj{nj}-{r}")
                if nj not in best or run["seconds"] < best[nj]["seconds"]:
                    best[nj] = run
        same = (Path(tmp) / "nj1-0.npy").read_bytes() == (Path(tmp) / "nj2-0.npy").read_bytes()
    audio = best[1]["audio_s"]
    print(f"features of {args.manifest} ({audio / 3600:.2f} h, 80 fbank), fastest of {args.repeats}")
    print(f"{'processes':>9} {'seconds':>8} {'x real time':>12} {'peak RSS MB':>12}")
    for nj, run in best.items():
        print(f"{nj:9d} {run['seconds']:8.2f} {audio / run['seconds']:12.0f} {run['peak_rss_mb']:12d}")
    ratio = best[1]["seconds"] / best[2]["seconds"]
    print(f"2 processes: {ratio:.2f}x one; target >= 1.7x: " + ("met" if ratio >= 1.7 else f"{1.7 - ratio:.2f} short"))
    print(f"features identical: {'yes' if same else 'NO'}")


def build_corpus(src: Path, hours: float, root: Path) -> Path:
    """A manifest of `hours` of audio made of the source's utterances, each variant (speed, noise, gain)
    a new file and a new id; variants are drawn in a fixed order, so a corpus of 4 h holds the
    one of 1 h. Reuses what an earlier call wrote."""
    import numpy as np
    import soundfile as sf

    from asr.audio import load_audio
    from asr.featstore import speed_perturb
    from asr.manifest import read_manifest

    manifest = root / f"{hours:g}h.jsonl"
    if manifest.exists():
        return manifest
    utts = read_manifest(src)
    rng = np.random.default_rng(0)
    rows, total, variant = [], 0.0, 0
    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    while total < hours * 3600:
        speed = float(rng.choice([0.9, 0.95, 1.0, 1.05, 1.1]))
        snr, gain = float(rng.uniform(5, 30)), float(rng.uniform(0.3, 1.0))
        for u in utts:
            if total >= hours * 3600:
                break
            path = audio_dir / f"v{variant:03d}-{Path(u.audio).stem}.wav"
            if path.exists():
                duration = sf.info(path).duration
            else:
                wav = speed_perturb(load_audio(u.audio, 16000), 16000, speed)
                noise = np.random.default_rng(variant * 100003 + len(rows)).standard_normal(len(wav))
                wav = gain * (wav + noise * np.sqrt(np.mean(wav.astype(np.float64) ** 2) / 10 ** (snr / 10)))
                wav = (wav / max(1.0, float(np.max(np.abs(wav))) / 0.99)).astype(np.float32)
                sf.write(path, wav, 16000, subtype="PCM_16")
                duration = len(wav) / 16000
            rows.append({"id": f"v{variant:03d}-{u.id}", "audio": str(path), "duration": round(duration, 4), "text": u.text, "speaker": f"v{variant:03d}-{u.speaker}"})
            total += duration
        variant += 1
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def decode_once(model: Path, manifest: Path, nj: int, out: Path) -> dict:
    """`asr decode` (greedy) as its own process: its reported seconds and the largest process's peak RSS."""
    wall, stdout, peak = asr("decode", model, manifest, "--out", out, "--threads", "1", *(["--nj", nj] if nj > 1 else []))
    m = DECODED.search(stdout)
    return {"seconds": float(m.group(3)), "wall": wall, "peak_rss_mb": peak}


def bench_corpus(args: argparse.Namespace) -> None:
    model = args.model or args.exp / "model.pt"
    hours = [float(h) for h in args.hours.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="asr-scale-"))
    rows = []
    for h in hours:
        t0 = time.perf_counter()
        manifest = build_corpus(args.src, h, work)
        audio_h = sum(json.loads(line)["duration"] for line in manifest.read_text().splitlines()) / 3600
        print(f"corpus {h:g} h: {manifest} ({audio_h:.2f} h, built in {time.perf_counter() - t0:.0f} s)", flush=True)
        feats = features_once(manifest, 2, work / f"feats-{h:g}h")
        for f in work.glob(f"feats-{h:g}h*"):
            f.unlink()
        row = {"hours": audio_h, "features": feats}
        for nj in (1, 2):
            row[f"decode{nj}"] = decode_once(model, manifest, nj, work / f"hyp-{h:g}h-nj{nj}.jsonl")
        same = (work / f"hyp-{h:g}h-nj1.jsonl").read_bytes() == (work / f"hyp-{h:g}h-nj2.jsonl").read_bytes()
        row["same"] = same
        rows.append(row)
        print(f"  features (2 processes) {feats['seconds'] / audio_h:.1f} s/h, peak {feats['peak_rss_mb']} MB; "
              f"decode --nj 1 {row['decode1']['seconds'] / audio_h:.1f} s/h, --nj 2 {row['decode2']['seconds'] / audio_h:.1f} s/h; outputs identical: {same}", flush=True)
    print()
    print(f"{'corpus h':>8} {'features s/h':>12} {'feat. peak MB':>13} {'decode nj1 s/h':>14} {'nj2 s/h':>8} {'nj1/nj2':>7} {'nj1 peak MB':>11} {'nj2 peak MB':>11}")
    for r in rows:
        h = r["hours"]
        d1, d2 = r["decode1"], r["decode2"]
        print(f"{h:8.2f} {r['features']['seconds'] / h:12.1f} {r['features']['peak_rss_mb']:13d} {d1['seconds'] / h:14.1f} {d2['seconds'] / h:8.1f} {d1['seconds'] / d2['seconds']:7.2f} {d1['peak_rss_mb']:11d} {d2['peak_rss_mb']:11d}")
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        print()
        print(f"targets, {large['hours']:.2f} h against {small['hours']:.2f} h:")
        for key, name in (("features", "feature preparation"), ("decode1", "decode --nj 1"), ("decode2", "decode --nj 2")):
            fp = large[key]["peak_rss_mb"] / small[key]["peak_rss_mb"]
            print(f"  {name} peak memory {fp:.2f}x (target <= 1.25x: {'met' if fp <= 1.25 else 'missed'})")
        for key, name in (("features", "feature preparation"), ("decode1", "decode --nj 1"), ("decode2", "decode --nj 2")):
            a, b = small[key]["seconds"] / small["hours"], large[key]["seconds"] / large["hours"]
            change = b / a - 1
            print(f"  {name} seconds per audio hour {change:+.0%} (target within 15 %: {'met' if abs(change) <= 0.15 else 'missed'})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="section", required=True)
    d = sub.add_parser("decode", help="asr decode --nj 2 against one process")
    d.add_argument("--exp", type=Path, default=Path("exp/an4"))
    d.add_argument("--model", type=Path, help="default: EXP/model.pt")
    d.add_argument("--set", default="test")
    d.add_argument("--lm", action="store_true", help="beam search with the recipe's LM and lexicon")
    d.add_argument("--repeats", type=int, default=3)
    f = sub.add_parser("features", help="feature preparation with 2 processes against 1")
    f.add_argument("--manifest", type=Path, default=Path("exp/an4/data/train.jsonl"))
    f.add_argument("--repeats", type=int, default=2)
    f.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one run with this many processes
    f.add_argument("--to", type=Path, help=argparse.SUPPRESS)
    c = sub.add_parser("corpus", help="synthetic corpora of growing size: memory and seconds per audio hour")
    c.add_argument("--src", type=Path, default=Path("exp/an4/data/train.jsonl"))
    c.add_argument("--exp", type=Path, default=Path("exp/an4"))
    c.add_argument("--model", type=Path, help="default: EXP/model.pt")
    c.add_argument("--hours", default="1,4")
    c.add_argument("--work", type=Path, help="where the corpora go (kept; reused by a later run); default: a new temporary folder")
    args = p.parse_args()
    {"decode": bench_decode, "features": bench_features, "corpus": bench_corpus}[args.section](args)


if __name__ == "__main__":
    main()
