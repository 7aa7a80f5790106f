"""Intermediate CTC: the loss it trains with and its settings (tests/test_distributed.py trains with it)."""

import pytest
import torch

from asr.config import Config, ConfigError, ModelConfig
from asr.model import CTCModel, ctc_loss
from asr.train import inter_ctc_layer, training_loss


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 40, 8, generator=g)
    lengths = torch.tensor([40, 31, 22])
    targets = torch.randint(1, 6, (3, 5), generator=g)
    return x, lengths, targets, torch.tensor([5, 4, 3])


def test_loss_mixes_the_top_and_the_chosen_layer() -> None:
    torch.manual_seed(0)
    model = CTCModel(8, 6, ModelConfig(stack=2, hidden=12, layers=3, dropout=0.0))
    x, lengths, targets, target_lengths = batch()
    hidden: list[torch.Tensor] = []
    top, out_lengths = model(x, lengths, hidden)
    assert len(hidden) == 3
    plain = ctc_loss(top, out_lengths, targets, target_lengths)
    at_1 = ctc_loss(model.layer_log_probs(hidden[0]), out_lengths, targets, target_lengths)
    at_2 = ctc_loss(model.layer_log_probs(hidden[1]), out_lengths, targets, target_lengths)
    assert len({plain.item(), at_1.item(), at_2.item()}) == 3  # the layers really differ

    assert torch.allclose(training_loss(model, model, x, lengths, targets, target_lengths), plain)
    assert torch.allclose(training_loss(model, model, x, lengths, targets, target_lengths, 2, 0.3), 0.7 * plain + 0.3 * at_2)
    assert torch.allclose(training_loss(model, model, x, lengths, targets, target_lengths, 1, 0.5), 0.5 * plain + 0.5 * at_1)


def test_the_intermediate_loss_trains_the_lower_layers_harder() -> None:
    torch.manual_seed(0)
    model = CTCModel(8, 6, ModelConfig(stack=2, hidden=12, layers=3, dropout=0.0))
    x, lengths, targets, target_lengths = batch()
    grads = []
    for layer, weight in ((0, 0.0), (1, 0.9)):
        model.zero_grad()
        training_loss(model, model, x, lengths, targets, target_lengths, layer, weight).backward()
        grads.append(model.forward_layers[0].weight_ih_l0.grad.norm() / model.forward_layers[2].weight_ih_l0.grad.norm())
    assert grads[1] > 2 * grads[0]


@pytest.mark.parametrize(
    ("weight", "layer", "layers", "expected"),
    [(0.0, 0, 3, 0), (0.3, 0, 3, 2), (0.3, 0, 4, 2), (0.3, 0, 5, 3), (0.3, 1, 3, 1), (0.3, 2, 3, 2)],
)
def test_layer_defaults_to_the_middle(weight: float, layer: int, layers: int, expected: int) -> None:
    cfg = Config()
    cfg.train.inter_ctc_weight, cfg.train.inter_ctc_layer, cfg.model.layers = weight, layer, layers
    assert inter_ctc_layer(cfg) == expected


@pytest.mark.parametrize(("weight", "layer", "layers", "message"), [(1.0, 0, 3, "inter_ctc_weight"), (-0.1, 0, 3, "inter_ctc_weight"), (0.3, 3, 3, "inter_ctc_layer"), (0.3, 0, 1, "inter_ctc_layer")])
def test_bad_settings_are_named(weight: float, layer: int, layers: int, message: str) -> None:
    cfg = Config()
    cfg.train.inter_ctc_weight, cfg.train.inter_ctc_layer, cfg.model.layers = weight, layer, layers
    with pytest.raises(ConfigError, match=message):
        inter_ctc_layer(cfg)
