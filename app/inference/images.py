"""Image decoding and preprocessing (Pillow + numpy), exactly as the manifest's image section says.

Hostile input is the normal case here: every size is checked before the pixels are decoded (the
header gives them), formats are an allow-list, and whatever Pillow opens becomes 8-bit RGB the same
way every time (EXIF orientation applied; greyscale, 16-bit, palette, RGBA and CMYK converted; alpha
composited onto the manifest's background). Errors are domain errors: `InvalidImage` (422) and
`ImageTooLarge` (413).
"""

from __future__ import annotations

import asyncio
import io
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.core import metrics
from app.core.errors import ImageTooLarge, InvalidImage, QueueFull
from app.core.manifest import ImageTower

# Formats we decode; anything else is refused before a decoder runs on it.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Pillow's own bomb guard is a warning below 2x its limit; we check ours first and silence its.
Image.MAX_IMAGE_PIXELS = None
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # width x height from the header, before decoding


def open_image(data: bytes, limits: ImageLimits, index: int = 0, draft: int | None = None) -> Image.Image:
    """Decode `data` to a Pillow image, or raise InvalidImage / ImageTooLarge. `draft`: a JPEG at least
    twice that size on both sides is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, far
    faster), never below `draft` pixels a side; what the model sees after resizing barely changes."""
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image {index} has {len(data)} bytes, more than the limit of {limits.max_bytes}")
    if not data:
        raise InvalidImage(f"image {index} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
            width, height = image.size
            if width <= 0 or height <= 0:
                raise InvalidImage(f"image {index} has no pixels ({width}x{height})")
            if width * height > limits.max_pixels:
                raise ImageTooLarge(
                    f"image {index} is {width}x{height} = {width * height} pixels, more than the limit of "
                    f"{limits.max_pixels}"
                )
            image.seek(0)  # animated formats: the first frame
            if draft and image.format == "JPEG":
                image.draft(image.mode, (draft, draft))
            image.load()
            image = ImageOps.exif_transpose(image) or image
    except UnidentifiedImageError:
        raise InvalidImage(f"image {index} is not an image in a supported format ({', '.join(FORMATS)})") from None
    except (InvalidImage, ImageTooLarge):
        raise
    except Exception as exc:  # third-party decoders handed hostile bytes raise anything
        # (OSError, ValueError, SyntaxError, struct.error, IndexError ... for truncated or corrupt data)
        raise InvalidImage(f"image {index} could not be decoded: {exc}") from None
    return image


def _rgba_if_transparent(image: Image.Image) -> Image.Image:
    """Modes that carry transparency (alpha channel, or a palette's transparent index) as RGBA;
    other images as given."""
    if image.mode == "La":  # greyscale with premultiplied alpha (TIFF): Pillow converts it only to LA
        image = image.convert("LA")
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("LA", "PA", "RGBa"):
        return image.convert("RGBA")
    return image


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: alpha composited onto `background`, high bit depths scaled."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(scaled.round().astype(np.uint8), "L")
    image = _rgba_if_transparent(image)
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, background)
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB") if image.mode != "RGB" else image


# Names the rule `trim_to_visible` follows, for caches of what it produced: change it with the rule.
TRIM_RULE = "trim2"


def trim_to_visible(image: Image.Image, margin: float, max_side: int = 1024) -> Image.Image:
    """An image with transparency cut to the box of its visible pixels (alpha > 16) and centred on a
    transparent square `margin` x the box's longer side wider on each side (also when the visible
    pixels reach every edge, as in 12% of the emoji drawings: every drawing then gets the same
    margin); images without transparency, and fully transparent ones, as given. An alpha channel
    with no transparent pixel is no transparency: a photo saved as RGBA embeds as its JPEG does. A
    visible box longer than `max_side` is shrunk to it first: the square around a long thin box
    would otherwise hold (longer side)^2 pixels, far more than the decoded-pixel limit allowed in."""
    image = _rgba_if_transparent(image)
    if image.mode != "RGBA":
        return image
    visible_mask = image.getchannel("A").point(lambda a: 255 if a > 16 else 0)
    box = visible_mask.getbbox()
    if box is None or visible_mask.getextrema()[0] == 255:  # nothing visible, or nothing transparent
        return image
    visible = image.crop(box)
    if max(visible.size) > max_side:
        visible.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    side = max(1, round(max(visible.size) * (1 + 2 * margin)))
    canvas = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    canvas.paste(visible, ((side - visible.width) // 2, (side - visible.height) // 2))
    return canvas


def trim_key(margin: float | None) -> str:
    """A cache-key fragment for images preprocessed with `trim_transparent` = `margin` ("" for none)."""
    return "" if margin is None else f"|{TRIM_RULE}:{margin}"


def preprocess(image: Image.Image, tower: ImageTower) -> np.ndarray:
    """RGB image -> (3, input_size, input_size) float32, as the manifest's image section says."""
    if tower.trim_transparent is not None:
        image = trim_to_visible(image, tower.trim_transparent, max_side=4 * tower.resize_size)
    image = to_rgb(image, tuple(tower.background))  # type: ignore[arg-type]
    resample = _RESAMPLE[tower.interpolation]
    width, height = image.size
    if tower.resize == "squash":
        image = image.resize((tower.resize_size, tower.resize_size), resample)
    else:
        scale = tower.resize_size / min(width, height)
        image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), resample)
    if tower.crop == "center":
        image = center_crop(image, tower.input_size)
    elif image.size != (tower.input_size, tower.input_size):
        image = image.resize((tower.input_size, tower.input_size), resample)
    pixels = np.asarray(image, dtype=np.float32) / 255.0  # (H, W, 3)
    if tower.channel_order == "BGR":
        pixels = pixels[..., ::-1]
    pixels = (pixels - np.asarray(tower.mean, np.float32)) / np.asarray(tower.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)  # (3, H, W)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The centre size x size square (padded with black when the image is smaller, as torchvision)."""
    width, height = image.size
    if width < size or height < size:
        canvas = Image.new("RGB", (max(width, size), max(height, size)))
        canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
        image, width, height = canvas, canvas.width, canvas.height
    left, top = round((width - size) / 2), round((height - size) / 2)
    return image.crop((left, top, left + size, top + size))


def thumbnail_jpeg(image: Image.Image, side: int = 96, quality: int = 80) -> bytes:
    """A small JPEG of `image` (longer side `side`), for collections that keep thumbnails."""
    small = to_rgb(image).copy()
    small.thumbnail((side, side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def load_pixels(data: bytes, tower: ImageTower, limits: ImageLimits, index: int = 0) -> np.ndarray:
    """Bytes -> the model's input (3, S, S): decode under the limits, then preprocess."""
    image = open_image(data, limits, index, draft=tower.resize_size)
    try:
        return preprocess(image, tower)
    except Exception as exc:  # a mode Pillow cannot convert (LAB, HSV ...), a broken palette
        raise InvalidImage(f"image {index} could not be converted to RGB: {exc}") from None


class ImageDecoder:
    """A bounded pool that decodes and preprocesses images off the event loop. Pillow releases the
    GIL while decoding and resizing, so this runs in parallel with the inference streams. More than
    `max_pending` images waiting -> QueueFull (429), so a flood of large images cannot pile up."""

    def __init__(
        self,
        load: Callable[[bytes, ImageLimits, int], np.ndarray],
        limits: ImageLimits,
        workers: int,
        max_pending: int,
        name: str,
    ) -> None:
        self._load = load
        self.limits = limits
        self.max_pending = max_pending
        self._pending = 0
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"decode-{name}")
        self._seconds = metrics.IMAGE_DECODE_SECONDS.labels(name)

    def _timed(self, data: bytes, index: int) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self._load(data, self.limits, index)
        finally:
            self._seconds.observe(time.perf_counter() - started)

    async def decode(self, images: list[bytes], positions: list[int] | None = None) -> list[np.ndarray]:
        """Each image's model input, in order; the first bad image's error is raised, naming the
        image by its position in the request (`positions`, default 0..n-1)."""
        positions = positions or list(range(len(images)))
        if self._pending and self._pending + len(images) > self.max_pending:
            raise QueueFull(f"server busy: {self._pending} images waiting to be decoded (limit {self.max_pending})")
        self._pending += len(images)
        loop = asyncio.get_running_loop()
        futures = [
            loop.run_in_executor(self._executor, self._timed, data, i)
            for i, data in zip(positions, images, strict=True)
        ]
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()  # the request failed or went away: skip what has not started
            self._pending -= len(images)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
