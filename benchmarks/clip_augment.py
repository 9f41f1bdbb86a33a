"""Augmented copies of the training images under the served recipe.

The head trains on cached features of frozen Lite0, so every epoch shows it the same ~3,900 clip-art
drawings and ~3,000 emoji drawings; its map fits those inputs and turns held-out drawings by what it
learned from them. The image encoder trains on augmented copies beside its two art styles
(`training/data/augment.py`: a resized crop of 60-100% of the side, a flip, a rotation of up to 15
degrees, and one appearance change imitating another art style), and the clip head never has.
`ClipTrainConfig.augment_views` adds that many copies of every training image, each a member of its
image's caption group: each epoch one member is drawn in the image's place (so the steps per epoch
do not change), and the TCL term pairs it with another member, which now gives clip art an
intra-modal pair too. The familiarity gate, the hubness banks and their centring stay the training
images' own. The copies are drawn from the file's name and the view alone and cached per image set,
so every split and row sees the same copies.

Rows fixed before the run (not tuned): one copy with the appearance change (the image encoder's
augmentation), one copy of geometry alone (the appearance change cost the image encoder ~0.05 on
the seen styles, `image_reading.md`), and two copies with it.

Decision rule, written before the first run: `clip_rows.py`'s (its docstring).

Result (2026-12-07, split 0): no row passes. Sums 0.6194 (one copy with the appearance change),
0.6378 (geometry alone), 0.6344 (two copies) against the served 0.6499: every row lowers
hubness-corrected emoji names (-0.0175 to -0.0325) and moves clip art R@1 by under 0.008. Nothing
went on (`clip_reading.md`).

Usage: .venv/bin/python benchmarks/clip_augment.py [--splits 0] [--rows ...]
Writes benchmarks/results/clip_augment.json and .md (every split run so far, merged).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.clip_rows import main  # noqa: E402

ROWS = {  # the served row first
    "no copies (served)": {},
    "1 copy, geometry and appearance": {"augment_views": 1, "augment": "style"},
    "1 copy, geometry alone": {"augment_views": 1, "augment": "geometry"},
    "2 copies, geometry and appearance": {"augment_views": 2, "augment": "style"},
}

if __name__ == "__main__":
    main(__doc__, "augment", "Augmented copies of the training images (`benchmarks/clip_augment.py`)", ROWS)
