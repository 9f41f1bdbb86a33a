"""Reading a trained model's config.json back into its config dataclass, checked.

A config.json is written by `save`, but it is a file a user can edit (or a newer version can write):
an unknown key or a value of the wrong type must fail as a clear error naming the file and the field,
not as a TypeError deep inside model construction (`"5" > 1`) or a silently wrong model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


class SavedConfigError(ValueError):
    """A saved config.json that cannot be read as its config; the message names the file and field."""


def check_fields(
    config: object,
    positive: tuple[str, ...] = (),
    ranges: dict[str, tuple[float, float]] | None = None,
    choices: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """ValueError naming the first field of `config` that is not > 0 (`positive`), not within its
    inclusive (low, high) (`ranges`) or not one of its `choices`; a field set to None passes (it
    means "off"). A model config's `__post_init__` calls it, so an out-of-range size fails where it
    is read, not as a tensor error deep inside model construction."""
    name = type(config).__name__
    for field in positive:
        value = getattr(config, field)
        if value is not None and not value > 0:
            raise ValueError(f"{name}.{field} must be > 0, not {value!r}")
    for field, (low, high) in (ranges or {}).items():
        value = getattr(config, field)
        if value is not None and not low <= value <= high:
            raise ValueError(f"{name}.{field} must be within [{low}, {high}], not {value!r}")
    for field, allowed in (choices or {}).items():
        value = getattr(config, field)
        if value not in allowed:
            raise ValueError(f"{name}.{field} must be one of {', '.join(allowed)}, not {value!r}")


def load_saved_config(cls: type[C], path: Path) -> C:
    """`cls` (a dataclass) from the JSON object in `path`; missing fields take their defaults."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SavedConfigError(f"{path}: cannot read the saved config: {exc}") from exc
    except RecursionError:  # json.loads recurses per nesting level: `[[[[...` past Python's limit
        raise SavedConfigError(f"{path}: cannot read the saved config: nested too deeply") from None
    if not isinstance(raw, dict):
        raise SavedConfigError(f"{path}: the saved config must be a JSON object, not {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise SavedConfigError(f"{path}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
    for name, value in raw.items():
        if not _matches(value, hints[name]):
            raise SavedConfigError(f"{path}: field {name!r} must be {_describe(hints[name])}, not {value!r}")
    try:
        return cls(**raw)
    except ValueError as exc:  # the dataclass's own bounds (check_fields)
        raise SavedConfigError(f"{path}: {exc}") from None


def _allowed(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _matches(value: Any, annotation: Any) -> bool:
    for kind in _allowed(annotation):
        if kind is type(None) and value is None:
            return True
        if kind is bool and isinstance(value, bool):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return math.isfinite(value)  # json.loads reads NaN and Infinity, which no setting means
        if kind is str and isinstance(value, str):
            return True
    return False


def _describe(annotation: Any) -> str:
    names = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return " or ".join(names.get(kind, str(kind)) for kind in _allowed(annotation))
