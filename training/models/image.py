"""The trainable image encoder: an ImageNet tower, an optional projection head, L2 normalisation.

`ImageEncoder.forward` is exactly what the exported ONNX graph computes (pixels in, normalised and
unnormalised vectors out), so export and training share one module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.models.image_towers import TOWERS, Stage, load_tower, run_stages, tower_spec
from training.models.saved_config import check_fields, load_saved_config

CHECKPOINT_FILE = "image_encoder.pt"
CONFIG_FILE = "image_encoder.json"


@dataclass
class ImageEncoderConfig:
    tower: str = "mobilenet_v2"
    projection_dim: int | None = None  # None: the tower's pooled features are the embedding
    unfreeze_blocks: int = 0  # the last N tower stages train; the rest stay ImageNet's
    # "identity" (projection_dim = the tower's width): training starts from the raw features exactly
    projection_init: str = "random"
    # "linear": the head sees the pooled features. "spatial": it also sees the final feature map
    # (1x1 conv to `spatial_channels`, flattened, linear, zero-initialised and added), so where
    # things are in the image can count, not only which features occur.
    head: str = "linear"
    spatial_channels: int = 32
    # Preprocessing: cut transparent images to their visible pixels with this margin (the manifest's
    # `trim_transparent`); None: the tower's ImageNet preprocessing unchanged.
    trim_transparent: float | None = None

    def __post_init__(self) -> None:
        check_fields(
            self,
            positive=("projection_dim", "spatial_channels"),
            ranges={"unfreeze_blocks": (0, 8), "trim_transparent": (0, 1)},
            choices={"tower": tuple(TOWERS), "projection_init": ("random", "identity"), "head": ("linear", "spatial")},
        )

    @property
    def dim(self) -> int:
        """The embedding's size: the projection's, or the tower's pooled features' without one."""
        return self.projection_dim or tower_spec(self.tower).feature_dim


def spatial_head(tower: str, feature_dim: int, channels: int, dim: int) -> nn.Sequential:
    """A path from the tower's final (batch, feature_dim, s, s) map to (batch, dim): a 1x1
    convolution to `channels`, flattened, linear. Zero-initialised, so a head starts without it."""
    side = -(-tower_spec(tower).input_size // 32)  # five stride-2 stages, each ceil(x / 2)
    out = nn.Linear(channels * side * side, dim, bias=False)
    nn.init.zeros_(out.weight)
    return nn.Sequential(nn.Conv2d(feature_dim, channels, 1, bias=False), nn.ReLU(), nn.Flatten(), out)


class ImageEncoder(nn.Module):
    def __init__(self, config: ImageEncoderConfig, pretrained: bool = True) -> None:
        super().__init__()
        self.config = config
        self.tower = load_tower(config.tower, pretrained=pretrained)
        feature_dim = tower_spec(config.tower).feature_dim
        self.projection = nn.Linear(feature_dim, config.projection_dim, bias=False) if config.projection_dim else None
        if self.projection is not None and config.projection_init == "identity":
            if config.projection_dim != feature_dim:
                raise ValueError(f"an identity-initialised head needs projection_dim = {feature_dim}")
            with torch.no_grad():
                self.projection.weight.copy_(torch.eye(feature_dim))
        self.spatial = (
            spatial_head(config.tower, feature_dim, config.spatial_channels, self.dim)
            if config.head == "spatial"
            else None
        )
        self.freeze()

    @property
    def dim(self) -> int:
        return self.config.dim

    def split(self) -> tuple[list[Stage], list[Stage]]:
        """(frozen stages, trainable stages): the last `unfreeze_blocks` train."""
        stages = self.tower.stages()  # type: ignore[operator]
        cut = len(stages) - self.config.unfreeze_blocks
        return stages[:cut], stages[cut:]

    def freeze(self) -> None:
        """Freeze the tower but its last `unfreeze_blocks` stages; the head always trains."""
        for p in self.tower.parameters():
            p.requires_grad_(False)
        for stage in self.split()[1]:
            for module in stage.modules:
                for p in module.parameters():
                    p.requires_grad_(True)

    def train(self, mode: bool = True) -> ImageEncoder:
        """Frozen stages keep their BatchNorm statistics (eval mode) even while the head trains."""
        super().train(mode)
        self.tower.eval()
        if mode:
            for stage in self.split()[1]:
                for module in stage.modules:
                    module.train()
        return self

    def frozen_activations(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the frozen stages make of `pixels`: cacheable, since it never changes in training."""
        return run_stages(self.split()[0], pixels)

    def from_activations(self, activations: torch.Tensor) -> torch.Tensor:
        """Trainable stages + head on cached frozen activations -> (batch, dim) before normalisation."""
        return self.embed_map(run_stages(self.split()[1], activations))

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """(batch, 3, S, S) -> (batch, dim) before normalisation."""
        return self.embed_map(run_stages(self.tower.stages(), pixels))  # type: ignore[operator]

    def embed_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The tower's final map (batch, 1280, s, s) -> (batch, dim) before normalisation."""
        embedding = self.project(feature_map.mean(dim=(2, 3)))  # (batch, dim)
        if self.spatial is not None:
            embedding = embedding + self.spatial(feature_map)
        return embedding

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Tower features (batch, 1280) -> (batch, dim): the head (identity without one)."""
        return self.projection(features) if self.projection is not None else features

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.pooled(pixels)  # (batch, dim)
        return F.normalize(pooled, dim=-1), pooled

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), folder / CHECKPOINT_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ImageEncoder:
        config = load_saved_config(ImageEncoderConfig, folder / CONFIG_FILE)
        model = cls(config, pretrained=False)
        state = torch.load(folder / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # missing, unexpected or resized tensors (an edited config)
            raise ValueError(f"{folder}: weights do not match the saved config: {' '.join(str(exc).split())}") from None
        return model.eval()

    @classmethod
    def from_source(cls, source: str) -> ImageEncoder:
        """`source`: a tower name (ImageNet weights, no head) or a folder written by `save`."""
        path = Path(source)
        if (path / CONFIG_FILE).is_file():
            return cls.load(path)
        return cls(ImageEncoderConfig(tower=source)).eval()
