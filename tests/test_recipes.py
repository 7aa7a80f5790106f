"""Recipes: the yesno recipe end to end on the real corpus (skipped without it), and the
download stage's message when there is no network."""

import json
from pathlib import Path

import numpy as np
import pytest

from asr.recipe import RecipeError, download_corpus, load_recipe, run_recipe
from tests.conftest import SHARED_DATA


def test_shipped_recipes_load() -> None:
    for name in ["yesno", "an4", "fsdd"]:
        recipe = load_recipe(name)
        assert recipe.corpus == name and recipe.test_sets


def test_unknown_recipe_lists_known_ones() -> None:
    with pytest.raises(RecipeError, match="known: an4, an4_streaming, fsdd, yesno"):
        load_recipe("nope")


def test_download_failure_says_how_to_use_a_local_copy(tmp_path: Path) -> None:
    recipe = load_recipe("yesno")
    recipe.url = (tmp_path / "missing.tar.gz").as_uri()
    with pytest.raises(RecipeError, match="--data PATH"):
        download_corpus(recipe, cache_dir=tmp_path / "cache")


def test_download_verifies_and_extracts_safely(tmp_path: Path) -> None:
    import hashlib
    import tarfile

    src = tmp_path / "src" / "waves_yesno"
    src.mkdir(parents=True)
    (src / "0_1.wav").write_bytes(b"x")
    archive = tmp_path / "waves_yesno.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="waves_yesno")
    recipe = load_recipe("yesno")
    recipe.url = archive.as_uri()
    with pytest.raises(RecipeError, match="checksum mismatch"):
        download_corpus(recipe, cache_dir=tmp_path / "cache")
    recipe.sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    target = download_corpus(recipe, cache_dir=tmp_path / "cache")
    assert (target / "0_1.wav").exists()
    assert download_corpus(recipe, cache_dir=tmp_path / "cache") == target  # cached: no second download


def test_archive_with_paths_outside_the_target_is_refused(tmp_path: Path) -> None:
    import io
    import tarfile

    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    recipe = load_recipe("yesno")
    recipe.url, recipe.sha256 = archive.as_uri(), ""
    with pytest.raises(RecipeError, match="refused to extract"):
        download_corpus(recipe, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


@pytest.mark.skipif(not (SHARED_DATA / "yesno").is_dir(), reason="yesno corpus not in ../shared/data")
def test_yesno_recipe_end_to_end(tmp_path: Path) -> None:
    exp = tmp_path / "yesno"
    results = run_recipe("yesno", exp, data=SHARED_DATA / "yesno")
    assert results["test"]["wer"] <= 1.0, results
    assert results["test"]["utterances"] == 30
    for path in ["model.pt", "decode/test/hyp.jsonl", "decode/test/score.json", "RESULTS.md", "data/train.jsonl"]:
        assert (exp / path).exists(), path
    assert json.loads((exp / "decode/test/score.json").read_text()) == results["test"]
    # A second run finds every stage complete and only re-scores.
    assert run_recipe("yesno", exp, data=SHARED_DATA / "yesno") == results


def test_download_resumes_a_partial_file(tmp_path: Path) -> None:
    """A .part file left by an interrupted download is continued with an HTTP Range request."""
    import hashlib
    import http.server
    import tarfile
    import threading

    src = tmp_path / "src" / "waves_yesno"
    src.mkdir(parents=True)
    payload = np.random.default_rng(0).bytes(50_000)  # incompressible: the archive stays large
    (src / "1_0.wav").write_bytes(payload)
    archive = tmp_path / "waves_yesno.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="waves_yesno")
    data = archive.read_bytes()
    ranges = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
            ranges.append(start)
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cache = tmp_path / "cache"
        (cache / "yesno").mkdir(parents=True)
        (cache / "yesno" / "waves_yesno.tar.gz.part").write_bytes(data[:1000])  # an interrupted download
        recipe = load_recipe("yesno")
        recipe.url = f"http://127.0.0.1:{server.server_port}/waves_yesno.tar.gz"
        recipe.sha256 = hashlib.sha256(data).hexdigest()
        target = download_corpus(recipe, cache_dir=cache)
    finally:
        server.shutdown()
    assert ranges == [1000]
    assert (target / "1_0.wav").read_bytes() == payload


def test_leave_one_speaker_out_on_a_generated_fsdd(tmp_path: Path) -> None:
    """`asr recipe loso`: one fold per speaker, each tested on all of that speaker's clips only."""
    import numpy as np
    import soundfile as sf

    from tests.conftest import WORDS, invoke, tone_word

    corpus = tmp_path / "fsdd" / "recordings"
    corpus.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for speaker in ("ann", "bob", "cy"):
        for digit in range(10):
            for index in (0, 7):  # one official test clip, one train clip
                x = np.concatenate([np.zeros(800), tone_word(WORDS[digit % 8], 8000), np.zeros(800)])
                sf.write(corpus / f"{digit}_{speaker}_{index}.wav", (x + 0.01 * rng.standard_normal(len(x))).astype(np.float32), 8000)
    recipe = tmp_path / "tiny"
    recipe.mkdir()
    recipe_text = (Path(__file__).resolve().parents[1] / "recipes" / "fsdd" / "config.toml").read_text()
    (recipe / "config.toml").write_text(recipe_text.replace("epochs = 25", "epochs = 1").replace("hidden = 128", "hidden = 16"))
    out = tmp_path / "loso"
    result = invoke("recipe", "loso", recipe, "--data", tmp_path / "fsdd", "--out", out, "--set", "train.plots=false")
    for speaker in ("ann", "bob", "cy"):
        train = [json.loads(line) for line in (out / speaker / "data" / "train.jsonl").read_text().splitlines()]
        test = [json.loads(line) for line in (out / speaker / "data" / "test.jsonl").read_text().splitlines()]
        assert len(test) == 20 and {r["speaker"] for r in test} == {speaker}
        assert len(train) == 40 and speaker not in {r["speaker"] for r in train}
        assert (out / speaker / "decode" / "test" / "score.json").exists()
    table = (out / "RESULTS.md").read_text()
    assert "| bob | 20 |" in table and "| mean over 3 speakers | 60 |" in table
    assert "mean over 3 speakers" in result.output
    with pytest.raises(RecipeError, match="dev split"):
        from asr.recipe import run_cross_validation

        run_cross_validation("an4", tmp_path / "x")


def tiny_an4_recipe(folder: Path) -> Path:
    """The AN4 recipe's config.toml with a one-epoch, 1 x 8 model: the recipe's logic, seconds to train."""
    folder.mkdir()
    text = (Path(__file__).resolve().parents[1] / "recipes" / "an4" / "config.toml").read_text()
    for old, new in [("epochs = 80", "epochs = 1"), ("hidden = 256", "hidden = 8"), ("layers = 3", "layers = 1"), ("average_last = 10", "average_last = 1")]:
        assert old in text
        text = text.replace(old, new)
    (folder / "config.toml").write_text(text)
    return folder


def test_train_on_dev_trains_on_both_and_keeps_the_recipe_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`train_on_dev = true`: the final model trains on train + dev, dev is no longer scored during
    training nor used to tune the LM weights (they come from [decode]); `--set recipe.train_on_dev=false`
    brings the held-out dev back."""
    from asr.config import ConfigError
    from asr.manifest import read_manifest
    from tests.test_corpora import make_an4

    src = make_an4(tmp_path / "an4")
    recipe = tiny_an4_recipe(tmp_path / "tiny")
    assert load_recipe(str(recipe)).train_on_dev
    fast = ["train.plots=false", "augment.speeds=[1.0]"]

    exp = tmp_path / "final"
    run_recipe(str(recipe), exp, data=src, overrides=fast)
    joined = read_manifest(exp / "data" / "train+dev.jsonl")
    parts = read_manifest(exp / "data" / "train.jsonl") + read_manifest(exp / "data" / "dev.jsonl")
    assert [u.id for u in joined] == [u.id for u in parts] and len(joined) == 9
    trained = (exp / "train" / "config.toml").read_text()
    assert "train+dev.jsonl" in trained and 'dev = ""' in trained
    assert not (exp / "lm" / "decode.toml").exists()  # nothing tuned on dev
    assert "3-gram from 9 sentences" in capsys.readouterr().err  # the LM too: 6 train + 3 dev
    assert "trained on train + dev" in (exp / "RESULTS.md").read_text()
    assert "the recipe's [decode] weights" in (exp / "RESULTS.md").read_text()
    assert "speed views 0.9/1/1.1" in (exp / "RESULTS.md").read_text()  # the recipe's decode.speeds

    held_out = tmp_path / "held_out"
    run_recipe(str(recipe), held_out, data=src, overrides=[*fast, "recipe.train_on_dev=false"])
    assert not (held_out / "data" / "train+dev.jsonl").exists()
    assert "speeds = [0.9, 1.0, 1.1]" in (held_out / "lm" / "decode.toml").read_text()  # tuned with the views
    assert "trained on train." in (held_out / "RESULTS.md").read_text()
    assert "3-gram from 6 sentences" in capsys.readouterr().err

    with pytest.raises(ConfigError, match="only train_on_dev, lm_order"):
        run_recipe(str(recipe), held_out, overrides=["recipe.corpus=x"])
    with pytest.raises(ConfigError, match="must be bool"):
        run_recipe(str(recipe), held_out, overrides=["recipe.train_on_dev=maybe"])
    import subprocess
    import sys

    cli = subprocess.run([sys.executable, "-m", "asr", "recipe", "run", str(recipe), "--out", str(held_out), "--set", "recipe.url=x"], capture_output=True, text=True, timeout=120)
    assert cli.returncode != 0 and "Traceback" not in cli.stderr
    assert cli.stderr.strip() == "error: --set: [recipe] key 'url' cannot be overridden (only train_on_dev, lm_order)"


def test_tune_weights_by_folds_holds_each_speaker_out_once(tmp_path: Path) -> None:
    """`asr recipe tune-weights`: each speaker of train + dev is held out by exactly one fold, whose
    model and LM never saw it; the grid is scored over every held-out utterance, and re-running resumes."""
    import subprocess
    import sys

    from asr.config import Config, load_decode_settings
    from asr.manifest import read_manifest
    from asr.recipe import RecipeError, tune_weights_by_folds
    from tests.test_corpora import make_an4

    src = make_an4(tmp_path / "an4")
    recipe = tiny_an4_recipe(tmp_path / "tiny")
    out = tmp_path / "folds"
    fast = ["train.plots=false", "augment.speeds=[1.0]"]

    result = tune_weights_by_folds(str(recipe), out, data=src, folds=3, seeds=[1], overrides=fast, jobs=2, lm_weights=[0.0, 1.0], word_scores=[0.0, 2.0])
    held = [{u.speaker for u in read_manifest(out / f"fold{k}_seed1" / "data" / "dev.jsonl")} for k in range(3)]
    trained = [{u.speaker for u in read_manifest(out / f"fold{k}_seed1" / "data" / "train.jsonl")} for k in range(3)]
    assert sorted(s for h in held for s in h) == ["fash", "fbbh", "mblb"]  # each speaker held out once
    assert all(not h & t and len(t) == 2 for h, t in zip(held, trained, strict=True))
    for k in range(3):
        arpa = (out / f"fold{k}" / "lm" / "3gram.arpa").read_text()
        assert "ngram 1=" in arpa and (out / f"fold{k}_seed1" / "model.pt").exists()
    assert result.words == 18  # 9 utterances of two words, each scored once
    assert len(result.grid) == 4 and result.best_wer == min(g[2] for g in result.grid)
    assert len((out / "grid.tsv").read_text().splitlines()) == 5
    cfg = Config()
    load_decode_settings(cfg.decode, out / "decode.toml")
    assert (cfg.decode.lm_weight, cfg.decode.word_score) == (result.best["lm_weight"], result.best["word_score"])

    stamp = (out / "fold0_seed1" / "model.pt").stat().st_mtime
    tune_weights_by_folds(str(recipe), out, folds=3, seeds=[1], overrides=fast, lm_weights=[0.0], word_scores=[0.0])
    assert (out / "fold0_seed1" / "model.pt").stat().st_mtime == stamp  # resumed, not retrained

    with pytest.raises(RecipeError, match="2..3 folds"):
        tune_weights_by_folds(str(recipe), out, folds=4)
    with pytest.raises(RecipeError, match="already split into other folds"):
        tune_weights_by_folds(str(recipe), out, folds=2)
    cli = subprocess.run([sys.executable, "-m", "asr", "recipe", "tune-weights", str(recipe), "--out", str(out), "--folds", "4"], capture_output=True, text=True, timeout=120)
    assert cli.returncode != 0 and "Traceback" not in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
