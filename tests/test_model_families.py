"""Every model.kind: shapes, batched = alone, checkpoints, exports; the legacy `bidirectional` key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asr.checkpoint import Recognizer, model_payload, save_checkpoint
from asr.config import MODEL_KINDS, Config, ConfigError, ModelConfig, load_config, to_toml
from asr.features import Normalizer
from asr.inspect import gradient_norms_through_time, lstm_gates, unroll
from asr.model import CTCModel, context_window
from asr.text import Tokenizer

DIM, VOCAB = 10, 7
AN4_MODEL = Path(__file__).resolve().parents[1] / "exp" / "an4" / "model.pt"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(kind: str, **kw) -> CTCModel:
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, stack=3, hidden=12, layers=2, dropout=0.0, context=2)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return CTCModel(DIM, VOCAB, cfg).eval()


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_kind_shapes_and_batch_equals_alone(kind: str) -> None:
    model = _model(kind)
    a, b = torch.randn(31, DIM), torch.randn(17, DIM)
    x = torch.nn.utils.rnn.pad_sequence([a, b], batch_first=True)
    out, lengths = model(x, torch.tensor([31, 17]))
    assert out.shape == (2, 11, VOCAB) and lengths.tolist() == [11, 6]
    assert torch.allclose(out.exp().sum(-1), torch.ones(2, 11), atol=1e-5)
    alone, _ = model(b[None], torch.tensor([17]))
    assert torch.allclose(out[1, :6], alone[0], atol=1e-5)
    first, _ = model(a[None], torch.tensor([31]))
    assert torch.allclose(out[0], first[0], atol=1e-5)


def test_mlp_window_ignores_what_lies_in_the_padding() -> None:
    """The MLP masks frames past each length itself, so garbage there changes nothing."""
    model = _model("mlp")
    x = torch.randn(2, 30, DIM)
    lengths = torch.tensor([30, 13])
    clean = x.clone()
    clean[1, 13:] = 0
    assert torch.equal(model(x, lengths)[0], model(clean, lengths)[0])


def test_context_window_order_and_edges() -> None:
    x = torch.arange(1.0, 5.0).reshape(1, 4, 1)
    w = context_window(x, 1)
    assert w[0].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 0]]


def test_parameter_names_of_lstm_kinds_are_the_old_ones() -> None:
    names = set(_model("blstm").state_dict())
    assert {"forward_layers.0.weight_ih_l0", "forward_layers.1.bias_hh_l0", "backward_layers.0.weight_hh_l0", "output.weight"} <= names
    assert not any(n.startswith("backward_layers") for n in _model("lstm").state_dict())
    assert {n.split(".")[0] for n in _model("mlp").state_dict()} == {"hidden_layers", "output"}


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_kind_round_trips_through_a_checkpoint(kind: str, tmp_path: Path) -> None:
    cfg = Config()
    cfg.features.n_mels = DIM
    cfg.model = _model(kind).cfg
    tokenizer = Tokenizer.from_texts(["AB BA"])
    model = CTCModel(DIM, len(tokenizer), cfg.model).eval()
    save_checkpoint(tmp_path / "m.pt", model_payload(cfg, tokenizer, Normalizer(torch.zeros(DIM), torch.ones(DIM)), model))
    rec = Recognizer.from_checkpoint(tmp_path / "m.pt")
    assert rec.cfg.model.kind == kind
    x, lengths = torch.randn(2, 20, DIM), torch.tensor([20, 9])
    assert torch.equal(rec.model(x, lengths)[0], model(x, lengths)[0])


def test_legacy_bidirectional_key() -> None:
    old = {"model": {"stack": 3, "hidden": 256, "layers": 3, "dropout": 0.2, "bidirectional": True}}
    assert Config.from_dict(old).model.kind == "blstm"
    old["model"]["bidirectional"] = False
    cfg = Config.from_dict(old)
    assert cfg.model.kind == "lstm" and cfg.model.bidirectional is False
    assert load_config(None, ["model.kind=gru", "model.bidirectional=true"]).model.kind == "bgru"
    assert "bidirectional" not in to_toml(cfg.to_dict())
    with pytest.raises(ConfigError, match="model.kind must be one of"):
        load_config(None, ["model.kind=transformer"])
    with pytest.raises(ConfigError, match="mlp"):
        load_config(None, ["model.kind=mlp", "model.bidirectional=true"])


def test_old_checkpoint_without_kind_loads(tmp_path: Path) -> None:
    """A checkpoint written before model.kind existed: `bidirectional` in its config."""
    cfg = Config()
    cfg.features.n_mels = DIM
    cfg.model = ModelConfig(stack=2, hidden=8, layers=2, dropout=0.0)
    tokenizer = Tokenizer.from_texts(["AB"])
    model = CTCModel(DIM, len(tokenizer), cfg.model).eval()
    payload = model_payload(cfg, tokenizer, Normalizer(torch.zeros(DIM), torch.ones(DIM)), model)
    payload["config"]["model"] = {"stack": 2, "hidden": 8, "layers": 2, "dropout": 0.0, "bidirectional": True}
    save_checkpoint(tmp_path / "old.pt", payload)
    rec = Recognizer.from_checkpoint(tmp_path / "old.pt")
    x, lengths = torch.randn(1, 12, DIM), torch.tensor([12])
    assert rec.cfg.model.kind == "blstm" and torch.equal(rec.model(x, lengths)[0], model(x, lengths)[0])


@pytest.mark.skipif(not AN4_MODEL.exists(), reason="no exp/an4/model.pt")
def test_the_an4_checkpoint_still_loads() -> None:
    rec = Recognizer.from_checkpoint(AN4_MODEL)
    assert rec.cfg.model.kind == "blstm" and rec.cfg.model.bidirectional


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_unrolled_layer_equals_the_fused_one(kind: str) -> None:
    model = _model(kind)
    layer = model.forward_layers[0]
    x = torch.randn(3, 9, layer.input_size)
    with torch.no_grad():
        assert torch.allclose(unroll(layer, x).output, layer(x)[0], atol=1e-5)


def test_lstm_gates_reproduce_the_lstm() -> None:
    lstm = _model("lstm").forward_layers[0]
    x = torch.randn(15, lstm.input_size)
    g = lstm_gates(lstm, x)
    with torch.no_grad():
        want = lstm(x[None])[0][0].numpy()
    assert abs(g.hidden - want).max() < 1e-5
    assert g.input_gate.shape == g.forget_gate.shape == g.output_gate.shape == g.cell.shape == (15, 12)
    assert 0 <= g.forget_gate.min() and g.forget_gate.max() <= 1


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_gradient_norms_through_time(kind: str) -> None:
    """Shape (layers, T'), nothing touched; where no later step exists (the MLP everywhere, a
    forward-only layer at the last frame) d loss / d h_t is the fused model's output gradient."""
    model = _model(kind).train()
    x, lengths = torch.randn(2, 24, DIM), torch.tensor([24, 15])
    y = torch.randint(1, VOCAB, (2,))

    def loss_fn(log_probs: torch.Tensor, out_lengths: torch.Tensor) -> torch.Tensor:
        return -log_probs[0, :, y[0]].sum() - log_probs[1, : int(out_lengths[1]), y[1]].sum()

    norms = gradient_norms_through_time(model, x, lengths, loss_fn)
    assert norms.shape == (2, 8) and (norms[:, :5] > 0).all()
    assert model.training and all(p.grad is None for p in model.parameters())
    outputs: list[torch.Tensor] = []
    model.eval()
    log_probs, out_lengths = model(x, lengths, layer_outputs=outputs)
    (g,) = torch.autograd.grad(loss_fn(log_probs, out_lengths), outputs[-1:])
    direct = g.pow(2).sum(dim=(0, 2)).sqrt().numpy()
    same = slice(None) if kind == "mlp" else slice(-1, None) if not model.cfg.bidirectional else slice(0)
    assert abs(direct[same] - norms[-1][same]).max(initial=0) < 1e-4 * max(1.0, float(norms[-1].max()))


def test_recurrence_carries_gradient_back_in_time() -> None:
    """A loss on the last frame reaches earlier steps through the recurrence; an MLP layer's output
    at t feeds only the output at t (its window looks at the input, not back at itself)."""
    x, lengths = torch.randn(1, 30, DIM), torch.tensor([30])

    def last_frame(log_probs: torch.Tensor, out_lengths: torch.Tensor) -> torch.Tensor:
        return -log_probs[0, -1, 1]

    for kind in ("lstm", "gru", "rnn"):
        assert (gradient_norms_through_time(_model(kind), x, lengths, last_frame)[0] > 0).all()
    mlp = gradient_norms_through_time(_model("mlp", layers=1), x, lengths, last_frame)[0]
    assert mlp[-1] > 0 and (mlp[:-1] == 0).all()


@pytest.mark.parametrize("kind", ["bgru", "rnn", "mlp"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_other_kinds_export(kind: str, fmt: str, tmp_path: Path) -> None:
    """blstm/lstm exports are tested in test_export.py; the other families export the same way."""
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    from asr.export import ExportedModel, export

    cfg = Config()
    cfg.features.n_mels = DIM
    cfg.model = _model(kind).cfg
    tokenizer = Tokenizer.from_texts(["AB BA"])
    model = CTCModel(DIM, len(tokenizer), cfg.model).eval()
    save_checkpoint(tmp_path / "m.pt", model_payload(cfg, tokenizer, Normalizer(torch.zeros(DIM), torch.ones(DIM)), model))
    rec = Recognizer.from_checkpoint(tmp_path / "m.pt")
    exported = ExportedModel.load(export(rec, tmp_path / "m.out", fmt), threads=1)
    x, lengths = torch.randn(3, 20, DIM), torch.tensor([20, 13, 4])
    got, got_lengths = exported.log_probs(x, lengths)
    want, want_lengths = rec.log_probs(x, lengths)
    assert torch.equal(got_lengths, want_lengths)
    for b, n in enumerate(want_lengths.tolist()):
        assert (got[b, :n] - want[b, :n]).abs().max() < 1e-4
