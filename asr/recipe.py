"""Recipes: prepare -> train -> decode every test set -> score, as one resumable run."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from asr.checkpoint import average_checkpoints, epoch_checkpoints
from asr.config import Config, ConfigError, set_value
from asr.corpora import prepare
from asr.decode import TuneResult, decode_manifest
from asr.expdir import ExpDir, last_metrics
from asr.fileio import atomic_write_text
from asr.scoring import score_files
from asr.train import export_model, train, training_complete

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
STAGES = {1: "prepare", 2: "train", 3: "lm", 4: "decode", 5: "score"}


class RecipeError(ValueError):
    """A recipe that cannot run; the message says what to do."""


@dataclass
class Recipe:
    name: str
    path: Path
    corpus: str
    config: Config
    train_set: str = "train"
    dev_set: str = ""
    test_sets: list[str] = field(default_factory=lambda: ["test"])
    url: str = ""
    sha256: str = ""
    archive_dir: str = ""  # folder inside the extracted archive that holds the corpus
    lm_order: int = 3  # word n-gram built from the training transcripts; 0: no LM stage
    # The final model trains on train + dev, and the decode weights come from [decode] instead of
    # being tuned on dev: choose everything on dev first with this off (`--set recipe.train_on_dev=false`).
    train_on_dev: bool = False

    @property
    def training_sets(self) -> list[str]:
        return [self.train_set, self.dev_set] if self.train_on_dev and self.dev_set else [self.train_set]

    @property
    def training_manifest(self) -> str:
        """File name of the manifest the model trains on (and the LM is built from)."""
        return "+".join(self.training_sets) + ".jsonl"

    @property
    def tunes_on_dev(self) -> bool:
        return bool(self.dev_set) and not self.train_on_dev


def find_recipe(name_or_dir: str) -> Path:
    """A recipe folder: a path, or the name of one under ./recipes or the project's recipes/."""
    for candidate in (Path(name_or_dir), Path("recipes") / name_or_dir, RECIPES_DIR / name_or_dir):
        if (candidate / "config.toml").is_file():
            return candidate
    known = sorted(p.name for p in RECIPES_DIR.iterdir() if (p / "config.toml").is_file()) if RECIPES_DIR.is_dir() else []
    raise RecipeError(f"{name_or_dir}: no such recipe (a folder with config.toml); known: {', '.join(known) or 'none'}")


def load_recipe(name_or_dir: str) -> Recipe:
    path = find_recipe(name_or_dir)
    toml_path = path / "config.toml"
    try:
        d = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{toml_path}: not valid TOML ({e})") from None
    meta = d.pop("recipe", {})
    if "corpus" not in meta:
        raise ConfigError(f"{toml_path}: [recipe] needs corpus = \"...\"")
    allowed = {"corpus", "train_set", "dev_set", "test_sets", "url", "sha256", "archive_dir", "lm_order", "train_on_dev"}
    unknown = set(meta) - allowed
    if unknown:
        raise ConfigError(f"{toml_path}: unknown key(s) in [recipe]: {', '.join(sorted(unknown))}")
    return Recipe(name=path.name, path=path, config=Config.from_dict(d, where=str(toml_path)), **meta)


def run_recipe(
    name_or_dir: str,
    out: str | Path,
    data: str | Path | None = None,
    stage: int = 1,
    stop_stage: int = 5,
    overrides: list[str] | None = None,
    cache_dir: str | Path | None = None,
    nproc: int = 1,
) -> dict[str, dict]:
    """Run the recipe's stages `stage`..`stop_stage` into `out`; returns {"<set>" or "<set> (LM)": score json}.

    Stages: 1 prepare, 2 train, 3 lm (n-gram LM and lexicon from the training transcripts,
    weights tuned on dev unless the recipe trains on dev), 4 decode every test set (greedy, and beam search with the LM),
    5 score. A stage whose outputs are complete is skipped."""
    recipe = load_recipe(name_or_dir)
    cfg = recipe.config
    apply_overrides(recipe, overrides or [])
    exp = Path(out)
    data_dir, train_dir, lm_dir, model_path = exp / "data", exp / "train", exp / "lm", exp / "model.pt"
    train_manifest = data_dir / recipe.training_manifest
    cfg.data.train = str(train_manifest)
    cfg.data.dev = str(data_dir / f"{recipe.dev_set}.jsonl") if recipe.tunes_on_dev else ""
    needed = [recipe.train_set, *([recipe.dev_set] if recipe.dev_set else []), *recipe.test_sets]
    lm_files = {"lm": lm_dir / f"{recipe.lm_order}gram.arpa", "lexicon": lm_dir / "lexicon.txt", "decode": lm_dir / "decode.toml"}

    def run(n: int) -> bool:
        return stage <= n <= stop_stage

    def fresh(path: Path, *inputs: Path) -> bool:
        return path.exists() and all(path.stat().st_mtime >= i.stat().st_mtime for i in inputs if i.exists())

    if run(1):
        if all((data_dir / f"{s}.jsonl").exists() for s in needed):
            _log(f"stage 1 (prepare): {data_dir} complete, skipped")
        else:
            src = Path(data) if data else download_corpus(recipe, cache_dir)
            report = prepare(recipe.corpus, src, data_dir)
            _log(f"stage 1 (prepare): {report.summary()}")
            missing = [s for s in needed if not (data_dir / f"{s}.jsonl").exists()]
            if missing:
                raise RecipeError(f"{src}: preparing {recipe.corpus} gave no usable {', '.join(missing)} split")

    parts = [data_dir / f"{s}.jsonl" for s in recipe.training_sets]
    if len(parts) > 1 and all(p.exists() for p in parts) and not fresh(train_manifest, *parts):
        _log(f"training set: {' + '.join(recipe.training_sets)} -> {train_manifest}")
        atomic_write_text(train_manifest, "".join(p.read_text(encoding="utf-8") for p in parts))

    if run(2):
        if training_complete(train_dir, cfg):
            _log(f"stage 2 (train): {train_dir} complete, skipped")
        else:
            _log(f"stage 2 (train): training into {train_dir}" + (f" with {nproc} processes" if nproc > 1 else ""))
            if nproc > 1:
                _train_distributed(cfg, train_dir, nproc)
            else:
                train(cfg, train_dir)
        chosen = ExpDir(train_dir).best
        if cfg.train.average_last > 0:  # the mean of the last epochs, written at the end of training
            chosen = ExpDir(train_dir).averaged
            if not chosen.exists():
                average_checkpoints(epoch_checkpoints(train_dir, cfg.train.average_last), chosen)
        if not fresh(model_path, chosen):
            export_model(chosen, model_path)

    if run(3) and recipe.lm_order > 0:
        if all(fresh(p, model_path) for p in lm_files.values() if p.suffix != ".toml" or recipe.tunes_on_dev):
            _log(f"stage 3 (lm): {lm_dir} complete, skipped")
        else:
            _build_lm(recipe, data_dir, model_path, lm_files)

    if run(4):
        from asr.decode import load_model
        from asr.options import make_decoder, resolve_options

        model = None
        for name in recipe.test_sets:
            for tag, hyp in _hyp_paths(recipe, exp, name).items():
                if fresh(hyp, model_path, *lm_files.values()):
                    _log(f"stage 4 (decode): {hyp} complete, skipped")
                    continue
                model = model or load_model(model_path)
                if tag == "greedy":
                    options = resolve_options(model.cfg.decode)
                else:
                    tuned = lm_files["decode"] if recipe.tunes_on_dev and lm_files["decode"].exists() else None
                    options = resolve_options(model.cfg.decode, tuned, lexicon=lm_files["lexicon"], lm=lm_files["lm"])
                decoder = make_decoder(model.tokenizer, options)
                report = decode_manifest(model, data_dir / f"{name}.jsonl", hyp, decoder)
                _log(f"stage 4 (decode): {name} ({tag}): {report.decoded} utterances, RTF {report.seconds / max(report.audio_seconds, 1e-9):.4f} -> {hyp}")

    results: dict[str, dict] = {}
    if run(5):
        for name in recipe.test_sets:
            for tag, hyp in _hyp_paths(recipe, exp, name).items():
                result = score_files(data_dir / f"{name}.jsonl", hyp)
                results[name if tag == "greedy" else f"{name} (LM)"] = result.to_json()
                atomic_write_text(hyp.with_name("score.json"), json.dumps(result.to_json(), indent=2) + "\n")
        table = results_table(recipe, exp, results)
        atomic_write_text(exp / "RESULTS.md", table)
        print(table)
    return results


def run_cross_validation(
    name_or_dir: str,
    out: str | Path,
    data: str | Path | None = None,
    overrides: list[str] | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, dict[str, dict]]:
    """Leave one speaker out: pool every split of the recipe's corpus, then for each speaker
    train on all the others and test on that speaker (stages 2-5 in OUT/<speaker>/), and write
    OUT/RESULTS.md with a row per speaker and the mean. Returns {speaker: run_recipe's results}."""
    from asr.manifest import read_manifest, write_manifest

    recipe = load_recipe(name_or_dir)
    if recipe.dev_set:
        raise RecipeError(f"recipe {recipe.name} has a dev split; leave-one-speaker-out runs only recipes without one (the held-out speaker is the test set)")
    exp = Path(out)
    pooled_dir = exp / "data"
    splits = [recipe.train_set, *recipe.test_sets]
    if not all((pooled_dir / f"{s}.jsonl").exists() for s in splits):
        report = prepare(recipe.corpus, Path(data) if data else download_corpus(recipe, cache_dir), pooled_dir)
        _log(f"prepare: {report.summary()}")
    pooled = [u for s in splits if (pooled_dir / f"{s}.jsonl").exists() for u in read_manifest(pooled_dir / f"{s}.jsonl")]
    speakers = sorted({u.speaker for u in pooled if u.speaker})
    if len(speakers) < 2 or any(not u.speaker for u in pooled):
        raise RecipeError(f"{pooled_dir}: leave-one-speaker-out needs a speaker on every utterance and at least two speakers (found {len(speakers)})")
    absolute = [replace(u, audio=str(Path(u.audio).resolve())) for u in pooled]  # fold manifests live elsewhere
    results = {}
    for speaker in speakers:
        fold = exp / speaker
        fold_data = fold / "data"
        if not (fold_data / f"{recipe.test_sets[0]}.jsonl").exists():
            write_manifest(fold_data / f"{recipe.train_set}.jsonl", [u for u in absolute if u.speaker != speaker])
            write_manifest(fold_data / f"{recipe.test_sets[0]}.jsonl", [u for u in absolute if u.speaker == speaker])
        _log(f"fold {speaker}: train on {len(speakers) - 1} speakers, test on {speaker}")
        results[speaker] = run_recipe(str(recipe.path), fold, stage=2, overrides=overrides)
    atomic_write_text(exp / "RESULTS.md", cross_validation_table(recipe, results))
    print((exp / "RESULTS.md").read_text(encoding="utf-8"))
    return results


@dataclass
class FoldTuning(TuneResult):
    """The out-of-fold grid: WER % of every (lm_weight, word_score) over all held-out hypotheses."""

    greedy_wer: float
    words: int  # reference words scored per grid point (every held-out utterance, once per seed)


def tune_weights_by_folds(
    name_or_dir: str,
    out: str | Path,
    data: str | Path | None = None,
    folds: int = 5,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    jobs: int = 1,
    lm_weights: list[float] | None = None,
    word_scores: list[float] | None = None,
    cache_dir: str | Path | None = None,
) -> FoldTuning:
    """The beam search's LM weight and word score for a recipe that trains on train + dev, chosen on
    held-out speakers: pool train + dev, split its speakers into `folds` groups, and for each group
    and seed train the recipe's model on the other groups (OUT/fold<k>_seed<s>/, `jobs` at a time;
    re-running resumes); then build each fold's LM and lexicon from its own training transcripts, beam
    search its held-out utterances over the grid, and score all folds' hypotheses together.
    Writes OUT/grid.tsv and the best settings to OUT/decode.toml; the recipe's [decode] takes them."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from asr.beam import GreedySearch
    from asr.config import to_toml
    from asr.decode import best_grid_point, grid_hypotheses, load_model, manifest_emissions
    from asr.manifest import read_manifest, write_manifest
    from asr.scoring import score

    recipe = load_recipe(name_or_dir)
    seeds = seeds or [recipe.config.train.seed]
    overrides = overrides or []
    apply_overrides(recipe, overrides)  # a bad --set fails here, not in every fold's log
    if recipe.lm_order <= 0:
        raise RecipeError(f"recipe {recipe.name} builds no LM (lm_order 0): there are no LM weights to tune")
    exp = Path(out)
    pooled_dir = exp / "data"
    splits = [recipe.train_set, *([recipe.dev_set] if recipe.dev_set else [])]
    if not all((pooled_dir / f"{s}.jsonl").exists() for s in splits):
        report = prepare(recipe.corpus, Path(data) if data else download_corpus(recipe, cache_dir), pooled_dir)
        _log(f"prepare: {report.summary()}")
    pooled = [replace(u, audio=str(Path(u.audio).resolve())) for s in splits for u in read_manifest(pooled_dir / f"{s}.jsonl")]
    speakers = sorted({u.speaker for u in pooled})
    if any(not u.speaker for u in pooled) or not 2 <= folds <= len(speakers):
        raise RecipeError(f"{pooled_dir}: {folds} speaker folds need a speaker on every utterance and 2..{len(speakers)} folds")
    fold_of = {spk: i % folds for i, spk in enumerate(speakers)}
    split_file = exp / "folds.json"
    if split_file.exists() and json.loads(split_file.read_text(encoding="utf-8")) != fold_of:
        raise RecipeError(f"{exp}: already split into other folds ({split_file}); use another --out")
    atomic_write_text(split_file, json.dumps(fold_of, indent=1) + "\n")

    runs = []
    for k in range(folds):
        for seed in seeds:
            run_dir = exp / f"fold{k}_seed{seed}"
            if not (run_dir / "data" / "dev.jsonl").exists():
                write_manifest(run_dir / "data" / "train.jsonl", [u for u in pooled if fold_of[u.speaker] != k])
                write_manifest(run_dir / "data" / "dev.jsonl", [u for u in pooled if fold_of[u.speaker] == k])
            runs.append((k, seed, run_dir))

    # Each fold trains in a process of its own: torch's random generator and thread settings are
    # the process's, so folds trained side by side must not share one.
    pool = ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1)
    try:
        futures = []
        for k, seed, run_dir in runs:
            _log(f"fold {k} seed {seed}: training on {len(speakers) - sum(v == k for v in fold_of.values())} speakers (log: {run_dir / 'log.txt'})")
            sets = [*overrides, "recipe.train_on_dev=false", f"train.seed={seed}"]
            futures.append((k, seed, run_dir, pool.submit(_train_fold, str(recipe.path), run_dir, sets)))
        for k, seed, run_dir, future in futures:
            try:
                future.result()
            except Exception as e:  # noqa: BLE001 - any failure of a fold is reported with its log
                raise RecipeError(f"fold {k} seed {seed}: training failed ({type(e).__name__}: {e}); see {run_dir / 'log.txt'}") from None
    finally:
        pool.shutdown(cancel_futures=True)  # after a failure, start no more folds

    weights = lm_weights or [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    scores = word_scores or [-1.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    refs: dict[str, str] = {}
    greedy: dict[str, str] = {}
    hyps: dict[tuple[float, float], dict[str, str]] = {}
    for k, seed, run_dir in runs:
        lm_dir = exp / f"fold{k}" / "lm"
        lm, lexicon = lm_dir / f"{recipe.lm_order}gram.arpa", lm_dir / "lexicon.txt"
        model = load_model(run_dir / "model.pt")
        if not (lm.exists() and lexicon.exists()):
            _write_lm(run_dir / "data" / "train.jsonl", recipe.lm_order, model.tokenizer.tokens, lm, lexicon)
        speeds = model.cfg.decode.speeds
        fold_refs, emissions = manifest_emissions(model, run_dir / "data" / "dev.jsonl", speeds)
        refs |= {f"{seed}/{uid}": text for uid, text in fold_refs.items()}
        search, plain = GreedySearch(model.tokenizer), speeds.index(1.0)
        greedy |= {f"{seed}/{uid}": search(v[plain][None], torch.tensor([len(v[plain])]))[0][0].text for uid, v in emissions.items()}
        for point, texts in grid_hypotheses(model, emissions, lexicon, lm, weights, scores, speeds).items():
            hyps.setdefault(point, {}).update({f"{seed}/{uid}": t for uid, t in texts.items()})
        _log(f"fold {k} seed {seed}: {len(emissions)} held-out utterances searched over {len(weights) * len(scores)} grid points")
    grid = [(w, ws, score(refs, h).wer) for (w, ws), h in hyps.items()]
    w, ws, wer = best_grid_point(grid)
    greedy_score = score(refs, greedy)
    result = FoldTuning({"lm_weight": w, "word_score": ws}, wer, grid, greedy_wer=greedy_score.wer, words=greedy_score.ref_words)
    atomic_write_text(exp / "grid.tsv", "lm_weight\tword_score\twer\n" + "".join(f"{a}\t{b}\t{c:.2f}\n" for a, b, c in grid))
    header = f"# asr recipe tune-weights {recipe.name}: {folds} speaker folds x seeds {seeds}, out-of-fold WER {wer:.2f}% (greedy {result.greedy_wer:.2f}%)\n"
    atomic_write_text(exp / "decode.toml", header + to_toml({"decode": {"lm_weight": w, "word_score": ws}}))
    return result


def cross_validation_table(recipe: Recipe, results: dict[str, dict[str, dict]]) -> str:
    """Markdown: per held-out speaker, utterance accuracy and WER, greedy and with the LM; then the mean."""
    test = recipe.test_sets[0]
    tags = [(test, "greedy"), *([(f"{test} (LM)", "LM")] if recipe.lm_order else [])]
    header = " | ".join(f"{label} utt. acc. % | {label} WER %" for _, label in tags)
    lines = [
        f"# Leave-one-speaker-out: {recipe.name}",
        "",
        "Each row: trained on every other speaker, tested on this one (all of its utterances).",
        "",
        f"| held-out speaker | utterances | {header} |",
        "|---|---|" + "---|---|" * len(tags),
    ]
    for speaker, res in results.items():
        cells = " | ".join(f"{100 - res[key]['ser']:.2f} | {res[key]['wer']:.2f}" for key, _ in tags)
        lines.append(f"| {speaker} | {res[test]['utterances']} | {cells} |")
    means = " | ".join(
        f"{sum(100 - r[key]['ser'] for r in results.values()) / len(results):.2f} | {sum(r[key]['wer'] for r in results.values()) / len(results):.2f}"
        for key, _ in tags
    )
    lines.append(f"| mean over {len(results)} speakers | {sum(r[test]['utterances'] for r in results.values())} | {means} |")
    return "\n".join(lines) + "\n"


def _train_distributed(cfg: Config, train_dir: Path, nproc: int) -> None:
    """Train on the recipe's resolved configuration (written to train.toml beside `train_dir`) in
    `nproc` processes: torchrun, DDP (`asr.distributed.launch_training`)."""
    from asr.config import to_toml
    from asr.distributed import launch_training

    config = train_dir.parent / "train.toml"
    atomic_write_text(config, to_toml(cfg.to_dict()))
    if launch_training(config, train_dir, nproc, device=cfg.train.device) != 0:
        raise RecipeError(f"distributed training into {train_dir} failed (see above); run the recipe again to resume")


def _train_fold(recipe: str, run_dir: Path, overrides: list[str]) -> None:
    """Stage 2 of `recipe` into `run_dir` (a fold of `tune_weights_by_folds`), in a process of its
    own whose output goes to run_dir/log.txt."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(run_dir / "log.txt", "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            run_recipe(recipe, run_dir, stage=2, stop_stage=2, overrides=overrides)
        except Exception as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise


def _hyp_paths(recipe: Recipe, exp: Path, test_set: str) -> dict[str, Path]:
    paths = {"greedy": exp / "decode" / test_set / "hyp.jsonl"}
    if recipe.lm_order > 0:
        paths["lm"] = exp / "decode_lm" / test_set / "hyp.jsonl"
    return paths


def _build_lm(recipe: Recipe, data_dir: Path, model_path: Path, files: dict[str, Path]) -> None:
    """The n-gram LM and lexicon from the training transcripts; LM weight and word score tuned on dev when the recipe holds dev out."""
    from asr.decode import load_model, tune_decoder

    model = load_model(model_path)
    _log("stage 3 (lm): " + _write_lm(data_dir / recipe.training_manifest, recipe.lm_order, model.tokenizer.tokens, files["lm"], files["lexicon"]))
    if recipe.tunes_on_dev:
        tuned = tune_decoder(model, data_dir / f"{recipe.dev_set}.jsonl", files["lexicon"], files["lm"], out=files["decode"])
        _log(f"stage 3 (lm): tuned on {recipe.dev_set}: lm_weight {tuned.best['lm_weight']}, word_score {tuned.best['word_score']} (dev WER {tuned.best_wer:.2f}%)")


def _write_lm(manifest: Path, order: int, tokens: Sequence[str], lm: Path, lexicon: Path) -> str:
    """The word n-gram LM and the lexicon from a manifest's transcripts; returns what was built, in words."""
    from asr.lm import build_arpa, lexicon_words, read_lm_texts, write_lexicon

    sentences = read_lm_texts(manifest)
    stats = build_arpa(sentences, order, lm)
    written, skipped = write_lexicon(lexicon_words(sentences), tokens, lexicon)
    return f"{stats.order}-gram from {len(sentences)} sentences -> {lm}; lexicon {written} words ({len(skipped)} unspellable)"


def results_table(recipe: Recipe, exp: Path, results: dict[str, dict]) -> str:
    """Markdown table of the scores, with the training time from metrics.csv."""
    last = last_metrics(exp / "train")
    train_seconds = last["elapsed_seconds"] if last else ""
    if recipe.tunes_on_dev:
        tuning = f"weights tuned on {recipe.dev_set}"
    elif recipe.train_on_dev:
        tuning = f"the recipe's [decode] weights (lm_weight {recipe.config.decode.lm_weight}, word_score {recipe.config.decode.word_score}; {recipe.dev_set} was trained on)"
    else:
        tuning = "default weights (no dev set to tune on)"
    speeds = recipe.config.decode.speeds
    views = f", speed views {'/'.join(f'{x:g}' for x in speeds)}" if len(speeds) > 1 else ""
    lm = f"; (LM): beam search with the lexicon and {recipe.lm_order}-gram LM built from the training transcripts, {tuning}{views}" if recipe.lm_order else ""
    lines = [
        f"# Results: {recipe.name}",
        "",
        f"Model: {exp / 'model.pt'}, trained on {' + '.join(recipe.training_sets)}. Greedy CTC decoding{lm}. Training time: {train_seconds} s.",
        "",
        "| set | utterances | words | WER % | CER % | sub | del | ins |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['utterances']} | {r['ref_words']} | {r['wer']:.2f} | {r['cer']:.2f} | "
            f"{r['substitutions']} | {r['deletions']} | {r['insertions']} |"
        )
    return "\n".join(lines) + "\n"


def apply_overrides(recipe: Recipe, overrides: list[str]) -> None:
    """`--set section.key=value` on the recipe's config, and `--set recipe.key=value` on the recipe."""
    from asr.config import parse_override

    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("recipe."):
            set_recipe_value(recipe, key, value)
        else:
            set_value(recipe.config, key, value, where="--set")


def set_recipe_value(recipe: Recipe, dotted: str, value: object) -> None:
    """`--set recipe.train_on_dev=false` and `recipe.lm_order=N`: the [recipe] keys that change a run."""
    key = dotted.removeprefix("recipe.")
    settable = {"train_on_dev": bool, "lm_order": int}
    if key not in settable:
        raise ConfigError(f"--set: [recipe] key '{key}' cannot be overridden (only {', '.join(settable)})")
    kind = settable[key]
    if type(value) is not kind:
        raise ConfigError(f"--set: {dotted} must be {kind.__name__}, got {value!r}")
    setattr(recipe, key, value)


def download_corpus(recipe: Recipe, cache_dir: str | Path | None = None) -> Path:
    """Download and extract the recipe's corpus into the cache (once); returns the corpus folder."""
    if not recipe.url:
        raise RecipeError(f"recipe {recipe.name} has no download address: pass a local copy with --data PATH")
    cache = Path(cache_dir or os.environ.get("ASR_CACHE", Path.home() / ".cache" / "asr")) / recipe.corpus
    target = cache / recipe.archive_dir if recipe.archive_dir else cache
    done = cache / ".extracted"
    if done.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / Path(recipe.url).name
    try:
        _download(recipe.url, archive)
    except (urllib.error.URLError, OSError) as e:
        raise RecipeError(
            f"could not download {recipe.corpus} from {recipe.url} ({getattr(e, 'reason', e)}); "
            f"without a network, pass a local copy: asr recipe run {recipe.name} --data PATH --out EXP"
        ) from None
    if recipe.sha256:
        digest = _sha256(archive)
        if digest != recipe.sha256:
            archive.unlink()
            raise RecipeError(f"{archive}: checksum mismatch (got {digest}, expected {recipe.sha256}); deleted, run again")
    else:
        _log(f"warning: recipe {recipe.name} lists no checksum; {archive.name} is not verified")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(cache, filter="data")  # no absolute paths, no links out of the cache
    except tarfile.TarError as e:
        raise RecipeError(f"{archive}: refused to extract ({e})") from None
    done.touch()
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path) -> None:
    """Download with a progress bar, resuming a partial `.part` file."""
    if dest.exists():
        return
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        if have and response.status != 206:  # server ignored the range: start over
            have = 0
        total = int(response.headers.get("Content-Length", 0)) + have
        with open(part, "ab" if have else "wb") as f, tqdm(total=total or None, initial=have, unit="B", unit_scale=True, desc=dest.name) as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    os.replace(part, dest)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
