"""STS Benchmark reader (tab-separated, no header, no quoting; first 7 fields)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class StsPair:
    sentence1: str
    sentence2: str
    score: float  # gold similarity, 0..5


def read_sts(path: Path) -> list[StsPair]:
    pairs = []
    with path.open(encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(row) < 7:
                raise ValueError(f"{path}:{line_no}: expected 7 tab-separated fields, got {len(row)}")
            pairs.append(StsPair(row[5], row[6], float(row[4])))
    if not pairs:
        raise ValueError(f"{path}: no STS pairs found")
    return pairs


def sts_sentences(path: Path, limit: int | None = None) -> list[str]:
    """Unique sentences in file order, for parity checks and benchmarks."""
    seen: dict[str, None] = {}
    for pair in read_sts(path):
        seen.setdefault(pair.sentence1)
        seen.setdefault(pair.sentence2)
    sentences = list(seen)
    return sentences[:limit] if limit else sentences
