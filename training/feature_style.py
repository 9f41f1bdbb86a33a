"""Style perturbation of feature maps in training: new "styles" made from the channel statistics of
the activations a trainable stage reads, so it learns what survives a change of style it never saw.

An image's style lives largely in its feature maps' per-channel mean and standard deviation over
space (the premise of style transfer by AdaIN). Two ways to move them, applied to each example of a
training batch with probability `p` (never at inference):

- **MixStyle** (Zhou et al., "Domain Generalization with MixStyle", ICLR 2021): re-normalise an
  example's map to a mix of its own statistics and another batch example's, the weight drawn from
  Beta(alpha, alpha). It interpolates between the styles in the batch.
- **DSU** (Li et al., "Uncertainty Modeling for Out-of-Distribution Generalization", ICLR 2022):
  re-normalise to statistics shifted by Gaussian noise whose per-channel scale is how much those
  statistics vary across the batch. It extrapolates beyond the batch's styles.

The statistics are detached (as both papers do): the perturbation is data, not a path for gradients.
Random draws come from torch's global generator, which the run seeds.
"""

from __future__ import annotations

import torch

from training.config import FeatureStyleConfig

_EPS = 1e-6


def _statistics(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """maps (batch, channels, h, w) -> per-example, per-channel mean and std, each (batch, channels, 1, 1)."""
    mean = maps.mean(dim=(2, 3), keepdim=True)
    std = (maps.var(dim=(2, 3), keepdim=True, unbiased=False) + _EPS).sqrt()
    return mean.detach(), std.detach()


def mixstyle(maps: torch.Tensor, alpha: float) -> torch.Tensor:
    """Every example re-normalised to a Beta(alpha, alpha) mix of its statistics and a random other
    example's (a random permutation of the batch; one may draw itself)."""
    batch = maps.shape[0]
    mean, std = _statistics(maps)
    normalised = (maps - mean) / std
    weight = torch.distributions.Beta(float(alpha), float(alpha)).sample((batch,)).to(maps.dtype)
    weight = weight.view(batch, 1, 1, 1)
    partner = torch.randperm(batch)
    mixed_mean = weight * mean + (1 - weight) * mean[partner]
    mixed_std = weight * std + (1 - weight) * std[partner]
    return normalised * mixed_std + mixed_mean


def dsu(maps: torch.Tensor) -> torch.Tensor:
    """Every example re-normalised to its statistics plus Gaussian noise scaled, per channel, by the
    batch's standard deviation of that statistic."""
    mean, std = _statistics(maps)
    normalised = (maps - mean) / std
    mean_spread = (mean.var(dim=0, keepdim=True, unbiased=False) + _EPS).sqrt()  # (1, channels, 1, 1)
    std_spread = (std.var(dim=0, keepdim=True, unbiased=False) + _EPS).sqrt()
    noisy_mean = mean + torch.randn(mean.shape, dtype=maps.dtype) * mean_spread
    # Clamped where the paper is not: a negative std would flip the sign of a whole channel.
    noisy_std = (std + torch.randn(std.shape, dtype=maps.dtype) * std_spread).clamp(min=_EPS)
    return normalised * noisy_std + noisy_mean


def perturb_style(maps: torch.Tensor, config: FeatureStyleConfig) -> torch.Tensor:
    """`maps` (batch, channels, h, w) with each example's style perturbed with probability `config.p`
    (the others unchanged). Batches of one are returned as they are: they have no batch statistics."""
    if maps.shape[0] < 2 or config.p == 0:
        return maps
    perturbed = mixstyle(maps, config.alpha) if config.kind == "mixstyle" else dsu(maps)
    chosen = torch.rand(maps.shape[0]) < config.p
    return torch.where(chosen.view(-1, 1, 1, 1), perturbed, maps)
