from pathlib import Path

import numpy as np
import pytest
import torch

from asr.config import AugmentConfig, FeatureConfig, ModelConfig
from asr.data import bucket_batches, ctc_feasible, load_features, padding_fraction
from asr.features import FeatureExtractor, Normalizer, spec_augment
from asr.manifest import read_manifest
from asr.model import CTCModel, ctc_loss, reverse_padded


@pytest.mark.parametrize(("kind", "dim"), [("fbank", 80), ("mfcc", 40)])
def test_feature_shapes(kind: str, dim: int) -> None:
    ex = FeatureExtractor(FeatureConfig(kind=kind))
    f = ex(torch.randn(16000))
    assert f.shape == (97, dim)  # 1 + (16000 - n_fft 512) // hop 160: no centre padding
    assert torch.isfinite(f).all()
    assert ex(torch.zeros(100)).shape == (1, dim)  # shorter than a window: one frame


def test_normalizer_fits_training_statistics() -> None:
    feats = [torch.randn(50, 4) * 3 + 2, torch.randn(70, 4) * 3 + 2]
    norm = Normalizer.fit(feats)
    z = norm(torch.cat(feats))
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(4), atol=1e-4)


def test_per_utterance_normalizer_removes_each_utterance_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(50, 4, generator=gen) * 3 + 2, torch.randn(70, 4, generator=gen) * 3 - 4]
    norm = Normalizer.fit(feats, per_utterance=True)
    for f in feats:
        assert torch.allclose(norm(f).mean(0), torch.zeros(4), atol=1e-5)
        assert torch.allclose(norm(f + 7.5), norm(f), atol=1e-5)  # a constant channel gain is gone
    assert not torch.allclose(Normalizer.fit(feats)(feats[1]), norm(feats[1]), atol=0.1)  # unlike global
    # Padded into a batch, each utterance gets its own mean, over its real frames only.
    x = torch.zeros(2, 70, 4)
    x[0, :50], x[1] = feats[0], feats[1]
    x[0, 50:] = 100.0  # padding must not leak into the mean
    z = norm(x, torch.tensor([50, 70]))
    assert torch.allclose(z[0, :50], norm(feats[0]), atol=1e-5) and torch.allclose(z[1], norm(feats[1]), atol=1e-5)
    assert z[0, 50:].eq(0).all()


def test_spec_augment_masks_only_within_length() -> None:
    x = torch.ones(2, 100, 20)
    lengths = torch.tensor([100, 50])
    cfg = AugmentConfig(freq_masks=2, freq_width=5, time_masks=2, time_width=20, time_ratio=0.2)
    y = spec_augment(x, lengths, cfg, torch.Generator().manual_seed(0))
    assert (y == 0).any() and (y == 1).any()
    assert x.eq(1).all()  # the input is not modified


def test_bucketing_respects_budget_and_covers_everything() -> None:
    lengths = np.random.default_rng(0).integers(50, 500, 300)
    for gen in [None, torch.Generator().manual_seed(1)]:
        batches = bucket_batches(lengths, 3000, gen)
        assert sorted(i for b in batches for i in b) == list(range(300))
        assert all(max(lengths[i] for i in b) * len(b) <= 3000 for b in batches if len(b) > 1)
        assert padding_fraction(lengths, batches) < 0.1


def test_ctc_feasibility() -> None:
    assert ctc_feasible(3, [1, 2, 3])
    assert not ctc_feasible(3, [1, 1, 2])  # repeats need a blank between them
    assert not ctc_feasible(2, [1, 2, 3])


def test_reverse_padded() -> None:
    x = torch.arange(8.0).reshape(2, 4, 1)
    r = reverse_padded(x, torch.tensor([4, 2]))
    assert r[:, :, 0].tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]
    assert torch.equal(reverse_padded(r, torch.tensor([4, 2])), x)


def test_model_batch_gives_the_same_output_as_single_utterances() -> None:
    torch.manual_seed(0)
    model = CTCModel(10, 7, ModelConfig(stack=3, hidden=16, layers=2, dropout=0.0)).eval()
    a, b = torch.randn(31, 10), torch.randn(17, 10)
    x = torch.nn.utils.rnn.pad_sequence([a, b], batch_first=True)
    out, lengths = model(x, torch.tensor([31, 17]))
    assert lengths.tolist() == [11, 6]
    alone, _ = model(b[None], torch.tensor([17]))
    assert torch.allclose(out[1, :6], alone[0], atol=1e-5)
    assert torch.allclose(out.exp().sum(-1), torch.ones(2, 11), atol=1e-5)


def test_padding_gets_no_gradient_and_loss_is_finite() -> None:
    torch.manual_seed(0)
    model = CTCModel(10, 7, ModelConfig(stack=2, hidden=8, layers=1, dropout=0.0))
    x = torch.randn(2, 20, 10, requires_grad=True)
    log_probs, lengths = model(x, torch.tensor([20, 12]))
    loss = ctc_loss(log_probs, lengths, torch.tensor([1, 2, 3, 4]), torch.tensor([2, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    assert x.grad[1, 12:].abs().sum() == 0
    assert x.grad[1, :12].abs().sum() > 0


def test_feature_cache_is_reused_and_invalidated(tone_corpus: dict[str, Path]) -> None:
    manifest = tone_corpus["dev"]
    utts = read_manifest(manifest)
    first = load_features(manifest, utts, FeatureConfig(n_mels=40))
    cached = load_features(manifest, utts, FeatureConfig(n_mels=40))
    assert np.array_equal(first.feats, cached.feats) and isinstance(cached.feats, np.memmap)
    other = load_features(manifest, utts, FeatureConfig(n_mels=24))
    assert other.feats.shape[1] == 24
