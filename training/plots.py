"""`plots.png` of a run, beside its metrics.json: loss, learning rate and throughput by step (the
panels whose values the run's steps.jsonl has) and the before/after metrics as paired bars.
Every runner writes metrics through RunFolder, which calls `write_plots`, so every run has one."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STEP_PANELS = (("loss", "loss"), ("lr", "learning rate"), ("texts_per_s", "texts/s"))


def _steps(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _comparable(metrics: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(name, before, after) for every numeric metric in both, bounded ones (scores in [0, 1])
    only, so one chart's scale fits them all."""
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    pairs = []
    for name, value in after.items():
        old = before.get(name)
        if isinstance(value, int | float) and isinstance(old, int | float) and 0 <= old <= 1 and 0 <= value <= 1:
            pairs.append((name, float(old), float(value)))
    return pairs[:12]


def write_plots(run_dir: Path, metrics: dict[str, Any]) -> Path | None:
    """Draw the run's plots; None (and a log line) when there is nothing to draw or no matplotlib."""
    steps = _steps(run_dir / "steps.jsonl")
    panels = [(key, label) for key, label in STEP_PANELS if any(key in s for s in steps)]
    compared = _comparable(metrics)
    if not panels and not compared:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots.png for %s", run_dir)
        return None
    count = len(panels) + (1 if compared else 0)
    columns = min(2, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 3.4 * rows), squeeze=False)
    flat = list(axes.flat)
    for axis, (key, label) in zip(flat, panels, strict=False):
        points = [(s["step"], s[key]) for s in steps if key in s and "step" in s]
        axis.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.2)
        axis.set_title(label)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    if compared:
        axis = flat[len(panels)]
        names = [c[0] for c in compared]
        positions = range(len(compared))
        axis.barh([p - 0.2 for p in positions], [c[1] for c in compared], height=0.4, label="before")
        axis.barh([p + 0.2 for p in positions], [c[2] for c in compared], height=0.4, label="after")
        axis.set_yticks(list(positions), names, fontsize=7)
        axis.invert_yaxis()
        axis.set_xlim(0, 1)
        axis.set_title("held-out metrics")
        axis.legend(fontsize=8)
    for axis in flat[count:]:
        axis.set_visible(False)
    figure.suptitle(run_dir.name)
    figure.tight_layout()
    path = run_dir / "plots.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
