"""Live recognition on a test set, as `asr stream` runs it: the accuracy, latency, speed and
endpointing of a model that streams (model.kind lstm, gru, rnn or lcblstm).

    python bench/stream.py run MODEL MANIFEST --align-model OFFLINE.pt [--lm LM --lexicon LEX] [--threads 1]
    python bench/stream.py plot OUT.png EXP [EXP ...]

`run` feeds every utterance of MANIFEST to `asr.stream(model)` in pieces of --chunk-ms (100 ms),
with the default endpoint rules and Silero VAD, on --threads torch threads (1), and prints a
markdown table:

- WER and CER of the finals (the finals of one file joined), greedy and, with --lm and --lexicon,
  the beam search with the LM (one view; the weights are the checkpoint's [decode] ones unless
  --lm-weight/--word-score/--decoder-config say otherwise, as for `asr stream`);
- latency in audio time: for every word recognised correctly (sclite's alignment of the finals
  with the reference), the audio fed when the word first stood at its position in the partial
  result, minus the word's end in the audio, from a CTC forced alignment of the reference text
  with an offline model (--align-model; `asr.align.word_alignments`): median and 90th percentile;
- the same in wall time, greedy, the audio fed in real time (each piece handed over when its last
  sample would have been spoken, the clock started at the first sample), on --realtime-files
  utterances spread evenly over the manifest (all by default: it takes as long as their audio);
- real-time factor: seconds spent in `accept`/`finish` (acoustic model, VAD, search) per second
  of audio, greedy and with the LM (stream set-up not counted);
- endpointing: the utterances of MANIFEST in a random order (--seed) joined into one file of about
  --endpoint-minutes (10) with pauses of 0.5-3 s filled with a quiet noise floor (each pause the
  level of the quietest 10% of the utterance before it), a third (--noisy-share) of the
  utterances with pink noise at 10 dB SNR (--snr-db, against the utterance's mean power) under
  them and over the half-pauses on either side; the file (written as 16-bit WAV in a temporary
  folder and read back) is streamed as one, with the endpoint rules' thresholds --rule1, --rule2
  (several values: a row each) and --rule3; the model starts afresh at each endpoint, as `asr
  stream` does, or with --keep-state carries its state on. Each final word goes to the utterance
  whose stretch of the file (from the middle of the pause before it to the middle of the pause
  after) holds the word's middle; an utterance "ends up in exactly one final" when its words are
  in one final and that final holds no word of another utterance. Reported: that share, the WER
  of the finals per utterance (and of each utterance's stretch streamed alone), and the same for
  the clean and the noisy utterances.

--parts runs only some of the three passes (accuracy: WER, audio-time latency and RTF; realtime;
endpoint).

`plot` draws test WER (greedy and with the LM) against look-ahead for `asr recipe run` output
folders (each with train/config.toml, decode/test/score.json and decode_lm/test/score.json):
one-direction kinds at model.lookahead frames, lcblstm at its mean wait (chunk - 1)/2 +
right_context frames with a bar from its least to its longest wait, a bidirectional model as a
line across (it waits for the end of the utterance).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# ------------------------------------------------------------------------------ latency (pure)


def first_appearances(events: Sequence[tuple[float, str]], words: Sequence[str]) -> list[float | None]:
    """For each of the final `words`, the time of the first event whose text has that word at
    the same position (None if none does). `events` are (time, text) in time order: the text
    recognised so far (earlier finals and the current partial) each time it changed."""
    times: list[float | None] = [None] * len(words)
    for t, text in events:
        for i, w in enumerate(text.split()[: len(words)]):
            if times[i] is None and w == words[i]:
                times[i] = t
    return times


def word_latencies(ref: Sequence[str], ref_ends: Sequence[float], hyp: Sequence[str], appear: Sequence[float | None]) -> list[float]:
    """The latency of every hypothesis word that sclite's alignment pairs with an equal reference
    word: when it appeared (`appear`, per hypothesis word) minus the reference word's end."""
    from asr.scoring import align

    if len(ref) != len(ref_ends) or len(hyp) != len(appear):
        raise ValueError("ref/ref_ends and hyp/appear must have equal lengths")
    out, r, h = [], 0, 0
    for op in align(ref, hyp):
        if op == "C" and appear[h] is not None:
            out.append(float(appear[h]) - float(ref_ends[r]))
        r += op != "I"
        h += op != "D"
    return out


def percentiles(values: Sequence[float]) -> tuple[float, float]:
    """(median, 90th percentile) in milliseconds of `values` in seconds; NaN for none."""
    if not len(values):
        return math.nan, math.nan
    med, p90 = np.percentile(np.asarray(values, dtype=np.float64) * 1000, [50, 90])
    return float(med), float(p90)


# ------------------------------------------------------------------------------ streaming


@dataclass
class Utt:
    id: str
    text: str
    samples: np.ndarray
    rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.rate


@dataclass
class StreamRun:
    """One stream: its finals, the text so far each time it changed, and the compute time."""

    finals: list[Any] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    compute: float = 0.0
    audio: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(f.text for f in self.finals if f.text)


def run_stream(model: Any, options: Any, samples: np.ndarray, rate: int, chunk_seconds: float, realtime: bool = False, endpoint: Any = None, reset_state: bool = True) -> StreamRun:
    """`samples` through a fresh `asr.stream` piece by piece. Event times are the audio fed so
    far (seconds), or with `realtime` the wall-clock seconds since the first sample would have
    been spoken, each piece handed over when its last sample would have been."""
    from asr.stream import Stream

    stream = Stream(model, options, endpoint, reset_state=reset_state)
    run = StreamRun(audio=len(samples) / rate)
    block = max(1, int(round(chunk_seconds * rate)))
    shown = ""
    t0 = time.perf_counter()
    for start in range(0, len(samples), block):
        piece = samples[start : start + block]
        fed = (start + len(piece)) / rate
        if realtime:
            delay = t0 + fed - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        t = time.perf_counter()
        partial = stream.accept(piece, rate)
        run.finals.extend(stream.pop_finals())
        run.compute += time.perf_counter() - t
        text = " ".join([f.text for f in run.finals if f.text] + ([partial.text] if partial.text else []))
        if text != shown:
            run.events.append((time.perf_counter() - t0 if realtime else fed, text))
            shown = text
    t = time.perf_counter()
    last = stream.finish()
    run.finals.extend(stream.pop_finals())
    if last.text:
        run.finals.append(last)
    run.compute += time.perf_counter() - t
    if run.text != shown:
        run.events.append((time.perf_counter() - t0 if realtime else run.audio, run.text))
    return run


def reference_word_ends(align_model: Any, utts: Sequence[Utt]) -> dict[str, list[float]]:
    """Each utterance's reference words' end times (seconds), from CTC forced alignment of the
    reference text with `align_model`'s log-probabilities of the whole utterance."""
    import torch

    from asr.align import word_alignments
    from asr.inference import Audio, emissions
    from asr.text import normalize

    model_rate = align_model.cfg.features.sample_rate
    frame_seconds = align_model.model.stack * align_model.extractor.hop / model_rate
    ends = {}
    for i in range(0, len(utts), 16):
        group = utts[i : i + 16]
        with torch.no_grad():
            lps = emissions(align_model, [Audio(u.samples, model_rate, u.rate) for u in group])
        for u, (lp,) in zip(group, lps, strict=True):
            words = word_alignments(lp, align_model.tokenizer.encode(u.text), align_model.tokenizer, frame_seconds)
            if [w.word for w in words] != normalize(u.text).split():
                raise RuntimeError(f"{u.id}: the forced alignment did not give the reference's words")
            ends[u.id] = [w.end for w in words]
    return ends


@dataclass
class SetResult:
    mode: str
    wer: float
    cer: float
    errors: tuple[int, int, int]
    latency: tuple[float, float]
    words_timed: int
    rtf: float
    hyps: dict[str, str]


def run_set(model: Any, options: Any, utts: Sequence[Utt], ends: dict[str, list[float]], chunk_seconds: float, mode: str, realtime: bool = False) -> SetResult:
    from asr.scoring import score
    from asr.text import normalize

    hyps, lat, compute, audio = {}, [], 0.0, 0.0
    for k, u in enumerate(utts):
        r = run_stream(model, options, u.samples, u.rate, chunk_seconds, realtime)
        hyps[u.id] = r.text
        compute += r.compute
        audio += r.audio
        hyp = normalize(r.text).split()
        events = [(t, normalize(text)) for t, text in r.events]
        lat += word_latencies(normalize(u.text).split(), ends[u.id], hyp, first_appearances(events, hyp))
        if (k + 1) % 10 == 0:
            print(f"  {mode}: {k + 1}/{len(utts)}", file=sys.stderr, flush=True)
    s = score({u.id: u.text for u in utts}, hyps)
    return SetResult(mode, s.wer, s.cer, (s.substitutions, s.deletions, s.insertions), percentiles(lat), len(lat), compute / audio, hyps)


# ------------------------------------------------------------------------------ endpointing


def frame_powers(x: np.ndarray, rate: int) -> np.ndarray:
    """Mean power of each 10 ms frame."""
    hop = int(0.01 * rate)
    n = len(x) // hop
    return (x[: n * hop].astype(np.float64).reshape(n, hop) ** 2).mean(axis=1) if n else np.zeros(1)


@dataclass
class Joined:
    samples: np.ndarray
    rate: int
    ids: list[str]
    texts: list[str]
    regions: list[tuple[float, float]]  # each utterance's stretch: middle of the pause before to the middle of the pause after
    noisy: list[bool]


def joined_file(utts: Sequence[Utt], minutes: float, seed: int, snr_db: float = 10.0, noisy_share: float = 1 / 3) -> Joined:
    """The utterances in a random order, joined with pauses of 0.5-3 s (see the module docstring)."""
    from asr.noise import pink_noise

    rng = np.random.default_rng(seed)
    rate = utts[0].rate
    order = rng.permutation(len(utts))
    pieces, spans, total = [], [], 0  # spans: (start, end) samples of each utterance
    chosen = []
    floor = float(np.sqrt(np.percentile(frame_powers(utts[order[0]].samples, rate), 10)))
    k = 0
    while total < minutes * 60 * rate:
        u = utts[order[k % len(order)]]
        pause = int(rng.uniform(0.5, 3.0) * rate)
        pieces.append((rng.standard_normal(pause) * floor).astype(np.float32))
        total += pause
        pieces.append(u.samples)
        spans.append((total, total + len(u.samples)))
        chosen.append(u)
        total += len(u.samples)
        floor = float(np.sqrt(np.percentile(frame_powers(u.samples, rate), 10)))
        k += 1
    tail = int(rng.uniform(0.5, 3.0) * rate)
    pieces.append((rng.standard_normal(tail) * floor).astype(np.float32))
    x = np.concatenate(pieces).astype(np.float64)
    edges = [0] + [(spans[i][1] + spans[i + 1][0]) // 2 for i in range(len(spans) - 1)] + [len(x)]
    noisy = list(rng.random(len(chosen)) < noisy_share)
    for i, u in enumerate(chosen):
        if noisy[i]:
            a, b = edges[i], edges[i + 1]
            power = float(np.mean(u.samples.astype(np.float64) ** 2)) / 10 ** (snr_db / 10)
            x[a:b] += pink_noise(b - a, rng) * math.sqrt(power)
    peak = np.abs(x).max()
    if peak > 0.99:
        x *= 0.99 / peak
    return Joined(x.astype(np.float32), rate, [u.id for u in chosen], [u.text for u in chosen], [(edges[i] / rate, edges[i + 1] / rate) for i in range(len(chosen))], noisy)


def endpoint_outcome(finals: Sequence[Any], regions: Sequence[tuple[float, float]]) -> tuple[list[bool], list[list[str]]]:
    """Per utterance: whether it ends up in exactly one final (its words in one final, which holds
    no word of another utterance), and the final words given to it (by each word's middle)."""
    starts = np.array([a for a, _ in regions])
    owner_words: list[list[str]] = [[] for _ in regions]
    finals_of: list[set[int]] = [set() for _ in regions]
    owners_of: list[set[int]] = []
    for f_idx, f in enumerate(finals):
        owners = set()
        for w in f.words:
            u = int(np.searchsorted(starts, (w.start + w.end) / 2, side="right")) - 1
            u = min(max(u, 0), len(regions) - 1)
            owner_words[u].append(w.word)
            finals_of[u].add(f_idx)
            owners.add(u)
        owners_of.append(owners)
    ok = [len(fs) == 1 and owners_of[next(iter(fs))] == {u} for u, fs in enumerate(finals_of)]
    return ok, owner_words


def run_endpointing(model: Any, options: Any, joined: Joined, chunk_seconds: float, endpoint: Any = None, reset_state: bool = True) -> dict[str, Any]:
    from asr.scoring import score

    r = run_stream(model, options, joined.samples, joined.rate, chunk_seconds, endpoint=endpoint, reset_state=reset_state)
    ok, words = endpoint_outcome(r.finals, joined.regions)
    keys = [f"{i:04d}-{uid}" for i, uid in enumerate(joined.ids)]
    refs = dict(zip(keys, joined.texts, strict=True))
    hyps = {k: " ".join(w) for k, w in zip(keys, words, strict=True)}
    # The control: each utterance's stretch of the file streamed alone, by a fresh stream.
    rate = joined.rate
    alone = {k: run_stream(model, options, joined.samples[int(a * rate) : int(b * rate)], rate, chunk_seconds, endpoint=endpoint).text for k, (a, b) in zip(keys, joined.regions, strict=True)}

    def part(sel: Sequence[bool]) -> dict[str, Any]:
        ks = [k for k, s in zip(keys, sel, strict=True) if s]
        s = score({k: refs[k] for k in ks}, {k: hyps[k] for k in ks})
        s_alone = score({k: refs[k] for k in ks}, {k: alone[k] for k in ks})
        one = sum(o for o, s2 in zip(ok, sel, strict=True) if s2)
        return {"utterances": len(ks), "one_final": one, "share": 100.0 * one / max(1, len(ks)), "wer": s.wer, "wer_alone": s_alone.wer, "words": s.ref_words}

    return {
        "seconds": r.audio,
        "finals": len(r.finals),
        "rtf": r.compute / r.audio,
        "all": part([True] * len(keys)),
        "clean": part([not n for n in joined.noisy]),
        "noisy": part(joined.noisy),
    }


# ------------------------------------------------------------------------------ the run


def load_utts(manifest: Path, rate: int) -> list[Utt]:
    from asr.audio import load_audio
    from asr.manifest import read_manifest

    return [Utt(u.id, u.text, load_audio(u.audio, rate), rate) for u in read_manifest(manifest)]


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """n items evenly spread over `items` (all of them for n <= 0 or n >= len)."""
    if n <= 0 or n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def cmd_run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from asr.decode import load_model
    from asr.options import resolve_options
    from asr.streaming import OnlineEmissions

    model = load_model(args.model)
    rate = model.cfg.features.sample_rate
    utts = spread(load_utts(args.manifest, rate), args.limit)
    print(f"{len(utts)} utterances, {sum(u.duration for u in utts) / 60:.1f} min; aligning the references with {args.align_model}", file=sys.stderr)
    ends = reference_word_ends(load_model(args.align_model), utts)
    own = reference_word_ends(model, utts)  # the same references aligned with the streaming model's own outputs
    shift = np.concatenate([np.subtract(own[u.id], ends[u.id]) for u in utts]) * 1000
    greedy = resolve_options(model.cfg.decode, beam=False)
    modes = [("greedy", greedy)]
    if args.lm or args.lexicon:
        lm_opts = resolve_options(model.cfg.decode, args.decoder_config, lexicon=args.lexicon, lm=args.lm, lm_weight=args.lm_weight, word_score=args.word_score)
        modes.append(("LM", lm_opts))
    chunk = args.chunk_ms / 1000
    parts = set(args.parts.split(","))
    results = [run_set(model, opts, utts, ends, chunk, name) for name, opts in modes] if "accuracy" in parts else []
    subset = spread(utts, args.realtime_files)
    wall = None
    if "realtime" in parts:
        print(f"real-time feeding of {len(subset)} utterances ({sum(u.duration for u in subset) / 60:.1f} min)", file=sys.stderr)
        wall = run_set(model, greedy, subset, ends, chunk, "greedy, real time", realtime=True)
    endpointing = {}
    if "endpoint" in parts:
        import soundfile as sf

        from asr.endpoint import EndpointConfig

        with tempfile.TemporaryDirectory() as tmp:
            joined = joined_file(utts, args.endpoint_minutes, args.seed, args.snr_db, args.noisy_share)
            path = Path(tmp) / "joined.wav"
            sf.write(path, joined.samples, rate, subtype="PCM_16")
            joined.samples = sf.read(path, dtype="float32")[0]
        print(f"endpointing: {len(joined.ids)} utterances in {len(joined.samples) / rate / 60:.1f} min, {sum(joined.noisy)} with noise at {args.snr_db:g} dB SNR", file=sys.stderr)
        for rule2 in [float(v) for v in args.rule2.split(",")]:
            endpoint = EndpointConfig(args.rule1, rule2, args.rule3)
            for name, opts in modes:
                kept = ", state kept across endpoints" if args.keep_state else ""
                endpointing[f"{name}, rule 2 at {rule2:g} s{kept}"] = run_endpointing(model, opts, joined, chunk, endpoint, reset_state=not args.keep_state)
    online = OnlineEmissions(model)
    summary = {
        "model": str(args.model),
        "kind": model.cfg.model.kind,
        "lookahead_ms": round(online.lookahead_seconds * 1000),
        "emission_shift_ms": [round(float(shift.mean())), round(float(np.median(shift)))],
        "chunk_ms": args.chunk_ms,
        "threads": args.threads,
        "modes": {r.mode: {k: v for k, v in r.__dict__.items() if k != "hyps"} for r in results + ([wall] if wall else [])},
        "endpointing": endpointing,
        "snr_db": args.snr_db,
        "noisy_share": args.noisy_share,
        "realtime_files": len(subset) if wall else 0,
    }
    print(markdown(summary))
    print(f"\n`{command_line()}`")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def markdown(s: dict[str, Any]) -> str:
    modes = s["modes"]
    lines = [
        f"Model {s['model']} ({s['kind']}, encoder look-ahead {s['lookahead_ms']} ms), pieces of {s['chunk_ms']:g} ms, {s['threads']} torch thread(s).",
        f"Word ends in the model's own forced alignment of the references minus the offline model's: mean {s['emission_shift_ms'][0]} ms, median {s['emission_shift_ms'][1]} ms.",
    ]
    if modes:
        lines += ["", "| decoding | WER % | CER % | sub / del / ins | latency median ms | latency p90 ms | words timed | RTF |", "|---|---|---|---|---|---|---|---|"]
    for name, m in modes.items():
        what = "audio time" if "real time" not in name else f"wall time, {s['realtime_files']} utterances"
        lines.append(
            f"| {name} ({what}) | {m['wer']:.2f} | {m['cer']:.2f} | {'/'.join(map(str, m['errors']))} | {m['latency'][0]:.0f} | {m['latency'][1]:.0f} | {m['words_timed']} | {m['rtf']:.4f} |"
        )
    if s["endpointing"]:
        lines += [
            "",
            "| endpointing | utterances | in exactly one final | WER % (each stretch alone) | clean: one final, WER % (alone) | noisy: one final, WER % (alone) | finals | RTF |",
            "|---|---|---|---|---|---|---|---|",
        ]
        noise = f"a third with noise at {s['snr_db']:g} dB" if s["noisy_share"] > 0 else "no noise"
        noise = noise if abs(s["noisy_share"] - 1 / 3) < 1e-3 or s["noisy_share"] == 0 else f"{100 * s['noisy_share']:.0f}% with noise at {s['snr_db']:g} dB"
        for name, e in s["endpointing"].items():
            a, c, n = e["all"], e["clean"], e["noisy"]
            lines.append(
                f"| {name}; {e['seconds'] / 60:.1f} min, {noise} | {a['utterances']} | {a['one_final']} ({a['share']:.1f}%) | {a['wer']:.2f} ({a['wer_alone']:.2f}) | "
                f"{c['one_final']}/{c['utterances']}, {c['wer']:.2f} ({c['wer_alone']:.2f}) | {n['one_final']}/{n['utterances']}, {n['wer']:.2f} ({n['wer_alone']:.2f}) | {e['finals']} | {e['rtf']:.4f} |"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the plot


@dataclass
class Point:
    label: str
    kind: str
    ahead_ms: float  # mean wait for lcblstm
    span_ms: tuple[float, float]
    greedy: float
    lm: float


def recipe_point(exp: Path) -> Point:
    from asr.config import load_config

    cfg = load_config(exp / "train" / "config.toml")
    frame_ms = cfg.model.stack * cfg.features.hop_ms
    kind = cfg.model.kind
    greedy = json.loads((exp / "decode" / "test" / "score.json").read_text())["wer"]
    lm = json.loads((exp / "decode_lm" / "test" / "score.json").read_text())["wer"]
    if kind == "lcblstm":
        lo, hi = cfg.model.right_context, cfg.model.chunk - 1 + cfg.model.right_context
        mean = (cfg.model.chunk - 1) / 2 + cfg.model.right_context
        label = f"lcblstm, chunk {cfg.model.chunk} + {cfg.model.right_context}"
        return Point(label, kind, mean * frame_ms, (lo * frame_ms, hi * frame_ms), greedy, lm)
    if kind.startswith("b"):
        return Point(kind, kind, math.inf, (math.inf, math.inf), greedy, lm)
    ahead = cfg.model.lookahead * frame_ms
    return Point(f"{kind}, look-ahead {cfg.model.lookahead}", kind, ahead, (ahead, ahead), greedy, lm)


def cmd_plot(args: argparse.Namespace) -> None:
    from matplotlib.figure import Figure

    points = [recipe_point(e) for e in args.exps]
    uni = sorted((p for p in points if math.isfinite(p.ahead_ms) and p.kind != "lcblstm"), key=lambda p: p.ahead_ms)
    chunked = [p for p in points if p.kind == "lcblstm"]
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax = fig.add_subplot()
    markers = "sD^v"
    for attr, color, name in (("greedy", "tab:blue", "greedy"), ("lm", "tab:orange", "lexicon + 3-gram LM")):
        if uni:
            ax.plot([p.ahead_ms for p in uni], [getattr(p, attr) for p in uni], "o-", color=color, label=f"lstm + look-ahead, {name}")
        for k, p in enumerate(chunked):
            y = getattr(p, attr)
            xerr = [[p.ahead_ms - p.span_ms[0]], [p.span_ms[1] - p.ahead_ms]]
            ax.errorbar([p.ahead_ms], [y], xerr=xerr, fmt=markers[k % len(markers)], color=color, capsize=4, label=f"{p.label} (mean wait; bar: least to longest), {name}")
        for p in points:
            if not math.isfinite(p.ahead_ms):
                ax.axhline(getattr(p, attr), color=color, ls="--", lw=1, label=f"{p.label}: waits for the end of the utterance, {name}")
    ax.set_xlabel("look-ahead: ms of audio after a frame before its output is final")
    ax.set_ylabel("AN4 test WER %")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right center", fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, format="png", dpi=100)
    for p in points:
        print(f"{p.label}: look-ahead {p.ahead_ms:g} ms, WER greedy {p.greedy:.2f}, LM {p.lm:.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="accuracy, latency, speed and endpointing of a streaming model")
    r.add_argument("model", type=Path)
    r.add_argument("manifest", type=Path)
    r.add_argument("--align-model", type=Path, required=True, help="offline model whose forced alignment of the references gives the word ends")
    r.add_argument("--lm", type=Path)
    r.add_argument("--lexicon", type=Path)
    r.add_argument("--lm-weight", type=float)
    r.add_argument("--word-score", type=float)
    r.add_argument("--decoder-config", type=Path)
    r.add_argument("--chunk-ms", type=float, default=100.0)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--parts", default="accuracy,realtime,endpoint", help="what to run: accuracy (WER, latency and RTF), realtime (wall-time latency), endpoint")
    r.add_argument("--realtime-files", type=int, default=0, help="utterances fed in real time (0: all)")
    r.add_argument("--endpoint-minutes", type=float, default=10.0, help="length of the joined file")
    r.add_argument("--snr-db", type=float, default=10.0, help="SNR of the noise under the noisy utterances (against the utterance's mean power)")
    r.add_argument("--noisy-share", type=float, default=1 / 3, help="share of the utterances with noise")
    r.add_argument("--rule1", type=float, default=2.4, help="endpoint rule 1: trailing silence, seconds (asr stream --rule1-min-trailing-silence)")
    r.add_argument("--rule2", default="1.2", help="endpoint rule 2: trailing silence after speech, seconds; several, comma-separated, give a row each")
    r.add_argument("--rule3", type=float, default=20.0, help="endpoint rule 3: longest utterance, seconds")
    r.add_argument("--keep-state", action="store_true", help="endpointing: carry the model's state across endpoints (asr.stream(..., reset_state=False)) instead of starting afresh")
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--limit", type=int, default=0, help="use this many utterances spread over the manifest (0: all)")
    r.add_argument("--json", type=Path, help="also write the figures here")
    q = sub.add_parser("plot", help="WER against look-ahead for recipe runs")
    q.add_argument("out", type=Path)
    q.add_argument("exps", type=Path, nargs="+")
    args = p.parse_args(argv)
    cmd_run(args) if args.command == "run" else cmd_plot(args)


if __name__ == "__main__":
    main()
