"""The batch builder's choices, as enums: light to import, so the CLI declares its options with them
(Typer then lists and checks the values) without loading the builder until a build runs."""

from __future__ import annotations

from enum import StrEnum


class Engine(StrEnum):
    LOCAL = "local"  # embed in this process
    RAY = "ray"  # embed in a Ray Data actor pool (a local cluster, or --ray-address)


class OnDuplicate(StrEnum):
    ERROR = "error"  # refuse the input
    LAST = "last"  # the last record with an id wins (as repeated upserts would)
    FIRST = "first"  # the first one wins


class OnEmpty(StrEnum):
    ERROR = "error"  # refuse the input
    SKIP = "skip"  # leave such records out, counted in the result


class OnBadImage(StrEnum):
    ERROR = "error"  # stop, naming the file (planning: before anything is written)
    SKIP = "skip"  # leave the file out, counted in the result
