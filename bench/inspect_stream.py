"""What watching the network costs a stream: `asr.stream` on one thread with and without
`inspect` (`asr.live_inspect.LiveInspector`, the messages encoded as the server sends them), the
bytes of inspect messages per second of audio, and whether the streamed gates equal `asr inspect`'s.

    python bench/inspect_stream.py MODEL AUDIO [--layer 1] [--units 64] [--piece 0.1] [--repeats 3]
    python bench/inspect_stream.py MODEL AUDIO --pauses      # any model: the forget gate in pauses

Each run feeds AUDIO to a fresh stream in pieces of `--piece` seconds; the runs with and without
inspect alternate, and the best of `--repeats` of each is reported with their ratio (targets:
RTF ratio <= 1.3, <= 50 kB per second of audio). Bytes are the JSON text of the inspect messages
(a WebSocket frame adds 2-4 bytes to each; the count of messages is printed). The consistency
check feeds the same pieces to the inspecting acoustic model alone (no endpoints: the model is
not restarted) and compares every layer's gates and cell state, before quantisation, with
`asr.inspect.inspect_features` over the whole file (tolerance 1e-3).

Then (and alone with `--pauses`, for a model that cannot stream too) each layer's gates and
|cell|, averaged over its units (forward direction), in speech and in pauses: an output frame is
speech when its energy is within 30 dB of its file's loudest frame. With `--pauses`, AUDIO may be
a manifest (.jsonl): the means are then over the frames of all its files.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def run(model, samples: np.ndarray, rate: int, piece: int, request=None) -> tuple[float, int, int]:
    """Seconds to stream `samples`, bytes and count of the inspect messages."""
    import asr
    from asr.live_inspect import LiveInspector

    inspector = LiveInspector(model, request) if request else None
    t0 = time.perf_counter()
    stream = asr.stream(model, emissions=inspector)
    sent = count = 0
    for i in range(0, len(samples), piece):
        stream.accept(samples[i : i + piece], rate)
        stream.pop_finals()
        if inspector:
            for m in inspector.messages():
                sent += len(json.dumps(m))
                count += 1
    stream.finish()
    if inspector:
        for m in inspector.messages():
            sent += len(json.dumps(m))
            count += 1
    return time.perf_counter() - t0, sent, count


def consistency(model, samples: np.ndarray, piece: int, units: int) -> list[float]:
    """Per layer, the largest |streamed - asr inspect| over gates and cell state."""
    from asr.inspect import inspect_features
    from asr.live_inspect import InspectRequest, LiveInspector

    inspector = LiveInspector(model, InspectRequest(1, units))
    for i in range(0, len(samples), piece):
        inspector.accept(samples[i : i + piece])
    inspector.finish()
    records = inspector.traces()
    want = inspect_features(model, model.extractor(torch.from_numpy(samples)))
    worst = []
    for layer, g in enumerate(want.gates):
        diffs = []
        for name, ref in (("input", g.input_gate), ("forget", g.forget_gate), ("output", g.output_gate), ("cell", g.cell)):
            got = np.concatenate([r[2][layer][name].numpy() for r in records])
            diffs.append(float(np.abs(got - ref).max()))
        worst.append(max(diffs))
    return worst


VALUES = ("input", "forget", "output", "|c|")


def gates_at_pauses(model, samples: np.ndarray) -> list[dict[str, tuple[float, int, float, int]]]:
    """Per layer (forward direction), per value of VALUES: the sum of its per-frame unit mean
    over speech frames, their count, the same over pause frames."""
    from asr.inspect import inspect_features

    insp = inspect_features(model, model.extractor(torch.from_numpy(samples)))
    hop = int(round(model.model.stack * model.cfg.features.hop_ms / 1000 * model.cfg.features.sample_rate))
    n = len(insp.log_probs)
    energy = np.array([10 * np.log10(np.mean(samples[i * hop : (i + 1) * hop] ** 2) + 1e-10) for i in range(n)])
    speech = energy > energy.max() - 30
    out = []
    for g in insp.gates:
        layer = {}
        for name, v in zip(VALUES, (g.input_gate, g.forget_gate, g.output_gate, np.abs(g.cell)), strict=True):
            m = v.mean(1)
            layer[name] = (float(m[speech].sum()), int(speech.sum()), float(m[~speech].sum()), int((~speech).sum()))
        out.append(layer)
    return out


def print_pauses(model, files: list[str]) -> None:
    from asr.audio import load_audio

    total: list[dict[str, list[float]]] = []
    for path in files:
        for i, layer in enumerate(gates_at_pauses(model, load_audio(path, model.cfg.features.sample_rate))):
            if i == len(total):
                total.append({name: [0.0, 0, 0.0, 0] for name in VALUES})
            for name, values in layer.items():
                total[i][name] = [a + b for a, b in zip(total[i][name], values, strict=True)]
    print(f"speech and pauses over {len(files)} file(s): mean over the units, forward direction")
    for i, layer in enumerate(total):
        sp, n_sp, pause, n_pause = layer["forget"]
        print(f"layer {i + 1}: mean forget gate {sp / n_sp:.3f} in speech ({n_sp} frames), {pause / max(n_pause, 1):.3f} in pauses ({n_pause} frames)")
        print("         " + "; ".join(f"{name} {a / b:.3f} -> {c / max(d, 1):.3f}" for name, (a, b, c, d) in layer.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("audio")
    p.add_argument("--layer", type=int, default=1)
    p.add_argument("--units", type=int, default=64)
    p.add_argument("--piece", type=float, default=0.1, help="seconds of audio per accept (the page sends 0.1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pauses", action="store_true", help="only the forget gate in speech and in pauses")
    args = p.parse_args()
    torch.set_num_threads(1)

    import asr
    from asr.audio import load_audio
    from asr.manifest import read_manifest

    model = asr.load_model(args.model)
    rate = model.cfg.features.sample_rate
    if args.audio.endswith(".jsonl"):
        if not args.pauses:
            p.error("a manifest is for --pauses only; give one audio file to stream")
        print_pauses(model, [u.audio for u in read_manifest(args.audio)])
        return
    samples = load_audio(args.audio, rate)
    piece = max(1, int(args.piece * rate))
    if not args.pauses:
        streamed(model, samples, rate, piece, args)
    print_pauses(model, [args.audio])


def streamed(model, samples: np.ndarray, rate: int, piece: int, args: argparse.Namespace) -> None:
    from asr.live_inspect import InspectRequest

    seconds = len(samples) / rate
    request = InspectRequest(args.layer, args.units)
    run(model, samples, rate, piece)  # warm-up
    plain, inspected = [], []
    for _ in range(args.repeats):
        plain.append(run(model, samples, rate, piece)[0])
        t, sent, count = run(model, samples, rate, piece, request)
        inspected.append(t)
    print(f"{args.audio}: {seconds:.2f} s of audio, pieces of {args.piece:g} s, one thread, best of {args.repeats}")
    print(f"RTF without inspect {min(plain) / seconds:.4f}, with inspect (layer {args.layer}, {args.units} units) {min(inspected) / seconds:.4f}: ratio {min(inspected) / min(plain):.2f}")
    print(f"inspect messages: {count}, {sent} bytes of JSON = {sent / seconds / 1000:.1f} kB per second of audio")
    worst = consistency(model, samples, piece, args.units)
    print("largest |streamed - asr inspect| per layer (gates and cell state): " + ", ".join(f"layer {i + 1} {w:.1e}" for i, w in enumerate(worst)))


if __name__ == "__main__":
    main()
