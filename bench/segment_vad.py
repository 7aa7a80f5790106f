"""Cutting long audio at pauses: the energy segmenter against Silero VAD, on one long file.

    python bench/segment_vad.py --model exp/an4/model.pt [--data ../shared/data/an4] [--snr 10] [--seed 0]

Builds one file from the AN4 test utterances (130, read from --data; the script says so and
exits 0 when the corpus is absent): each utterance followed by a pause of 0.5-3 s of faint
noise (-60 dBFS), every other utterance and the pause after it with white noise at --snr dB SNR (10)
(against the utterance's own mean power), so the noise comes and goes as in a recording that
moves between rooms. Reference word times come from forced alignment of each utterance's
transcript with the model on the clean audio (`asr.align.word_alignments`, `fit_to_audio`).

For each segmenter ("energy", "silero"; `asr.segment.iter_segments` as `asr transcribe` calls
it, segments of at most 30 s) it reports:

- segments: how many;
- cuts in words: segment edges (starts and ends) that fall inside a reference word by more
  than 20 ms;
- words lost: reference words less than half inside any segment;
- WER %: `asr.inference.transcribe(model, file, segmenter=...)` (greedy), each recognised word
  given to the utterance whose stretch of the file (it and the pause after it) holds the word's
  middle, scored per utterance as `asr score` does: all, the clean ones, the noisy ones;
- seconds: the transcription's wall time (the VAD's share included).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
EDGE_TOLERANCE = 0.02


def build(model, data: Path, out: Path, seed: int, snr_db: float = 10.0) -> tuple[Path, list[tuple[str, float, float]], list[tuple[str, str, float, float, bool]]]:
    """The long file, its reference words (word, start, end) and its utterances (id, text, start,
    end of the pause after it, noisy)."""
    from asr.align import fit_to_audio, word_alignments
    from asr.audio import load_audio
    from asr.corpora import import_an4
    from asr.inference import Audio, emissions

    utts = import_an4(data)["test"]
    rng = np.random.default_rng(seed)
    frame_seconds = model.cfg.model.stack * model.cfg.features.hop_ms / 1000
    parts, words, spans = [], [], []
    t = 0.0
    for i, u in enumerate(utts):
        x = load_audio(u.audio, SR)
        lp = emissions(model, [Audio(x, SR, SR)])[0][0]
        ids = model.tokenizer.encode(u.text)
        for w in fit_to_audio(word_alignments(lp, ids, model.tokenizer, frame_seconds, t), x, SR, t):
            words.append((w.word, w.start, w.end))
        pause = (10 ** (-60 / 20) * rng.standard_normal(int(rng.uniform(0.5, 3.0) * SR))).astype(np.float32)
        piece = np.concatenate([x, pause])
        noisy = i % 2 == 1
        if noisy:
            noise_std = np.sqrt(np.mean(x.astype(np.float64) ** 2) / 10 ** (snr_db / 10))
            piece = piece + (noise_std * rng.standard_normal(len(piece))).astype(np.float32)
        parts.append(np.clip(piece, -1, 1).astype(np.float32))
        spans.append((u.id, u.text, t, t + len(piece) / SR, noisy))
        t += len(piece) / SR
    out.mkdir(parents=True, exist_ok=True)
    path = out / "an4-test-joined.wav"
    sf.write(path, np.concatenate(parts), SR, subtype="PCM_16")
    return path, words, spans


def measure(model, path: Path, words: list[tuple[str, float, float]], utterances: list[tuple[str, str, float, float, bool]], segmenter: str) -> dict:
    from asr.inference import LONG_AUDIO_SECONDS, transcribe
    from asr.scoring import score
    from asr.segment import iter_segments

    spans = [(s.start, s.end) for s in iter_segments(path, SR, max_seconds=LONG_AUDIO_SECONDS, segmenter=segmenter)]
    edges = [t for span in spans for t in span]
    inside = sum(any(s + EDGE_TOLERANCE < e < t - EDGE_TOLERANCE for _, s, t in words) for e in edges)
    lost = 0
    for _, s, t in words:
        covered = sum(max(0.0, min(t, b) - max(s, a)) for a, b in spans)
        lost += covered < 0.5 * (t - s)
    t0 = time.perf_counter()
    result = transcribe(model, path, segmenter=segmenter)
    seconds = time.perf_counter() - t0
    # each recognised word goes to the utterance whose stretch (it and the pause after it) holds its middle
    starts = np.array([u[2] for u in utterances])
    hyps: dict[str, list[str]] = {u[0]: [] for u in utterances}
    for w in result.words:
        hyps[utterances[max(0, int(np.searchsorted(starts, (w.start + w.end) / 2, side="right")) - 1)][0]].append(w.word)
    out = {"segments": len(spans), "cuts in words": inside, "words lost": lost, "seconds": seconds}
    for name, keep in (("WER %", lambda u: True), ("clean", lambda u: not u[4]), ("noisy", lambda u: u[4])):
        chosen = [u for u in utterances if keep(u)]
        out[name] = score({u[0]: u[1] for u in chosen}, {u[0]: " ".join(hyps[u[0]]) for u in chosen}).wer
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="An AN4 model (checkpoint or export).")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "an4")
    parser.add_argument("--out", type=Path, default=Path("/tmp/segment_vad"))
    parser.add_argument("--seed", type=int, default=0, help="Pauses and noise.")
    parser.add_argument("--snr", type=float, default=10.0, help="SNR of the noisy utterances, dB.")
    args = parser.parse_args()
    if not (args.data / "etc" / "an4_test.transcription").is_file():
        print(f"skipped: no AN4 corpus at {args.data}")
        return 0
    import asr
    from asr.segment import SEGMENTERS

    model = asr.load_model(args.model)
    path, words, utterances = build(model, args.data, args.out, args.seed, args.snr)
    info = sf.info(path)
    print(f"{path}: {info.frames / info.samplerate / 60:.1f} min, {len(utterances)} utterances, {len(words)} words; every other utterance at {args.snr:g} dB SNR (seed {args.seed})")
    print("| segmenter | segments | cuts in words | words lost | WER % | WER % clean | WER % noisy | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name in SEGMENTERS:
        r = measure(model, path, words, utterances, name)
        print(f"| {name} | {r['segments']} | {r['cuts in words']} | {r['words lost']} | {r['WER %']:.2f} | {r['clean']:.2f} | {r['noisy']:.2f} | {r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
