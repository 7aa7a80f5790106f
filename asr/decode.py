"""Decoding: manifests and audio files to text, greedy or beam search, with word timestamps.

An acoustic model is anything with `cfg`, `tokenizer`, `extractor` and
`log_probs(feats, lengths)`: a checkpoint's Recognizer or an exported model.

Inputs stay distinct: `find_audio` walks folders (following links) and keeps the folder each
file came from, `output_names` / `utterance_ids` name outputs and CTM ids after the path below
the inputs' common folder (so `spk1/utt1.wav` and `spk2/utt1.wav` give `spk1/utt1.srt` and
`spk2/utt1.srt`), and a manifest with duplicate ids is refused. Audio sampled below the model's
training rate is counted (`asr.audio.SampleRateCheck`) and said once per run.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from asr.audio import AUDIO_EXTENSIONS, AudioError, SampleRateCheck, audio_info, training_rate
from asr.beam import Decoder, Hypothesis
from asr.checkpoint import Recognizer
from asr.fileio import distinct_names, walk_files
from asr.formats import Transcript
from asr.inference import LONG_AUDIO_SECONDS, Audio, decoder_for, emissions, read_audio, recognize
from asr.manifest import ManifestError, read_manifest, require_unique_ids, write_jsonl
from asr.options import make_decoder, resolve_options


def load_model(path: str | Path, device: str = "cpu") -> Any:
    """A checkpoint (.pt, on `device`: cpu, cuda or auto) or an exported model (TorchScript / ONNX, CPU)."""
    from asr.distributed import resolve_device
    from asr.export import ExportedModel, is_exported

    if is_exported(path):
        return ExportedModel.load(path)
    return Recognizer.from_checkpoint(path, str(resolve_device(device)))


DECODE_BLOCK = 2000  # utterances whose audio decode_items holds at once


def decode_items(
    model: Any,
    items: list[tuple[str, str | Path]],
    decoder: Decoder | None = None,
    batch_frames: int | None = None,
    progress: bool = True,
    rate_check: SampleRateCheck | None = None,
    word_times: bool = False,
) -> Iterator[Transcript]:
    """Decode (id, audio path) pairs, one `Transcript` each (its `id` the pair's id), in blocks
    of `DECODE_BLOCK` items so that memory holds one block's audio: in each block, unreadable
    audio first, each with its `error`, then the rest in length-bucketed batches
    (`asr.inference.recognize`). Ids must be distinct. With `rate_check`, each readable file's
    own sample rate is added to it."""
    decoder = decoder or decoder_for(model, resolve_options(model.cfg.decode))
    options = resolve_options(model.cfg.decode, batch_frames=batch_frames)
    for start in range(0, len(items), DECODE_BLOCK):
        audios, keys = read_items(model, items[start : start + DECODE_BLOCK], progress, rate_check)
        for key, (path, reason) in keys.items():
            if reason:
                yield Transcript(path=os.fspath(path), id=key, error=reason)
        readable = [k for k, (_, reason) in keys.items() if not reason]
        results = recognize(model, [audios.pop(k) for k in readable], options, decoder=decoder, word_times=word_times)
        for key, result in zip(readable, results, strict=True):
            yield replace(result, path=os.fspath(keys[key][0]), id=key)


def read_items(
    model: Any, items: list[tuple[str, str | Path]], progress: bool = False, rate_check: SampleRateCheck | None = None
) -> tuple[dict[str, Audio], dict[str, tuple[str | Path, str]]]:
    """The audio of each readable (id, path) item at the model's rate, and for every item its
    path and why it could not be read ("" when it could)."""
    sr = model.cfg.features.sample_rate
    audios: dict[str, Audio] = {}
    keys: dict[str, tuple[str | Path, str]] = {}
    for key, path in tqdm(items, desc="audio", unit="utt", leave=False, disable=None if progress else True):
        try:
            audios[key] = read_audio(path, None, sr)
        except AudioError as e:
            keys[key] = (path, e.reason)
            continue
        keys[key] = (path, "")
        if rate_check is not None:
            rate_check.add(audios[key].source_rate)
    return audios, keys


@dataclass
class DecodeReport:
    decoded: int
    failed: list[tuple[str, str]]  # (id, reason)
    audio_seconds: float
    seconds: float


def decode_manifest(
    model: str | Path | Any,
    manifest: str | Path,
    out: str | Path,
    decoder: Decoder | None = None,
    batch_frames: int | None = None,
    nbest: int = 1,
    rate_check: SampleRateCheck | None = None,
    select: Callable[[str], bool] | None = None,
) -> DecodeReport:
    """Decode every utterance of a manifest into a hypothesis JSONL of {"id", "text"} lines (plus
    "nbest": [{"text", "score"}] when nbest > 1), in manifest order. Unreadable audio is reported
    and left out.

    Refused before any work (ManifestError, one line): a manifest with two entries of one id
    (their hypotheses could not be told apart) and an `out` that is the manifest itself. Audio
    below the model's sample rate is said once on stderr at the end (`rate_check`: add to a
    caller's check instead, which then warns when it likes). With `select`, only the utterances
    whose id it accepts are decoded (a shard, `asr.shard`), after the whole manifest is checked."""
    t0 = time.time()
    utts = read_manifest(manifest)
    require_unique_ids(manifest, utts)
    if select is not None:
        utts = [u for u in utts if select(u.id)]
    if os.path.exists(out) and os.path.samefile(out, manifest):
        raise ManifestError(f"{out}: the hypotheses would overwrite the manifest {manifest}; write them elsewhere")
    model = load_model(model) if isinstance(model, (str, Path)) else model
    check = rate_check if rate_check is not None else SampleRateCheck(training_rate(model))
    results: dict[str, list[Hypothesis]] = {}
    failed = []
    for d in decode_items(model, [(u.id, u.audio) for u in utts], decoder, batch_frames, rate_check=check):
        if d.error:
            failed.append((d.id, d.error))
            print(f"warning: {d.id}: {d.error} (skipped)", file=sys.stderr)
        else:
            results[d.id] = d.nbest

    def row(uid: str) -> dict:
        hyps = results[uid]
        r: dict[str, Any] = {"id": uid, "text": hyps[0].text}
        if nbest > 1:
            r["nbest"] = [{"text": h.text, "score": round(h.score, 4)} for h in hyps[:nbest]]
        return r

    write_jsonl(out, (row(u.id) for u in utts if u.id in results))
    if rate_check is None:
        check.warn()
    seconds = sum(u.duration for u in utts if u.id in results)
    return DecodeReport(len(results), failed, seconds, time.time() - t0)


@dataclass
class FoundAudio:
    """Audio inputs: `paths` as given or found (str), `roots[i]` the folder argument that
    `paths[i]` was found in (None for a file argument or a line of stdin), and `problems`:
    (path, reason) for what a folder held but cannot be read (dangling links, link loops,
    folders that cannot be listed)."""

    paths: list[str] = field(default_factory=list)
    roots: list[str | None] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __getitem__(self, i: int) -> str:
        return self.paths[i]


def find_audio(inputs: Iterable[str | Path]) -> FoundAudio:
    """Expand inputs into audio paths: files as given, directories searched recursively by audio
    extension (sorted; links to folders and files followed, link cycles cut, dangling links
    reported in `problems`), and `-` read as a list of paths from stdin, one per line (bytes:
    a name that is not UTF-8 is kept as its surrogate-escaped str)."""
    found = FoundAudio()
    for item in inputs:
        item = os.fspath(item)
        if item == "-":
            stream = getattr(sys.stdin, "buffer", None)
            lines = [os.fsdecode(line) for line in stream] if stream is not None else list(sys.stdin)
            for line in lines:
                if line.strip():
                    found.paths.append(line.strip())
                    found.roots.append(None)
        elif Path(item).is_dir():
            walk = walk_files(item, AUDIO_EXTENSIONS)
            found.paths += [str(p) for p in walk.files]
            found.roots += [item] * len(walk.files)
            found.problems += [(str(p), reason) for p, reason in walk.problems]
        else:
            found.paths.append(item)
            found.roots.append(None)
    return found


def relative_paths(found: FoundAudio) -> list[str]:
    """Each input's path (POSIX) below the common folder of the inputs: the folder arguments
    they were found in and the folders of the other files. Distinct files give distinct paths;
    one folder argument gives the layout below it; one file, its name."""
    absolute = [os.path.abspath(p) for p in found.paths]
    anchors = [os.path.abspath(r) if r is not None else os.path.dirname(a) for a, r in zip(absolute, found.roots, strict=True)]
    if not anchors:
        return []
    base = os.path.commonpath(anchors)
    return [Path(os.path.relpath(a, base)).as_posix() for a in absolute]


def output_names(found: FoundAudio, suffix: str) -> list[str]:
    """Output file names (relative POSIX paths) for the inputs: the relative path with its audio
    suffix replaced by `suffix` (`spk1/utt1.wav` -> `spk1/utt1.srt`), or, for files that would
    share one (`utt1.wav` and `utt1.flac`), added to it (`utt1.wav.srt`). Distinct inputs
    always get distinct names; the same file given twice gets one."""
    return [f"{name}.{suffix}" for name in distinct_names(relative_paths(found), "/")]


_SPACE = re.compile(r"\s+")


def utterance_ids(found: FoundAudio) -> list[str]:
    """Utterance ids for the inputs (as `asr prepare folder` makes them): the relative path
    without suffix, folders joined by "-", whitespace replaced by "_" (`spk1/utt1.wav` ->
    `spk1-utt1`; one file alone: its stem); longer for files that would share one
    (`asr.fileio.distinct_names`). ValueError (one line) when two cannot be told apart."""
    return distinct_names(relative_paths(found), "-", clean=lambda s: _SPACE.sub("_", s))


def transcribe(
    model: str | Path | Any,
    paths: Iterable[str | Path],
    decoder: Decoder | None = None,
    timestamps: bool = False,
    batch_frames: int | None = None,
    progress: bool = False,
    rate_check: SampleRateCheck | None = None,
    segmenter: str | None = None,
) -> Iterator[Transcript]:
    """Transcribe audio files, in input order, one `Transcript` each (`error` set for a file that
    could not be used). Files up to LONG_AUDIO_SECONDS are decoded in length-bucketed batches of
    up to 64 files (`asr.inference.recognize`); longer ones are split at pauses found by
    `segmenter` (`asr.segment.SEGMENTERS`; None: the default) and decoded segment by segment
    (`asr.inference.transcribe`), so memory does not grow with the file's length. With
    `timestamps`, each word gets start, end and confidence.

    Files sampled below the model's rate are transcribed and counted: once every file is done,
    one warning on stderr says how many (`asr.audio.SampleRateCheck`); with `rate_check`, they
    are added to the caller's check instead, which warns when the caller likes."""
    from asr.inference import transcribe_long

    model = load_model(model) if isinstance(model, (str, Path)) else model
    options = resolve_options(model.cfg.decode, batch_frames=batch_frames)
    decoder = decoder or decoder_for(model, options)
    check = rate_check if rate_check is not None else SampleRateCheck(training_rate(model))
    pending: list[str] = []

    def flush() -> Iterator[Transcript]:
        yield from decode_items(model, [(p, p) for p in pending], decoder, batch_frames, progress=False, word_times=timestamps)
        pending.clear()

    for p in tqdm([os.fspath(p) for p in paths], desc="transcribe", unit="file", disable=None if progress else True):
        try:
            info = audio_info(p)
        except AudioError as e:
            yield from flush()
            yield Transcript(path=p, error=e.reason)
            continue
        check.add(info.sample_rate)
        if info.duration <= LONG_AUDIO_SECONDS:
            pending.append(p)
            if len(pending) >= 64:
                yield from flush()
            continue
        yield from flush()
        try:
            yield transcribe_long(model, p, info, options, decoder, timestamps, segmenter=segmenter)
        except AudioError as e:
            yield Transcript(path=p, error=e.reason)
    yield from flush()
    if rate_check is None:
        check.warn()


@dataclass
class TuneResult:
    best: dict[str, float]  # lm_weight, word_score
    best_wer: float
    grid: list[tuple[float, float, float]]  # (lm_weight, word_score, WER %)


def manifest_emissions(model: Any, manifest: str | Path, speeds: Sequence[float] = (1.0,)) -> tuple[dict[str, str], dict[str, list[torch.Tensor]]]:
    """References and the acoustic model's log-probabilities (frames, tokens) of a manifest's
    readable utterances, one tensor per speed view."""
    utts = read_manifest(manifest)
    require_unique_ids(manifest, utts)
    check = SampleRateCheck(training_rate(model))
    audios, _ = read_items(model, [(u.id, u.audio) for u in utts], progress=True, rate_check=check)
    check.warn()
    views = emissions(model, list(audios.values()), list(speeds), model.cfg.decode.batch_frames)
    return {u.id: u.text for u in utts}, dict(zip(audios, views, strict=True))


def grid_hypotheses(
    model: Any,
    emissions: dict[str, list[torch.Tensor]],
    lexicon: str | Path,
    lm: str | Path,
    lm_weights: Iterable[float],
    word_scores: Iterable[float],
    speeds: Sequence[float] = (1.0,),
) -> dict[tuple[float, float], dict[str, str]]:
    """Beam-search hypotheses {(lm_weight, word_score): {id: text}} for every grid point, from
    precomputed emissions (manifest_emissions at the same `speeds`)."""
    grid = {}
    for w in lm_weights:
        for ws in word_scores:
            options = resolve_options(model.cfg.decode, lexicon=lexicon, lm=lm, lm_weight=float(w), word_score=float(ws), speeds=list(speeds))
            search = make_decoder(model.tokenizer, options)
            grid[float(w), float(ws)] = {k: search.search_views(v)[0].text for k, v in emissions.items()}
    return grid


def best_grid_point(grid: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The (lm_weight, word_score, WER) with the lowest WER; ties go to the word score nearest 0, then the smaller weight."""
    return min(grid, key=lambda g: (g[2], abs(g[1]), g[0]))


def tune_decoder(
    model: str | Path | Any,
    manifest: str | Path,
    lexicon: str | Path,
    lm: str | Path,
    lm_weights: Iterable[float] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
    word_scores: Iterable[float] = (-2.0, -1.0, 0.0, 1.0, 2.0),
    out: str | Path | None = None,
    speeds: Sequence[float] | None = None,
) -> TuneResult:
    """Grid-search LM weight and word score for the lowest WER on a (dev) manifest. The acoustic
    model runs once; each grid point only re-runs the beam search, with the speed views of
    `speeds` (default: the model's decode.speeds). With `out`, writes the best settings as a
    [decode] TOML table that `--decoder-config` and recipes read."""
    from asr.config import to_toml
    from asr.fileio import atomic_write_text
    from asr.scoring import score

    model = load_model(model) if isinstance(model, (str, Path)) else model
    speeds = list(speeds or model.cfg.decode.speeds)
    refs, emissions = manifest_emissions(model, manifest, speeds)
    hyps = grid_hypotheses(model, emissions, lexicon, lm, lm_weights, word_scores, speeds)
    grid = [(w, ws, score(refs, h).wer) for (w, ws), h in hyps.items()]
    w, ws, wer = best_grid_point(grid)
    if out:
        settings = {"beam_size": model.cfg.decode.beam_size, "beam_threshold": model.cfg.decode.beam_threshold, "lm_weight": w, "word_score": ws, "speeds": speeds}
        atomic_write_text(out, f"# asr tune-decoder on {manifest}: WER {wer:.2f}%\n" + to_toml({"decode": settings}))
    return TuneResult({"lm_weight": w, "word_score": ws}, wer, grid)
