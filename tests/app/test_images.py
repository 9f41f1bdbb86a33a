"""Image decoding and preprocessing on real (generated) files, including hostile ones."""

from __future__ import annotations

import io
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from app.core.errors import ImageTooLarge, InvalidImage
from app.core.manifest import ImageTower, OnnxIO
from app.inference.images import (
    ImageLimits,
    center_crop,
    load_pixels,
    open_image,
    preprocess,
    to_rgb,
    trim_to_visible,
)

TOWER = ImageTower(
    input_size=32,
    resize_size=36,
    mean=[0.5, 0.5, 0.5],
    std=[0.25, 0.25, 0.25],
    onnx=OnnxIO(inputs=["pixel_values"], output="image_embedding"),
)
LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=4_000_000)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=-1), "RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and whose pixel data is one empty row: the shape of
    a decompression bomb (a tiny file that would decode to gigabytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + (zlib.crc32(kind + data) & 0xFFFFFFFF).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def test_preprocess_shape_and_normalisation() -> None:
    pixels = load_pixels(encode(Image.new("RGB", (50, 40), (128, 0, 255))), TOWER, LIMITS)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.float32
    expected = (np.array([128, 0, 255]) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(pixels[:, 16, 16], expected, atol=1e-5)


def test_resize_shortest_then_center_crop_keeps_the_middle() -> None:
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (140, 0, 160, 100))  # a blue bar in the middle
    pixels = preprocess(wide, TOWER)
    assert pixels[2, 16, 16] > pixels[0, 16, 16]  # the centre is blue, not red
    assert center_crop(Image.new("RGB", (10, 10)), 32).size == (32, 32)  # smaller: padded


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    source = gradient().convert("RGBA" if mode in ("LA", "PA") else "RGB")
    image = source.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16", "I", "F", "PA", "LA") else "PNG"
    decoded = open_image(encode(image, fmt), LIMITS)
    rgb = to_rgb(decoded)
    assert rgb.mode == "RGB" and rgb.size == (64, 48)
    assert np.isfinite(preprocess(decoded, TOWER)).all()


def test_transparency_goes_onto_the_background() -> None:
    clear = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((5, 5)) == (255, 255, 255)
    assert to_rgb(clear, (0, 0, 0)).getpixel((5, 5)) == (0, 0, 0)


def sticker(canvas: int, box: tuple[int, int, int, int], colour: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    """A transparent canvas with one opaque rectangle (an emoji with its empty border)."""
    image = Image.new("RGBA", (canvas, canvas), (0, 0, 0, 0))
    image.paste(Image.new("RGBA", (box[2] - box[0], box[3] - box[1]), (*colour, 255)), box[:2])
    return image


def test_trim_cuts_a_transparent_image_to_its_visible_pixels_with_a_margin() -> None:
    trimmed = trim_to_visible(sticker(64, (20, 24, 40, 34)), margin=0.1)  # 20 x 10 visible
    assert trimmed.size == (24, 24)  # the longer side 20, plus 10% on each side
    alpha = np.asarray(trimmed.getchannel("A"))
    rows, cols = np.nonzero(alpha)
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (2, 21, 7, 16)  # centred


def test_trim_of_a_long_thin_image_stays_small() -> None:
    """A 40,000 x 1 opaque line on a transparent canvas is within the decoded-pixel limit; the
    square around it must not be 40,000^2 pixels (6.4 GB)."""
    line = Image.new("RGBA", (40_000, 3), (0, 0, 0, 0))
    line.paste(Image.new("RGBA", (40_000, 1), (9, 9, 9, 255)), (0, 1))
    trimmed = trim_to_visible(line, margin=0.04, max_side=1024)
    assert max(trimmed.size) <= round(1024 * 1.08)
    tower = TOWER.model_copy(update={"trim_transparent": 0.04})
    assert preprocess(line, tower).shape == (3, 32, 32)


def test_trim_puts_drawings_with_different_borders_at_one_scale() -> None:
    tower = TOWER.model_copy(update={"trim_transparent": 0.05})
    small, large = sticker(64, (24, 24, 40, 40)), sticker(64, (4, 4, 60, 60))
    trimmed = np.abs(preprocess(small, tower) - preprocess(large, tower)).mean()  # resampled edges differ
    untrimmed = np.abs(preprocess(small, TOWER) - preprocess(large, TOWER)).mean()
    assert trimmed < 0.15 and untrimmed > 1.5, (trimmed, untrimmed)


@pytest.mark.parametrize(
    "image",
    [
        gradient(),
        Image.new("RGBA", (16, 16), (0, 0, 0, 0)),
        Image.new("L", (8, 8), 9),
    ],
)
def test_trim_leaves_opaque_and_empty_images_alone(image: Image.Image) -> None:
    tower = TOWER.model_copy(update={"trim_transparent": 0.05})
    np.testing.assert_array_equal(preprocess(image, tower), preprocess(image, TOWER))


def test_an_opaque_rgba_photo_embeds_as_its_rgb_copy() -> None:
    """An alpha channel without a transparent pixel is no transparency: the same photo as an RGBA
    PNG and as a JPEG-like RGB image preprocesses alike (no square canvas, no margin)."""
    photo = gradient()  # 64 x 48: a margin and a square canvas would show as bands
    rgba = photo.convert("RGBA")
    tower = TOWER.model_copy(update={"trim_transparent": 0.04})
    np.testing.assert_array_equal(preprocess(rgba, tower), preprocess(photo, tower))
    assert trim_to_visible(rgba, 0.04).size == (64, 48)


def test_a_drawing_reaching_every_edge_still_gets_the_margin() -> None:
    """One transparent pixel is enough: drawings that touch the canvas edges keep the same margin as
    the rest (the rule the served models were trained with)."""
    drawing = Image.new("RGBA", (40, 40), (10, 120, 200, 255))
    drawing.putpixel((0, 0), (0, 0, 0, 0))
    assert trim_to_visible(drawing, 0.1).size == (48, 48)


def test_a_tiff_with_premultiplied_grey_alpha_is_composited() -> None:
    """Greyscale + associated (premultiplied) alpha decodes as Pillow's "La", which it converts only
    to "LA": it must embed, not be refused as unconvertible. Grey 100 premultiplied by alpha 200 is
    straight grey 127.5; on white that is 127.5 * 200/255 + 255 * 55/255 = 155."""
    pixels = np.zeros((8, 8, 2), np.uint8)
    pixels[..., 0], pixels[..., 1] = 100, 200
    data = encode(Image.fromarray(pixels, "LA"), "TIFF")
    unassociated = b"\x52\x01\x03\x00\x01\x00\x00\x00\x02\x00"  # ExtraSamples = 2, little-endian
    assert data.count(unassociated) == 1
    decoded = open_image(data.replace(unassociated, unassociated[:8] + b"\x01\x00"), LIMITS)
    assert decoded.mode == "La"
    assert abs(to_rgb(decoded).getpixel((3, 3))[0] - 155) <= 1
    assert np.isfinite(preprocess(decoded, TOWER.model_copy(update={"trim_transparent": 0.04}))).all()


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (60, 30), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 30, 30))  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = open_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95), LIMITS)
    assert decoded.size == (30, 60)
    assert decoded.getpixel((15, 5))[0] > 200 and decoded.getpixel((15, 55))[0] < 50


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_supported_formats_decode(fmt: str) -> None:
    assert open_image(encode(gradient(), fmt), LIMITS).size == (64, 48)


def test_not_an_image_is_refused() -> None:
    with pytest.raises(InvalidImage, match="not an image"):
        open_image(b"%PDF-1.4 this is a document, not a picture", LIMITS)
    with pytest.raises(InvalidImage, match="empty"):
        open_image(b"", LIMITS)


def test_unsupported_format_is_refused() -> None:
    icon = encode(gradient(32, 32), "ICO")
    with pytest.raises(InvalidImage, match="supported format"):
        open_image(icon, LIMITS)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    with pytest.raises(InvalidImage):
        open_image(svg, LIMITS)


def test_truncated_jpeg_is_refused() -> None:
    data = encode(gradient(400, 300), "JPEG")
    with pytest.raises(InvalidImage, match="could not be decoded"):
        open_image(data[: len(data) // 2], LIMITS)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = png_header_only(20_000, 20_000)
    assert len(bomb) < 100
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="20000x20000"):
        open_image(bomb, ImageLimits(max_bytes=1 << 20, max_pixels=40_000_000))
    assert time.perf_counter() - started < 0.5  # the pixels were never decoded


def test_a_real_20000_square_png_is_refused_from_its_header() -> None:
    data = encode(Image.new("1", (20_000, 20_000)), "PNG")  # 50 MB of pixels in a small file
    with pytest.raises(ImageTooLarge):
        open_image(data, ImageLimits(max_bytes=10 << 20, max_pixels=40_000_000))


def test_byte_limit() -> None:
    data = encode(gradient(), "BMP")
    with pytest.raises(ImageTooLarge, match="bytes"):
        open_image(data, ImageLimits(max_bytes=len(data) - 1, max_pixels=10**9))


def test_animated_gif_uses_its_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    decoded = to_rgb(open_image(buffer.getvalue(), LIMITS))
    assert decoded.getpixel((5, 5))[0] > 200


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF"])
def test_mutated_files_fail_cleanly(fmt: str) -> None:
    """Bit flips, cut-offs and spliced bytes in real files: decoded or refused with a domain error,
    never another exception (which the API would answer with a 500)."""
    import random

    rng = random.Random(fmt)
    original = encode(gradient(120, 90), fmt)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(150):
        data = bytearray(original)
        kind = rng.choice(("flip", "cut", "splice", "zero"))
        if kind == "flip":
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == "cut":
            data = data[: rng.randrange(1, len(data))]
        elif kind == "splice":
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        else:
            at = rng.randrange(len(data))
            data[at : at + 16] = bytes(16)
        try:
            load_pixels(bytes(data), TOWER, LIMITS)
            outcomes["ok"] += 1
        except (InvalidImage, ImageTooLarge):
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0


@pytest.mark.parametrize("mode", ["LAB", "YCbCr"])
def test_unusual_modes_convert_or_are_refused(mode: str) -> None:
    image = gradient().convert(mode) if mode != "LAB" else Image.new("LAB", (20, 20))
    try:
        data = encode(image, "TIFF")
    except OSError:
        pytest.skip(f"Pillow cannot write {mode} TIFF")
    try:
        pixels = load_pixels(data, TOWER, LIMITS)
        assert pixels.shape == (3, 32, 32)
    except InvalidImage:
        pass
