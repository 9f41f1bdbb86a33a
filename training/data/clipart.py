"""OpenClipart as an image-caption set (Debian `openclipart-png` + `openclipart-svg`, public domain).

Each PNG has an SVG twin whose RDF metadata carries a title (`dc:title` of the `cc:Work`) and
keywords (`dc:subject`). A caption is "title, keyword keyword ...", with boilerplate keywords
(`hash`, `unsorted`, hex ids, empty) dropped; the category folder is kept beside it. Images are
re-encoded once as PNGs no larger than `max_side` (some are 800 x 1100: decoding those on every
epoch or index build is wasted work), transparency kept.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from dataclasses import dataclass
from html import unescape
from pathlib import Path

from PIL import Image

CAPTIONS_FILE = "captions.jsonl"
_WORK_TITLE = re.compile(r"<cc:Work[^>]*>.*?<dc:title>(.*?)</dc:title>", re.S)
_SUBJECT = re.compile(r"<dc:subject>(.*?)</dc:subject>", re.S)
_ITEM = re.compile(r"<rdf:li>(.*?)</rdf:li>", re.S)
_BOILERPLATE = {"", "hash", "unsorted", "icon", "icons", "theme", "clip art", "clipart", "image", "media"}
_HEX_ID = re.compile(r"^0x[0-9a-f]+$")


@dataclass(frozen=True)
class Clip:
    id: str  # path under the category root without extension, e.g. "animals/2_dead_frogs_lumen_desig_01"
    title: str
    keywords: tuple[str, ...]
    category: str  # first folder, e.g. "animals"
    caption: str


def read_metadata(svg: Path) -> tuple[str, list[str]]:
    """(title, keywords) from an OpenClipart SVG's RDF block (in its first 64 KiB)."""
    head = svg.read_text(encoding="utf-8", errors="replace")[:65536]
    title_match = _WORK_TITLE.search(head)
    title = unescape(title_match.group(1)).strip() if title_match else ""
    subject = _SUBJECT.search(head)
    words = [unescape(w).strip().lower() for w in _ITEM.findall(subject.group(1))] if subject else []
    keywords = []
    for word in words:
        if word in _BOILERPLATE or _HEX_ID.match(word) or word in keywords:
            continue
        keywords.append(word.replace("_", " "))
    return title, keywords


def caption_of(title: str, keywords: list[str], category: str) -> str:
    """ "title, keywords" (the category's words when there is neither)."""
    parts = [title] if title else []
    if keywords:
        parts.append(" ".join(keywords))
    return ", ".join(parts) or category.replace("_", " ")


def prepare_openclipart(png_root: Path, svg_root: Path, out: Path, max_side: int = 256) -> int:
    """Write `out/images/<id>.png` and `out/captions.jsonl`; returns the number of clips kept."""
    kept = 0
    out.mkdir(parents=True, exist_ok=True)
    with (out / CAPTIONS_FILE).open("w") as handle:
        for png in sorted(png_root.rglob("*.png")):
            rel = png.relative_to(png_root).as_posix().removesuffix(".png")  # names may hold dots: "omic.ch_01"
            svg = svg_root / f"{rel}.svg"
            title, keywords = read_metadata(svg) if svg.is_file() else ("", [])
            target = out / "images" / f"{rel}.png"
            try:
                _shrink(png, target, max_side)
            except (OSError, Image.DecompressionBombError):
                continue  # an unreadable file is left out, not a failed build
            category = rel.split("/", 1)[0]
            record = {
                "id": rel,
                "title": title,
                "keywords": keywords,
                "category": category,
                "caption": caption_of(title, keywords, category),
            }
            handle.write(json.dumps(record) + "\n")
            kept += 1
    return kept


def _shrink(source: Path, target: Path, max_side: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # a few packaged drawings are 170 MP: trusted, slow, kept
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(source)
        image.load()
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    image.save(target, optimize=False)


def load_clips(folder: Path) -> list[Clip]:
    clips = []
    with (folder / CAPTIONS_FILE).open() as handle:
        for line in handle:
            r = json.loads(line)
            clips.append(Clip(r["id"], r["title"], tuple(r["keywords"]), r["category"], r["caption"]))
    return clips


def clip_path(folder: Path, clip: Clip) -> Path:
    return folder / "images" / f"{clip.id}.png"


def split_clips(clips: list[Clip], test_count: int, seed: int) -> tuple[list[Clip], list[Clip]]:
    """(train, test) by file with a fixed seed: no image is in both."""
    order = list(clips)
    random.Random(seed).shuffle(order)
    return order[test_count:], order[:test_count]


def write_demo(folder: Path, out: Path, count: int, seed: int = 0) -> int:
    """A folder of `count` captioned clips for a demo collection: the images and a metadata.jsonl
    sidecar (`caption`, `category`, `title`) as `tessera index build` reads it. Clips with
    boilerplate captions (shared by several files) are left out; the draw is fixed by `seed`."""
    clips = load_clips(folder)
    repeats: dict[str, int] = {}
    for clip in clips:
        repeats[clip.caption] = repeats.get(clip.caption, 0) + 1
    chosen = [c for c in clips if repeats[c.caption] == 1 and c.title]
    random.Random(seed).shuffle(chosen)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "metadata.jsonl").open("w") as sidecar:
        for clip in sorted(chosen[:count], key=lambda c: c.id):
            name = clip.id.replace("/", "__") + ".png"
            (out / name).write_bytes(clip_path(folder, clip).read_bytes())
            entry = {"file": name, "caption": clip.caption, "category": clip.category, "title": clip.title}
            sidecar.write(json.dumps(entry) + "\n")
    return min(count, len(chosen))
