"""Live recognition, the model side: online features equal the offline ones; the look-ahead lstm
and the latency-controlled BLSTM (lcblstm) stream, chunk by chunk, the log-probabilities the
model gives offline on the whole file; what cannot stream says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from asr.checkpoint import Recognizer, model_payload, save_checkpoint
from asr.config import Config, FeatureConfig, ModelConfig, load_config
from asr.encoders import NotStreamingError, streaming_names
from asr.features import FeatureExtractor, Normalizer, OnlineFeatures
from asr.model import CTCModel
from asr.streaming import OnlineEmissions, stream_log_probs
from asr.text import Tokenizer
from tests.conftest import make_tone_corpus

SR = 16000
N_MELS = 24


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def signal(seconds: float = 2.345, seed: int = 0) -> np.ndarray:
    """Two sines that come and go, a DC offset and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 1.3 * t) > 0) + 0.2 * np.sin(2 * np.pi * 1900 * t + 1.0) * (t > 0.8)
    return (x + 0.02 * rng.standard_normal(len(t)) + 0.05).astype(np.float32)


def recognizer(tmp_path: Path, cmvn: str = "global", **model: object) -> Recognizer:
    """A tiny random model saved as a checkpoint and loaded as `asr.load_model` loads it, with
    normalisation statistics fitted on the test signal."""
    cfg = Config()
    cfg.features = FeatureConfig(n_mels=N_MELS, cmvn=cmvn)
    cfg.model = ModelConfig(**{"kind": "lstm", "stack": 3, "hidden": 16, "layers": 2, "dropout": 0.1, **model})
    tokenizer = Tokenizer.from_texts(["AB CD"])
    extractor = FeatureExtractor(cfg.features)
    normalizer = Normalizer.fit([extractor(torch.from_numpy(signal()))], per_utterance=cmvn == "utterance")
    torch.manual_seed(0)
    net = CTCModel(extractor.dim, len(tokenizer), cfg.model)
    path = tmp_path / f"model-{len(list(tmp_path.glob('*.pt')))}.pt"
    save_checkpoint(path, model_payload(cfg, tokenizer, normalizer, net))
    return Recognizer.from_checkpoint(path)


def offline(rec: Recognizer, samples: np.ndarray) -> torch.Tensor:
    feats = rec.extractor(torch.from_numpy(samples))
    return rec.log_probs(feats[None], torch.tensor([feats.shape[0]]))[0][0]


KINDS = {
    "lstm": {"kind": "lstm"},
    "lstm-lookahead-3": {"kind": "lstm", "lookahead": 3},
    "lcblstm": {"kind": "lcblstm", "chunk": 4, "right_context": 3},
    "lcblstm-no-right": {"kind": "lcblstm", "chunk": 5, "right_context": 0},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Recognizer]:
    root = tmp_path_factory.mktemp("models")
    return {name: recognizer(root, **kw) for name, kw in KINDS.items()}


# -------------------------------------------------------------------------- online features


@pytest.mark.parametrize("kind", ["fbank", "mfcc"])
@pytest.mark.parametrize("dc", [True, False])
def test_online_features_are_the_offline_ones(kind: str, dc: bool) -> None:
    ex = FeatureExtractor(FeatureConfig(kind=kind, remove_dc_offset=dc))
    x = signal()
    want = ex(torch.from_numpy(x))
    tol = 1e-4 if kind == "fbank" else 1e-4 * float(want.abs().max())
    for piece in (1, 160, 333, 400, 592, 1600, 16000):
        online = OnlineFeatures(ex)
        got = torch.cat([online.accept(x[i : i + piece]) for i in range(0, len(x), piece)] + [online.finish()])
        assert got.shape == want.shape and online.frames == want.shape[0] == ex.num_frames(len(x)), piece
        assert (got - want).abs().max() <= tol, piece
    # Shorter than one FFT frame (empty too): one zero-padded frame at the end, as offline.
    for n in (0, 1, 300):
        online = OnlineFeatures(ex)
        got = torch.cat([online.accept(x[: n // 2]), online.accept(x[n // 2 : n]), online.finish()])
        assert got.shape == (1, ex.dim) and (got - ex(torch.from_numpy(x[:n]))).abs().max() <= tol


def test_mfcc_of_a_batch_are_those_of_each_waveform_alone() -> None:
    """MFCC floors its decibels below the loudest bin: of each waveform, not of the whole batch."""
    ex = FeatureExtractor(FeatureConfig(kind="mfcc"))
    quiet = np.zeros(8000, np.float32)
    quiet[4000:4100] = 1e-4
    waves = [torch.from_numpy(signal(1.0) * 3), torch.from_numpy(quiet)]
    for wave, feats in zip(waves, ex.batch(waves), strict=True):
        assert (feats - ex(wave)).abs().max() < 1e-3


# ------------------------------------------------------------------------------- the identity


CHUNKS = [160, 592, 1600, 16000, 1234, 333, 7]


@pytest.mark.parametrize("name", list(KINDS))
def test_streaming_gives_the_offline_log_probs(models: dict[str, Recognizer], name: str) -> None:
    rec = models[name]
    x = signal()
    want = offline(rec, x)
    for chunk in CHUNKS:
        got = stream_log_probs(rec, x, chunk)
        assert got.shape == want.shape, (chunk, got.shape, want.shape)
        assert (got - want).abs().max() < 1e-4, chunk
    # One sample, then pieces of 333; and lengths that end anywhere in a stack or a chunk.
    online = OnlineEmissions(rec)
    got = torch.cat([online.accept(x[:1])] + [online.accept(x[i : i + 333]) for i in range(1, len(x), 333)] + [online.finish()])
    assert (got - want).abs().max() < 1e-4 and online.frames == want.shape[0]
    for n in (0, 200, 560, 1000, 4321, 8000):
        want = offline(rec, x[:n])
        got = stream_log_probs(rec, x[:n], 400)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-4, n


def test_frames_come_out_as_soon_as_they_are_final(models: dict[str, Recognizer]) -> None:
    """10 ms pieces: the lstm emits a frame per stack of feature frames; the look-ahead holds
    back `lookahead` frames; lcblstm a chunk at a time once its right context is there."""
    x = signal(1.0)
    hop = 160
    stack = 3
    for name, held in (("lstm", 0), ("lstm-lookahead-3", 3), ("lcblstm", None)):
        online = OnlineEmissions(models[name])
        assert online.frame_seconds == pytest.approx(0.03)
        counts = []
        for i in range(0, len(x), hop):
            online.accept(x[i : i + hop])
            counts.append(online.frames)
        features = [max(0, (min(len(x), i + hop) - 512) // hop + 1) for i in range(0, len(x), hop)]
        stacked = [f // stack for f in features]
        if held is not None:
            assert counts == [max(0, s - held) for s in stacked]
        else:
            chunk, right = 4, 3
            assert counts == [max(0, (s - right) // chunk) * chunk for s in stacked]
        assert online.lookahead_seconds == pytest.approx(0.03 * (held if held is not None else 4 - 1 + 3))


def test_two_streams_of_one_model_are_independent(models: dict[str, Recognizer]) -> None:
    for name in ("lstm-lookahead-3", "lcblstm"):
        rec = models[name]
        a, b = signal(1.5, seed=1), signal(1.1, seed=2)[::-1].copy()
        sa, sb = OnlineEmissions(rec), OnlineEmissions(rec)
        got_a, got_b = [], []
        for i in range(0, max(len(a), len(b)), 700):
            got_a.append(sa.accept(a[i : i + 700]))
            got_b.append(sb.accept(b[i : i + 500]))
            got_b.append(sb.accept(b[i + 500 : i + 700]))
        got_a.append(sa.finish())
        got_b.append(sb.finish())
        assert (torch.cat(got_a) - offline(rec, a)).abs().max() < 1e-4
        assert (torch.cat(got_b) - offline(rec, b)).abs().max() < 1e-4
        with pytest.raises(RuntimeError):
            sa.accept(a[:10])


def test_reset_starts_a_new_stream_at_a_frame(models: dict[str, Recognizer]) -> None:
    """After `reset(k)`, audio fed from frame k on gives what a new stream of that audio gives,
    whatever the stream held before (state, unstacked frames, frames held for look-ahead)."""
    for name in ("lstm-lookahead-3", "lcblstm"):
        rec = models[name]
        x = signal(2.0, seed=3)
        online = OnlineEmissions(rec)
        before = online.accept(x[:20000])
        k = 17  # frame 17 starts at sample 17 * 480
        online.reset(k)
        start = k * 480
        after = torch.cat([online.accept(x[start : start + 5000]), online.accept(x[start + 5000 :]), online.finish()])
        want = offline(rec, x[start:])
        assert len(before) and after.shape == want.shape and (after - want).abs().max() < 1e-4
        assert online.frames == k + want.shape[0]


# ---------------------------------------------------------------------- the encoders themselves


def _stacked(kind: str, **kw: object) -> tuple[CTCModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = CTCModel(8, 6, ModelConfig(kind=kind, stack=1, hidden=12, layers=3, dropout=0.0, **kw)).eval()
    a, b, c = torch.randn(37, 8), torch.randn(9, 8), torch.randn(20, 8)
    x = torch.nn.utils.rnn.pad_sequence([a, b, c], batch_first=True)
    return model, x, torch.tensor([37, 9, 20])


@pytest.mark.parametrize(("kind", "kw"), [("lstm", {"lookahead": 4}), ("gru", {"lookahead": 2}), ("lcblstm", {"chunk": 5, "right_context": 3}), ("lcblstm", {"chunk": 3, "right_context": 7}), ("lcblstm", {"chunk": 40, "right_context": 2})])
def test_new_kinds_batched_equal_alone_and_step_equals_forward(kind: str, kw: dict) -> None:
    model, x, lengths = _stacked(kind, **kw)
    with torch.no_grad():
        batched, out_lengths = model(x, lengths)
        assert torch.equal(out_lengths, lengths)
        x_garbage = x.clone()
        x_garbage[1, 9:] = 5.0  # CTCModel zeroes the padding: whatever lies there never leaks
        assert torch.equal(model(x_garbage, lengths)[0], batched)
        for i, n in enumerate(lengths.tolist()):
            alone, _ = model(x[i : i + 1, :n], lengths[i : i + 1])
            assert (batched[i, :n] - alone[0]).abs().max() < 1e-5, i
        # The encoder's own stream, in uneven pieces, then finish.
        stacked, _ = model.encoder_input(x, lengths)
        whole, _ = model.encoder(stacked[:1], lengths[:1])
        state = model.encoder.init_state(1)
        pieces, start = [], 0
        for size in (1, 4, 2, 11, 3, 30):
            y, state = model.encoder.step(stacked[:1, start : start + size], state)
            pieces.append(y)
            start += size
        pieces.append(model.encoder.finish(state))
        assert (torch.cat(pieces, dim=1) - whole).abs().max() < 1e-5


def test_lookahead_zero_is_the_plain_lstm_and_the_output_is_delayed() -> None:
    torch.manual_seed(0)
    plain = CTCModel(8, 6, ModelConfig(kind="lstm", stack=2, hidden=10, layers=2, dropout=0.0)).eval()
    torch.manual_seed(0)
    ahead = CTCModel(8, 6, ModelConfig(kind="lstm", stack=2, hidden=10, layers=2, dropout=0.0, lookahead=3)).eval()
    assert list(plain.state_dict()) == list(ahead.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), ahead.parameters(), strict=True))
    x, lengths = torch.randn(1, 30, 8), torch.tensor([30])
    with torch.no_grad():
        y_plain, _ = plain.encode(torch.nn.functional.pad(x, (0, 0, 0, 6)), lengths + 6)
        y_ahead, n = ahead.encode(x, lengths)
    assert n.tolist() == [15] and torch.allclose(y_ahead, y_plain[:, 3:], atol=1e-6)


def test_lcblstm_is_chunked_a_blstm_when_one_window_holds_everything() -> None:
    """Chunks longer than the utterance: each layer is a BLSTM over the input and its zero
    padding up to chunk + right_context frames; a blstm's weights load into it."""
    torch.manual_seed(0)
    blstm = CTCModel(8, 6, ModelConfig(kind="blstm", stack=1, hidden=10, layers=2, dropout=0.0)).eval()
    lc = CTCModel(8, 6, ModelConfig(kind="lcblstm", stack=1, hidden=10, layers=2, dropout=0.0, chunk=30, right_context=5)).eval()
    lc.load_state_dict(blstm.state_dict())
    x = torch.randn(1, 25, 8)
    with torch.no_grad():
        want = blstm(torch.nn.functional.pad(x, (0, 0, 0, 10)), torch.tensor([35]))[0][:, :25]
        got = lc(x, torch.tensor([25]))[0]
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize(("kind", "kw"), [("lstm", {"lookahead": 3}), ("lcblstm", {"chunk": 4, "right_context": 3})])
def test_gradient_norms_unroll_the_same_computation(kind: str, kw: dict) -> None:
    """The unrolled network `gradient_norms` differentiates is the one `forward` runs; with a
    look-ahead the last frame's state feeds nothing later, so its norm is the direct gradient's."""
    model, x, lengths = _stacked(kind, **kw)
    stacked, out_lengths = model.encoder_input(x, lengths)
    seen = []

    def loss_of_top(top: torch.Tensor) -> torch.Tensor:
        seen.append(top.detach())
        real = torch.arange(top.shape[1])[None, :] < out_lengths[:, None]
        return (model.layer_log_probs(top)[:, :, 1] * real).sum()

    norms = model.encoder.gradient_norms(stacked, out_lengths, loss_of_top)
    with torch.no_grad():
        want, _ = model.encoder(stacked, out_lengths)
    assert norms.shape == (3, 37) and (norms > 0).all()
    assert (seen[0] - want).abs().max() < 1e-5
    if kind == "lstm":
        outputs: list[torch.Tensor] = []
        top, _ = model.encoder(stacked, out_lengths, outputs)
        (g,) = torch.autograd.grad(loss_of_top(top), outputs[-1:])
        assert abs(g[:, -1].pow(2).sum().sqrt() - norms[-1, -1]) < 1e-4


def test_bad_settings_are_one_line_errors_naming_the_key() -> None:
    for cfg, key in (
        (ModelConfig(kind="lcblstm", chunk=0), "model.chunk"),
        (ModelConfig(kind="lcblstm", right_context=-1), "model.right_context"),
        (ModelConfig(kind="blstm", lookahead=2), "model.lookahead"),
        (ModelConfig(kind="lcblstm", lookahead=2), "model.lookahead"),
        (ModelConfig(kind="mlp", lookahead=2), "model.lookahead"),
        (ModelConfig(kind="lstm", lookahead=-1), "model.lookahead"),
    ):
        with pytest.raises(ValueError) as e:
            CTCModel(8, 6, cfg)
        assert key in str(e.value) and "\n" not in str(e.value)


def test_old_configs_get_the_new_keys_defaults() -> None:
    old = {"model": {"kind": "lstm", "stack": 3, "hidden": 8, "layers": 1, "dropout": 0.0, "context": 5}}
    cfg = Config.from_saved(old)
    assert (cfg.model.lookahead, cfg.model.chunk, cfg.model.right_context) == (0, 20, 10)


def test_the_lookahead_lstm_exports_and_lcblstm_refuses(tmp_path: Path) -> None:
    from asr.export import ExportedModel, export

    rec = recognizer(tmp_path, kind="lstm", lookahead=2)
    exported = ExportedModel.load(export(rec, tmp_path / "m.ts"))
    x = rec.extractor.batch([torch.from_numpy(signal(1.0)), torch.from_numpy(signal(0.6))])
    feats, lengths = torch.nn.utils.rnn.pad_sequence(x, batch_first=True), torch.tensor([len(f) for f in x])
    got, want = exported.log_probs(feats, lengths), rec.log_probs(feats, lengths)
    assert torch.equal(got[1], want[1]) and (got[0] - want[0]).abs().max() < 1e-4
    with pytest.raises(ValueError, match="'lcblstm' cannot be exported"):
        export(recognizer(tmp_path, kind="lcblstm", chunk=4, right_context=2), tmp_path / "lc.ts")


# ---------------------------------------------------------------------------------- refusals


def test_what_cannot_stream_says_so(tmp_path: Path) -> None:
    assert {"lstm", "lcblstm"} <= set(streaming_names()) and "blstm" not in streaming_names()
    with pytest.raises(NotStreamingError) as e:
        OnlineEmissions(recognizer(tmp_path, kind="blstm"))
    message = str(e.value)
    assert "'blstm' cannot stream" in message and "lcblstm" in message and "lstm" in message and "\n" not in message
    with pytest.raises(NotStreamingError, match="cmvn") as e:
        OnlineEmissions(recognizer(tmp_path, cmvn="utterance"))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------- training


@pytest.mark.parametrize("model", ["kind=lstm lookahead=2", "kind=lcblstm chunk=3 right_context=2"])
def test_the_new_kinds_train_and_the_trained_model_streams(model: str, tmp_path: Path) -> None:
    from asr.train import train

    manifest = make_tone_corpus(tmp_path / "data", 6, seed=4)
    overrides = [f"data.train={manifest}", "features.n_mels=16", "model.stack=2", "model.hidden=12", "model.layers=2", "model.dropout=0.1"]
    overrides += [f"model.{kv}" for kv in model.split()[1:]] + [f"model.{model.split()[0]}"]
    overrides += ["train.epochs=2", "train.batch_frames=600", "train.warmup_steps=2", "train.plots=false", "train.probe_every=2"]
    cfg = load_config(None, overrides)
    best = train(cfg, tmp_path / "exp")
    rec = Recognizer.from_checkpoint(best)
    assert rec.cfg.model.kind == cfg.model.kind and (rec.cfg.model.lookahead, rec.cfg.model.chunk) == (cfg.model.lookahead, cfg.model.chunk)
    x = signal(1.2)
    want = offline(rec, x)
    for chunk in (160, 1234):
        assert (stream_log_probs(rec, x, chunk) - want).abs().max() < 1e-4


@pytest.mark.parametrize(
    ("kind", "kw"),
    [("lstm", {}), ("lstm", {"lookahead": 4}), ("lcblstm", {"chunk": 5, "right_context": 3}), ("lcblstm", {"chunk": 40, "right_context": 2}), ("gru", {"lookahead": 2})],
)
def test_step_keeps_the_gates_it_computes_and_they_are_the_inspected_ones(kind: str, kw: dict) -> None:
    """`Encoder.step(..., gates=[])`: per layer the forward direction's gates and cell state of
    the frames it outputs, the values `Encoder.gates` (what `asr inspect` plots) gives for the
    whole input; the outputs are those of a step without it. A GRU has no gates: its outputs."""
    model, x, lengths = _stacked(kind, **kw)
    stacked, _ = model.encoder_input(x[:1, :37], lengths[:1])
    with torch.no_grad():
        whole = model.encoder.gates(stacked[0])
        state, plain_state = model.encoder.init_state(1), model.encoder.init_state(1)
        steps: list[list[dict]] = []
        outputs, plain, start = [], [], 0
        for size in (1, 4, 2, 11, 3, 30, 0):
            steps.append([])
            y, state = model.encoder.step(stacked[:1, start : start + size], state, steps[-1])
            p, plain_state = model.encoder.step(stacked[:1, start : start + size], plain_state)
            outputs.append(y)
            plain.append(p)
            assert all(not layer or next(iter(layer.values())).shape[1] == y.shape[1] for layer in steps[-1])
            start += size
        steps.append([])
        outputs.append(model.encoder.finish(state, steps[-1]))
        plain.append(model.encoder.finish(plain_state))
    assert (torch.cat(outputs, 1) - torch.cat(plain, 1)).abs().max() < 1e-6
    layers = len(model.encoder.layer_names())
    assert all(len(s) == layers for s in steps)
    joined = [{k: torch.cat([s[i][k] for s in steps if s[i]], 1)[0] for k in next(s[i] for s in steps if s[i])} for i in range(layers)]
    if kind == "gru":
        assert not whole and all(set(j) == {"hidden"} for j in joined)
        return
    for trace, g in zip(joined, whole, strict=True):
        for name, want in (("input", g.input_gate), ("forget", g.forget_gate), ("output", g.output_gate), ("cell", g.cell)):
            assert trace[name].shape == want.shape and (trace[name].numpy() - want).__abs__().max() < 1e-5, name
