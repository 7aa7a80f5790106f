"""Greedy CTC decoding of manifests and audio files."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from asr.audio import AUDIO_EXTENSIONS, AudioError, load_audio
from asr.checkpoint import Recognizer
from asr.data import bucket_batches, pad_batch
from asr.manifest import read_manifest, write_jsonl


def greedy_ids(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best token per frame, repeats merged, blanks removed."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for b, n in enumerate(lengths.tolist()):
        seq = torch.unique_consecutive(best[b, :n]).tolist()
        out.append([t for t in seq if t != blank])
    return out


@torch.inference_mode()
def recognize_features(rec: Recognizer, feats: list[torch.Tensor]) -> list[str]:
    """Texts for a batch of raw (unnormalised) feature matrices."""
    x, lengths = pad_batch([rec.normalizer(f) for f in feats])
    log_probs, out_lengths = rec.model(x.to(rec.device), lengths)
    return [rec.tokenizer.decode(ids) for ids in greedy_ids(log_probs, out_lengths)]


@dataclass
class DecodeReport:
    decoded: int
    failed: list[tuple[str, str]]  # (id or path, reason)
    audio_seconds: float


def decode_items(rec: Recognizer, items: list[tuple[str, str]], batch_frames: int, progress: bool = True) -> Iterator[tuple[str, str | None, str]]:
    """Decode (key, audio path) pairs in length-bucketed batches.

    Yields (key, text, "") for each decoded item and (key, None, reason) for unreadable audio.
    """
    sr = rec.cfg.features.sample_rate
    feats: dict[str, torch.Tensor] = {}
    for key, path in tqdm(items, desc="features", unit="utt", leave=False, disable=None if progress else True):
        try:
            feats[key] = rec.extractor(torch.from_numpy(load_audio(path, sr)))
        except AudioError as e:
            yield key, None, e.reason
    keys = list(feats)
    lengths = [len(feats[k]) for k in keys]
    for batch in tqdm(bucket_batches(lengths, batch_frames), desc="decode", unit="batch", leave=False, disable=None if progress else True):
        texts = recognize_features(rec, [feats[keys[i]] for i in batch])
        for i, text in zip(batch, texts, strict=True):
            yield keys[i], text, ""


def decode_manifest(model: str | Path | Recognizer, manifest: str | Path, out: str | Path, batch_frames: int | None = None) -> DecodeReport:
    """Decode every utterance of a manifest into a hypothesis JSONL of {"id", "text"} lines,
    in manifest order. Unreadable audio is reported and left out."""
    rec = model if isinstance(model, Recognizer) else Recognizer.from_checkpoint(model)
    utts = read_manifest(manifest)
    texts: dict[str, str] = {}
    failed = []
    for key, text, reason in decode_items(rec, [(u.id, u.audio) for u in utts], batch_frames or rec.cfg.decode.batch_frames):
        if text is None:
            failed.append((key, reason))
            print(f"warning: {key}: {reason} (skipped)", file=sys.stderr)
        else:
            texts[key] = text
    write_jsonl(out, ({"id": u.id, "text": texts[u.id]} for u in utts if u.id in texts))
    seconds = sum(u.duration for u in utts if u.id in texts)
    return DecodeReport(len(texts), failed, seconds)


def find_audio(inputs: Iterable[str | Path]) -> list[str]:
    """Expand inputs into audio paths: files as given, directories searched recursively by audio
    extension (sorted), and `-` read as a list of paths from stdin, one per line."""
    paths: list[str] = []
    for item in inputs:
        item = str(item)
        if item == "-":
            paths += [line.strip() for line in sys.stdin if line.strip()]
        elif Path(item).is_dir():
            paths += sorted(str(p) for p in Path(item).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        else:
            paths.append(item)
    return paths


def transcribe(model: str | Path | Recognizer, paths: Iterable[str | Path], batch_frames: int | None = None) -> Iterator[tuple[str, str | None, str]]:
    """(path, text, "") for each readable audio file, (path, None, reason) for the others, in input order."""
    rec = model if isinstance(model, Recognizer) else Recognizer.from_checkpoint(model)
    paths = [str(p) for p in paths]
    results = {}
    for key, text, reason in decode_items(rec, [(p, p) for p in paths], batch_frames or rec.cfg.decode.batch_frames, progress=len(paths) > 20):
        results[key] = (text, reason)
    for p in paths:
        yield (p, *results[p])
