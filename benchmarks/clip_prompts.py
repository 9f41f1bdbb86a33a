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

Decision rule, written before the first run: on split 0 (where every clip choice is made), all
rows trained in the same run. A row goes on only if the sum of hubness-corrected emoji names R@1
and hubness-corrected OpenClipart R@1 beats the served template's by more than 0.005, with emoji
image->image no more than 0.01 lower and COCO-mini caption->photo R@1 (plain and corrected) no more
than 0.005 lower; of passing rows the one with the larger sum goes on. It then runs on the report
splits 1-3 beside the served template, reported whatever it shows, and is served only if the
splits 1-3 mean passes the same test.

Result (2026-12-06, split 0): both rows lose (sums 0.6405 and 0.6340 against the served 0.6499;
COCO-mini R@1 -0.01 and -0.02), so nothing went on (`clip_reading.md`).

Usage: .venv/bin/python benchmarks/clip_prompts.py [--splits 0] [--rows ...]
Writes benchmarks/results/clip_prompts.json and .md (every split run so far, merged).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.clip_ensemble import score, split_tables  # noqa: E402
from benchmarks.clip_training import served_config  # noqa: E402
from benchmarks.report import record_runs  # noqa: E402
from training.clip_training import fit_members, prepare  # noqa: E402
from training.run import RunFolder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SELECTION_SPLIT = 0  # every clip choice is made on split 0; --splits 1 2 3 reports


SERVED_ROW = "a photo of a {} (served)"
TEMPLATES = {
    SERVED_ROW: ["a photo of a {}"],
    "4 templates: photo, drawing, cartoon, name": ["a photo of a {}", "a drawing of a {}", "a cartoon {}", "{}"],
    "the name alone": ["{}"],
}


def run_split(split: int, rows: list[str]) -> dict[str, dict[str, float]]:
    scores = {}
    for label in [SERVED_ROW, *(r for r in rows if r != SERVED_ROW)]:
        config = served_config("prompts", split, class_prompts=TEMPLATES[label])
        data = prepare(config)
        head, _ = fit_members(config, data, RunFolder(Path("/tmp") / "tessera-clip-prompts", f"s{split}-{len(scores)}"))
        scores[label] = score(head, data, config)
        print(split, label, json.dumps(scores[label]), flush=True)
    return scores


def write_markdown(report: dict) -> None:
    (RESULTS / "clip_prompts.md").write_text(
        split_tables(report, "Prompt ensembling for ConSE's class vectors (`benchmarks/clip_prompts.py`)")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=int, nargs="+", default=[SELECTION_SPLIT])
    parser.add_argument("--rows", nargs="+", default=list(TEMPLATES), choices=list(TEMPLATES))
    args = parser.parse_args()
    torch.set_num_threads(2)
    record_runs(RESULTS / "clip_prompts.json", "splits", args.splits, lambda s: run_split(s, args.rows), write_markdown)


if __name__ == "__main__":
    main()
