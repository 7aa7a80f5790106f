"""Hotwords, grammars and the Wyoming server on AN4 (docs/decoding.md, docs/serving.md).

    python bench/context.py --exp /work/exp/an4 [--out /tmp/context-bench]
    python bench/context.py --exp /work/exp/an4 --sweep 0.5,1,1.5,2,2.5,3,4

0. `--sweep BOOSTS` (only this part runs): how the default boost (`asr.context.DEFAULT_BOOST`)
   was chosen, on data that the test set's figures do not use. Ten other words (SWEEP_WORDS,
   none of HOTWORDS, none said only in the test set) are taken out of the LM as in 1; the
   training utterances that say one of them, plus as many other training utterances (fixed
   seed, for false alarms), are decoded with the ten as hotwords at each boost. Printed per
   boost: recall, false alarms (hotwords output beyond those said), WER on all words and on the
   other words; the boost with the lowest WER on all words is marked (the smaller on a tie).
   The acoustic model was trained on these utterances (the recipe trains on train + dev), so
   it hears them better than new speech: read the chosen boost as a lower bound.

1. Hotwords. The ten test-set words of HOTWORDS are taken out of the LM: every training
   sentence holding one of them is left out of the LM and lexicon text, and the 3-gram LM and
   lexicon are rebuilt from the rest (`asr.lm`). The test set is decoded with the model's own
   beam settings and that LM, without and with the ten as hotwords (default boost). Printed:
   recall of the ten (occurrences found / said, per utterance), WER on all words, WER on the
   other words (the ten removed from references and hypotheses alike), and the RTF of each run
   in wall-clock and in CPU seconds of this process (best of two, in this one process; on a
   shared machine the wall clock also counts time spent waiting for a core, so only the ratios
   count, and the CPU one is the steadier).
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
SWEEP_EXCLUDE = "mjgm"  # the speaker of cen8-mjgm-b.wav, the NOVEMBER example of docs/decoding.md
SWEEP_WORDS = ["SEPTEMBER", "AUGUST", "OCTOBER", "MARCH", "JULY", "HUNDRED", "THOUSAND", "FOURTEEN", "REPEAT", "TWENTY"]
DISTRACTORS = 500
REPEATS = 5


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def decode(model, utts, options, audios=None):
    """{id: text} of the utterances and the (wall, CPU) seconds the decode took (acoustic model
    and search)."""
    from asr.inference import decoder_for, recognize

    decoder = decoder_for(model, options)
    t0, c0 = time.perf_counter(), time.process_time()
    results = recognize(model, audios, options, decoder=decoder, word_times=False)
    return {u["id"]: r.text for u, r in zip(utts, results, strict=True)}, (time.perf_counter() - t0, time.process_time() - c0)


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
    p.add_argument("--sweep", help="comma-separated boosts: run only the boost sweep")
    p.add_argument("--sweep-on", choices=["train", "test"], default="train", help="the sweep's utterances (part 0 of the docstring)")
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
    if args.sweep:
        sweep(model, train, test, [float(b) for b in args.sweep.split(",")], args.out, args.sweep_on)
        return

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
        runs = times["plain" if hyps is h_plain else "hot"]
        wall, cpu = min(w for w, _ in runs) / seconds, min(c for _, c in runs) / seconds
        rows.append((name, found, said, score(refs, hyps).wer, score(without(refs, hot), without(hyps, hot)).wer, wall, cpu))
    print("| decoding | recall of the ten | WER all words % | WER other words % | RTF wall | RTF CPU |\n|---|---|---|---|---|---|")
    for name, found, said, wer, other, wall, cpu in rows:
        print(f"| {name} | {found}/{said} ({100 * found / said:.1f} %) | {wer:.2f} | {other:.2f} | {wall:.4f} | {cpu:.4f} |")
    print(
        f"other words' WER change: {rows[1][4] - rows[0][4]:+.2f} points (target within 0.3); RTF ratio wall {rows[1][5] / rows[0][5]:.2f}, "
        f"CPU {rows[1][6] / rows[0][6]:.2f} (target <= 1.2); recall target >= 80 %"
    )

    # 2. grammar ----------------------------------------------------------------------------
    rng = random.Random(1)
    test_texts = sorted(set(refs.values()))
    pool = sorted({u["text"] for u in train} - set(test_texts))
    distractors = rng.sample(pool, min(DISTRACTORS, len(pool)))
    grammar = Grammar.of_phrases(test_texts + distractors, "an4-test+500")
    full = resolve_options(model.cfg.decode, lexicon=args.exp / "lm" / "lexicon.txt", lm=args.exp / "lm" / "3gram.arpa")
    h_open, _ = decode(model, test, full, audios)
    h_gram, (t_gram, _) = decode(model, test, replace(full, grammar=grammar), audios)
    ser_open = sum(h_open[k] != refs[k] for k in refs)
    ser_gram = sum(h_gram[k] != refs[k] for k in refs)
    empty = sum(h_gram[k] == "" for k in refs)
    print(f"grammar of {len(test_texts)} test transcripts + {len(distractors)} training transcripts: sentence errors open decoder {ser_open}/{len(refs)} ({100 * ser_open / len(refs):.1f} %), "
          f"with the grammar {ser_gram}/{len(refs)} ({100 * ser_gram / len(refs):.1f} %; {empty} empty), ratio {ser_gram / max(1, ser_open):.2f} (target <= 0.5); grammar RTF {t_gram / seconds:.4f}")

    # 3. Wyoming ----------------------------------------------------------------------------
    print(wyoming_round_trip(model, test[0]["audio"]))


def sweep(model, train: list[dict], test: list[dict], boosts: list[float], out: Path, on: str = "train") -> None:
    """Part 0 of the module docstring: recall, false alarms and WER of hotwords taken out of the
    LM, per boost: SWEEP_WORDS on training utterances (`on` "train"), or HOTWORDS on the test
    utterances of every speaker but SWEEP_EXCLUDE (`on` "test")."""
    from dataclasses import replace

    from asr.context import parse_hotwords
    from asr.inference import decoder_for, emissions, read_audio
    from asr.lm import build_arpa, lexicon_words, write_lexicon
    from asr.options import resolve_options
    from asr.scoring import score

    chosen = SWEEP_WORDS if on == "train" else HOTWORDS
    words = set(chosen)
    assert not set(SWEEP_WORDS) & set(HOTWORDS)
    kept = [u["text"] for u in train if not words & set(u["text"].split())]
    if on == "train":
        saying = [u for u in train if words & set(u["text"].split())]
        utts = saying + random.Random(2).sample([u for u in train if not words & set(u["text"].split())], len(saying))
    else:
        utts = [u for u in test if u.get("speaker") != SWEEP_EXCLUDE]
        saying = [u for u in utts if words & set(u["text"].split())]
    root = out / f"sweep-{on}"
    root.mkdir(parents=True, exist_ok=True)
    lexicon, lm = root / "lexicon.txt", root / "3gram.arpa"
    write_lexicon(lexicon_words(kept), model.tokenizer.tokens, lexicon)
    build_arpa(kept, 3, lm)
    refs = {u["id"]: u["text"] for u in utts}
    plain = resolve_options(model.cfg.decode, lexicon=lexicon, lm=lm)
    sr = model.cfg.features.sample_rate
    views = emissions(model, [read_audio(u["audio"], None, sr) for u in utts], plain.speeds)
    print(f"sweep on {on}, words {' '.join(chosen)}: {len(train) - len(kept)} of {len(train)} training sentences left out of the LM; "
          f"{len(utts)} utterances, {len(saying)} saying them ({recall(refs, refs, words)[1]} occurrences)")
    print("| boost | recall | false alarms | WER all words % | WER other words % |\n|---|---|---|---|---|")
    rows = []
    for boost in [0.0, *boosts]:
        options = replace(plain, hotwords=parse_hotwords([f"{w}:{boost}" for w in chosen])) if boost else plain
        decoder = decoder_for(model, options)
        hyps = {u["id"]: decoder.search_views(v)[0].text for u, v in zip(utts, views, strict=True)}
        found, said = recall(refs, hyps, words)
        extra = sum(max(0, hyps[k].split().count(w) - refs[k].split().count(w)) for k in refs for w in words)
        rows.append((boost, score(refs, hyps).wer))
        name = f"{boost:g}" if boost else "none"
        print(f"| {name} | {found}/{said} ({100 * found / said:.1f} %) | {extra} | {rows[-1][1]:.2f} | {score(without(refs, words), without(hyps, words)).wer:.2f} |", flush=True)
    best = min(rows[1:], key=lambda r: (round(r[1], 2), r[0]))
    print(f"lowest WER on all words: boost {best[0]:g} ({best[1]:.2f} %)")


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
