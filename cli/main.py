"""The `asr` command line: argument parsing only; the work is done by functions in `asr`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="asr",
    help="Speech recognition for the command line: prepare corpora, train a BiLSTM-CTC model, decode, score.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipe_app = typer.Typer(help="Run a recipe: prepare -> train -> decode -> score in one command.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")

Overrides = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=value (repeatable).")]


@app.command("prepare")
def prepare_cmd(
    corpus: Annotated[str, typer.Argument(help="yesno, an4, fsdd, librispeech, folder or kaldi.")],
    src: Annotated[Path, typer.Argument(help="The corpus on disk.")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write <split>.jsonl manifests and rejected.jsonl.")],
) -> None:
    """Turn a corpus into JSONL manifests, one per split; bad items go to rejected.jsonl."""
    from asr.corpora import prepare

    report = prepare(corpus, src, out_dir)
    typer.echo(report.summary())


@app.command("export-data")
def export_data_cmd(
    manifest: Annotated[Path, typer.Argument(help="A JSONL manifest.")],
    out_dir: Annotated[Path, typer.Argument(help="The Kaldi data directory to write (wav.scp, text, utt2spk, spk2utt).")],
) -> None:
    """Write a manifest as a Kaldi data directory."""
    from asr.corpora import export_kaldi

    export_kaldi(manifest, out_dir)
    typer.echo(f"wrote {out_dir}")


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Argument(help="TOML config: [data], [features], [augment], [model], [train], [decode].")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment directory; re-running resumes from its last.pt.")],
    overrides: Overrides = None,
) -> None:
    """Train a BiLSTM-CTC model; writes best.pt, last.pt, metrics.csv and steps.csv into --out."""
    from asr.config import load_config
    from asr.train import train

    best = train(load_config(config, overrides), out)
    typer.echo(f"best checkpoint: {best}")


@app.command("decode")
def decode_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint (model.pt, best.pt).")],
    manifest: Annotated[Path, typer.Argument(help="The JSONL manifest to decode.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Hypothesis JSONL to write: {\"id\", \"text\"} lines.")],
    batch_frames: Annotated[int | None, typer.Option(help="Padded feature frames per batch.")] = None,
) -> None:
    """Decode every utterance of a manifest (greedy CTC, batched)."""
    from asr.decode import decode_manifest

    t0 = time.time()
    report = decode_manifest(model, manifest, out, batch_frames)
    took = time.time() - t0
    rtf = f", RTF {took / report.audio_seconds:.4f}" if report.audio_seconds else ""
    typer.echo(f"decoded {report.decoded} utterances ({len(report.failed)} failed) in {took:.1f} s{rtf} -> {out}")
    if report.failed and not report.decoded:
        raise typer.Exit(1)


@app.command("transcribe")
def transcribe_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint (model.pt).")],
    audio: Annotated[list[str], typer.Argument(help="Audio files, directories (searched recursively) or - for a list of paths on stdin.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines {\"path\", \"text\"}.")] = False,
) -> None:
    """Transcribe audio: prints `path<TAB>text`, one line each. Unreadable files are reported and skipped."""
    from asr.decode import find_audio, transcribe

    paths = find_audio(audio)
    if not paths:
        raise typer.BadParameter("no audio files found", param_hint="AUDIO")
    failed = 0
    for path, text, reason in transcribe(model, paths):
        if text is None:
            failed += 1
            typer.echo(f"error: {path}: {reason}", err=True)
        elif as_json:
            typer.echo(json.dumps({"path": path, "text": text}, ensure_ascii=False))
        else:
            typer.echo(f"{path}\t{text}")
    if failed:
        if len(paths) > 1:
            typer.echo(f"{failed} of {len(paths)} files could not be transcribed", err=True)
        if failed == len(paths):
            raise typer.Exit(1)


@app.command("score")
def score_cmd(
    ref: Annotated[Path, typer.Argument(help="Reference: a manifest/JSONL or a Kaldi text file (utt-id words...).")],
    hyp: Annotated[Path, typer.Argument(help="Hypothesis: JSONL {\"id\", \"text\"} or a Kaldi text file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as one JSON object.")] = False,
    details: Annotated[Path | None, typer.Option(help="Write the per-utterance alignment (sclite pra style).")] = None,
    trn: Annotated[Path | None, typer.Option(help="Write sclite ref.trn and hyp.trn into this folder.")] = None,
) -> None:
    """Word and character error rates, with sclite's substitution/deletion/insertion counts."""
    from asr.scoring import format_summary, read_transcripts, score, write_details, write_trn

    refs, hyps = read_transcripts(ref), read_transcripts(hyp)
    result = score(refs, hyps)
    if details:
        write_details(result, details)
    if trn:
        write_trn(refs, hyps, trn)
    if result.missing:
        typer.echo(f"warning: {len(result.missing)} reference(s) without a hypothesis, counted as deletions: {' '.join(result.missing[:20])}" + (" ..." if len(result.missing) > 20 else ""), err=True)
    typer.echo(json.dumps(result.to_json()) if as_json else format_summary(result))


@recipe_app.command("run")
def recipe_run_cmd(
    recipe: Annotated[str, typer.Argument(help="Recipe name (yesno, an4, fsdd) or a folder with config.toml.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment directory.")],
    data: Annotated[Path | None, typer.Option(help="The corpus on disk; without it the recipe downloads it.")] = None,
    stage: Annotated[int, typer.Option(help="First stage: 1 prepare, 2 train, 3 decode, 4 score.")] = 1,
    stop_stage: Annotated[int, typer.Option(help="Last stage.")] = 4,
    overrides: Overrides = None,
) -> None:
    """Prepare, train, decode every test set and score; finished stages are skipped."""
    from asr.recipe import run_recipe

    run_recipe(recipe, out, data=data, stage=stage, stop_stage=stop_stage, overrides=overrides)


@recipe_app.command("list")
def recipe_list_cmd() -> None:
    """List the recipes that ship with the project."""
    from asr.recipe import RECIPES_DIR

    for p in sorted(RECIPES_DIR.glob("*/config.toml")):
        typer.echo(p.parent.name)


def main() -> None:
    """Entry point: known errors become one line on stderr and exit status 1 (ASR_DEBUG=1 shows tracebacks)."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except (ValueError, OSError, RuntimeError) as e:
        if os.environ.get("ASR_DEBUG"):
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
