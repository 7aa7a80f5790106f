"""Every shell command in README.md, docs/*.md and recipes/*/README.md runs as written from a fresh
clone: the bash code blocks are read from the docs; each `asr` command must name a command and
options it has, with values of their types, and a config and `--set` keys that load; then the
commands run in a sandbox laid out like a clone beside small generated corpora (PLACEHOLDERS),
those that train with SMALL appended, except the few in EXEMPT. With the real corpora in
../shared/data, the docs' `asr prepare` commands run on them too."""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "recipes").glob("*/README.md"))]

# What the paths the docs name are in the sandbox: a folder `clone/` (the repository's recipes/
# linked in) beside `shared/data/`, so that `../shared/data/...` is as written.
PLACEHOLDERS = {
    "../shared/data/an4": "AN4's layout (etc/an4_{train,test}.transcription, wav/an4_clstk, wav/an4test_clstk) "
    "with 13 train speakers x 3 utterances, 2 test speakers x 2 (fcaw/an406-fcaw-b among them); a tone per letter",
    "../shared/data/yesno": "waves_yesno/ with 8 files named by their 0/1 labels, a tone per letter",
    "../shared/data/fsdd": "recordings/{digit}_{speaker}_{index}.wav: digits 0-2, 2 speakers, indices 0-6",
    "exp/an4, exp/an4_streaming, exp/fsdd, exp/yesno": "what the docs' own `asr recipe run` commands write (run first)",
    "talk.wav, talk.flac, my.wav, an406-fcaw-b.wav": "copies of fcaw/an406-fcaw-b of the small AN4",
    "recordings/": "a folder of two .flac files of the small AN4",
    "data/an4, exp/mine, lm/, hyp.jsonl": "what the docs' earlier commands write",
}
# Appended to every command that trains, so that it trains for seconds.
SMALL = ["--set", "train.epochs=1", "--set", "model.hidden=16", "--set", "model.layers=1", "--set", "train.average_last=0",
         "--set", "train.batch_frames=4000"]

LETTERS = {c: 300.0 + 90.0 * i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}


def _speech(text: str, sr: int = 16000) -> np.ndarray:
    """A 80 ms tone per letter, 150 ms of silence between words and around them."""
    t = np.arange(int(0.08 * sr)) / sr
    gap = np.zeros(int(0.15 * sr))
    parts = [gap]
    for word in text.split():
        parts += [0.4 * np.sin(2 * np.pi * LETTERS.get(c, 250.0) * t) for c in word] + [gap]
    rng = np.random.default_rng(len(text))
    x = np.concatenate(parts)
    return (x + 0.005 * rng.standard_normal(len(x))).astype(np.float32)


AN4_WORDS = ["YES", "NO", "GO", "ENTER", "RUBOUT", "A B C", "TWO FIVE"]


def make_an4(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    for split, folder, speakers, per in (("train", "an4_clstk", [f"f{c}{c}{c}" for c in "abcdefghijklm"], 3), ("test", "an4test_clstk", ["fcaw", "mmxg"], 2)):
        lines = []
        for s, speaker in enumerate(speakers):
            for k in range(per):
                utt = "an406-fcaw-b" if (speaker, k) == ("fcaw", 0) else f"an{100 + 10 * s + k}-{speaker}-b"
                text = AN4_WORDS[(s + k) % len(AN4_WORDS)]
                (root / "wav" / folder / speaker).mkdir(parents=True, exist_ok=True)
                sf.write(root / "wav" / folder / speaker / f"{utt}.wav", _speech(text), 16000)
                lines.append(f"<s> {text} </s> ({utt})\n")
        (root / "etc" / f"an4_{split}.transcription").write_text("".join(lines))


def make_yesno(root: Path) -> None:
    (root / "waves_yesno").mkdir(parents=True)
    for i in range(8):
        labels = [(i >> b) & 1 for b in range(3)] + [i % 2]
        sf.write(root / "waves_yesno" / f"{'_'.join(map(str, labels))}.wav", _speech(" ".join("YES" if x else "NO" for x in labels), 8000), 8000)


def make_fsdd(root: Path) -> None:
    (root / "recordings").mkdir(parents=True)
    for digit, word in enumerate(["ZERO", "ONE", "TWO"]):
        for speaker in ("jackson", "nicolas"):
            for index in range(7):
                sf.write(root / "recordings" / f"{digit}_{speaker}_{index}.wav", _speech(word, 8000), 8000)


def make_sandbox(root: Path) -> Path:
    """shared/data/{an4,yesno,fsdd} and clone/ (recipes/ linked in); returns clone/."""
    data = root / "shared" / "data"
    make_an4(data / "an4")
    make_yesno(data / "yesno")
    make_fsdd(data / "fsdd")
    clone = root / "clone"
    clone.mkdir()
    (clone / "recipes").symlink_to(ROOT / "recipes")
    return clone


# --- the commands of the docs ---------------------------------------------------------------


@dataclass
class Command:
    """One command of a docs code block: its place, its text, and its pipeline stages (each a
    list of words; `>` FILE at the end of the last)."""

    where: str
    text: str
    stages: list[list[str]]
    redirect: str | None = None


_FENCE = re.compile(r"^```(bash|sh|shell)\n(.*?)^```", re.S | re.M)


def _split(line: str) -> list[list[str]]:
    """The words of a shell line, cut into commands at `&&` and `;` (comments dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", ";"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _command(where: str, words: list[str]) -> Command:
    stages, redirect = [[]], None
    it = iter(words)
    for w in it:
        if w == "|":
            stages.append([])
        elif w == ">":
            redirect = next(it)
        else:
            stages[-1].append(w)
    return Command(where, " ".join(words), stages, redirect)


def doc_commands() -> list[Command]:
    """Every command of the bash code blocks, in the docs' order. A `for VAR in A B; do ... done`
    loop gives its body once per value."""
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in _FENCE.finditer(text):
            first = text[: block.start(2)].count("\n") + 1
            lines: list[tuple[int, str]] = []  # (number of its first line, the line with its continuations)
            for n, line in enumerate(block.group(2).split("\n")):
                if lines and lines[-1][1].endswith("\\"):
                    lines[-1] = (lines[-1][0], lines[-1][1][:-1] + " " + line)
                else:
                    lines.append((first + n, line))
            loop: tuple[str, list[str]] | None = None
            body: list[tuple[int, str]] = []
            for number, line in lines:
                where = f"{doc.relative_to(ROOT)}:{number}"
                words = line.split()
                if words[:1] == ["for"]:
                    var, values = words[1], " ".join(words[3:]).split(";")[0].split()
                    loop, body = (var, values), []
                    continue
                if loop and words[:1] == ["done"]:
                    for value in loop[1]:
                        for m, inner in body:
                            for c in _split(inner.replace(f"${loop[0]}", value)):
                                out.append(_command(f"{doc.relative_to(ROOT)}:{m} ({loop[0]}={value})", c))
                    loop = None
                    continue
                if loop:
                    body.append((number, line))
                    continue
                out += [_command(where, c) for c in _split(line)]
    return out


# Commands that are read and parsed but not run, and why.
EXEMPT = {
    r"^python3 -m venv|^\. \.venv|^pip install": "sets up a virtual environment and installs the project: what .ci/run does",
    r"^python -m pytest": "the test suite itself",
    r"^asr serve|^curl ": "a server that runs until Ctrl-C: tests/test_server.py starts it and sends these requests",
    r"--mic\b|^arecord": "a microphone",
    r"^torchrun --nnodes 2": "two machines",
    r"train\.device=cuda": "a GPU",
    r"^python bench/": "a measurement over minutes on the real corpus (docs/performance.md has its figures); its options are checked",
    r"^asr recipe tune-weights": "a training per fold and seed (10 here): tests/test_recipes.py::test_tune_weights_by_folds_holds_each_speaker_out_once runs it",
    r"^asr recipe loso": "a training per speaker: tests/test_recipes.py::test_leave_one_speaker_out_on_a_generated_fsdd runs it",
    r"^/usr/bin/time -v asr recipe run an4": "a whole AN4 training whose peak memory is the measurement; "
    "recipes/an4/README.md's train_on_dev=false run stands for it",
    r"^asr recipe run yesno .*model\.kind=": "the RNN-laboratory loop: a yesno training per model kind",
    r"^asr lab compare": "trains each model family for --minutes-per-model (10) minutes: tests/test_lab.py runs its parts",
}


def exempt(command: Command) -> str | None:
    for pattern, reason in EXEMPT.items():
        if re.search(pattern, command.text):
            return reason
    return None


def _asr_words(command: Command) -> list[list[str]]:
    """The `asr` argument lists of a command (after `/usr/bin/time -v`, or `torchrun ... -m asr`)."""
    found = []
    for stage in command.stages:
        words = stage[2:] if stage[:2] == ["/usr/bin/time", "-v"] else stage
        if words[:1] == ["torchrun"] and "-m" in words:
            words = words[words.index("-m") + 1 :]
        if words[:1] == ["asr"]:
            found.append(words[1:])
    return found


def parse_asr(args: list[str]) -> None:
    """Parse `asr args` as the command line does, without running the command: an unknown
    command or option, a missing argument or a value of the wrong type raises UsageError."""
    import typer.main

    from cli.main import app

    command = typer.main.get_command(app)
    name = "asr"
    while hasattr(command, "get_command"):  # a group: the next word names its command
        assert args, f"{name}: no command given"
        ctx = command.make_context(name, [], resilient_parsing=True)
        sub = command.get_command(ctx, args[0])
        assert sub is not None, f"{name}: no such command {args[0]!r}"
        name, command, args = f"{name} {args[0]}", sub, args[1:]
    command.make_context(name, list(args))


def check_settings(args: list[str]) -> None:
    """The config a training command names loads, and its `--set` overrides are keys with values
    of their types (what `asr train` and `asr recipe` check before they start)."""
    from asr.config import load_config
    from asr.recipe import apply_overrides, load_recipe

    sets = [args[i + 1] for i, w in enumerate(args[:-1]) if w == "--set"]
    if args[:1] == ["train"]:
        load_config(ROOT / args[1], sets)
    elif args[:2] in (["recipe", "run"], ["recipe", "loso"], ["recipe", "tune-weights"]):
        apply_overrides(load_recipe(str(ROOT / "recipes" / args[2])), sets)


def bench_options(script: Path) -> set[str]:
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text(encoding="utf-8")))


COMMANDS = doc_commands()


def test_the_docs_have_commands():
    assert len(COMMANDS) > 40
    wheres = {c.where.split(":")[0] for c in COMMANDS}
    assert {"README.md", "docs/decoding.md", "docs/training.md", "recipes/an4/README.md"} <= wheres


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where} {c.text[:60]}" for c in COMMANDS])
def test_every_command_parses(command: Command):
    """Each `asr` command's words name a command and options it has, with values of their types;
    each bench script has the options the docs give it."""
    for args in _asr_words(command):
        parse_asr(args)
        check_settings(args)
    for stage in command.stages:
        if stage[:1] == ["python"] and len(stage) > 1 and stage[1].startswith("bench/"):
            script = ROOT / stage[1]
            assert script.is_file(), f"{command.where}: no {stage[1]}"
            unknown = {w.split("=")[0] for w in stage[2:] if w.startswith("--")} - bench_options(script)
            assert not unknown, f"{command.where}: {stage[1]} has no option {', '.join(sorted(unknown))}"


def _command_of(words: list[str]):
    """The click command that `asr words...` names and the words after its name."""
    import typer.main

    from cli.main import app

    command = typer.main.get_command(app)
    while hasattr(command, "get_command") and words:
        sub = command.get_command(command.make_context("asr", [], resilient_parsing=True), words[0])
        if sub is None:
            break
        command, words = sub, words[1:]
    return command, words


INLINE = re.compile(r"`(asr [a-z][^`]*)`")


def test_inline_commands_name_real_options():
    """`asr ...` in the prose and tables (often with placeholders, e.g. `asr score REF HYP`): the
    command exists and has every --option named."""
    problems = []
    for doc in DOCS:
        for m in INLINE.finditer(doc.read_text(encoding="utf-8")):
            words = m.group(1).replace("[", " ").replace("]", " ").split()[1:]
            command, rest = _command_of(words)
            if hasattr(command, "get_command"):  # a group, named as such, or followed by a word it has no command for
                if rest and rest[0].islower():
                    problems.append(f"{doc.relative_to(ROOT)}: `{m.group(1)}`: no such command {rest[0]!r}")
                continue
            known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
            unknown = sorted({w.split("=")[0] for w in rest if w.startswith("--")} - known)
            if unknown:
                problems.append(f"{doc.relative_to(ROOT)}: `{m.group(1)}`: no option {', '.join(unknown)}")
    assert not problems, "\n".join(problems)


# --- running them ---------------------------------------------------------------------------

TRAINS = (["train"], ["recipe", "run"], ["recipe", "loso"], ["recipe", "tune-weights"])
LAB_SMALL = ["--steps", "20", "--hidden", "8"]  # asr lab long-dependency: seconds instead of 40


def run(command: Command, clone: Path) -> bytes:
    """Run one command in `clone` (the current folder): `asr` in this process, other programs
    as processes, the stages of a pipeline each fed the one before's output; a command that
    trains gets SMALL. Fails on any non-zero exit. Returns the last stage's output."""
    from typer.testing import CliRunner

    from cli.main import app

    data = None
    for stage in command.stages:
        if stage[0] == "asr":
            args = stage[1:]
            if any(args[: len(t)] == t for t in TRAINS):
                args = [*args, *SMALL]
            elif args[:2] == ["lab", "long-dependency"]:
                args = [*args, *LAB_SMALL]
            result = CliRunner().invoke(app, args, input=data)
            assert result.exit_code == 0, f"{command.where}: {command.text}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
            data = result.stdout_bytes
        else:
            r = subprocess.run(stage, cwd=clone, input=data, capture_output=True, timeout=300)
            assert r.returncode == 0, f"{command.where}: {command.text}: exit {r.returncode}\n{r.stderr.decode(errors='replace')}"
            data = r.stdout
    if command.redirect:
        (clone / command.redirect).write_bytes(data or b"")
    return data or b""


@pytest.fixture()
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh clone's folder beside small corpora, as the current folder, with the audio files
    the docs name (talk.wav, talk.flac, my.wav, an406-fcaw-b.wav, recordings/*.flac)."""
    clone = make_sandbox(tmp_path)
    clip, rate = sf.read(tmp_path / "shared/data/an4/wav/an4test_clstk/fcaw/an406-fcaw-b.wav", dtype="float32")
    for name in ("talk.wav", "talk.flac", "my.wav", "an406-fcaw-b.wav"):
        sf.write(clone / name, clip, rate)
    (clone / "recordings").mkdir()
    for i, wav in enumerate(sorted((tmp_path / "shared/data/an4/wav/an4test_clstk/mmxg").glob("*.wav"))):
        sf.write(clone / "recordings" / f"r{i}.flac", *sf.read(wav, dtype="float32"))
    monkeypatch.chdir(clone)
    return clone


def test_readme_steps_one_by_one(clone: Path):
    """README's "the same steps one by one": prepare, train (a recipe's config), decode, score."""
    steps = [c for c in COMMANDS if c.where.startswith("README.md") and c.text.startswith(("asr prepare", "asr train", "asr decode", "asr score"))]
    assert [c.text.split()[1] for c in steps] == ["prepare", "train", "decode", "score"]
    out = {c.text.split()[1]: run(c, clone) for c in steps}
    assert b"train" in out["prepare"] and (clone / "data/an4/train.jsonl").is_file()
    assert (clone / "exp/mine/best.pt").is_file() and (clone / "exp/mine/test-hyp.jsonl").is_file()
    assert b"WER" in out["score"]


def test_every_doc_command_runs(clone: Path):
    """Every command of the docs that is not EXEMPT exits 0: the recipe runs first (what they
    write, exp/an4 and exp/an4_streaming, is what the other docs' commands take), then the rest
    in the docs' order."""
    ran = 0
    for command in sorted(COMMANDS, key=lambda c: not c.text.startswith("asr recipe run")):
        if exempt(command) is None:
            run(command, clone)
            ran += 1
    assert ran >= 35
    assert (clone / "talk.srt").read_text().startswith("1\n")


@pytest.mark.skipif(not (SHARED_DATA / "an4").is_dir(), reason=f"no real AN4 corpus at {SHARED_DATA / 'an4'}")
def test_prepare_on_the_real_corpus_gives_the_counts_the_docs_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The docs' `asr prepare` commands on the real corpora (../shared/data), and the utterance
    counts a comment beside one states (`# train 850, dev 98, test 130 utterances`)."""
    clone = tmp_path / "clone"
    clone.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED_DATA)
    monkeypatch.chdir(clone)
    prepares = [c for c in COMMANDS if c.text.startswith("asr prepare")]
    assert prepares
    for command in prepares:
        corpus = command.stages[0][3]
        if not (clone / corpus).is_dir():
            continue
        out = run(command, clone).decode()
        doc, line = command.where.split(":")
        comment = (ROOT / doc).read_text(encoding="utf-8").splitlines()[int(line) - 1].partition("#")[2]
        stated = {split: int(n) for split, n in re.findall(r"(\w+) (\d+)", comment)}
        found = {split: int(n) for split, n in re.findall(r"(\w+) (\d+) \(", out)}
        assert stated.items() <= found.items(), (command.where, comment, out)
