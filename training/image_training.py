"""Image-to-image contrastive training (the CLIP-ReIdent idea): class-agnostic InfoNCE between two
views of one identity, here two art styles of one emoji codepoint (plus optional augmented copies).

The tower's frozen stages never change, so their activations are computed once per image and cached
(`cache_dir`); each step runs only the trainable stages and the projection head. Identities are split
by codepoint (never train on a test identity) and `eval_styles` may include a style that is not in
`train_styles` (held out entirely). Metrics before (the raw ImageNet features, no head) and after.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.inference.images import ImageLimits, open_image, trim_key, trim_to_visible
from training.config import ImageTrainConfig
from training.data.augment import AUGMENT_VERSION, augment_view
from training.data.images import (
    Identity,
    emoji_path,
    load_identities,
    load_idx_split,
    split_identities,
)
from training.distributed import Workers, gather_segments, setup_workers, shard_rows, shutdown, sum_gradients
from training.eval.images import cross_style_recall, identity_map, precision_at_k
from training.export.image import image_tower_section
from training.feature_style import perturb_style
from training.features import cached, onnx_outputs
from training.losses.layouts import BatchLayout
from training.losses.registry import build_embedding_loss
from training.models.image import ImageEncoder, ImageEncoderConfig
from training.run import RunFolder, seed_everything

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """Frozen-stage activations of a list of images, with each image's identity and view name."""

    activations: torch.Tensor  # (n, ...) float16
    identities: list[str]
    views: list[str]


class _FrozenStages(torch.nn.Module):
    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder.frozen_activations(pixels)


def _activations(encoder: ImageEncoder, images: list[Image.Image], tower) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The frozen stages' output for `images`, float16."""
    return onnx_outputs(_FrozenStages(encoder), images, tower)


def emoji_set(
    encoder: ImageEncoder,
    config: ImageTrainConfig,
    identities: list[Identity],
    styles: list[str],
    augmented_styles: list[str],
) -> ImageSet:
    """Activations of every (identity, style) image present, plus `augment_views` augmented copies of
    the images in `augmented_styles`. Computed once for all identities (the augmentations drawn
    with a fixed seed), so runs with other seeds and splits reuse the cache."""
    tower = image_tower_section(encoder)
    limits = ImageLimits()
    ids, views, images = [], [], []
    rng = random.Random(0)
    for identity in identities:
        for style in styles:
            if style not in identity.styles:
                continue
            image = open_image(emoji_path(config.data, style, identity.unified).read_bytes(), limits)
            ids.append(identity.unified)
            views.append(style)
            images.append(image)  # trimmed (if set) by the tower section's preprocessing, as served
            if config.trim_transparent is not None:  # the copies' source: augmenting drops transparency
                image = trim_to_visible(image, config.trim_transparent)
            for copy in range(config.augment_views if style in augmented_styles else 0):
                ids.append(identity.unified)
                views.append(f"{style}~{copy}")
                images.append(augment_view(image, rng))
    preprocessing = f"{config.tower}|{config.unfreeze_blocks}{trim_key(config.trim_transparent)}"
    # AUGMENT_VERSION: the copies above are drawn by augment_view, whose output that version names
    key = f"emoji-v4|aug{AUGMENT_VERSION}|{preprocessing}|{config.data.resolve()}|" + ",".join(
        f"{i}/{v}" for i, v in zip(ids, views, strict=True)
    )
    activations = cached(config.cache_dir, key, lambda: _activations(encoder, images, tower))
    return ImageSet(activations, ids, views)


def subset(image_set: ImageSet, identities: set[str], styles: set[str], augmented: bool) -> ImageSet:
    """The rows of `identities` in `styles` (with their augmented copies when `augmented`)."""
    rows = [
        n
        for n, (i, v) in enumerate(zip(image_set.identities, image_set.views, strict=True))
        if i in identities and v.split("~")[0] in styles and (augmented or "~" not in v)
    ]
    return ImageSet(
        image_set.activations[rows],
        [image_set.identities[n] for n in rows],
        [image_set.views[n] for n in rows],
    )


def _pairs(image_set: ImageSet, rng: random.Random) -> list[tuple[int, int]]:
    """One (view, other view) pair per identity, drawn afresh each epoch."""
    by_identity: dict[str, list[int]] = {}
    for row, identity in enumerate(image_set.identities):
        by_identity.setdefault(identity, []).append(row)
    pairs = [tuple(rng.sample(rows, 2)) for rows in by_identity.values() if len(rows) >= 2]
    rng.shuffle(pairs)
    return pairs  # type: ignore[return-value]


def _category_batches(
    pairs: list[tuple[int, int]], image_set: ImageSet, category_of: dict[str, str], batch: int, rng: random.Random
) -> list[tuple[int, int]]:
    """`pairs` (shuffled) reordered so each category's pairs are together, the categories in a
    random order, cut into whole batches of `batch` in a random order (the partial last one left
    out, as the epoch loop leaves it): most of a batch's pairs share a category. Fewer pairs than
    one batch: all of them, as the epoch loop's one step takes them."""
    rank = {category: rng.random() for category in sorted(set(category_of.values()))}
    ordered = sorted(pairs, key=lambda pair: rank[category_of[image_set.identities[pair[0]]]])
    if len(ordered) < batch:
        return ordered
    batches = [ordered[i : i + batch] for i in range(0, len(ordered) - batch + 1, batch)]
    rng.shuffle(batches)
    return [pair for chunk in batches for pair in chunk]


def _embed(encoder: ImageEncoder, activations: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [
                encoder.from_activations(activations[i : i + 512].float()).numpy()
                for i in range(0, len(activations), 512)
            ]
        )


def evaluate_emoji(encoder: ImageEncoder, test: ImageSet, styles: list[str], train_styles: list[str]) -> dict:
    """`emoji_metrics` of the encoder's vectors of the test images."""
    vectors = _embed(encoder.eval(), test.activations)
    return emoji_metrics(vectors, test.identities, test.views, styles, train_styles)


def style_pair_rows(
    identities: list[str], views: list[str], styles: list[str]
) -> Iterator[tuple[str, str, list[int], list[int]]]:
    """For each ordered pair (a, b) of distinct `styles`: a, b, and the rows in style a and in style b
    of the identities having both (one row per (identity, view); the two lists in the same order)."""
    row = {(i, v): n for n, (i, v) in enumerate(zip(identities, views, strict=True))}
    for a in styles:
        for b in styles:
            if a != b:
                common = sorted({i for i, v in row if v == a} & {i for i, v in row if v == b})
                yield a, b, [row[i, a] for i in common], [row[i, b] for i in common]


def emoji_metrics(
    vectors: np.ndarray, identities: list[str], views: list[str], styles: list[str], train_styles: list[str]
) -> dict:
    """Cross-style Recall@1/@10 per ordered style pair (on identities having both), their means (all
    pairs; pairs with a style never trained on), and identity mAP over every row (one row per
    (identity, view) of `vectors`)."""
    metrics: dict[str, float] = {}
    held_out: list[float] = []
    all_pairs: list[float] = []
    for a, b, query_rows, gallery_rows in style_pair_rows(identities, views, styles):
        recall = cross_style_recall(vectors[query_rows], vectors[gallery_rows])
        for k, value in recall.items():
            metrics[f"{a}->{b} {k}"] = round(value, 4)
        all_pairs.append(recall["recall@1"])
        if a not in train_styles or b not in train_styles:
            held_out.append(recall["recall@1"])
    metrics["cross_style recall@1 (mean)"] = round(float(np.mean(all_pairs)), 4)
    if held_out:
        metrics["held_out_style recall@1 (mean)"] = round(float(np.mean(held_out)), 4)
    metrics["identity mAP"] = round(identity_map(vectors, np.asarray(identities)), 4)
    return metrics


def fashion_mnist_set(encoder: ImageEncoder, config: ImageTrainConfig) -> tuple[torch.Tensor, np.ndarray] | None:
    if config.fashion_mnist is None:
        return None
    images, labels = load_idx_split(config.fashion_mnist, "t10k")
    if config.fashion_mnist_limit:
        images, labels = images[: config.fashion_mnist_limit], labels[: config.fashion_mnist_limit]
    tower = image_tower_section(encoder)
    key = f"fmnist-v2|{config.tower}|{config.unfreeze_blocks}|{config.fashion_mnist.resolve()}|{len(images)}"
    activations = cached(
        config.cache_dir, key, lambda: _activations(encoder, [Image.fromarray(im, "L") for im in images], tower)
    )
    return activations, labels


def _raw_encoder(config: ImageTrainConfig) -> ImageEncoder:
    """The tower's raw pooled ImageNet features, no head: the `before` of a run."""
    raw = ImageEncoderConfig(config.tower, None, config.unfreeze_blocks, trim_transparent=config.trim_transparent)
    return ImageEncoder(raw, pretrained=True).eval()


def _encoder(config: ImageTrainConfig) -> ImageEncoder:
    return ImageEncoder(
        ImageEncoderConfig(
            config.tower,
            config.projection_dim,
            config.unfreeze_blocks,
            config.projection_init,
            config.head,
            config.spatial_channels,
            config.trim_transparent,
        ),
        pretrained=True,
    )


@dataclass
class _Data:
    train: ImageSet
    test: ImageSet
    eval_styles: list[str]
    fashion_mnist: tuple[torch.Tensor, np.ndarray] | None
    train_identities: int


def _prepare(encoder: ImageEncoder, config: ImageTrainConfig) -> _Data:
    """Identities split by codepoint, the frozen stages' activations (cached) of both sides, and
    Fashion-MNIST's when configured."""
    identities = load_identities(config.data)
    if config.max_identities:
        identities = sorted(identities, key=lambda i: i.unified)[:: max(1, len(identities) // config.max_identities)]
        identities = identities[: config.max_identities]
    train_ids, test_ids = split_identities(identities, config.test_identities, config.split_seed)
    eval_styles = [s for s in config.eval_styles if any(s in i.styles for i in test_ids)]
    started = time.perf_counter()
    styles = list(dict.fromkeys([*config.train_styles, *eval_styles]))
    every = emoji_set(encoder, config, identities, styles, config.train_styles)
    train_set = subset(every, {i.unified for i in train_ids}, set(config.train_styles), augmented=True)
    test_set = subset(every, {i.unified for i in test_ids}, set(eval_styles), augmented=False)
    fmnist = fashion_mnist_set(encoder, config)
    log.info("activations ready in %.0f s (%d train views)", time.perf_counter() - started, len(train_set.identities))
    return _Data(train_set, test_set, eval_styles, fmnist, len(train_ids))


def _evaluate(model: ImageEncoder, data: _Data, config: ImageTrainConfig) -> dict:
    metrics = evaluate_emoji(model, data.test, data.eval_styles, config.train_styles)
    if data.fashion_mnist is not None:
        activations, labels = data.fashion_mnist
        metrics["fashion_mnist precision@10"] = round(precision_at_k(_embed(model, activations), labels), 4)
    return metrics


def _fit(
    encoder: ImageEncoder,
    train_set: ImageSet,
    config: ImageTrainConfig,
    rng: random.Random,
    run: RunFolder | None,
    workers: Workers | None = None,
) -> None:
    """InfoNCE (or another pair loss) between two views of each identity, one pair per identity per
    epoch, on the cached activations; one JSON line per step in the run folder (rank 0's `run`).
    Data parallel under torchrun: the global batch is `batch_size` x processes, each rank embeds its
    share of both views, the loss sees the gathered batch and the gradients are summed (the
    one-process step exactly when no BatchNorm trains, i.e. unfreeze_blocks 0)."""
    workers = workers or Workers()
    if workers.enabled and config.unfreeze_blocks:
        # SyncBatchNorm runs on GPUs only; on CPU processes each rank normalises by its own shard.
        log.warning("unfreeze_blocks > 0 under %d processes: BatchNorm statistics are per process", workers.world_size)
    loss_fn = build_embedding_loss(config.loss)
    if loss_fn.layout != BatchLayout.PAIRS:
        raise ValueError(f"loss {config.loss.name} does not take (view, view) pairs")
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable + list(loss_fn.parameters()), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    global_batch = config.batch_size * workers.world_size
    steps_per_epoch = max(1, len(_pairs(train_set, random.Random(0))) // global_batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.learning_rate, total_steps=steps_per_epoch * config.epochs, pct_start=0.1
    )

    def embed(rows: list[int]) -> torch.Tensor:  # (len(rows), dim); this rank computes its share
        mine = shard_rows(rows, [1], len(rows), workers)
        activations = train_set.activations[mine].float()  # frozen activations in
        if config.feature_style is not None:
            activations = perturb_style(activations, config.feature_style)
        local = encoder.from_activations(activations)
        return gather_segments(local, [1], len(rows), workers)

    category_of = (
        {i.unified: i.category for i in load_identities(config.data)} if config.batching == "by_category" else None
    )
    step = 0
    with run.step_log() if run is not None else nullcontext() as steps:
        for epoch in range(config.epochs):
            encoder.train()
            pairs = _pairs(train_set, rng)
            if category_of is not None:
                pairs = _category_batches(pairs, train_set, category_of, global_batch, rng)
            for start in range(0, steps_per_epoch * global_batch, global_batch):
                batch = pairs[start : start + global_batch]
                loss = loss_fn(embed([a for a, _ in batch]), embed([b for _, b in batch]))
                optimizer.zero_grad()
                loss.backward()
                sum_gradients(trainable, workers)
                optimizer.step()
                scheduler.step()
                step += 1
                if steps is not None:
                    steps.write({"step": step, "epoch": epoch, "loss": round(loss.item(), 5)})


def train_image_encoder(config: ImageTrainConfig) -> dict:
    """Train, evaluate before/after on held-out identities and Fashion-MNIST, save, export. Under
    torchrun rank 0 prepares the cached activations first, and alone evaluates, saves and exports."""
    workers = setup_workers("cpu")  # trains on cached activations of a frozen tower
    rng = seed_everything(config.seed)
    run = RunFolder(config.runs_dir, config.name) if workers.is_main else None
    if run is not None:
        run.write_config(config)
    encoder = _encoder(config)
    baseline = _raw_encoder(config)
    with workers.main_first():
        data = _prepare(encoder, config)
    before = _evaluate(baseline, data, config) if run is not None else {}
    _fit(encoder, data.train, config, rng, run, workers)
    shutdown(workers)
    if run is None:
        return {}
    after = _evaluate(encoder.eval(), data, config)
    encoder.save(run.path / "model")
    metrics = {
        "before": before,
        "after": after,
        "train_identities": data.train_identities,
        "test_identities": config.test_identities,
    }
    run.write_metrics(metrics)
    if config.export is not None:
        metrics["export_dir"] = str(export_trained(run.path / "model", config, after))
    return metrics


def raw_features_metrics(config: ImageTrainConfig, tower: str) -> dict:
    """Metrics of `tower`'s raw pooled ImageNet features (no head, no training) on `config`'s split
    and evaluation sets: a baseline from another tower than the one trained (the issue's baseline is
    MobileNetV2's, whichever tower is served)."""
    other = config.model_copy(update={"tower": tower, "trim_transparent": None})  # ImageNet preprocessing
    baseline = _raw_encoder(other)
    return _evaluate(baseline, _prepare(baseline, other), other)


def export_trained(model_dir: Path, config: ImageTrainConfig, scores: dict) -> Path:
    from training.export.image import export_image_model, parity_image_files

    assert config.export is not None
    target = config.export.models_dir / config.export.name
    numeric = {k: float(v) for k, v in scores.items() if isinstance(v, int | float)}
    images = parity_image_files(config.export.parity_images)
    export_image_model(str(model_dir), target, config.export.name, images, eval_scores=numeric)
    return target
