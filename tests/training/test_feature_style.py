"""Style perturbation of feature maps (MixStyle, DSU): what moves is each example's channel statistics,
never the normalised pattern inside a channel; and a training run takes the option."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.training.test_image_training import one_epoch_on_120_identities
from training.config import FeatureStyleConfig, ImageTrainConfig
from training.feature_style import dsu, mixstyle, perturb_style
from training.image_training import train_image_encoder


def _maps(means: list[float], stds: list[float], channels: int = 3, side: int = 4) -> torch.Tensor:
    """One example per (mean, std): the same spatial pattern in every channel, shifted and scaled."""
    torch.manual_seed(0)
    pattern = torch.randn(1, channels, side, side)
    pattern = (pattern - pattern.mean(dim=(2, 3), keepdim=True)) / pattern.std(dim=(2, 3), keepdim=True, unbiased=False)
    return torch.cat([pattern * s + m for m, s in zip(means, stds, strict=True)])


def _normalised(maps: torch.Tensor) -> torch.Tensor:
    mean = maps.mean(dim=(2, 3), keepdim=True)
    std = maps.std(dim=(2, 3), keepdim=True, unbiased=False)
    return (maps - mean) / std


def test_mixstyle_moves_each_example_to_a_mix_of_two_examples_statistics() -> None:
    maps = _maps(means=[0.0, 10.0], stds=[1.0, 3.0])
    torch.manual_seed(1)
    for _ in range(20):
        mixed = mixstyle(maps, alpha=0.1)
        means = mixed.mean(dim=(2, 3))  # (2, channels)
        stds = mixed.std(dim=(2, 3), unbiased=False)
        assert torch.all(means >= -1e-4) and torch.all(means <= 10 + 1e-4)
        assert torch.all(stds >= 1 - 1e-4) and torch.all(stds <= 3 + 1e-4)
        # one weight per example: mean and std were mixed by the same amount
        weight = 1 - means / 10  # the share of example 0's statistics
        assert torch.allclose(stds, weight * 1 + (1 - weight) * 3, atol=1e-3)
        assert torch.allclose(_normalised(mixed), _normalised(maps), atol=1e-3)  # the pattern is kept


def test_mixstyle_with_a_large_alpha_lands_near_the_middle() -> None:
    maps = _maps(means=[0.0, 10.0], stds=[1.0, 1.0])
    torch.manual_seed(2)
    mixed = mixstyle(maps, alpha=1000.0)  # Beta(1000, 1000) ~ 0.5
    means = mixed.mean(dim=(2, 3))
    partner_differs = ~torch.isclose(means[:, 0], maps.mean(dim=(2, 3))[:, 0], atol=0.5)
    assert torch.allclose(means[partner_differs], torch.full_like(means[partner_differs], 5.0), atol=0.2)


def test_dsu_leaves_a_batch_of_one_style_nearly_as_it_is_and_moves_a_varied_one() -> None:
    same = _maps(means=[2.0, 2.0, 2.0], stds=[1.5, 1.5, 1.5])
    torch.manual_seed(3)
    assert torch.allclose(dsu(same), same, atol=1e-2)  # no spread across the batch: no noise
    varied = _maps(means=[0.0, 5.0, 10.0], stds=[2.0, 2.5, 3.0])
    moved = dsu(varied)
    assert not torch.allclose(moved.mean(dim=(2, 3)), varied.mean(dim=(2, 3)), atol=0.1)
    assert torch.allclose(_normalised(moved), _normalised(varied), atol=1e-3)
    assert torch.all(moved.std(dim=(2, 3), unbiased=False) > 0)  # a channel's sign never flips


def test_only_a_share_p_of_examples_is_perturbed() -> None:
    maps = _maps(means=[float(i) for i in range(200)], stds=[1.0] * 200)
    torch.manual_seed(4)
    none = perturb_style(maps, FeatureStyleConfig(kind="dsu", p=0.0))
    assert torch.equal(none, maps)
    out = perturb_style(maps, FeatureStyleConfig(kind="dsu", p=0.5))
    changed = (out - maps).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert 60 < int(changed.sum()) < 140
    single = maps[:1]
    assert torch.equal(perturb_style(single, FeatureStyleConfig(kind="mixstyle", p=1.0)), single)


def test_the_statistics_carry_no_gradient() -> None:
    maps = _maps(means=[0.0, 10.0], stds=[1.0, 3.0]).requires_grad_()
    torch.manual_seed(5)
    dsu(maps).sum().backward()
    # Only the normalised pattern is differentiated; its sum's gradient is (std_new / std_old) per
    # channel, constant over space.
    assert maps.grad is not None
    assert torch.allclose(maps.grad, maps.grad[:, :, :1, :1].expand_as(maps.grad))


def test_training_runs_with_either_perturbation_differ_from_one_without(tmp_path: Path) -> None:
    common = {**one_epoch_on_120_identities(tmp_path), "tower": "efficientnet_lite0", "unfreeze_blocks": 1}
    plain = train_image_encoder(ImageTrainConfig(name="plain", **common))
    for kind in ("mixstyle", "dsu"):
        styled = train_image_encoder(
            ImageTrainConfig(name=kind, feature_style=FeatureStyleConfig(kind=kind, p=1.0), **common)
        )
        assert styled["before"] == plain["before"]  # the same raw features: only training changed
        assert styled["after"] != plain["after"], kind
