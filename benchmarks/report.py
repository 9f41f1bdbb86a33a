"""Shared by the benchmarks that add a section to a report another benchmark writes (training.md)."""

from __future__ import annotations

from pathlib import Path


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
