"""The `asr` command line: argument parsing only; the work is done by functions in `asr`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from asr.corpora import IMPORTERS
from asr.formats import FORMATS
from cli.common import (
    LM,
    Beam,
    BeamSize,
    BeamThreshold,
    DecoderConfig,
    GrammarFile,
    GrammarThreshold,
    HotwordFlag,
    HotwordsFile,
    Lexicon,
    LMWeight,
    Speeds,
    WordScore,
    _numbers,
    _speeds,
    decode_options,
    usage_error,
)
from cli.common import echo as _echo
from cli.common import fail as _fail
from cli.common import set_threads as _threads
from cli.common import warn as _warn
from cli.lab import inspect_cmd, lab_app
from cli.serve import serve_cmd
from cli.stream import stream_cmd

app = typer.Typer(
    name="asr",
    help="Speech recognition for the command line: prepare corpora, train a BiLSTM-CTC model, decode, score.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
lm_app = typer.Typer(help="Word n-gram language models and lexicons for beam search.", no_args_is_help=True)
app.add_typer(lm_app, name="lm")
recipe_app = typer.Typer(help="Run a recipe: prepare -> train -> decode -> score in one command.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
app.add_typer(lab_app, name="lab")
app.command("inspect")(inspect_cmd)
app.command("stream")(stream_cmd)
app.command("serve")(serve_cmd)

Overrides = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=value (repeatable).")]
RecipeOverrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: section.key=value (repeatable); also recipe.train_on_dev, recipe.lm_order."),
]
CorpusSource = Annotated[Path | None, typer.Option("--data", help="The corpus on disk; without it the recipe downloads it.")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu or cuda.")]
Threads = Annotated[int, typer.Option(help="CPU threads for torch (0: torch's default).")]


@app.command("prepare")
def prepare_cmd(
    corpus: Annotated[str, typer.Argument(help=f"One of: {', '.join(IMPORTERS)}.")],
    src: Annotated[Path, typer.Argument(help="The corpus on disk.")],
    out_dir: Annotated[Path, typer.Argument(help="Where to write <split>.jsonl manifests and rejected.jsonl.")],
) -> None:
    """Turn a corpus into JSONL manifests, one per split; bad items go to rejected.jsonl."""
    from asr.corpora import prepare

    report = prepare(corpus, src, out_dir)
    _echo(report.summary())


@app.command("export-data")
def export_data_cmd(
    manifest: Annotated[Path, typer.Argument(help="A JSONL manifest.")],
    out_dir: Annotated[Path, typer.Argument(help="The Kaldi data directory to write (wav.scp, text, utt2spk, spk2utt).")],
) -> None:
    """Write a manifest as a Kaldi data directory."""
    from asr.corpora import export_kaldi

    export_kaldi(manifest, out_dir)
    _echo(f"wrote {out_dir}")


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Argument(help="TOML config: \\[data], \\[features], \\[augment], \\[model], \\[train], \\[decode].")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment directory; re-running resumes from its last.pt.")],
    overrides: Overrides = None,
    nproc: Annotated[int, typer.Option(help="Processes on this machine (distributed data parallel through torchrun).")] = 1,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (sets train.device).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads per process (sets train.threads).")] = None,
    nj: Annotated[int | None, typer.Option("--nj", help="Processes computing the features (sets data.nj; 0: the cores).")] = None,
) -> None:
    """Train a BiLSTM-CTC model; writes best.pt, last.pt, metrics.csv and steps.csv into --out."""
    overrides = list(overrides or []) + ([f"train.device={device}"] if device else []) + ([f"train.threads={threads}"] if threads is not None else [])
    overrides += [f"data.nj={nj}"] if nj is not None else []
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # start the processes; each comes back here under torchrun
        from asr.config import load_config
        from asr.distributed import launch_training

        cfg = load_config(config, overrides)  # a bad config or device fails here in one line, not once per process
        raise typer.Exit(launch_training(config, out, nproc, overrides, cfg.train.device))
    from asr.config import load_config
    from asr.train import train

    best = train(load_config(config, overrides), out)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(f"best checkpoint: {best}")



def _decoder(model, beam: bool, beam_size, beam_threshold, lexicon, lm, lm_weight, word_score, decoder_config, nbest: int = 1, speeds: str | None = None, **context):
    """The search the flags ask for (`cli.common.decode_options`; `context`: its hotword and
    grammar flags)."""
    from asr.options import make_decoder

    options = decode_options(model, beam, beam_size, beam_threshold, lexicon, lm, lm_weight, word_score, decoder_config, nbest, speeds, **context)
    return make_decoder(model.tokenizer, options)


@app.command("decode")
def decode_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint (model.pt) or an exported model.")],
    manifest: Annotated[Path, typer.Argument(help="The JSONL manifest to decode.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Hypothesis JSONL to write: {\"id\", \"text\"} lines.")],
    beam: Beam = False,
    beam_size: BeamSize = None,
    beam_threshold: BeamThreshold = None,
    lexicon: Lexicon = None,
    lm: LM = None,
    lm_weight: LMWeight = None,
    word_score: WordScore = None,
    decoder_config: DecoderConfig = None,
    speeds: Speeds = None,
    hotwords_file: HotwordsFile = None,
    hotword: HotwordFlag = None,
    grammar: GrammarFile = None,
    grammar_threshold: GrammarThreshold = None,
    nbest: Annotated[int, typer.Option(help="Also write the n best hypotheses with scores (beam search).")] = 1,
    batch_frames: Annotated[int | None, typer.Option(help="Padded feature frames per batch.")] = None,
    device: Device = "cpu",
    threads: Threads = 0,
    nj: Annotated[int, typer.Option("--nj", help="Worker processes on this machine, each of --threads threads (default 1); their outputs merged in manifest order.")] = 1,
    shard: Annotated[str | None, typer.Option(help="Decode only shard I/N (by utterance id) into OUT.shard-I-of-N; `asr merge-shards` joins the N parts.")] = None,
) -> None:
    """Decode every utterance of a manifest (batched; greedy, or beam search with a lexicon and LM)."""
    from asr.decode import decode_manifest, load_model

    select = None
    if shard is not None:
        from asr.shard import parse_shard, part_path, shard_of

        index, count = parse_shard(shard)
        out = part_path(out, index, count)
        select = lambda uid: shard_of(uid, count) == index  # noqa: E731
    if nj < 1:
        raise typer.BadParameter(f"must be at least 1, got {nj}", param_hint="--nj")
    _threads(threads if nj == 1 else 1)
    acoustic = load_model(model, device)
    context = {"hotwords_file": hotwords_file, "hotword": hotword, "grammar": grammar, "grammar_threshold": grammar_threshold}
    if nj > 1:
        from asr.shard import decode_parallel

        options = decode_options(acoustic, beam, beam_size, beam_threshold, lexicon, lm, lm_weight, word_score, decoder_config, nbest, speeds, **context)
        report = decode_parallel(model, manifest, out, nj, acoustic, options, batch_frames, nbest, threads or 1, device, select)
    else:
        decoder = _decoder(acoustic, beam, beam_size, beam_threshold, lexicon, lm, lm_weight, word_score, decoder_config, nbest, speeds, **context)
        report = decode_manifest(acoustic, manifest, out, decoder, batch_frames, nbest, select=select)
    rtf = f", RTF {report.seconds / report.audio_seconds:.4f}" if report.audio_seconds else ""
    _echo(f"decoded {report.decoded} utterances ({len(report.failed)} failed) in {report.seconds:.1f} s{rtf} -> {out}")
    if report.failed and not report.decoded:
        raise typer.Exit(1)


@app.command("merge-shards")
def merge_shards_cmd(
    manifest: Annotated[Path, typer.Argument(help="The manifest the shards were decoded from.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The hypothesis JSONL to write; the parts are OUT.shard-I-of-N.")],
    shards: Annotated[int, typer.Option(help="N, the number of shards (asr decode --shard I/N).")],
) -> None:
    """Join the parts of `asr decode --shard I/N` (all N, no id twice) into the file one process would write."""
    from asr.shard import merge_shards

    report = merge_shards(manifest, out, shards)
    if report.missing:
        _warn(f"warning: {len(report.missing)} utterance(s) of {manifest} have no hypothesis (unreadable audio, reported by their shard): {' '.join(report.missing[:20])}" + (" ..." if len(report.missing) > 20 else ""))
    _echo(f"merged {shards} shards: {report.written} hypotheses -> {out}")


@app.command("transcribe")
def transcribe_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint (model.pt) or an exported model.")],
    audio: Annotated[list[str], typer.Argument(help="Audio files, directories (searched recursively) or - for a list of paths on stdin.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"One of: {', '.join(FORMATS)}.")] = "txt",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    output_dir: Annotated[Path | None, typer.Option(help="Write one <name>.<format> file per input here instead of printing; folders below the inputs' common folder are mirrored (spk1/utt1.wav -> spk1/utt1.srt).")] = None,
    beam: Beam = False,
    beam_size: BeamSize = None,
    beam_threshold: BeamThreshold = None,
    lexicon: Lexicon = None,
    lm: LM = None,
    lm_weight: LMWeight = None,
    word_score: WordScore = None,
    decoder_config: DecoderConfig = None,
    speeds: Speeds = None,
    hotwords_file: HotwordsFile = None,
    hotword: HotwordFlag = None,
    grammar: GrammarFile = None,
    grammar_threshold: GrammarThreshold = None,
    segmenter: Annotated[str | None, typer.Option(help="What finds the pauses to cut audio longer than 30 s at: energy (an adaptive energy threshold) or silero (Silero VAD); default: energy.")] = None,
    device: Device = "cpu",
    threads: Threads = 0,
) -> None:
    """Transcribe audio of any length: prints `path<TAB>text` per file, or JSON lines with word
    times and confidences, SRT/VTT subtitles or CTM. Unreadable files are reported and skipped.
    Folders are searched following links; audio below the model's sample rate is said once."""
    from asr.decode import find_audio, load_model, output_names, transcribe, utterance_ids
    from asr.formats import FORMATS

    fmt = "json" if as_json else fmt
    if fmt not in FORMATS:
        raise typer.BadParameter(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}", param_hint="--format")
    from asr.segment import SEGMENTERS

    if segmenter is not None and segmenter not in SEGMENTERS:
        raise typer.BadParameter(f"unknown segmenter {segmenter!r}; choose from {', '.join(SEGMENTERS)}", param_hint="--segmenter")
    found = find_audio(audio)
    if not found.paths and not found.problems:
        raise typer.BadParameter("no audio files found", param_hint="AUDIO")
    inputs = len(found.paths) + len(found.problems)
    if fmt in ("srt", "vtt") and inputs > 1 and output_dir is None:
        raise typer.BadParameter(f"{fmt} holds one file's subtitles: with several inputs, use --output-dir", param_hint="--format")
    # Names of outputs and ids, distinct for distinct inputs, settled before any work.
    try:
        names = output_names(found, fmt) if output_dir else []
        ids = utterance_ids(found) if fmt == "ctm" else []
    except ValueError as e:
        raise _fail(f"cannot name the outputs of distinct inputs apart: {e}") from None
    failed = 0
    for path, reason in found.problems:
        failed += 1
        _warn(f"error: {path}: {reason}")
    if not found.paths:
        _warn(f"{failed} of {inputs} files could not be transcribed")
        raise typer.Exit(1)
    _threads(threads)
    acoustic = load_model(model, device)
    decoder = _decoder(
        acoustic, beam, beam_size, beam_threshold, lexicon, lm, lm_weight, word_score, decoder_config, speeds=speeds,
        hotwords_file=hotwords_file, hotword=hotword, grammar=grammar, grammar_threshold=grammar_threshold,
    )
    written: dict[tuple[int, int], str] = {}  # outputs of this run (device, inode) -> their input
    results = transcribe(acoustic, found.paths, decoder, timestamps=fmt != "txt", progress=len(found.paths) > 20, segmenter=segmenter)
    for i, result in enumerate(results):
        if result.error:
            failed += 1
            _warn(f"error: {result.path}: {result.error}")
            continue
        if ids:
            result.id = ids[i]
        text = FORMATS[fmt](result)
        if output_dir:
            target = output_dir / names[i]
            if not _write_output(target, text, result.path, written):
                failed += 1
        else:
            _echo(text, nl=False)
    if failed:
        if inputs > 1:
            _warn(f"{failed} of {inputs} files could not be transcribed")
        if failed == inputs:
            raise typer.Exit(1)


def _write_output(target: Path, text: str, source: str, written: dict[tuple[int, int], str]) -> bool:
    """Write one input's output (file names that are not UTF-8 as their bytes); refuse, with an
    error line, to replace a file this run already wrote for another input (a file system that
    folds case, or a link in the output folder, can make two names one file)."""
    from asr.fileio import atomic_write_text

    try:
        st = target.stat()
    except OSError:
        st = None
    if st is not None and (st.st_dev, st.st_ino) in written and written[st.st_dev, st.st_ino] != source:
        _warn(f"error: {source}: its output {target} would overwrite the output of {written[st.st_dev, st.st_ino]} (skipped)")
        return False
    atomic_write_text(target, text, errors="surrogateescape")
    st = target.stat()
    written[st.st_dev, st.st_ino] = source
    return True


@app.command("score")
def score_cmd(
    ref: Annotated[Path, typer.Argument(help="Reference: a manifest/JSONL or a Kaldi text file (utt-id words...).")],
    hyp: Annotated[Path, typer.Argument(help="Hypothesis: JSONL {\"id\", \"text\"} or a Kaldi text file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the scores as one JSON object.")] = False,
    details: Annotated[Path | None, typer.Option(help="Write the per-utterance alignment (sclite pra style).")] = None,
    trn: Annotated[Path | None, typer.Option(help="Write sclite ref.trn and hyp.trn into this folder.")] = None,
) -> None:
    """Word and character error rates, with sclite's substitution/deletion/insertion counts."""
    from asr.scoring import check_ids_match, format_summary, read_transcripts, score, write_details, write_trn

    refs, hyps = read_transcripts(ref), read_transcripts(hyp)
    check_ids_match(refs, hyps, ref, hyp)
    result = score(refs, hyps)
    if details:
        write_details(result, details)
    if trn:
        write_trn(refs, hyps, trn)
    if result.missing:
        typer.echo(f"warning: {len(result.missing)} reference(s) without a hypothesis, counted as deletions: {' '.join(result.missing[:20])}" + (" ..." if len(result.missing) > 20 else ""), err=True)
    typer.echo(json.dumps(result.to_json()) if as_json else format_summary(result))


@lm_app.command("build")
def lm_build_cmd(
    text: Annotated[Path, typer.Argument(help="A text file (one sentence a line) or a manifest (its transcripts).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The ARPA file to write.")],
    order: Annotated[int, typer.Option(help="n-gram order.")] = 3,
    method: Annotated[str, typer.Option(help="kneser-ney (interpolated, modified) or witten-bell.")] = "kneser-ney",
    lmplz: Annotated[bool, typer.Option("--lmplz", help="Use KenLM's lmplz (must be on PATH), for large text.")] = False,
) -> None:
    """Build a word n-gram LM in ARPA format from text or a manifest's transcripts."""
    from asr.lm import build_arpa, build_arpa_kenlm, read_lm_texts

    sentences = read_lm_texts(text)
    stats = build_arpa_kenlm(sentences, order, out) if lmplz else build_arpa(sentences, order, out, method)
    counts = ", ".join(f"{n + 1}-grams {c}" for n, c in enumerate(stats.counts))
    typer.echo(f"{out}: {len(sentences)} sentences; {counts}")


@lm_app.command("lexicon")
def lm_lexicon_cmd(
    model: Annotated[Path, typer.Argument(help="The model whose tokens spell the words.")],
    text: Annotated[Path, typer.Argument(help="Text file or manifest whose words make the vocabulary.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The lexicon file to write.")],
) -> None:
    """Write the lexicon (word -> token spelling) for beam search with this model's tokens."""
    from asr.decode import load_model
    from asr.lm import lexicon_words, read_lm_texts, write_lexicon

    written, skipped = write_lexicon(lexicon_words(read_lm_texts(text)), load_model(model).tokenizer.tokens, out)
    typer.echo(f"{out}: {written} words")
    if skipped:
        typer.echo(f"warning: {len(skipped)} word(s) use characters outside the model's tokens, left out: {' '.join(skipped[:20])}", err=True)


@app.command("tune-decoder")
def tune_decoder_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint or exported model.")],
    dev: Annotated[Path, typer.Argument(help="The dev manifest to tune on (never the test set).")],
    lm: LM = None,
    lexicon: Lexicon = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the best \\[decode] settings (TOML).")] = Path("decode.toml"),
    lm_weights: Annotated[str, typer.Option(help="Comma-separated LM weights to try.")] = "0,0.5,1,1.5,2,3",
    word_scores: Annotated[str, typer.Option(help="Comma-separated word scores to try.")] = "-2,-1,0,1,2",
    speeds: Annotated[str | None, typer.Option(help="Test-time speed views to tune with, e.g. 0.9,1,1.1 (default: the model's decode.speeds).")] = None,
) -> None:
    """Grid-search LM weight and word score on a dev set; the best go to --out for --decoder-config."""
    from asr.decode import tune_decoder

    if lm is None or lexicon is None:
        raise typer.BadParameter("tuning needs both --lm and --lexicon", param_hint="--lm/--lexicon")
    result = tune_decoder(model, dev, lexicon, lm, _numbers(lm_weights, "--lm-weights"), _numbers(word_scores, "--word-scores"), out, _speeds(speeds) if speeds else None)
    _echo_grid(result, out)


def _echo_grid(result, out: Path | None, greedy: str = "") -> None:
    """One line per grid point, then the best (a TuneResult)."""
    for w, ws, wer in result.grid:
        typer.echo(f"lm_weight {w:5.2f}  word_score {ws:5.2f}  WER {wer:6.2f}%")
    if greedy:
        typer.echo(greedy)
    typer.echo(f"best: lm_weight {result.best['lm_weight']}, word_score {result.best['word_score']} (WER {result.best_wer:.2f}%) -> {out}")


@app.command("average")
def average_cmd(
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoints to average, or one experiment directory (its epochs/epoch-*.pt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The averaged checkpoint to write.")],
    last: Annotated[int, typer.Option(help="With an experiment directory: average its last N epochs.")] = 5,
) -> None:
    """Average the weights of several checkpoints of one model (the last epochs of a run)."""
    from asr.checkpoint import average_checkpoints, epoch_checkpoints

    paths = epoch_checkpoints(checkpoints[0], last) if len(checkpoints) == 1 and checkpoints[0].is_dir() else checkpoints
    average_checkpoints(paths, out)
    typer.echo(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) -> {out}")


@app.command("export")
def export_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint (model.pt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The exported file (.ts or .onnx).")],
    fmt: Annotated[str, typer.Option("--format", help="torchscript or onnx.")] = "torchscript",
    quantize: Annotated[str | None, typer.Option(help="int8: dynamic quantization of the LSTM and linear layers.")] = None,
) -> None:
    """Export the model for deployment; `asr transcribe` and `asr decode` run the exported file."""
    from asr.export import export

    path = export(model, out, fmt, quantize)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@recipe_app.command("run")
def recipe_run_cmd(
    recipe: Annotated[str, typer.Argument(help="Recipe name (yesno, an4, fsdd) or a folder with config.toml.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment directory.")],
    data: CorpusSource = None,
    stage: Annotated[int, typer.Option(help="First stage: 1 prepare, 2 train, 3 lm, 4 decode, 5 score.")] = 1,
    stop_stage: Annotated[int, typer.Option(help="Last stage.")] = 5,
    overrides: RecipeOverrides = None,
    nproc: Annotated[int, typer.Option(help="Training processes (distributed data parallel through torchrun).")] = 1,
) -> None:
    """Prepare, train, build the LM, decode every test set (greedy and with the LM) and score;
    finished stages are skipped. Ends with the results table, also written to EXP/RESULTS.md."""
    from asr.recipe import run_recipe

    run_recipe(recipe, out, data=data, stage=stage, stop_stage=stop_stage, overrides=overrides, nproc=nproc)


@recipe_app.command("loso")
def recipe_loso_cmd(
    recipe: Annotated[str, typer.Argument(help="Recipe name (fsdd, yesno) or a folder with config.toml; it must have no dev split.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment directory: data/, one folder per speaker, RESULTS.md.")],
    data: CorpusSource = None,
    overrides: Overrides = None,
) -> None:
    """Leave one speaker out: for each speaker, train on the others and test on it; a table of
    utterance accuracy and WER per speaker (re-running resumes)."""
    from asr.recipe import run_cross_validation

    run_cross_validation(recipe, out, data=data, overrides=overrides)


@recipe_app.command("tune-weights")
def recipe_tune_weights_cmd(
    recipe: Annotated[str, typer.Argument(help="Recipe name (an4) or a folder with config.toml.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment directory: data/, fold<k>_seed<s>/, fold<k>/lm/, grid.tsv, decode.toml.")],
    data: CorpusSource = None,
    folds: Annotated[int, typer.Option(help="Speaker folds of train + dev.")] = 5,
    seeds: Annotated[str, typer.Option(help="Comma-separated training seeds; each fold trains once per seed.")] = "1",
    jobs: Annotated[int, typer.Option(help="Fold trainings at a time (e.g. several on one GPU).")] = 1,
    lm_weights: Annotated[str, typer.Option(help="Comma-separated LM weights to try.")] = "0,0.5,1,1.5,2,2.5,3",
    word_scores: Annotated[str, typer.Option(help="Comma-separated word scores to try.")] = "-1,0,1,2,3,4",
    overrides: RecipeOverrides = None,
) -> None:
    """Choose the LM weight and word score for a recipe that trains on train + dev: train one model
    per speaker fold and seed, beam search each fold's held-out speakers with its own LM, and take the
    grid point with the lowest WER over all of them (written to OUT/decode.toml; re-running resumes)."""
    from asr.recipe import tune_weights_by_folds

    result = tune_weights_by_folds(
        recipe, out, data=data, folds=folds, seeds=_numbers(seeds, "--seeds", int), overrides=overrides, jobs=jobs,
        lm_weights=_numbers(lm_weights, "--lm-weights"), word_scores=_numbers(word_scores, "--word-scores"),
    )
    _echo_grid(result, out / "decode.toml", f"greedy: WER {result.greedy_wer:.2f}% ({result.words} words, every held-out utterance once per seed)")


@recipe_app.command("list")
def recipe_list_cmd() -> None:
    """List the recipes that ship with the project."""
    from asr.recipe import RECIPES_DIR

    for p in sorted(RECIPES_DIR.glob("*/config.toml")):
        typer.echo(p.parent.name)


def main() -> None:
    """Entry point: parse errors exit 2 and known errors exit 1, each as one line on stderr
    (`error: ...`; ASR_DEBUG=1 shows tracebacks)."""
    try:
        code = app(prog_name="asr", standalone_mode=False)  # `asr` also under python -m
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.TyperException as e:  # typer's parse errors, and typer.BadParameter of a command
        if type(e).__name__ == "NoArgsIsHelpError":  # `asr` or `asr lm` alone: the help is the answer
            if e.format_message().strip():  # without rich the help is in the message
                typer.echo(e.format_message())
            sys.exit(2)
        _warn(f"error: {usage_error(e)}")
        sys.exit(getattr(e, "exit_code", 2))
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except (ValueError, OSError, RuntimeError) as e:
        if os.environ.get("ASR_DEBUG"):
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
