"""Numeric bounds every layer shares: the integers SQLite and orjson store (signed 64-bit)."""

from __future__ import annotations

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def fits_int64(value: int) -> bool:
    return INT64_MIN <= value <= INT64_MAX
