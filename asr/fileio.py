"""File reading and writing shared by every module: atomic writes, text reads with one-line
errors, JSON that holds any file name, folder walks that follow links, distinct names.

File names are bytes on POSIX; Python gives a name that is not UTF-8 as a str with lone
surrogates ('caf\\xe9.wav' -> 'caf\\udce9.wav', PEP 383). Such names are kept losslessly:
text files meant for other tools (Kaldi tables, txt/ctm transcripts) are written with
errors="surrogateescape", so they hold the name's own bytes, and JSON escapes the surrogate
(`\\udce9`, `json_dumps`), so JSON files stay valid UTF-8; reading either back
(`read_text(..., errors="surrogateescape")`, `json.loads`) gives the same str, which
`os.fsencode` turns into the file's name.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", errors: str = "strict") -> Iterator[IO]:
    """Write `path` through a temporary file in the same folder, flushed, fsynced and renamed
    into place: readers (and a crash) never see half a file. Mode "w" (UTF-8 text, encoding
    errors handled by `errors`, e.g. "surrogateescape" to write file names' own bytes) or "wb"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would otherwise survive the rename
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "errors": errors})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, errors: str = "strict") -> None:
    """`text` as UTF-8 into `path`, atomically; errors="surrogateescape" writes the bytes of
    file names that are not UTF-8 (see the module docstring)."""
    with atomic_open(path, "w", errors) as f:
        f.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def read_text(path: str | Path, error: type[Exception] = ValueError, errors: str = "strict", what: str = "file") -> str:
    """A UTF-8 text file (a BOM is dropped); problems raise `error` with a one-line message naming
    the file (and calling it `what`, e.g. "grammar file"). errors="surrogateescape" reads bytes
    that are not UTF-8 (file names in a Kaldi table) as lone surrogates instead of failing."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what}") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig", errors)
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_dumps(obj: Any) -> str:
    """One line of JSON, non-ASCII text kept as it is, lone surrogates (the undecodable bytes
    of a file name) escaped as `\\udcXX`, so the line is valid UTF-8 and `json.loads` gives
    back the same str."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False))


def display(text: str) -> str:
    """`text` (e.g. a message holding a file name) as a str that any UTF-8 stream can print:
    undecodable bytes (lone surrogates) shown as `\\udcXX`, as Python's stderr shows them."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# --- folders -----------------------------------------------------------------------------


@dataclass
class Walk:
    """What `walk_files` found: `files` (paths below the root, through links as named, sorted)
    and `problems`: (path, reason) for entries that may have held audio but cannot be read
    (a dangling link, a link loop, a folder that cannot be listed), sorted."""

    files: list[Path] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)


def walk_files(root: str | Path, suffixes: Sequence[str] | None = None, skip_hidden: bool = False) -> Walk:
    """Every file under `root` whose suffix (lower-cased) is in `suffixes` (all files when None),
    following symbolic links to folders and files.

    Paths keep the names they are reached by (a file under `root/spk1`, a link to other storage,
    is `root/spk1/x.wav`); a folder reached through two links is walked under both names. A link
    back to a folder being walked (a cycle) is not followed again. Broken entries whose name
    could be a wanted file or a folder (suffix in `suffixes`, or no suffix) are `problems`:
    "dangling symbolic link (to TARGET, not found)", "symbolic link loop", "cannot list folder
    (REASON)", "cannot read (REASON)". With `skip_hidden`, names starting with "." are skipped.
    """
    root = Path(root)
    wanted = None if suffixes is None else {s.lower() for s in suffixes}
    found = Walk()
    try:
        top = os.stat(root)
    except OSError as e:
        found.problems.append((root, _stat_problem(root, e)))
        return found
    stack: list[tuple[Path, tuple[tuple[int, int], ...]]] = [(root, ((top.st_dev, top.st_ino),))]
    while stack:
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            found.problems.append((folder, f"cannot list folder ({e.strerror or type(e).__name__})"))
            continue
        for entry in entries:
            if skip_hidden and entry.name.startswith("."):
                continue
            path = folder / entry.name
            maybe_wanted = wanted is None or path.suffix.lower() in wanted
            try:
                st = os.stat(path)  # follows links
            except OSError as e:
                if maybe_wanted or not path.suffix:
                    found.problems.append((path, _stat_problem(path, e)))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key not in ancestors:  # else a link back up: a cycle
                    stack.append((path, (*ancestors, key)))
            elif stat.S_ISREG(st.st_mode) and maybe_wanted:
                found.files.append(path)
    found.files.sort(key=str)
    found.problems.sort(key=lambda p: str(p[0]))
    return found


def path_problem(path: str | Path) -> str | None:
    """Why `path` cannot be opened for its name or its links, before reading it: a name the file
    system cannot hold, a dangling link, a link loop, a name too long; None when it can be
    stat'ed (a missing plain file is "file not found")."""
    path = str(path)
    if "\x00" in path:
        return "invalid file name (it contains a NUL character)"
    try:
        os.fsencode(path)
    except UnicodeEncodeError as e:
        return f"invalid file name (character {path[e.start]!a} at position {e.start} is no byte of a file name)"
    try:
        os.stat(path)
    except OSError as e:
        return _stat_problem(Path(path), e)
    return None


def _stat_problem(path: Path, e: OSError) -> str:
    """The reason for a failed os.stat (links followed), blaming the name or link, not the contents."""
    if e.errno == errno.ELOOP:
        return "symbolic link loop"
    if e.errno == errno.ENAMETOOLONG:
        return "file name too long"
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"dangling symbolic link (to {target}, not found)"
        return "file not found"
    return f"cannot read ({e.strerror or type(e).__name__})"


# --- names -------------------------------------------------------------------------------


def distinct_names(rel_paths: Sequence[str], sep: str = "/", clean: Callable[[str], str] | None = None) -> list[str]:
    """A distinct name for each of several files given by distinct relative POSIX paths
    (`spk1/utt1.wav`): the path without its suffix, folders joined by `sep` (`spk1-utt1` with
    sep "-"), then passed through `clean` if given.

    Files whose names would be the same get longer ones, step by step, until no two are: the
    path with its suffix (`utt1.wav` and `utt1.flac`), then, for sep other than "/", the path
    with "/" (`a-b/c.wav` and `a/b-c.wav`, both `a-b-c.wav` with "-"). Without `clean`, distinct
    paths always end with distinct names. ValueError (one line, naming two of the files) when
    `clean` makes two names the same at every step (`a b.wav` and `a_b.wav` with spaces replaced).
    Equal paths (the same file given twice) get the same name.
    """
    clean = clean or (lambda s: s)

    def name(rel: str, level: int) -> str:
        if level == 0:
            head, _, base = rel.rpartition("/")
            stem = base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base
            rel = f"{head}/{stem}" if head else stem
        return clean(rel if level == 2 else rel.replace("/", sep))

    unique = list(dict.fromkeys(rel_paths))
    levels = dict.fromkeys(unique, 0)
    while True:
        by_name: dict[str, list[str]] = defaultdict(list)
        for rel in unique:
            by_name[name(rel, levels[rel])].append(rel)
        clashes = [rels for rels in by_name.values() if len(rels) > 1]
        if not clashes:
            break
        bumped = False
        for rels in clashes:
            for rel in rels:
                if levels[rel] < 2:
                    levels[rel] += 1
                    bumped = True
        if not bumped:
            a, b = clashes[0][:2]
            raise ValueError(f"{a!r} and {b!r} would both be named {name(a, levels[a])!r}: rename one of them")
    return [name(rel, levels[rel]) for rel in rel_paths]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
