"""Corpus importers: a corpus on disk becomes one manifest per split.

Each importer is `import_<name>(src) -> Imported`: split name -> utterances (texts
normalised, audio paths absolute, duration 0 until validation), plus the items it could
not turn into utterances (a malformed line, a piped wav.scp entry) as rejects. A layout
that is not recognised raises PrepareError; a bad item never does.

`prepare` runs an importer, validates every split and writes `<split>.jsonl` and
`rejected.jsonl`; `export_kaldi` turns a manifest into a Kaldi data dir.

Folders are walked following symbolic links (speaker folders linked from other storage);
a dangling link is a reject with its reason. File names that are not UTF-8 are kept: escaped
in the JSON manifests, as their own bytes in Kaldi files (`asr.fileio`).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from asr.audio import AUDIO_EXTENSIONS
from asr.fileio import atomic_write_text, distinct_names, path_problem, read_text, walk_files
from asr.manifest import (
    Rejected,
    Utterance,
    read_manifest,
    validate,
    write_jsonl,
    write_manifest,
)
from asr.text import normalize

AN4_DEV_EVERY = 10  # every 10th sorted AN4 train speaker goes to dev
FSDD_TEST_INDICES = range(5)  # the official FSDD test set: recording index 0-4
DIGIT_WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")


class PrepareError(ValueError):
    """A corpus that cannot be imported at all; the one-line message names src and problem."""


class Imported(dict[str, list[Utterance]]):
    """Split name -> utterances, plus `rejected`: split name -> items that are no utterance."""

    def __init__(self, splits: Iterable[str] = ()):
        super().__init__((s, []) for s in splits)
        self.rejected: dict[str, list[Rejected]] = {s: [] for s in self}

    def add(self, split: str, utt: Utterance) -> None:
        self.setdefault(split, []).append(utt)
        self.rejected.setdefault(split, [])

    def reject(self, split: str, utt_id: str, audio: str | Path, reason: str) -> None:
        self.setdefault(split, [])
        self.rejected.setdefault(split, []).append(Rejected(utt_id, str(audio), reason))


# --- importers ---------------------------------------------------------------------------


def import_yesno(src: str | Path) -> Imported:
    """Kaldi's yesno: file names like `0_1_1_0.wav` give the words (1 = YES, 0 = NO).

    Sorted files alternate: even positions train, odd positions test (30/30, as lhotse does).
    """
    src = _require_dir(src)
    folder = src / "waves_yesno" if (src / "waves_yesno").is_dir() else src
    wavs = sorted(folder.glob("*.wav"))
    if not wavs:
        raise PrepareError(f"{src}: not a yesno corpus (no waves_yesno/*.wav or *.wav)")
    out = Imported(["train", "test"])
    for i, wav in enumerate(wavs):
        split = "train" if i % 2 == 0 else "test"
        if not re.fullmatch(r"[01](_[01])*", wav.stem):
            out.reject(split, wav.stem, wav, "file name is not a 0/1 label sequence like 0_1_1_0")
            continue
        text = " ".join("YES" if label == "1" else "NO" for label in wav.stem.split("_"))
        out.add(split, Utterance(wav.stem, str(wav), 0.0, text, "yesno"))
    return out


def import_fsdd(src: str | Path) -> Imported:
    """Free Spoken Digit Dataset: `recordings/{digit}_{speaker}_{index}.wav`.

    The text is the digit as a word; index 0-4 is the official test set, the rest train.
    """
    src = _require_dir(src)
    folder = src / "recordings" if (src / "recordings").is_dir() else src
    wavs = sorted(folder.glob("*.wav"))
    if not wavs:
        raise PrepareError(f"{src}: not an FSDD corpus (no recordings/*.wav or *.wav)")
    out = Imported(["train", "test"])
    for wav in wavs:
        m = re.fullmatch(r"(\d)_(.+)_(\d+)", wav.stem)
        if not m:
            # No index, so no official split either; such files are reported under train.
            out.reject("train", wav.stem, wav, "file name is not <digit>_<speaker>_<index>")
            continue
        digit, speaker, index = m.groups()
        split = "test" if int(index) in FSDD_TEST_INDICES else "train"
        out.add(split, Utterance(wav.stem, str(wav), 0.0, DIGIT_WORDS[int(digit)], speaker))
    return out


_AN4_AUDIO = {"train": "an4_clstk", "test": "an4test_clstk"}
_SPHINX_LINE = re.compile(r"(?:<s>)?(.*?)(?:</s>)?\s*\(([^()\s]+)\)")


def import_an4(src: str | Path) -> Imported:
    """CMU AN4: `etc/an4_{train,test}.transcription` (Sphinx format), audio as .wav or .sph.

    Audio is found by id anywhere under `wav/an4_clstk` (train) or `wav/an4test_clstk`
    (test). Speaker = the middle of the id (`an251-fash-b` -> `fash`). Splits train, dev,
    test: dev is carved from the official train by speaker, taking every 10th of the
    sorted train speakers starting with the first (8 of 74 speakers, 98 utterances on the
    real corpus), so no speaker is in both train and dev.
    """
    src = _require_dir(src)
    transcripts = {split: src / "etc" / f"an4_{split}.transcription" for split in _AN4_AUDIO}
    for path in transcripts.values():
        if not path.is_file():
            raise PrepareError(f"{src}: not an AN4 corpus (no {path.relative_to(src)})")

    out = Imported(["train", "dev", "test"])
    for split, path in transcripts.items():
        audio_dir = src / "wav" / _AN4_AUDIO[split]
        audio = _audio_by_stem(audio_dir, (".wav", ".sph"))
        for n, line in enumerate(_read_lines(path), 1):
            if not line.strip():
                continue
            m = _SPHINX_LINE.fullmatch(line.strip())
            if not m:
                out.reject(split, f"{path.name}:{n}", "", f"malformed transcript line {n} (expected 'WORDS (utt-id)')")
                continue
            words, utt_id = m.groups()
            parts = utt_id.split("-")
            speaker = "-".join(parts[1:-1]) if len(parts) >= 3 else ""
            # A missing file keeps its expected path, so validation rejects it as not found.
            wav = audio.get(utt_id, audio_dir / speaker / f"{utt_id}.wav")
            out.add(split, Utterance(utt_id, str(wav), 0.0, normalize(words), speaker))

    speakers = sorted({u.speaker for u in out["train"]})
    dev_speakers = set(speakers[::AN4_DEV_EVERY]) if len(speakers) > 1 else set()
    out["dev"] = [u for u in out["train"] if u.speaker in dev_speakers]
    out["train"] = [u for u in out["train"] if u.speaker not in dev_speakers]
    return out


def import_librispeech(src: str | Path) -> Imported:
    """LibriSpeech: `<subset>/<spk>/<chapter>/<spk>-<chapter>.trans.txt`, `ID.flac` beside it.

    src is either the root holding subsets (one split per subset, `dev-clean` -> `dev_clean`)
    or one subset folder (one split named after it).
    """
    src = _require_dir(src)
    if any(src.glob("*/*/*.trans.txt")):
        subsets = [src]
    else:
        subsets = [d for d in sorted(src.iterdir()) if d.is_dir() and any(d.glob("*/*/*.trans.txt"))]
    if not subsets:
        raise PrepareError(f"{src}: not a LibriSpeech corpus or subset (no <spk>/<chapter>/*.trans.txt)")

    out = Imported()
    for subset in subsets:
        split = subset.name.replace("-", "_")
        out.setdefault(split, [])
        for trans in sorted(subset.glob("*/*/*.trans.txt")):
            speaker = trans.parent.parent.name
            for line in _read_lines(trans):
                fields = line.split(maxsplit=1)
                if not fields:
                    continue
                utt_id, words = fields[0], fields[1] if len(fields) > 1 else ""
                out.add(split, Utterance(utt_id, str(trans.parent / f"{utt_id}.flac"), 0.0, normalize(words), speaker))
    return out


def import_folder(src: str | Path) -> Imported:
    """Audio files anywhere under src, each with a same-stem `.txt` transcript beside it.

    One split, `all`. id = path relative to src without extension, `/` -> `-`; speaker =
    the parent folder relative to src the same way ("" at top level). Ids stay distinct:
    files that would share one (`utt1.wav` and `utt1.flac`; `a-b/c.wav` and `a/b-c.wav`) are
    named by their relative path with extension, then with `/` (`asr.fileio.distinct_names`).
    Links to folders and files are followed (link cycles are cut); a dangling link, a link
    loop or a folder that cannot be listed is a reject with its reason. Hidden files and
    folders are skipped; audio without a .txt is a reject.
    """
    src = _require_dir(src)
    walk = walk_files(src, AUDIO_EXTENSIONS, skip_hidden=True)
    for path, problem in walk.problems:
        if path == src:
            raise PrepareError(f"{src}: {problem}")
    if not walk.files and not walk.problems:
        raise PrepareError(f"{src}: no audio files ({' '.join(AUDIO_EXTENSIONS)})")

    items = sorted([(p, "") for p in walk.files] + walk.problems, key=lambda item: str(item[0]))
    rels = [p.relative_to(src).as_posix() for p, _ in items]
    ids = distinct_names(rels, "-")
    out = Imported(["all"])
    for (audio, problem), utt_id in zip(items, ids, strict=True):
        rel = audio.relative_to(src)
        speaker = rel.parent.as_posix().replace("/", "-") if rel.parent.parts else ""
        if problem:
            out.reject("all", utt_id, audio, problem)
            continue
        txt = audio.with_suffix(".txt")
        if not txt.is_file():
            txt_problem = path_problem(txt)
            missing = txt_problem is None or txt_problem == "file not found"
            out.reject("all", utt_id, audio, "no transcript" if missing else f"transcript {txt.name}: {txt_problem}")
            continue
        try:
            text = txt.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            out.reject("all", utt_id, audio, f"transcript not readable as UTF-8 text ({type(e).__name__})")
            continue
        out.add("all", Utterance(utt_id, str(audio), 0.0, normalize(text), speaker))
    return out


def import_kaldi(src: str | Path) -> Imported:
    """A Kaldi data dir: `wav.scp`, `text`, optional `utt2spk`; one split named after the folder.

    wav.scp must hold plain paths (relative ones are taken from the current directory, as
    Kaldi does); piped commands are rejects. `segments` are not supported: their
    utterances are rejects, since a manifest entry is always a whole file. A speaker equal
    to its utterance id (Kaldi's "no speaker information") becomes "".
    """
    src = _require_dir(src)
    for name in ("wav.scp", "text"):
        if not (src / name).is_file():
            raise PrepareError(f"{src}: not a Kaldi data dir (no {name})")
    split = src.name
    out = Imported([split])

    def table(name: str) -> dict[str, str]:
        entries: dict[str, str] = {}
        if not (src / name).is_file():
            return entries
        for line in _read_lines(src / name, errors="surrogateescape"):  # paths and ids are bytes to Kaldi
            fields = line.split(maxsplit=1)
            if not fields:
                continue
            key, value = fields[0], fields[1].strip() if len(fields) > 1 else ""
            if key in entries:
                out.reject(split, key, "", f"duplicate id in {name}")
            else:
                entries[key] = value
        return entries

    wavs, texts, speakers = table("wav.scp"), table("text"), table("utt2spk")
    segments = {seg: (rest.split() or [""])[0] for seg, rest in table("segments").items()}
    segmented_recordings = set(segments.values())

    for utt_id in sorted(wavs.keys() | texts.keys()):
        wav = wavs.get(utt_id)
        if utt_id in segments:
            out.reject(split, utt_id, "", f"segments are not supported (a part of recording {segments[utt_id]})")
        elif utt_id in segmented_recordings and utt_id not in texts:
            continue  # a recording cut by segments, which are rejected above
        elif wav is None:
            out.reject(split, utt_id, "", "no entry in wav.scp")
        elif utt_id not in texts:
            out.reject(split, utt_id, wav, "no transcript in text")
        elif not wav:
            out.reject(split, utt_id, "", "no audio path in wav.scp")
        elif wav.endswith("|"):
            out.reject(split, utt_id, wav, "piped wav.scp entries are not supported")
        elif _SURROGATE.search(texts[utt_id]):
            out.reject(split, utt_id, wav, "transcript is not UTF-8 text")
        else:
            speaker = speakers.get(utt_id, "")
            utt = Utterance(
                utt_id, os.path.abspath(wav), 0.0, normalize(texts[utt_id]), "" if speaker == utt_id else speaker
            )
            out.add(split, utt)
    return out


IMPORTERS: dict[str, Callable[[Path], Imported]] = {
    "an4": import_an4,
    "fsdd": import_fsdd,
    "kaldi": import_kaldi,
    "librispeech": import_librispeech,
    "folder": import_folder,
    "yesno": import_yesno,
}


# --- prepare -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitReport:
    kept: int
    rejected: int
    hours: float


@dataclass(frozen=True)
class PrepareReport:
    corpus: str
    src: Path
    out_dir: Path
    splits: dict[str, SplitReport]

    @property
    def kept(self) -> int:
        return sum(s.kept for s in self.splits.values())

    @property
    def rejected(self) -> int:
        return sum(s.rejected for s in self.splits.values())

    @property
    def manifests(self) -> dict[str, Path]:
        """Split name -> manifest written (splits with nothing kept have none)."""
        return {name: self.out_dir / f"{name}.jsonl" for name, s in self.splits.items() if s.kept}

    def summary(self) -> str:
        splits = ", ".join(f"{name} {s.kept} ({s.hours:.2f} h)" for name, s in self.splits.items())
        return f"{self.corpus}: {splits}; {self.rejected} rejected -> {self.out_dir}"


def prepare(corpus: str, src: str | Path, out_dir: str | Path) -> PrepareReport:
    """Import a corpus, validate it and write `<split>.jsonl` plus `rejected.jsonl` to out_dir.

    Ids must be unique across all splits (the first occurrence is kept). rejected.jsonl is
    always rewritten, and a split with nothing kept has its old manifest removed, so no
    stale file survives. Nothing is written when nothing usable is left.
    """
    importer = IMPORTERS.get(corpus)
    if importer is None:
        raise PrepareError(f"{src}: unknown corpus {corpus!r} (known: {', '.join(sorted(IMPORTERS))})")
    src = _require_dir(src)
    out_dir = Path(out_dir)
    imported = importer(src)
    if "rejected" in imported:
        raise PrepareError(f"{src}: split 'rejected' would be written to rejected.jsonl, which lists the rejected items; rename the split's folder")

    kept: dict[str, list[Utterance]] = {}
    rejected: dict[str, list[Rejected]] = {}
    first_split: dict[str, str] = {}
    for split, utts in imported.items():
        bad = list(imported.rejected.get(split, []))
        fresh = []
        for u in utts:
            if first_split.get(u.id, split) != split:
                bad.append(Rejected(u.id, u.audio, f"duplicate id (also in {first_split[u.id]})"))
            else:
                fresh.append(u)
        for u in utts:
            first_split.setdefault(u.id, split)
        good, invalid = validate(fresh)
        kept[split], rejected[split] = good, bad + invalid

    if not any(kept.values()):
        reasons = Counter(r.reason for rs in rejected.values() for r in rs)
        top = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common(3))
        raise PrepareError(f"{src}: nothing usable for {corpus} ({sum(reasons.values())} rejected: {top})")

    for split, good in kept.items():
        path = out_dir / f"{split}.jsonl"
        if good:
            write_manifest(path, good)
        else:
            path.unlink(missing_ok=True)
    rows = (
        {"split": split, "id": r.id, "audio": r.audio, "reason": r.reason} for split, rs in rejected.items() for r in rs
    )
    write_jsonl(out_dir / "rejected.jsonl", rows)

    splits = {
        split: SplitReport(len(good), len(rejected[split]), sum(u.duration for u in good) / 3600)
        for split, good in kept.items()
    }
    return PrepareReport(corpus, src, out_dir, splits)


# --- Kaldi export ------------------------------------------------------------------------


def export_kaldi(manifest_path: str | Path, out_dir: str | Path) -> int:
    """Write a manifest as a Kaldi data dir (wav.scp, text, utt2spk, spk2utt); returns the count.

    Files are sorted by utterance id and written atomically; ids are not renamed, so for
    Kaldi's sort checks with speakers set, ids should start with their speaker id. An
    utterance without a speaker is its own speaker (Kaldi's convention), which
    `import_kaldi` reads back as "".
    """
    utts = sorted(read_manifest(manifest_path), key=lambda u: u.id)
    ids = Counter(u.id for u in utts)
    for u in utts:
        if ids[u.id] > 1:
            raise ValueError(f"{manifest_path}: duplicate utterance id {u.id!r}")
        for what, value in (("id", u.id), ("speaker", u.speaker)):
            if re.search(r"\s", value):
                raise ValueError(f"{manifest_path}: {what} {value!r} contains whitespace, which Kaldi cannot hold")

    speaker = {u.id: u.speaker or u.id for u in utts}
    spk2utt: dict[str, list[str]] = {}
    for u in utts:
        spk2utt.setdefault(speaker[u.id], []).append(u.id)

    out_dir = Path(out_dir)
    files = {
        "wav.scp": (f"{u.id} {os.path.abspath(u.audio)}" for u in utts),
        "text": (f"{u.id} {' '.join(u.text.split())}" for u in utts),
        "utt2spk": (f"{u.id} {speaker[u.id]}" for u in utts),
        "spk2utt": (f"{spk} {' '.join(spk2utt[spk])}" for spk in sorted(spk2utt)),
    }
    for name, lines in files.items():  # file names that are not UTF-8 keep their bytes, as Kaldi reads them
        atomic_write_text(out_dir / name, "".join(line + "\n" for line in lines), errors="surrogateescape")
    return len(utts)


# --- helpers -----------------------------------------------------------------------------


def _require_dir(src: str | Path) -> Path:
    """src as an absolute path (symlinks kept); PrepareError unless it is a folder."""
    path = Path(os.path.abspath(Path(src).expanduser()))
    if not path.exists():
        raise PrepareError(f"{path}: corpus folder not found")
    if not path.is_dir():
        raise PrepareError(f"{path}: not a folder")
    return path


_SURROGATE = re.compile("[\ud800-\udfff]")


def _read_lines(path: Path, errors: str = "strict") -> list[str]:
    """The lines of a UTF-8 text file; errors="surrogateescape" keeps bytes that are not UTF-8
    (a Kaldi table's file names) as lone surrogates. PrepareError naming the file otherwise."""
    text = read_text(path, PrepareError, errors)
    return text.splitlines()


def _audio_by_stem(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """Audio files under folder (links followed) by stem; an earlier extension wins when a stem has several."""
    files = walk_files(folder, extensions).files
    found: dict[str, Path] = {}
    for ext in extensions:
        for path in files:
            if path.suffix.lower() == ext:
                found.setdefault(path.stem, path)
    return found
