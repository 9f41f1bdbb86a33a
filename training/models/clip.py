"""The image side of a `clip` dual encoder whose text side is a fixed sentence encoder (MiniLM).

An image reaches the text space two ways, added:
- ConSE (Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings", ICLR
  2014): the tower's ImageNet softmax at temperature T, cut to its top-k classes, times the text
  embeddings of the 1,000 class names ("a photo of a {name}"). No training: strong on photos,
  blind where ImageNet has no word (emoji, clip art).
- A learned map of the tower's pooled features (1280 -> dim, an MLP by default), whose output is
  scaled to a fixed length `residual_scale` (0.6; ConSE's vector has length 1). The bound is what
  keeps photos working: no training caption here is a photo's (clip art, emoji), and an unbounded
  map learnt on drawings swamps ConSE on photos (COCO-mini caption->photo R@1 0.455 -> 0.225);
  bounded, it can only turn a vector part of the way (benchmarks/clip_reading.md has the runs).
  The served head also gates the map by familiarity (`residual_gate: familiarity`): photos, whose
  features are far from every training drawing's, keep ConSE's vector exactly, so the bound can
  be longer (1.0) for the drawings.
The class-name matrix may train too (`train_classes`), from its ConSE start. With `conse: false`
the map alone is the image embedding (the LiT-style comparison: a locked image tower and a
trainable projection, no class words).

`ClipImageEncoder.forward` is what `image.onnx` computes (pixels -> normalised, unnormalised);
training runs `ClipImageHead` on cached pooled features (final feature maps for a head with a
spatial path), since the tower never trains.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from training.models.image import spatial_head
from training.models.image_towers import TOWERS, load_tower, run_stages
from training.models.saved_config import check_fields, load_saved_config

HEAD_FILE = "clip_head.pt"
CONFIG_FILE = "clip_head.json"
# Beside a trained head: the hubness correction's bank of caption vectors and its parameters
# (training/clip_training.py `save_hub_bank`; app/inference/hubness.py serves them).
HUB_BANK_FILE = "hubness_bank.npy"
HUB_SPEC_FILE = "hubness.json"
# The same for image queries: the training images' own vectors as the bank.
IMAGE_HUB_BANK_FILE = "hubness_image_bank.npy"
IMAGE_HUB_SPEC_FILE = "hubness_image.json"
CLASS_PROMPT = "a photo of a {}"


@dataclass
class ClipImageConfig:
    tower: str = "mobilenet_v2"
    dim: int = 384  # the text encoder's size: images land in its space
    # The preprocessing the head was trained behind (the manifest's `trim_transparent`): export
    # writes it into the image section, so serving feeds the tower what training did.
    trim_transparent: float | None = None
    conse: bool = True  # the ConSE path (class-name words); False: the learned map alone
    conse_temperature: float = 2.0
    top_k: int = 10  # ImageNet classes kept per image (0: all 1,000)
    train_classes: bool = False  # the class-name matrix trains from its ConSE start
    residual: str = "mlp"  # the learned map of pooled features: "mlp" | "linear" | "none"
    residual_hidden: int = 1024  # mlp: hidden width
    # The learned map's output is scaled to this length (ConSE's is 1), so it can turn an image's
    # vector by at most ~atan(scale) from ConSE: photos, which no training caption covers, keep most
    # of ConSE's direction. None: unbounded (and zero-initialised: training starts at ConSE exactly).
    residual_scale: float | None = 0.6
    # "uncertainty": the bounded map's output is further scaled by 1 - the tower's top ImageNet
    # probability (softmax at temperature 1), so it turns an image's vector most where the tower
    # cannot name what it sees (drawings: median top probability ~0.18 on Lite0) and least where it
    # can (the ImageNet-like photos that ConSE already places well); a measured negative result:
    # confidence hardly separates photos from drawings. "none": a fixed length.
    residual_gate: str = "none"
    # "familiarity": the map's output is scaled by how much the image looks like the images it was
    # trained on: its pooled features' best cosine to `familiarity_centroids` k-means centroids of the
    # training images' features, ramped from 0 (`familiarity_width` below the open point) to 1 (the
    # `familiarity_quantile` of the training images' own familiarity). Drawings like the training
    # ones turn fully; photos, far from every clip-art and emoji centroid, keep ConSE's vector (the
    # served choice, benchmarks/clip_reading.md).
    familiarity_centroids: int = 256
    familiarity_quantile: float = 0.01
    familiarity_width: float = 0.15
    # A spatial path beside the map of pooled features (as the image encoder's `head: spatial`): the
    # tower's final (1280, s, s) feature map through a 1x1 convolution to this many channels,
    # flattened and mapped to `dim` (zero-initialised), added to the map's output before its length
    # is bounded, so where things lie can count (an arrow's direction, a flag's bands), not only
    # which features occur. The head then takes the final map, not pooled features. 0: no path.
    spatial_channels: int = 0
    # The learned map as an ensemble of this many maps trained apart (one seed each, the same data),
    # their outputs averaged (each as a unit vector where the map's length is bounded, so every
    # member has an equal say; the mean then takes the bounded length). Averaging independent maps
    # cancels part of each one's errors: benchmarks/clip_reading.md. 1: one map.
    residual_members: int = 1
    # > 0: the features a head takes are the tower's pooled features followed by this many more, a
    # trained image encoder's embedding of the same image (ClipTrainConfig.image_encoder). The
    # learned map sees both; ConSE and the familiarity gate only the tower's own. 0: none.
    encoder_dim: int = 0

    def __post_init__(self) -> None:
        check_fields(
            self,
            positive=("dim", "conse_temperature", "residual_hidden", "residual_scale", "familiarity_centroids"),
            ranges={
                "trim_transparent": (0, 1),
                "top_k": (0, 1000),
                "familiarity_quantile": (0, 1),
                "familiarity_width": (0, 2),
                "spatial_channels": (0, 512),
                "residual_members": (1, 16),
                "encoder_dim": (0, 4096),
            },
            choices={
                "tower": tuple(TOWERS),
                "residual": ("mlp", "linear", "none"),
                "residual_gate": ("none", "uncertainty", "familiarity"),
            },
        )


def pooled_features(features: torch.Tensor) -> torch.Tensor:
    """(batch, 1280) pooled features, or a (batch, 1280, s, s) final feature map -> (batch, 1280)."""
    return features.mean(dim=(2, 3)) if features.dim() == 4 else features


class ClipImageHead(nn.Module):
    """Tower features -> (batch, dim) text-space vector, before normalisation. The features are the
    (batch, 1280) pooled features, or the (batch, 1280, s, s) final map (which a spatial path needs;
    the rest of the head sees its mean)."""

    def __init__(self, config: ClipImageConfig, classifier: nn.Module, class_vectors: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        self.classifier = classifier  # the tower's ImageNet layer, frozen
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        # (1000, dim) unit text vectors of the class names.
        self.class_vectors = nn.Parameter(class_vectors.clone(), requires_grad=config.train_classes)
        feature_dim = classifier.in_features  # type: ignore[union-attr]
        if config.encoder_dim and config.spatial_channels:
            raise ValueError("a head on encoder features takes pooled features: no spatial path")
        if config.residual_members > 1 and (config.spatial_channels or config.train_classes):
            raise ValueError(
                "residual_members > 1 merges maps of pooled features only: no spatial path, no trained classes"
            )
        self.tower_dim = feature_dim
        self.residual = _residual(config, feature_dim + config.encoder_dim)
        self.spatial = (
            spatial_head(config.tower, feature_dim, config.spatial_channels, config.dim)
            if config.spatial_channels and self.residual
            else None
        )
        if config.residual_gate == "familiarity":  # set by fit_familiarity, saved with the head
            self.register_buffer("centroids", torch.zeros(config.familiarity_centroids, feature_dim))
            self.register_buffer("familiarity_ramp", torch.tensor([0.0, 1.0]))  # (closed, open)

    def familiarity(self, pooled: torch.Tensor) -> torch.Tensor:
        """(batch, 1280) -> (batch,) best cosine to the training images' centroids (the tower's
        features only, where encoder features follow them)."""
        tower = F.normalize(pooled[:, : self.tower_dim].float(), dim=-1)
        return (tower @ self.centroids.T).max(dim=-1).values

    def fit_familiarity(self, features: torch.Tensor, seed: int = 0, chunk: int = 1024) -> None:
        """Centroids and ramp of the familiarity gate from the training images' features."""
        pooled = torch.cat([pooled_features(features[i : i + chunk].float()) for i in range(0, len(features), chunk)])
        points = F.normalize(pooled[:, : self.tower_dim], dim=-1)
        centroids = spherical_kmeans(points, self.config.familiarity_centroids, seed=seed)
        k = self.config.familiarity_centroids
        self.centroids.copy_(centroids[torch.arange(k) % len(centroids)])  # fewer images than k: repeats
        opened = torch.quantile(self.familiarity(pooled), self.config.familiarity_quantile)
        self.familiarity_ramp.copy_(torch.stack([opened - self.config.familiarity_width, opened]))

    def _gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """(batch, 1280) -> (batch, 1) in [0, 1]: how far the image is like the training images."""
        closed, opened = self.familiarity_ramp[0], self.familiarity_ramp[1]
        return ((self.familiarity(pooled) - closed) / (opened - closed)).clamp(0.0, 1.0)[:, None]

    def conse(self, features: torch.Tensor) -> torch.Tensor:
        """Tower features -> (batch, dim) unit ConSE vectors."""
        return self._conse(self.classifier(pooled_features(features)[:, : self.tower_dim]))

    def _conse(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits / self.config.conse_temperature, dim=-1)
        if self.config.top_k:
            cut = torch.topk(probs, self.config.top_k, dim=-1).values[:, -1:]  # (batch, 1): k-th largest
            probs = probs * (probs >= cut).to(probs.dtype)
        return F.normalize(probs @ self.class_vectors, dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = pooled_features(features)  # (batch, 1280 [+ encoder_dim])
        logits = self.classifier(pooled[:, : self.tower_dim])  # (batch, 1000)
        out = self._conse(logits) if self.config.conse else 0.0
        if self.residual is not None:
            out = out + self._turn(features, pooled, logits)
        return out  # type: ignore[return-value]

    def turn(self, features: torch.Tensor) -> torch.Tensor:
        """Tower features -> (batch, dim): what the learned map adds to ConSE (bounded and gated, as
        `forward` adds it). The head must have a map."""
        if self.residual is None:
            raise ValueError("this head has no learned map (residual: none)")
        pooled = pooled_features(features)
        return self._turn(features, pooled, self.classifier(pooled[:, : self.tower_dim]))

    def _turn(self, features: torch.Tensor, pooled: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        shift = self.residual(pooled)  # type: ignore[misc]  # (batch, dim)
        if self.spatial is not None:
            if features.dim() != 4:
                raise ValueError("this head has a spatial path: it takes the final feature map, not pooled features")
            shift = shift + self.spatial(features)
        if self.config.residual_scale is not None:
            shift = self.config.residual_scale * F.normalize(shift, dim=-1)
        if self.config.residual_gate == "uncertainty":
            top = torch.softmax(logits, dim=-1).max(dim=-1, keepdim=True).values  # (batch, 1)
            shift = shift * (1.0 - top)
        elif self.config.residual_gate == "familiarity":
            shift = shift * self._gate(pooled)
        return shift

    @classmethod
    def from_members(cls, heads: list[ClipImageHead]) -> ClipImageHead:
        """One head whose learned map is the ensemble of `heads`' maps (each trained with
        `residual_members` 1 and otherwise the same config); the rest (class vectors, the familiarity
        gate, which its seed makes the same in every member) is the first head's."""
        first = heads[0]
        if any(h.config != first.config for h in heads) or first.config.residual_members != 1 or not first.residual:
            raise ValueError("merging needs single-map heads of one config")
        merged = cls(replace(first.config, residual_members=len(heads)), first.classifier, first.class_vectors.detach())
        state = {k: v for k, v in first.state_dict().items() if not k.startswith("residual.")}
        for m, head in enumerate(heads):
            state |= {f"residual.members.{m}.{k}": v for k, v in head.residual.state_dict().items()}  # type: ignore[union-attr]
        merged.load_state_dict(state)
        return merged

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("classifier.")}
        torch.save(state, folder / HEAD_FILE)
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")


class ClipImageEncoder(nn.Module):
    """The whole image side: tower (ImageNet weights, frozen) + head; what `image.onnx` computes."""

    def __init__(self, config: ClipImageConfig, class_vectors: torch.Tensor, pretrained: bool = True) -> None:
        super().__init__()
        if config.encoder_dim:
            raise ValueError(
                f"a head on a trained image encoder's features (encoder_dim {config.encoder_dim}) cannot be exported: "
                "image.onnx computes the tower's features alone"
            )
        self.tower = load_tower(config.tower, pretrained=pretrained).eval()
        for p in self.tower.parameters():
            p.requires_grad_(False)
        self.head = ClipImageHead(config, _classifier(self.tower), class_vectors)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the head takes: the final feature map where it has a spatial path, else pooled."""
        if self.head.spatial is not None:
            return run_stages(self.tower.stages(), pixels)  # type: ignore[operator]  # (batch, 1280, s, s)
        return self.tower.pooled(pixels)  # type: ignore[operator]  # (batch, 1280)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.head(self.features(pixels))  # (batch, dim)
        return F.normalize(embedding, dim=-1), embedding

    @classmethod
    def load(cls, folder: Path) -> ClipImageEncoder:
        """A head written by `ClipImageHead.save`, on its tower's ImageNet weights."""
        config = load_saved_config(ClipImageConfig, folder / CONFIG_FILE)
        state = torch.load(folder / HEAD_FILE, map_location="cpu", weights_only=True)
        model = cls(config, state["class_vectors"])
        try:
            missing, unexpected = model.head.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # tensors of other sizes than the config makes (an edited config)
            raise ValueError(f"{folder}: head state does not match its config: {' '.join(str(exc).split())}") from None
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise ValueError(f"{folder}: head state does not match its config ({missing=}, {unexpected=})")
        return model.eval()


class ResidualEnsemble(nn.Module):
    """Maps trained apart, averaged (see ClipImageConfig.residual_members)."""

    def __init__(self, members: list[nn.Module], unit: bool) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.unit = unit  # each member's output as a unit vector first (the head bounds the length)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        outputs = [member(pooled) for member in self.members]  # each (batch, dim)
        if self.unit:
            outputs = [F.normalize(o, dim=-1) for o in outputs]
        return torch.stack(outputs).mean(dim=0)


def _residual(config: ClipImageConfig, feature_dim: int) -> nn.Module | None:
    if config.residual == "none":
        return None
    if config.residual_members > 1:
        single = replace(config, residual_members=1)
        members = [_residual(single, feature_dim) for _ in range(config.residual_members)]
        return ResidualEnsemble(members, unit=config.residual_scale is not None)  # type: ignore[arg-type]
    if config.residual == "linear":
        residual: nn.Module = nn.Linear(feature_dim, config.dim, bias=False)
    elif config.residual == "mlp":
        residual = nn.Sequential(
            nn.Linear(feature_dim, config.residual_hidden), nn.GELU(), nn.Linear(config.residual_hidden, config.dim)
        )
    else:
        raise ValueError(f"unknown residual {config.residual!r}: mlp, linear or none")
    last = residual if isinstance(residual, nn.Linear) else residual[-1]
    if config.conse and config.residual_scale is None:
        nn.init.zeros_(last.weight)  # added unbounded: starts as ConSE exactly
        if last.bias is not None:
            nn.init.zeros_(last.bias)
    return residual


def spherical_kmeans(points: torch.Tensor, k: int, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """(n, d) unit vectors -> (min(k, n), d) unit centroids maximising the summed cosine (Lloyd's
    iterations with mean-then-normalise updates; an emptied cluster keeps its last centroid)."""
    generator = torch.Generator().manual_seed(seed)
    centroids = points[torch.randperm(len(points), generator=generator)[:k]].clone()
    for _ in range(iterations):
        assignment = (points @ centroids.T).argmax(dim=-1)  # (n,)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        filled = torch.bincount(assignment, minlength=len(centroids)) > 0
        centroids[filled] = F.normalize(sums[filled], dim=-1)
    return centroids


def _classifier(tower: nn.Module) -> nn.Linear:
    """The tower's final ImageNet layer (1280 -> 1000)."""
    for name in ("classifier", "_fc"):
        layer = getattr(tower, name, None)
        if isinstance(layer, nn.Sequential):
            layer = layer[-1]
        if isinstance(layer, nn.Linear):
            return layer
    raise ValueError(f"{type(tower).__name__} has no ImageNet classifier layer")
