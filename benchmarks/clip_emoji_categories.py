"""Where the served clip model misses emoji names: name->image Recall@1 per emoji category.

The served `clip-minilm` was trained on split 0's training codepoints (`serve-clip.yaml`,
`split_seed: 0`), so this reads its 400 held-out codepoints of split 0 (Google's drawings, as the
training evaluation does), through the exported ONNX towers on ONNX Runtime fp32. The query is the
emoji's name; the gallery is the 400 held-out drawings.

Usage: .venv/bin/python benchmarks/clip_emoji_categories.py  (needs `make clip-model image-data`;
about a minute). Writes benchmarks/results/clip_emoji_categories.{json,md}.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.manifest import Manifest  # noqa: E402
from app.inference.image_model import ImageFileEncoder, ImageModel  # noqa: E402
from app.inference.images import ImageLimits  # noqa: E402
from app.inference.text_model import TextModel  # noqa: E402
from app.inference.variants import choose_variant  # noqa: E402
from training.data.images import emoji_path, load_identities, split_identities  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODEL = ROOT / "models" / "clip-minilm"
EMOJI = ROOT / "data" / "emoji"
SPLIT, HELD_OUT, STYLE = 0, 400, "google"


def main() -> None:
    manifest = Manifest.load(MODEL)
    images = ImageFileEncoder(
        ImageModel(MODEL, manifest, choose_variant(manifest, "onnxruntime", "fp32", tower="image")), ImageLimits()
    )
    texts = TextModel(MODEL, manifest, choose_variant(manifest, "onnxruntime", "fp32", tower="text"))
    _, held_out = split_identities(load_identities(EMOJI), HELD_OUT, SPLIT)
    held_out = [i for i in held_out if STYLE in i.styles]
    image_vectors, refused = images.encode([str(emoji_path(EMOJI, STYLE, i.unified)) for i in held_out])
    if refused:
        raise SystemExit(f"drawings that did not load: {refused}")
    scores = texts.encode([i.name for i in held_out]) @ image_vectors.T  # (names, drawings)
    hits = scores.argmax(axis=1) == np.arange(len(held_out))
    by_category: dict[str, list[bool]] = defaultdict(list)
    for identity, hit in zip(held_out, hits, strict=True):
        by_category[identity.category].append(bool(hit))
    rows = {c: {"n": len(v), "recall@1": round(float(np.mean(v)), 3)} for c, v in by_category.items()}
    others = [bool(h) for i, h in zip(held_out, hits, strict=True) if i.category != "Flags"]
    report = {
        "model": manifest.name,
        "split": SPLIT,
        "style": STYLE,
        "queries": len(held_out),
        "recall@1": round(float(hits.mean()), 3),
        "recall@1 without flags": round(float(np.mean(others)), 3),
        "categories": dict(sorted(rows.items(), key=lambda kv: -kv[1]["n"])),
        "measured": time.strftime("%Y-%m-%d %H:%M"),
    }
    (RESULTS / "clip_emoji_categories.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Emoji name->image Recall@1 of the served clip model, per category",
        "",
        f"`benchmarks/clip_emoji_categories.py` ({report['measured']}): `{manifest.name}` on split {SPLIT}'s "
        f"{len(held_out)} held-out codepoints ({STYLE} drawings; the model trained on the others), ONNX Runtime "
        "fp32. The query is the emoji's name; the gallery is the held-out drawings.",
        "",
        "| category | codepoints | name->image R@1 |",
        "|---|---|---|",
        *[f"| {c} | {r['n']} | {r['recall@1']:.3f} |" for c, r in report["categories"].items()],
        f"| **all** | {len(held_out)} | **{report['recall@1']:.3f}** |",
        f"| all but flags | {len(others)} | {report['recall@1 without flags']:.3f} |",
    ]
    (RESULTS / "clip_emoji_categories.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
