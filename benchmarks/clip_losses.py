"""The head's loss under the served recipe: symmetric InfoNCE against DCL, SigLIP and CWCL.

The clip head's loss was chosen early (benchmarks/clip_reading.md, the first table): on MobileNetV2,
with the map bounded to length 0.6, CWCL and SigLIP lost to symmetric InfoNCE. The recipe has
changed since (Lite0, the familiarity gate, length 1.0, the TCL term, trimmed drawings, five maps),
and the decoupled contrastive loss (DCL: the positive out of the denominator; Yeh et al., ECCV 2022),
the text trainer's best and the image encoder's loss, was never tried on the head. Rows fixed
before the run (not tuned), each the served recipe with only the loss changed, temperature 0.05
learnable where the loss has one: DCL symmetric (image->text and text->image), SigLIP, CWCL.

Decision rule, written before the first run: `clip_rows.py`'s (its docstring).

Result (2026-12-07, split 0): no row passes. Sums 0.6541 (DCL), 0.6359 (SigLIP), 0.6176 (CWCL)
against the served 0.6499; DCL's +0.0042 is under the 0.005 margin and it loses image->image 0.025
(allowed 0.01). Nothing went on (`clip_reading.md`).

Usage: .venv/bin/python benchmarks/clip_losses.py [--splits 0] [--rows ...]
Writes benchmarks/results/clip_losses.json and .md (every split run so far, merged).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.clip_rows import main  # noqa: E402
from training.config import LossConfig  # noqa: E402

ROWS = {  # the served row first
    "symmetric InfoNCE (served)": {
        "loss": LossConfig(name="infonce", temperature=0.05, learnable_temperature=True, symmetric=True)
    },
    "symmetric DCL": {"loss": LossConfig(name="dcl", temperature=0.05, learnable_temperature=True, symmetric=True)},
    "SigLIP": {"loss": LossConfig(name="siglip", learnable_temperature=True)},
    "CWCL": {"loss": LossConfig(name="cwcl", temperature=0.05, learnable_temperature=True)},
}

if __name__ == "__main__":
    main(__doc__, "losses", "The head's loss under the served recipe (`benchmarks/clip_losses.py`)", ROWS)
