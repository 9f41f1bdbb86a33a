"""WiSE-FT: keep part of the way back to the model fine-tuning started from.

Wortsman et al., "Robust fine-tuning of zero-shot models" (CVPR 2022): the fine-tuned weights θ_ft
and the starting weights θ_0 are interpolated, θ = θ_0 + α (θ_ft - θ_0). Fine-tuning on a few
hundred judged queries moves the model toward those queries; stopping part of the way keeps more
of what the start model knew (its general similarity, or a warm-start stage's corpus adaptation)
at no training cost. α = 1 is the fine-tuned model, α = 0 the start model; α > 1 goes further
along the fine-tuning direction (task arithmetic: Ilharco et al., "Editing models with task
arithmetic", ICLR 2023), a larger step than training took without more steps' noise.
"""

from __future__ import annotations

import torch
from torch import nn


class InterpolationError(ValueError):
    """Two models whose weights cannot be interpolated (different architectures)."""


@torch.no_grad()
def interpolate_weights(model: nn.Module, start: nn.Module, alpha: float) -> None:
    """Set `model`'s floating-point weights and buffers to start + alpha * (model - start), in
    place. Integer buffers (position ids) are the same in both and kept. Both must have the same
    state-dict keys and shapes; `alpha` in [0, 1] interpolates, above 1 extrapolates."""
    ours, theirs = model.state_dict(), start.state_dict()
    if ours.keys() != theirs.keys():
        missing = sorted(ours.keys() ^ theirs.keys())[:3]
        raise InterpolationError(f"the two models have different weights (e.g. {', '.join(missing)})")
    for key, tensor in ours.items():
        other = theirs[key]
        if tensor.shape != other.shape:
            raise InterpolationError(f"weight {key}: shape {tuple(tensor.shape)} vs {tuple(other.shape)}")
        if tensor.is_floating_point():
            tensor.copy_(other.to(tensor.device, tensor.dtype).lerp(tensor, alpha))  # other + alpha (tensor - other)
