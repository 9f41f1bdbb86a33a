"""Sentences for an export's parity check: STS-B style CSV/TSV (both sentences of each pair) or
plain text, one sentence per line."""

from __future__ import annotations

from pathlib import Path

from training.data.sts import sts_sentences


class ParityDataError(ValueError):
    """The parity data is missing or too short (the message names the file)."""


def load_parity_sentences(path: Path, count: int) -> list[str]:
    if not path.is_file():
        raise ParityDataError(f"{path}: parity data not found (pass --parity-data)")
    if path.suffix in {".csv", ".tsv"}:
        sentences = sts_sentences(path, limit=count)
    else:
        sentences = [line.strip() for line in path.read_text(encoding="utf-8").split("\n") if line.strip()][:count]
    if len(sentences) < count:
        raise ParityDataError(f"{path}: {len(sentences)} sentences, fewer than the {count} asked for")
    return sentences
