"""Random views of a training image, shared by the image encoder's and the clip head's trainers."""

from __future__ import annotations

import random

from PIL import Image, ImageFilter, ImageOps

from app.inference.images import to_rgb

# Cached features of augmented copies are keyed by this: bump it whenever augment_view's output for a
# given image and random state changes, or both trainers would reuse copies drawn by the old code.
AUGMENT_VERSION = 1


def augment_view(image: Image.Image, rng: random.Random, appearance: bool = True) -> Image.Image:
    """A random view of one image: geometry (resized crop of 60-100% of the side, flip, small
    rotation) and, with `appearance`, one change that imitates another art style (greyscale, flat
    colours with dark outlines, shifted hues, blur), so a head learns what survives a change of
    style. The view is opaque RGB: transparency is composited away first."""
    image = to_rgb(image)
    width, height = image.size
    scale = rng.uniform(0.6, 1.0)
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    image = image.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    image = image.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
    if not appearance:
        return image
    style = rng.choice(("none", "grey", "outline", "hue", "blur"))
    if style == "grey":
        image = ImageOps.grayscale(image).convert("RGB")
    elif style == "outline":  # flat colours and dark contours, as line-art emoji sets draw them
        flat = ImageOps.posterize(image, 2)
        edges = ImageOps.grayscale(image).filter(ImageFilter.FIND_EDGES).point(lambda v: 255 if v > 40 else 0)
        image = Image.composite(
            Image.new("RGB", image.size, (20, 20, 20)), flat, edges.filter(ImageFilter.MaxFilter(3))
        )
    elif style == "hue":
        image = Image.merge("RGB", [image.getchannel(c) for c in rng.choice(("GBR", "BRG", "RBG"))])
    elif style == "blur":
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.0)))
    return image
