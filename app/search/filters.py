"""Metadata filters -> a parameterised SQLite WHERE clause over the JSON metadata column.

Syntax (all conditions at one level are combined with AND):
    {"lang": "en"}                                   equality ($eq); the value's JSON type must match
                                                     too: {"flag": 1} does not match true, "5" not 5
    {"tag": {"$in": ["a", "b"]}}                     membership (same type rule)
    {"year": {"$gte": 2000, "$lt": 2010}}            numeric range ($gt, $gte, $lt, $lte); only
                                                     numeric values match (not "2005" as text)
    {"$and": [{...}, {...}]}                         explicit conjunction
    {"a.b": 1}                                       the key "a.b", or b nested in a (built indexes
                                                     may hold nested objects)
    {"année": 1}, {"my key": 1}                      any key the store takes, up to MAX_KEY_CHARS,
                                                     but one with a '"' or starting with '$'
Bounds (settings): nesting depth and the number of conditions in one filter; numbers must be
finite and integers fit in 64 bits. Rows whose stored metadata is not valid JSON match nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from app.core.errors import InvalidFilter
from app.core.numbers import fits_int64
from app.core.text import is_encodable

MAX_KEY_CHARS = 256
_RANGE_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_SCALARS = (str, int, float, bool)
MAX_IN_VALUES = 1024
# The metadata document, or NULL when a stored row is not valid JSON (then no condition matches it,
# instead of the whole query failing on "malformed JSON").
_DOC = "(CASE WHEN json_valid(metadata) THEN metadata END)"
_NUMBER_TYPES = "('integer', 'real')"


class FilterError(InvalidFilter):
    """A filter that cannot be compiled (the message says why)."""


@dataclass(frozen=True)
class FilterLimits:
    max_depth: int = 8  # nested $and levels
    max_conditions: int = 256  # leaf conditions in one filter, $in lists counted once


def _paths(key: str) -> list[str]:
    """JSON paths a filter key names: the key itself, and for a dotted key also the nested path
    (`a.b`: a key "a.b", as the HTTP API stores it, or b inside a, as a built index may).

    Paths are bound parameters, never SQL text. A quoted label is compared with the key's text as
    stored, and the store writes JSON with non-ASCII characters escaped ("\\u00e9"): each path is
    given with its labels escaped the same way, and as typed (for an SQLite that compares decoded
    keys); either matching is a match."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS or '"' in key or not is_encodable(key):
        raise FilterError(
            f"invalid metadata key {key[:40] if isinstance(key, str) else key!r}: 1 to {MAX_KEY_CHARS} characters "
            "of valid Unicode, without '\"'"
        )
    spellings = [_stored_label]
    if not key.isascii() and key.isprintable() and "\\" not in key:
        spellings.append(str)  # as typed (no control character: SQLite refuses one raw in a path)
    paths: list[str] = []
    for label in spellings:
        paths.append(f'$."{label(key)}"')
        if "." in key:
            paths.append("$." + ".".join(f'"{label(part)}"' for part in key.split(".")))
    return paths


def _stored_label(key: str) -> str:
    """`key` as the store's JSON text spells it (ASCII, escapes as json.dumps writes them)."""
    return json.dumps(key)[1:-1]


def compile_filter(spec: dict[str, Any] | None, limits: FilterLimits | None = None) -> tuple[str, list[Any]]:
    """Return (sql, params); ("1", []) matches everything."""
    if not spec:
        return "1", []
    compiler = _Compiler(limits or FilterLimits())
    return compiler.conjunction(spec, depth=1)


class _Compiler:
    def __init__(self, limits: FilterLimits) -> None:
        self.limits = limits
        self.conditions = 0

    def _count(self) -> None:
        self.conditions += 1
        if self.conditions > self.limits.max_conditions:
            raise FilterError(f"filter has more than {self.limits.max_conditions} conditions")

    def conjunction(self, spec: Any, depth: int) -> tuple[str, list[Any]]:
        if not isinstance(spec, dict):
            raise FilterError("filter must be an object")
        if depth > self.limits.max_depth:
            raise FilterError(f"filter nests deeper than {self.limits.max_depth} levels")
        clauses: list[str] = []
        params: list[Any] = []
        for key, condition in spec.items():
            if key == "$and":
                if not isinstance(condition, list) or not condition:
                    raise FilterError("$and takes a non-empty list of filters")
                for sub in condition:
                    sql, sub_params = self.conjunction(sub, depth + 1)
                    clauses.append(f"({sql})")
                    params += sub_params
                continue
            if isinstance(key, str) and key.startswith("$"):
                raise FilterError(f"unknown operator {key!r} (supported: $and, $eq, $in, $gt, $gte, $lt, $lte)")
            paths = _paths(key)
            operations = condition if isinstance(condition, dict) else {"$eq": condition}
            if not operations:
                raise FilterError(f"empty condition for {key!r}")
            for op, value in operations.items():
                self._count()
                alternatives = [_operation(key, path, op, value) for path in paths]
                clauses.append("(" + " OR ".join(f"({sql})" for sql, _ in alternatives) + ")")
                params += [p for _, op_params in alternatives for p in op_params]
        return " AND ".join(clauses) or "1", params


def _operation(key: str, path: str, op: str, value: Any) -> tuple[str, list[Any]]:
    if op == "$eq":
        return _equals_any(key, path, [_scalar(key, value)])
    if op == "$in":
        if not isinstance(value, list) or not value or len(value) > MAX_IN_VALUES:
            raise FilterError(f"$in for {key!r} takes a list of 1..{MAX_IN_VALUES} values")
        return _equals_any(key, path, [_scalar(key, v) for v in value])
    if op in _RANGE_OPS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FilterError(f"{op} for {key!r} takes a number")
        # Numbers only: SQLite orders any text above any number, so "1954" > 2000.
        sql = f"json_type({_DOC}, ?) IN {_NUMBER_TYPES} AND json_extract({_DOC}, ?) {_RANGE_OPS[op]} ?"
        return sql, [path, path, _number(key, value)]
    raise FilterError(f"unknown operator {op!r} for {key!r}")


def _equals_any(key: str, path: str, values: list[Any]) -> tuple[str, list[Any]]:
    """The stored value equals one of `values`, JSON type included (true is not 1, "5" is not 5)."""
    parts: list[str] = []
    params: list[Any] = []
    strings = [v for v in values if isinstance(v, str)]
    numbers = [_number(key, v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    booleans = sorted({"true" if v else "false" for v in values if isinstance(v, bool)})
    for wanted, group in (("= 'text'", strings), (f"IN {_NUMBER_TYPES}", numbers)):
        if group:
            marks = ", ".join("?" * len(group))
            parts.append(f"(json_type({_DOC}, ?) {wanted} AND json_extract({_DOC}, ?) IN ({marks}))")
            params += [path, path, *group]
    if booleans:
        parts.append(f"json_type({_DOC}, ?) IN ({', '.join('?' * len(booleans))})")
        params += [path, *booleans]
    return "(" + " OR ".join(parts) + ")", params


def _scalar(key: str, value: Any) -> Any:
    if not isinstance(value, _SCALARS):
        raise FilterError(f"value for {key!r} must be a string, number or boolean")
    if isinstance(value, str) and not is_encodable(value):
        raise FilterError(f"value for {key!r} contains a lone surrogate (not valid Unicode)")
    return value


def _number(key: str, value: int | float) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise FilterError(f"value for {key!r} must be a finite number")
    if isinstance(value, int) and not fits_int64(value):
        raise FilterError(f"value for {key!r} does not fit in a 64-bit integer")
    return value
