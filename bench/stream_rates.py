"""Live and offline recognition of the same audio at several sample rates: `asr.stream` against
`asr.transcribe`, WER of each and how many files differ in their words.

    python bench/stream_rates.py MODEL MANIFEST [--rates 8000 16000 44100 48000] [--make-with soxr] [--chunk-ms 100] [--limit N]

Each utterance of MANIFEST is read at its own rate and brought to each of --rates with soxr (a
recording made at that rate, by another resampler than the one under test) or, with
--make-with torchaudio, with `asr.audio.resample`, then given as an array with its rate to

- `asr.transcribe(model, samples, sample_rate=rate)` (offline: torchaudio's resampler, the whole
  utterance decoded at once), and
- `asr.stream(model)`, in pieces of --chunk-ms at that rate, then finished; the text is its finals
  joined (what `asr stream` prints).

Both use the checkpoint's [decode] options with one view (a stream cannot use speed views). The
table gives, per rate, each WER (`asr.scoring.score`), the number of files whose words differ
between the two, and the largest difference between the samples the stream fed its model and
those `asr.transcribe` feeds it (`asr.audio.StreamResampler` against `asr.audio.resample`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("manifest")
    p.add_argument("--rates", type=int, nargs="+", default=[8000, 16000, 44100, 48000])
    p.add_argument("--make-with", choices=["soxr", "torchaudio"], default="soxr", help="how the inputs at each rate are made")
    p.add_argument("--chunk-ms", type=float, default=100.0)
    p.add_argument("--limit", type=int, default=0, help="first N utterances only (0: all)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import soundfile as sf
    import soxr
    import torch

    import asr
    from asr.audio import StreamResampler, resample
    from asr.manifest import read_manifest
    from asr.scoring import score

    torch.set_num_threads(args.threads)
    model = asr.load_model(args.model)
    options = asr.resolve_options(model.cfg.decode)
    options = replace(options, speeds=(1.0,))
    model_rate = int(model.cfg.features.sample_rate)
    utts = read_manifest(args.manifest)
    if args.limit:
        utts = utts[: args.limit]
    refs = {u.id: u.text for u in utts}
    print(f"model {args.model} ({model.cfg.model.kind}, {model_rate} Hz); {len(utts)} utterances of {args.manifest}; pieces of {args.chunk_ms:g} ms; inputs made with {args.make_with}")
    print()
    print("| input rate | offline WER % | live WER % | files whose words differ | largest sample difference |")
    print("|---|---|---|---|---|")
    for rate in args.rates:
        offline, live, differ, worst = {}, {}, 0, 0.0
        for u in utts:
            x, sr = sf.read(u.audio, dtype="float32", always_2d=True)
            x = x.mean(axis=1, dtype=np.float32)
            if sr != rate:
                x = soxr.resample(x, sr, rate).astype(np.float32) if args.make_with == "soxr" else resample(x, sr, rate)
            offline[u.id] = asr.transcribe(model, x, rate, options).text
            stream = asr.stream(model, options)
            step = max(1, int(round(args.chunk_ms / 1000 * rate)))
            texts = []
            for i in range(0, len(x), step):
                stream.accept(x[i : i + step], rate)
                texts += [f.text for f in stream.pop_finals()]
            last = stream.finish()
            texts += [f.text for f in stream.pop_finals()] + ([last.text] if last.text else [])
            live[u.id] = " ".join(texts)
            differ += live[u.id].split() != offline[u.id].split()
            if rate != model_rate:
                r = StreamResampler(rate, model_rate)
                fed = np.concatenate([r.accept(x[i : i + step]) for i in range(0, len(x), step)] + [r.finish()])
                worst = max(worst, float(np.abs(fed - resample(x, rate, model_rate)).max()))
        print(f"| {rate} | {score(refs, offline).wer:.2f} | {score(refs, live).wer:.2f} | {differ} of {len(utts)} | {worst:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
