"""A folder of images as builder input: every JPEG, PNG and WebP under it (recursively, sorted), and
an optional sidecar `metadata.jsonl` at its root, one object per line keyed by `file` (the path
relative to the folder), whose `text` (or `caption`) becomes the document's text and whose other
fields become metadata.

A document's id is its relative path with "/" written as ":" (ids cannot hold "/"); its `image`
reference is the file's absolute path. Planning opens every file's header (format, width x height
against the pixel limit) without decoding the pixels.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from app.core.errors import InvalidRequest
from app.inference.images import ImageLimits

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
SIDECAR = "metadata.jsonl"
FORMATS = ("JPEG", "PNG", "WEBP")


def image_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root] if root.suffix.lower() in IMAGE_SUFFIXES else []
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def image_id(root: Path, file: Path) -> str:
    relative = file.name if root.is_file() else file.relative_to(root).as_posix()
    return relative.replace("/", ":")


def read_sidecar(root: Path, error: type[InvalidRequest]) -> dict[str, dict[str, Any]]:
    """`file` -> its sidecar fields; errors name the line."""
    path = root / SIDECAR
    if root.is_file() or not path.is_file():
        return {}
    try:
        content = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is not part of line 1
    except UnicodeDecodeError as exc:
        line_no = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise error(f"{path}:{line_no}: not UTF-8 text ({exc.reason})") from exc
    entries: dict[str, dict[str, Any]] = {}
    for line_no, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: invalid JSON ({exc.msg}, column {exc.colno})") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("file"), str):
            raise error(f"{where}: expected an object with a 'file' field (the image's path in the folder)")
        file = raw.pop("file")
        if file in entries:
            raise error(f"{where}: {file!r} appears twice in {SIDECAR}")
        entries[file] = raw
    return entries


def check_header(file: Path, limits: ImageLimits) -> str | None:
    """Why `file` cannot be embedded, from its header alone (None when it looks fine)."""
    try:
        size = file.stat().st_size
        if size > limits.max_bytes:
            return f"{size} bytes, more than the limit of {limits.max_bytes}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(file, formats=FORMATS) as image:
                width, height = image.size
    except UnidentifiedImageError:
        return f"not a {', '.join(FORMATS)} image"
    except (OSError, ValueError, SyntaxError) as exc:
        return f"unreadable ({exc})"
    if width * height > limits.max_pixels:
        return f"{width}x{height} pixels, more than the limit of {limits.max_pixels}"
    return None


def sidecar_fields(entry: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(text, metadata) of one sidecar entry: `text` or `caption` is the text, the rest metadata."""
    entry = dict(entry)
    text = entry.pop("text", None)
    caption = entry.pop("caption", None)
    return (text if text is not None else caption), entry


def iter_images(root: Path, files: list[Path], sidecar: dict[str, dict[str, Any]]) -> Iterator[tuple[Path, str, dict]]:
    """(file, relative name, sidecar entry) for every image file."""
    for file in files:
        relative = file.name if root.is_file() else file.relative_to(root).as_posix()
        yield file, relative, sidecar.get(relative, {})
