"""Parse errors of the command line (a bad value, an unknown option or command, a missing or extra
argument, a command's own BadParameter) are one line on stderr, `error: ...` with where the help
is, and exit status 2, as every other error is one line (`cli.main.main`, `cli.common.usage_error`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    from cli.main import main

    monkeypatch.setattr(sys, "argv", ["asr", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


CASES = [
    (["stream", "model.pt", "-", "--rate", "abc"], "stream", ["'--rate'", "'abc'", "integer"]),
    (["decode", "m.pt", "d.jsonl", "--out", "h.jsonl", "--beam-size", "1.5"], "decode", ["'--beam-size'", "'1.5'", "integer"]),
    (["lm", "build", "t.txt", "--out", "lm.arpa", "--order", "three"], "lm build", ["'--order'", "'three'"]),
    (["stream", "model.pt", "--no-such-flag"], "stream", ["no such option", "--no-such-flag"]),
    (["transcribe", "m.pt", "a.wav", "--fromat", "srt"], "transcribe", ["no such option", "--fromat"]),
    (["score", "ref.jsonl"], "score", ["missing argument", "hyp"]),
    (["score", "a", "b", "c"], "score", ["unexpected extra argument", "c"]),
    (["train", "config.toml"], "train", ["missing option", "--out"]),
    (["recipe", "run"], "recipe run", ["missing argument", "recipe"]),
    (["no-such-command"], "", ["no such command", "no-such-command"]),
    (["transcribe", "m.pt", "a.wav", "--format", "xyz"], "transcribe", ["--format", "unknown format 'xyz'"]),  # the command's own BadParameter
]


@pytest.mark.parametrize(("args", "command", "fragments"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_parse_error_is_one_line(monkeypatch, capsys, tmp_path, args, command, fragments):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 2, (code, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert f"; see '{' '.join(['asr', *command.split(), '--help'])}'" in line, line
    assert "Usage:" not in err and "\u256d" not in err and "Traceback" not in err


def test_no_arguments_still_print_the_help(monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys)
    assert code == 2
    assert "prepare" in out and "transcribe" in out and "error" not in err


def test_help_and_known_errors_keep_their_exit_status(monkeypatch, capsys, tmp_path):
    code, out, _ = run_main(monkeypatch, capsys, "score", "--help")
    assert code == 0 and "REF" in out.upper()
    code, out, err = run_main(monkeypatch, capsys, "score", str(tmp_path / "missing.jsonl"), str(tmp_path / "h.jsonl"))
    assert code == 1 and err.startswith("error: ") and "missing.jsonl" in err and len(err.splitlines()) == 1


def test_the_installed_entry_point_prints_one_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys; from cli.main import main; sys.argv = ['asr', 'stream', 'm.pt', '-', '--rate', '8k']; main()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [r.stderr.strip()] and "'--rate'" in r.stderr and "'8k'" in r.stderr, r.stderr
