"""Where the clip model's image->image recall comes from: its image vector's parts, scored apart.

The served head (`runs/clip-minilm/model`, as `make clip-model` trains it on split 0) gives an image
the vector ConSE + gate x the learned map's bounded turn. Emoji image->image across styles (Google
-> Twitter drawings of the 400 held-out codepoints, Recall@1) is scored for the raw pooled tower
features, ConSE alone, the turn alone, the served sum, and the sum with the turn's length scaled
(a diagnostic only: the length also moves text->image, which is what the recipe chose it for).
The issue's bar is the image encoder's 0.841 (results/image_training.md, mean of its 3 splits).

Usage: .venv/bin/python benchmarks/clip_image_parts.py  (needs `make clip-model image-data`).
Writes benchmarks/results/clip_image_parts.{json,md}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.clip_training import served_config  # noqa: E402
from training.clip_training import prepare  # noqa: E402
from training.eval.images import cross_style_recall  # noqa: E402
from training.models.clip import ClipImageEncoder, ClipImageHead  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
HEAD = ROOT / "runs" / "clip-minilm" / "model"
SPLIT = 0  # the split `make clip-model` trains on: its 400 held-out codepoints were never trained on
LENGTHS = (0.5, 1.5, 2.0, 3.0)  # multiples of the served turn's length


def parts(head: ClipImageHead, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
    """(n, 1280) pooled features -> the vector's parts, each (n, dim) (the raw features (n, 1280))."""
    with torch.no_grad():
        return {"pooled": pooled, "conse": head.conse(pooled), "turn": head.turn(pooled), "served": head(pooled)}


def recall_at_1(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(
        float(cross_style_recall(F.normalize(a, dim=-1).numpy(), F.normalize(b, dim=-1).numpy(), ks=(1,))["recall@1"]),
        4,
    )


def main() -> None:
    torch.set_num_threads(2)
    started = time.monotonic()
    data = prepare(served_config("parts", SPLIT))
    assert data.emoji_styles is not None
    head = ClipImageEncoder.load(HEAD).head.eval()
    a, b = (parts(head, style.float()) for style in data.emoji_styles)
    rows = {
        "the tower's raw pooled features (no head)": recall_at_1(a["pooled"], b["pooled"]),
        "ConSE alone": recall_at_1(a["conse"], b["conse"]),
        "the learned map's gated turn alone": recall_at_1(a["turn"], b["turn"]),
        "ConSE + turn (**served**)": recall_at_1(a["served"], b["served"]),
    }
    for scale in LENGTHS:
        rows[f"ConSE + {scale} x turn (diagnostic)"] = recall_at_1(
            a["conse"] + scale * a["turn"], b["conse"] + scale * b["turn"]
        )
    report = {
        "split": SPLIT,
        "head": str(HEAD.relative_to(ROOT)),
        "codepoints": len(a["served"]),
        "emoji image->image recall@1": rows,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "measured": time.strftime("%Y-%m-%d %H:%M"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "clip_image_parts.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# The clip model's image vector, part by part: emoji image->image",
        "",
        f"`benchmarks/clip_image_parts.py` ({report['measured']}): the served head ({report['head']}, trained on "
        f"split {SPLIT}), Google -> Twitter drawings of the split's {report['codepoints']} held-out codepoints, "
        "Recall@1. The image encoder of issue 13 reaches 0.841 (`image_training.md`, Google -> Twitter, mean of its 3 splits).",
        "",
        "| image vector | emoji image->image R@1 |",
        "|---|---|",
        *(f"| {row} | {value:.4f} |" for row, value in rows.items()),
        "",
    ]
    (RESULTS / "clip_image_parts.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
