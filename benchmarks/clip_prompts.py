"""Prompt ensembling for ConSE's class vectors: do drawings' names land closer than "a photo of a ..."?

The clip image vector starts from ConSE: the tower's ImageNet softmax times the MiniLM vectors of
"a photo of a {class}". Emoji and clip-art names are short names of drawn things ("dog face",
"banana"), and the categories ImageNet has words for are where emoji names are missed most
(`results/clip_emoji_categories.md`: Animals & Nature 0.071, Food & Drink 0.160). CLIP's paper
(Radford et al. 2021, sec. 3.1.4) averages each class's text vectors over several templates
("a drawing of a {}", "a cartoon {}", ...) and gains several points over one template. Here
`ClipTrainConfig.class_prompts` does the same for ConSE's class vectors; the maps are trained on
top of it as served. Two rows beside the served template, fixed before the run (not tuned):
four templates (photo, drawing, cartoon, the bare name) and the bare name alone.

Decision rule, written before the first run: `clip_rows.py`'s (its docstring).

Result (2026-12-06, split 0): both rows lose (sums 0.6405 and 0.6340 against the served 0.6499;
COCO-mini R@1 -0.01 and -0.02), so nothing went on (`clip_reading.md`).

Usage: .venv/bin/python benchmarks/clip_prompts.py [--splits 0] [--rows ...]
Writes benchmarks/results/clip_prompts.json and .md (every split run so far, merged).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.clip_rows import main  # noqa: E402

ROWS = {  # the served row first
    "a photo of a {} (served)": {"class_prompts": ["a photo of a {}"]},
    "4 templates: photo, drawing, cartoon, name": {
        "class_prompts": ["a photo of a {}", "a drawing of a {}", "a cartoon {}", "{}"]
    },
    "the name alone": {"class_prompts": ["{}"]},
}

if __name__ == "__main__":
    main(__doc__, "prompts", "Prompt ensembling for ConSE's class vectors (`benchmarks/clip_prompts.py`)", ROWS)
