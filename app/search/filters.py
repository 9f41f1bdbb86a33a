"""Metadata filters -> a parameterised SQLite WHERE clause over the JSON metadata column.

Syntax (all conditions at one level are combined with AND):
    {"lang": "en"}                                   equality
    {"tag": {"$in": ["a", "b"]}}                     membership
    {"year": {"$gte": 2000, "$lt": 2010}}            numeric range ($gt, $gte, $lt, $lte); only
                                                     numeric values match (not "2005" as text)
    {"$and": [{...}, {...}]}                         explicit conjunction
"""

from __future__ import annotations

import re
from typing import Any

from app.core.errors import InvalidFilter

_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_RANGE_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_SCALARS = (str, int, float, bool)
MAX_IN_VALUES = 1024


class FilterError(InvalidFilter):
    """A filter that cannot be compiled (the message says why)."""


def _path(key: str) -> str:
    if not _KEY.match(key):
        raise FilterError(f"invalid metadata key {key!r}: letters, digits, '_', '.', '-' only")
    return "$." + ".".join(f'"{part}"' for part in key.split("."))


def compile_filter(spec: dict[str, Any] | None) -> tuple[str, list[Any]]:
    """Return (sql, params); ("1", []) matches everything."""
    if not spec:
        return "1", []
    if not isinstance(spec, dict):
        raise FilterError("filter must be an object")
    clauses: list[str] = []
    params: list[Any] = []
    for key, condition in spec.items():
        if key == "$and":
            if not isinstance(condition, list) or not condition:
                raise FilterError("$and takes a non-empty list of filters")
            for sub in condition:
                sql, sub_params = compile_filter(sub)
                clauses.append(f"({sql})")
                params += sub_params
            continue
        if key.startswith("$"):
            raise FilterError(f"unknown operator {key!r} (supported: $and, $in, $gt, $gte, $lt, $lte)")
        column = "json_extract(metadata, ?)"
        path = _path(key)
        if isinstance(condition, dict):
            if not condition:
                raise FilterError(f"empty condition for {key!r}")
            for op, value in condition.items():
                if op == "$in":
                    if not isinstance(value, list) or not value or len(value) > MAX_IN_VALUES:
                        raise FilterError(f"$in for {key!r} takes a list of 1..{MAX_IN_VALUES} values")
                    if any(not isinstance(v, _SCALARS) for v in value):
                        raise FilterError(f"$in for {key!r} takes scalar values")
                    clauses.append(f"{column} IN ({', '.join('?' * len(value))})")
                    params += [path, *value]
                elif op in _RANGE_OPS:
                    if isinstance(value, bool) or not isinstance(value, int | float):
                        raise FilterError(f"{op} for {key!r} takes a number")
                    # Numbers only: SQLite orders any text above any number, so "1954" > 2000.
                    clauses.append(f"json_type(metadata, ?) IN ('integer', 'real') AND {column} {_RANGE_OPS[op]} ?")
                    params += [path, path, value]
                elif op == "$eq":
                    clauses.append(f"{column} = ?")
                    params += [path, _scalar(key, value)]
                else:
                    raise FilterError(f"unknown operator {op!r} for {key!r}")
        else:
            clauses.append(f"{column} = ?")
            params += [path, _scalar(key, condition)]
    return " AND ".join(clauses) or "1", params


def _scalar(key: str, value: Any) -> Any:
    if not isinstance(value, _SCALARS):
        raise FilterError(f"value for {key!r} must be a string, number or boolean")
    return value
