"""Report pieces shared by the benchmarks: a section spliced into a report another benchmark writes
(training.md), a table row of a metric over report splits, tables of rows over seeds, results merged
over runs of some splits, bootstrap means of per-query changes."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def bootstrap_means(changes: np.ndarray, rng: np.random.Generator, resamples: int = 10_000) -> np.ndarray:
    """Means of `resamples` resamples (with replacement) of the per-query `changes`, shape (resamples,)."""
    return changes[rng.integers(0, len(changes), (resamples, len(changes)))].mean(axis=1)


def splice_section(report: Path, begin: str, end: str, section: str) -> None:
    """Put `section` (which starts with `begin` and ends with `end`) into `report` in place of the
    text between those markers, or append it the first time."""
    text = report.read_text() if report.is_file() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    report.write_text(text)


def split_row(label: str, report_values: list[float], baseline: float, selection_value: float) -> str:
    """`| label | mean ± sd over the report splits | change from `baseline` (the reference row's mean)
    | the selection split's value |`, as the benchmarks that choose on one split and report others print."""
    mean = statistics.fmean(report_values)
    return (
        f"| {label} | {mean:.4f} ± {statistics.pstdev(report_values):.4f} | {mean - baseline:+.4f} | "
        f"{selection_value:.4f} |"
    )


def seed_tables(
    runs: dict[int, dict[str, dict[str, float]]],
    groups: list[tuple[list[int], str]],
    row_header: str,
    columns: dict[str, str],
    digits: int = 4,
) -> list[str]:
    """Markdown lines: per (seeds, title) group with any seed run, a `## title` table of the rows every
    such seed has (`runs[seed][row][key]`), a column per `columns` header -> key, each cell the mean
    over the group's seeds (± their spread when more than one)."""
    lines: list[str] = []
    for seeds, title in groups:
        present = [s for s in seeds if s in runs]
        if not present:
            continue
        names = [n for n in runs[present[0]] if all(n in runs[s] for s in present)]
        lines += ["", f"## {title}", "", f"| {row_header} | " + " | ".join(columns) + " |"]
        lines.append("|---" * (len(columns) + 1) + "|")
        for name in names:
            cells = []
            for key in columns.values():
                values = [runs[s][name][key] for s in present if key in runs[s][name]]
                mean = statistics.fmean(values) if values else float("nan")
                spread = f" ± {statistics.pstdev(values):.3f}" if len(values) > 1 else ""
                cells.append(f"{mean:.{digits}f}{spread}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def record_runs(
    path: Path, section: str, keys: list[int], run: Callable[[int], dict], write_markdown: Callable[[dict], None]
) -> None:
    """Run `run(key)` for each split or seed `key` and merge its rows into the JSON report at `path`,
    under `section` (rows of earlier runs of that key kept, so a selection run and the report run
    add up), rewriting the JSON and its markdown after each key: an interrupted run keeps what
    finished."""
    report = json.loads(path.read_text()) if path.is_file() else {section: {}}
    for key in keys:
        report[section][str(key)] = report[section].get(str(key), {}) | run(key)
        report["measured"] = time.strftime("%Y-%m-%d %H:%M")
        path.write_text(json.dumps(report, indent=2) + "\n")
        write_markdown(report)
