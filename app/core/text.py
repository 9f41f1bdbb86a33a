"""Checks on text from requests that every layer shares."""

from __future__ import annotations


def is_encodable(text: str) -> bool:
    """False for strings no UTF-8 encoder accepts (lone surrogates such as "\\ud800"): tokenizers,
    SQLite and JSON responses would all fail on them later."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
