"""What one `Stream.accept` of a long buffer costs against the same audio in small pieces.

    python bench/stream_accept.py MODEL MANIFEST [--minutes 3] [--chunk-ms 100] [--threads 1]

The files of MANIFEST (at the model's rate, `asr.audio.load_audio`) are joined, over and over,
into --minutes of audio with many pauses, hence many endpoints. The audio is given to
`asr.stream(model)` twice: in pieces of --chunk-ms, and in one `accept` call; then `finish`. Printed:
the seconds of each (accept + finish, wall time on --threads torch threads), their ratio (one
call / pieces: 1 when the cost is linear in the audio however it is cut), the number of finals,
and whether the two runs gave the same finals.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("manifest")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--chunk-ms", type=float, default=100.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    import asr
    from asr.audio import load_audio
    from asr.manifest import read_manifest

    torch.set_num_threads(args.threads)
    model = asr.load_model(args.model)
    sr = int(model.cfg.features.sample_rate)
    clips = [load_audio(u.audio, sr) for u in read_manifest(args.manifest)]
    parts, total = [], 0
    while total < args.minutes * 60 * sr:
        for c in clips:
            parts.append(c)
            total += len(c)
    x = np.concatenate(parts)[: int(args.minutes * 60 * sr)]

    def run(step: int) -> tuple[float, list[tuple[str, float, float]]]:
        stream = asr.stream(model)
        t0 = time.perf_counter()
        finals = []
        for i in range(0, len(x), step):
            stream.accept(x[i : i + step], sr)
            finals += stream.pop_finals()
        last = stream.finish()
        seconds = time.perf_counter() - t0
        finals += stream.pop_finals() + ([last] if last.text else [])
        return seconds, [(f.text, f.start, f.end) for f in finals]

    small, small_finals = run(max(1, int(args.chunk_ms / 1000 * sr)))
    whole, whole_finals = run(len(x))
    print(f"model {args.model}; {len(x) / sr / 60:.1f} min of audio from {args.manifest}; {args.threads} thread(s)")
    print()
    print("| how | seconds | ratio to pieces | finals | same finals |")
    print("|---|---|---|---|---|")
    print(f"| pieces of {args.chunk_ms:g} ms | {small:.2f} | 1.00 | {len(small_finals)} | |")
    print(f"| one accept | {whole:.2f} | {whole / small:.2f} | {len(whole_finals)} | {'yes' if whole_finals == small_finals else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
