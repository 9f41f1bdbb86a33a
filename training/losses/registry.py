"""The loss registry: a loss name in a config -> how to build it. Every loss declares the batch
layout it needs (`layout`, see training/losses/layouts.py), so a trainer looks up the batch builder
for that layout and never branches on the loss. A new loss adds a file and a row here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import nn

from training.losses.cosent import CoSENTLoss
from training.losses.cwcl import CWCLLoss
from training.losses.dcl import DecoupledContrastiveLoss
from training.losses.group_softmax import GroupSoftmaxLoss
from training.losses.infonce import InfoNCELoss
from training.losses.layouts import BatchLayout
from training.losses.listwise import ListwiseSoftmaxLoss
from training.losses.matryoshka import MatryoshkaLoss
from training.losses.mw import MannWhitneyLoss
from training.losses.pointwise_bce import PointwiseBCELoss
from training.losses.siglip import SigLIPLoss
from training.losses.wasserstein import WassersteinListwiseLoss


class LossSettings(Protocol):
    """The fields of a loss config the builders read (training.config.LossConfig)."""

    name: str
    temperature: float
    learnable_temperature: bool
    symmetric: bool
    matryoshka_dims: list[int]
    target_temperature: float
    weight_temperature: float | None


# Bi-encoder losses (`loss.name` in a train config).
EMBEDDING_LOSSES: dict[str, Callable[[LossSettings], nn.Module]] = {
    "infonce": lambda s: InfoNCELoss(s.temperature, s.learnable_temperature, s.symmetric),
    "dcl": lambda s: DecoupledContrastiveLoss(s.temperature, s.learnable_temperature, s.symmetric),
    "mw": lambda s: MannWhitneyLoss(s.temperature, s.learnable_temperature),
    "cwcl": lambda s: CWCLLoss(s.temperature, s.learnable_temperature, s.weight_temperature),
    "listwise": lambda s: ListwiseSoftmaxLoss(s.temperature, s.target_temperature, s.learnable_temperature),
    "wasserstein": lambda s: WassersteinListwiseLoss(s.temperature, s.target_temperature, s.learnable_temperature),
    "cosent": lambda _: CoSENTLoss(),
    "siglip": lambda s: SigLIPLoss(learnable=s.learnable_temperature),
}

# Cross-encoder losses (`loss` in a reranker config), over a group's logits.
CROSS_ENCODER_LOSSES: dict[str, Callable[[], nn.Module]] = {
    "bce": PointwiseBCELoss,
    "listwise": GroupSoftmaxLoss,
}


class UnknownLoss(ValueError):
    pass


def build_embedding_loss(settings: LossSettings) -> nn.Module:
    """The configured loss, wrapped in Matryoshka when dimensions are given."""
    builder = EMBEDDING_LOSSES.get(settings.name)
    if builder is None:
        raise UnknownLoss(f"unknown loss {settings.name!r}; known: {', '.join(sorted(EMBEDDING_LOSSES))}")
    loss = builder(settings)
    return MatryoshkaLoss(loss, settings.matryoshka_dims) if settings.matryoshka_dims else loss


def build_cross_encoder_loss(name: str) -> nn.Module:
    builder = CROSS_ENCODER_LOSSES.get(name)
    if builder is None:
        raise UnknownLoss(f"unknown cross-encoder loss {name!r}; known: {', '.join(sorted(CROSS_ENCODER_LOSSES))}")
    return builder()


def layout_of(loss: nn.Module) -> BatchLayout:
    return loss.layout  # type: ignore[return-value]
