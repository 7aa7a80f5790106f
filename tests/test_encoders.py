"""Model families as plug-ins: the encoder registry, a toy encoder that trains and decodes without
touching any other module, streaming flags and state, checkpoints written before the encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from asr.checkpoint import Recognizer, load_checkpoint, model_payload, save_checkpoint
from asr.config import Config, ConfigError, ModelConfig, load_config
from asr.encoders import (
    ENCODERS,
    Encoder,
    NotStreamingError,
    encoder_class,
    encoder_names,
    kind_with_direction,
    register_encoder,
)
from asr.export import ExportModule
from asr.features import Normalizer
from asr.inspect import greedy_emissions
from asr.model import CTCModel, ctc_loss
from asr.text import Tokenizer

BUILT_IN = ("blstm", "lstm", "bgru", "gru", "brnn", "rnn", "mlp", "lcblstm")
OLD_KINDS = BUILT_IN[:7]  # the kinds of tests/fixtures/old_checkpoints
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "old_checkpoints"
DIM = 10


@pytest.fixture
def registry():
    """Whatever a test registers is gone after it (other modules parametrize over the kinds)."""
    saved = dict(ENCODERS)
    yield ENCODERS
    ENCODERS.clear()
    ENCODERS.update(saved)


class ConvEncoder(Encoder):
    """A toy family: `cfg.layers` 1-D convolutions over 3 stacked frames, tanh."""

    def __init__(self, input_dim: int, cfg: ModelConfig):
        super().__init__(input_dim, cfg)
        sizes = [input_dim] + [cfg.hidden] * (cfg.layers - 1)
        self.convs = nn.ModuleList(nn.Conv1d(n, cfg.hidden, 3, padding=1) for n in sizes)
        self.output_dim = cfg.hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, layer_outputs: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            x = conv(x.transpose(1, 2)).transpose(1, 2).tanh()
            if layer_outputs is not None:
                layer_outputs.append(x)
        return x, lengths


# ------------------------------------------------------------------------------------ registry


def test_the_registry_lists_the_built_in_kinds() -> None:
    assert encoder_names() == BUILT_IN
    import asr.config

    assert asr.config.MODEL_KINDS == BUILT_IN  # the old name, asked of the registry
    assert {k for k in BUILT_IN if encoder_class(k).bidirectional} == {"blstm", "bgru", "brnn", "lcblstm"}


@pytest.mark.parametrize("where", ["config", "model"])
def test_an_unknown_kind_is_a_one_line_error_naming_the_known_ones(where: str) -> None:
    with pytest.raises(ConfigError) as e:
        if where == "config":
            load_config(None, ["model.kind=transformer"])
        else:
            CTCModel(DIM, 5, ModelConfig(kind="transformer"))
    message = str(e.value)
    assert "\n" not in message and "'transformer'" in message
    assert all(k in message for k in BUILT_IN), message


def test_register_refuses_clashes_and_non_encoders(registry) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("lstm")(ConvEncoder)
    with pytest.raises(ValueError, match="Encoder subclass"):
        register_encoder("thing")(nn.Linear)
    with pytest.raises(ValueError, match="lowercase identifier"):
        register_encoder("Conv Net")
    assert encoder_names() == BUILT_IN
    assert register_encoder("lstm", ConvEncoder, replace=True) is ConvEncoder
    assert encoder_class("lstm") is ConvEncoder


def test_lab_compares_one_kind_of_each_family_and_the_reference(registry) -> None:
    from asr.lab import compare_kinds

    assert compare_kinds() == ("mlp", "rnn", "gru", "lstm", "blstm")
    register_encoder("conv", ConvEncoder)
    assert compare_kinds() == ("conv", "mlp", "rnn", "gru", "lstm", "blstm")


def test_the_legacy_bidirectional_key_asks_the_families() -> None:
    assert kind_with_direction("gru", True) == "bgru" and kind_with_direction("blstm", False) == "lstm"
    assert kind_with_direction("mlp", False) == "mlp"
    with pytest.raises(ConfigError, match="does not apply to model.kind = 'mlp'"):
        kind_with_direction("mlp", True)


# ------------------------------------------------------------------------------- a toy family


def test_a_registered_toy_encoder_trains_without_touching_other_modules(registry) -> None:
    register_encoder("conv")(ConvEncoder)
    cfg = load_config(None, ["model.kind=conv", "model.stack=2", "model.hidden=16", "model.layers=2", "model.dropout=0.0"])
    assert cfg.model.kind == "conv" and not cfg.model.bidirectional
    with pytest.raises(ConfigError, match="does not apply"):
        load_config(None, ["model.kind=conv", "model.bidirectional=true"])
    torch.manual_seed(0)
    model = CTCModel(DIM, 4, cfg.model)
    assert isinstance(model.encoder, ConvEncoder) and model.layer_names() == ["layer 1 (conv, 16 units)", "layer 2 (conv, 16 units)"]
    # Frames of class 1, 2, 3 in turn, each a different direction in feature space.
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(4, DIM, generator=g) * 2
    labels = torch.tensor([1, 2, 3, 1, 3, 2]).repeat_interleave(6)
    x = (centres[labels] + 0.3 * torch.randn(4, len(labels), DIM, generator=g))
    lengths = torch.full((4,), len(labels))
    targets, target_lengths = torch.tensor([[1, 2, 3, 1, 3, 2]] * 4), torch.full((4,), 6)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(60):
        hidden: list[torch.Tensor] = []
        log_probs, out_lengths = model(x, lengths, hidden)
        loss = ctc_loss(log_probs, out_lengths, targets, target_lengths) + 0.3 * ctc_loss(model.layer_log_probs(hidden[0]), out_lengths, targets, target_lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5
    model.eval()
    with torch.no_grad():
        best = model(x[:1], lengths[:1])[0][0].numpy()
    assert [k for _, k in greedy_emissions(best)] == [1, 2, 3, 1, 3, 2]

    from asr.inspect import gradient_norms_through_time

    norms = gradient_norms_through_time(model, x, lengths, lambda lp, n: -lp[:, -1, 2].sum())
    assert norms.shape == (2, 18) and norms[1, -1] > 0 and norms[1, 0] == 0  # kernel 3: the last layer sees one frame each side
    with pytest.raises(NotStreamingError, match="'conv' cannot stream"):
        model.encoder.init_state(1)


def test_a_toy_kind_goes_through_a_checkpoint_and_an_export(registry, tmp_path: Path) -> None:
    from asr.export import ExportedModel, export

    register_encoder("conv")(ConvEncoder)
    cfg = Config()
    cfg.features.n_mels = DIM
    cfg.model = ModelConfig(kind="conv", stack=2, hidden=8, layers=1, dropout=0.0)
    tokenizer = Tokenizer.from_texts(["AB BA"])
    model = CTCModel(DIM, len(tokenizer), cfg.model).eval()
    save_checkpoint(tmp_path / "m.pt", model_payload(cfg, tokenizer, Normalizer(torch.zeros(DIM), torch.ones(DIM)), model))
    assert set(load_checkpoint(tmp_path / "m.pt")["model"]) == {"convs.0.weight", "convs.0.bias", "output.weight", "output.bias"}
    rec = Recognizer.from_checkpoint(tmp_path / "m.pt")
    x, lengths = torch.randn(2, 15, DIM), torch.tensor([15, 8])
    want = rec.log_probs(x, lengths)[0]
    assert torch.equal(want, model(x, lengths)[0])
    got = ExportedModel.load(export(rec, tmp_path / "m.ts")).log_probs(x, lengths)[0]
    assert (got[0] - want[0]).abs().max() < 1e-5


def test_an_encoder_entry_named_output_is_refused(registry) -> None:
    class Clash(ConvEncoder):
        def __init__(self, input_dim: int, cfg: ModelConfig):
            super().__init__(input_dim, cfg)
            self.output = nn.Linear(2, 2)

    register_encoder("clash")(Clash)
    with pytest.raises(ValueError, match="clash with the model's own"):
        CTCModel(DIM, 4, ModelConfig(kind="clash"))


# ----------------------------------------------------------------------------------- streaming


def test_streaming_flags() -> None:
    assert {k for k in encoder_names() if encoder_class(k).streaming} == {"lstm", "gru", "rnn", "lcblstm"}


@pytest.mark.parametrize("kind", BUILT_IN)
def test_streaming_kinds_carry_their_state_and_the_others_refuse(kind: str) -> None:
    torch.manual_seed(0)
    model = CTCModel(DIM, 5, ModelConfig(kind=kind, stack=2, hidden=6, layers=2, dropout=0.3)).eval()
    x, lengths = torch.randn(2, 20, DIM), torch.tensor([20, 20])
    stacked, out_lengths = model.encoder_input(x, lengths)
    if not model.encoder.streaming:
        with pytest.raises(NotStreamingError, match=f"model.kind '{kind}' cannot stream.*lstm, gru, rnn"):
            model.encoder.init_state(2)
        with pytest.raises(NotStreamingError):
            model.encoder.step(stacked, None)
        return
    with torch.no_grad():
        whole, _ = model.encoder(stacked, out_lengths)
        state = model.encoder.init_state(2)
        chunks = []
        for start in range(0, stacked.shape[1], 3):
            y, state = model.encoder.step(stacked[:, start : start + 3], state)
            chunks.append(y)
        chunks.append(model.encoder.finish(state))  # what a look-ahead held back (lcblstm)
    assert torch.allclose(torch.cat(chunks, dim=1), whole, atol=1e-6)


# ------------------------------------------------------------------------- old checkpoints


@pytest.mark.parametrize("kind", OLD_KINDS)
def test_checkpoints_written_before_the_encoders_load_and_decode_the_same(kind: str, tmp_path: Path) -> None:
    """tests/fixtures/old_checkpoints: written by the code before asr/encoders.py (see
    make_old_checkpoints.py there), with the log-probabilities it computed."""
    expected = torch.load(FIXTURES / "expected.pt", weights_only=True)
    rec = Recognizer.from_checkpoint(FIXTURES / f"{kind}.pt")
    assert rec.cfg.model.kind == kind
    assert torch.equal(rec.log_probs(expected["features"], expected["lengths"])[0], expected[kind])
    # ... and they are saved again in the same layout.
    old = load_checkpoint(FIXTURES / f"{kind}.pt")["model"]
    again = model_payload(rec.cfg, rec.tokenizer, rec.normalizer, rec.model)["model"]
    assert list(again) == list(old) and all(torch.equal(again[k], old[k]) for k in old)


def test_the_top_level_layout_holds_inside_other_modules() -> None:
    """The key mapping works with a prefix: the export module holds the model as `model`."""
    torch.manual_seed(0)
    cfg = ModelConfig(kind="bgru", stack=1, hidden=4, layers=1)
    module = ExportModule(Normalizer(torch.zeros(DIM), torch.ones(DIM)), CTCModel(DIM, 3, cfg))
    state = module.state_dict()
    assert [k for k in state if k.startswith("model.")][:2] == ["model.forward_layers.0.weight_ih_l0", "model.forward_layers.0.weight_hh_l0"]
    torch.manual_seed(1)
    other = ExportModule(Normalizer(torch.zeros(DIM), torch.ones(DIM)), CTCModel(DIM, 3, cfg))
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(module.parameters(), other.parameters(), strict=True))
    assert other.model.forward_layers is other.model.encoder.forward_layers
    with pytest.raises(AttributeError):
        _ = other.model.no_such_thing
