"""More than one name per training emoji: do CLDR short names and keywords teach the map more?

The clip head learns its turn from 1,511 training emoji, each paired with one text, its Unicode name
("person raising both hands in celebration"). Each emoji also has a CLDR short name ("raising
hands") and CLDR keywords ("celebration, gesture, hand, hooray, raised"), shipped by npm
`emojibase-data@16.0.3` (MIT; `make emoji-annotations`). CLIP-style training gains from several
captions per image (one drawn per epoch); the clip-art captions here are already "title, keywords".
`ClipTrainConfig.emoji_aliases` gives every *training* emoji those extra captions: each epoch draws
one of them per image. Held-out emoji keep their Unicode name alone (the evaluation queries), the
hubness bank stays the primary captions (names and clip-art captions), and the intra-modal pairs
and caption groups are unchanged. Two rows beside the served recipe, fixed before the run (not
tuned): the CLDR short name as a second caption, and the short name plus "short name, keywords" as
a third.

Decision rule, written before the first run: `clip_rows.py`'s (its docstring).

Result (2026-12-07, split 0): both rows lose (sums 0.6390 and 0.6434 against the served 0.6499;
emoji names corrected 0.3550 and 0.3475 against 0.3600), so nothing went on (`clip_reading.md`).

Usage: .venv/bin/python benchmarks/clip_names.py [--splits 0] [--rows ...]
Writes benchmarks/results/clip_names.json and .md (every split run so far, merged).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.clip_rows import main  # noqa: E402

ROWS = {  # the served row first
    "the Unicode name (served)": {"emoji_aliases": "none"},
    "+ the CLDR short name": {"emoji_aliases": "labels"},
    "+ the CLDR short name and 'short name, keywords'": {"emoji_aliases": "labels_and_tags"},
}

if __name__ == "__main__":
    main(__doc__, "names", "More than one name per training emoji (`benchmarks/clip_names.py`)", ROWS)
