"""Hotwords, grammars and the Wyoming server on AN4 (docs/decoding.md, docs/serving.md).

    python bench/context.py --exp /work/exp/an4 [--out /tmp/context-bench]

1. Hotwords. The ten test-set words of HOTWORDS are taken out of the LM: every training
   sentence holding one of them is left out of the LM and lexicon text, and the 3-gram LM and
   lexicon are rebuilt from the rest (`asr.lm`). The test set is decoded with the model's own
   beam settings and that LM, without and with the ten as hotwords (default boost). Printed:
   recall of the ten (occurrences found / said, per utterance), WER on all words, WER on the
   other words (the ten removed from references and hypotheses alike), and the RTF of each run
   (best of two, in this one process; the machine may be shared, so only the ratio counts).
2. Grammar. A grammar of every test transcript plus DISTRACTORS training transcripts (none a
   test transcript, drawn with a fixed seed); the sentence error rate of the test set with the
   grammar against the open decoder (the same beam search with the full recipe LM).
3. Wyoming. One test file through `asr serve --wyoming` (the `wyoming` package's client, on a
   warm server) against `asr.transcribe` on the same warm model: the median round trip of
   REPEATS each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HOTWORDS = ["ERASE", "NINETEEN", "FIFTY", "THIRTY", "NINETY", "SEVENTY", "TWELVE", "EIGHTY", "ZERO", "FORTY"]
DISTRACTORS = 500
REPEATS = 5


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def decode(model, utts, options, audios=None):
    """{id: text} of the utterances and the seconds the decode took (acoustic model and search)."""
    from asr.inference import decoder_for, recognize

    decoder = decoder_for(model, options)
    t0 = time.perf_counter()
    results = recognize(model, audios, options, decoder=decoder, word_times=False)
    return {u["id"]: r.text for u, r in zip(utts, results, strict=True)}, time.perf_counter() - t0


def recall(refs: dict, hyps: dict, words: set[str]) -> tuple[int, int]:
    said = found = 0
    for k, ref in refs.items():
        for w in words:
            n = ref.split().count(w)
            said += n
            found += min(n, hyps[k].split().count(w))
    return found, said


def without(texts: dict, words: set[str]) -> dict:
    return {k: " ".join(w for w in t.split() if w not in words) for k, t in texts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exp", type=Path, default=Path("/work/exp/an4"))
    p.add_argument("--out", type=Path, default=Path("/tmp/context-bench"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import torch

    import asr
    from asr.context import Grammar, parse_hotwords
    from asr.inference import read_audio
    from asr.lm import build_arpa, lexicon_words, write_lexicon
    from asr.options import resolve_options
    from asr.scoring import score

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model = asr.load_model(args.exp / "model.pt")
    train = read(args.exp / "data" / "train+dev.jsonl")
    test = read(args.exp / "data" / "test.jsonl")
    refs = {u["id"]: u["text"] for u in test}
    sr = model.cfg.features.sample_rate
    audios = [read_audio(u["audio"], None, sr) for u in test]
    seconds = sum(a.duration for a in audios)

    # 1. hotwords ---------------------------------------------------------------------------
    hot = set(HOTWORDS)
    kept = [u["text"] for u in train if not hot & set(u["text"].split())]
    lexicon, lm = args.out / "lexicon.txt", args.out / "3gram.arpa"
    write_lexicon(lexicon_words(kept), model.tokenizer.tokens, lexicon)
    build_arpa(kept, 3, lm)
    print(f"hotwords {' '.join(HOTWORDS)}: {len(train) - len(kept)} of {len(train)} training sentences left out of the LM; {recall(refs, refs, hot)[1]} occurrences in the test set")
    plain = resolve_options(model.cfg.decode, lexicon=lexicon, lm=lm)
    boosted = replace(plain, hotwords=parse_hotwords(HOTWORDS))
    times = {"plain": [], "hot": []}
    for _ in range(2):
        for name, options in (("plain", plain), ("hot", boosted)):
            hyps, t = decode(model, test, options, audios)
            times[name].append(t)
            if name == "plain":
                h_plain = hyps
            else:
                h_hot = hyps
    rows = []
    for name, hyps in (("without hotwords", h_plain), ("with hotwords", h_hot)):
        found, said = recall(refs, hyps, hot)
        rtf = min(times["plain" if hyps is h_plain else "hot"]) / seconds
        rows.append((name, found, said, score(refs, hyps).wer, score(without(refs, hot), without(hyps, hot)).wer, rtf))
    print("| decoding | recall of the ten | WER all words % | WER other words % | RTF |\n|---|---|---|---|---|")
    for name, found, said, wer, other, rtf in rows:
        print(f"| {name} | {found}/{said} ({100 * found / said:.1f} %) | {wer:.2f} | {other:.2f} | {rtf:.4f} |")
    print(f"other words' WER change: {rows[1][4] - rows[0][4]:+.2f} points (target within 0.3); RTF ratio {rows[1][5] / rows[0][5]:.2f} (target <= 1.2); recall target >= 80 %")

    # 2. grammar ----------------------------------------------------------------------------
    rng = random.Random(1)
    test_texts = sorted(set(refs.values()))
    pool = sorted({u["text"] for u in train} - set(test_texts))
    distractors = rng.sample(pool, min(DISTRACTORS, len(pool)))
    grammar = Grammar.of_phrases(test_texts + distractors, "an4-test+500")
    full = resolve_options(model.cfg.decode, lexicon=args.exp / "lm" / "lexicon.txt", lm=args.exp / "lm" / "3gram.arpa")
    h_open, _ = decode(model, test, full, audios)
    h_gram, t_gram = decode(model, test, replace(full, grammar=grammar), audios)
    ser_open = sum(h_open[k] != refs[k] for k in refs)
    ser_gram = sum(h_gram[k] != refs[k] for k in refs)
    empty = sum(h_gram[k] == "" for k in refs)
    print(f"grammar of {len(test_texts)} test transcripts + {len(distractors)} training transcripts: sentence errors open decoder {ser_open}/{len(refs)} ({100 * ser_open / len(refs):.1f} %), "
          f"with the grammar {ser_gram}/{len(refs)} ({100 * ser_gram / len(refs):.1f} %; {empty} empty), ratio {ser_gram / max(1, ser_open):.2f} (target <= 0.5); grammar RTF {t_gram / seconds:.4f}")

    # 3. Wyoming ----------------------------------------------------------------------------
    print(wyoming_round_trip(model, test[0]["audio"]))


def wyoming_round_trip(model, path: str) -> str:
    import soundfile as sf
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    import asr
    from asr.options import resolve_options
    from asr.server import ServerConfig
    from asr.wyoming import run_wyoming

    options = resolve_options(model.cfg.decode)
    config = ServerConfig(workers=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from asr.server import Batcher

    batcher = Batcher(model, options, 1, config.queue_size, config.max_batch, config.batch_wait_ms)
    loop = asyncio.new_event_loop()
    threading.Thread(target=lambda: loop.run_until_complete(run_wyoming(f"tcp://127.0.0.1:{port}", model, options, batcher, config, "an4")), daemon=True).start()
    x, sr = sf.read(path, dtype="int16")
    pcm = x.tobytes()

    async def once() -> str:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Transcribe().event())
            await client.write_event(AudioStart(rate=sr, width=2, channels=1).event())
            for i in range(0, len(pcm), 3200):
                await client.write_event(AudioChunk(rate=sr, width=2, channels=1, audio=pcm[i : i + 3200]).event())
            await client.write_event(AudioStop().event())
            while True:
                event = await client.read_event()
                if Transcript.is_type(event.type):
                    return Transcript.from_event(event).text

    for _ in range(50):  # the server is up
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    text = asyncio.run(once())  # warm
    direct = asr.transcribe(model, path, options=options, word_times=False)
    assert text == direct.text, (text, direct.text)
    wy, tr = [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        asyncio.run(once())
        wy.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        asr.transcribe(model, path, options=options, word_times=False)
        tr.append(time.perf_counter() - t0)
    a, b = statistics.median(wy), statistics.median(tr)
    return f"Wyoming round trip of {Path(path).name} ({len(x) / sr:.2f} s): {1000 * a:.1f} ms through the wyoming client, {1000 * b:.1f} ms asr.transcribe on the warm model (ratio {a / b:.2f}; median of {REPEATS}); text {text!r}"


if __name__ == "__main__":
    main()
