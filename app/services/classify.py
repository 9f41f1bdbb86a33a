"""Zero-shot image classification: images and candidate labels into one space (a `clip` model),
cosine per image x label, softmax over the labels at the model's temperature."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.core.config import Settings
from app.core.errors import InputTooLong, ModelNotFound, TooManyInputs, UnsupportedInput
from app.core.manifest import ClipSpec
from app.inference.registry import ModelRegistry
from app.inference.served import Capability, Embedder
from app.services.embedding import check_image_count, check_input_chars, read_images
from app.services.image_sources import ImageFetcher

_BOTH = {Capability.EMBED_TEXT, Capability.EMBED_IMAGE}


@dataclass
class Classification:
    model: Embedder
    scores: np.ndarray  # (images, labels) cosines
    probabilities: np.ndarray  # (images, labels), rows sum to 1
    tokens: int


def classifier_model(registry: ModelRegistry, name: str | None) -> Embedder:
    """The named model, which must embed both images and text; else the first such model served."""
    if name is not None:
        model = registry.embedder(name)
        if not model.capabilities >= _BOTH:
            raise UnsupportedInput(
                f"model '{name}' is a {model.kind.value} model; classifying images by label needs a clip model"
            )
        return model
    candidates = sorted(n for n, m in registry.embedders.items() if m.capabilities >= _BOTH)
    if not candidates:
        raise ModelNotFound("no clip model is served (add a models/ folder of kind clip)")
    return registry.embedder(candidates[0])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


async def classify(
    registry: ModelRegistry,
    settings: Settings,
    fetcher: ImageFetcher,
    model: str | None,
    images: list[str],
    labels: list[str],
    prompt: str | None,
) -> Classification:
    if len(labels) > settings.max_classify_labels:
        raise TooManyInputs(f"{len(labels)} labels; at most {settings.max_classify_labels} per request")
    check_image_count(len(images), settings)
    embedder = classifier_model(registry, model)
    spec = embedder.manifest.clip or ClipSpec()
    prompts = [(prompt or spec.prompt).replace("{label}", label) for label in labels]
    check_input_chars(prompts, settings, what="label")
    # Truncating a label would classify by another label than the one asked: over the limit is a 413.
    try:
        text = await embedder.embed_text(prompts, truncate=False)
    except InputTooLong as exc:
        raise InputTooLong(
            exc.index,
            exc.length,
            exc.limit,
            f"label {exc.index} in its prompt has {exc.length} tokens, more than the model's limit of {exc.limit}",
        ) from exc
    pictures = await embedder.embed_images(await read_images(images, list(range(len(images))), settings, fetcher))
    scores = pictures.vectors @ text.vectors.T  # (images, labels); both unit vectors
    return Classification(embedder, scores, softmax(scores / spec.temperature), text.tokens)
