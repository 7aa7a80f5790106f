from pathlib import Path

import pytest

from asr.config import Config, ConfigError, load_config, parse_override, to_toml


def test_defaults_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[model]\nhidden = 128\n[train]\nlr = 1e-3\n")
    cfg = load_config(path, ["model.layers=2", "train.lr=0.01", "data.train=x.jsonl", "model.bidirectional=false"])
    assert cfg.model.hidden == 128
    assert cfg.model.layers == 2
    assert cfg.train.lr == 0.01
    assert cfg.data.train == "x.jsonl"
    assert cfg.model.bidirectional is False
    assert cfg.train.epochs == Config().train.epochs


def test_toml_round_trip() -> None:
    cfg = load_config(None, ["model.hidden=77", "features.kind=mfcc"])
    import tomllib

    assert Config.from_dict(tomllib.loads(to_toml(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model]\nhiden = 3\n", "model.hiden"),
        ("[modle]\nhidden = 3\n", "modle"),
        ("[model]\nhidden = 'big'\n", "model.hidden must be int"),
        ("[train]\nlr = true\n", "train.lr must be float"),
        ("[model\n", "not valid TOML"),
        ("[features]\ncmvn = 'speaker'\n", "features.cmvn must be one of global, utterance"),
        ("[decode]\nspeeds = [0.9, 1.1]\n", "decode.speeds must be distinct factors between 0.5 and 2.0, 1.0 among them"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_override_syntax() -> None:
    assert parse_override("train.lr=3e-4") == ("train.lr", 3e-4)
    assert parse_override("data.train=some/path.jsonl") == ("data.train", "some/path.jsonl")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="unknown key 'train.rate'"):
        load_config(None, ["train.rate=1"])


def test_a_recipe_config_is_a_training_config(tmp_path: Path) -> None:
    """`asr train recipes/NAME/config.toml`: the [recipe] table (read by `asr recipe` only) is
    skipped; everything else of the file applies, and a bad key elsewhere is still an error."""
    root = Path(__file__).resolve().parents[1] / "recipes"
    for config in sorted(root.glob("*/config.toml")):
        cfg = load_config(config, ["data.train=t.jsonl"])
        assert cfg.data.train == "t.jsonl"
    an4 = load_config(root / "an4" / "config.toml")
    assert an4.model.hidden == 256 and an4.train.epochs == 80 and an4.decode.speeds == [0.9, 1.0, 1.1]
    path = tmp_path / "r.toml"
    path.write_text('[recipe]\ncorpus = "yesno"\nanything = 1\n[model]\nhidden = 48\n')
    assert load_config(path).model.hidden == 48
    path.write_text('[recipe]\ncorpus = "yesno"\n[model]\nhiden = 48\n')
    with pytest.raises(ConfigError, match="hiden"):
        load_config(path)
    with pytest.raises(ConfigError, match="recipe"):
        load_config(None, ["recipe.corpus=an4"])  # not a training setting
