"""Checks on text from requests that every layer shares."""

from __future__ import annotations

# Document ids (API and batch builder alike): at most this long, no control characters, no "/"
# (it could not be addressed as /indexes/{name}/documents/{id}), valid Unicode.
MAX_ID_CHARS = 512


def document_id_problem(doc_id: str) -> str | None:
    """Why `doc_id` cannot be a document id, or None if it can (length is checked by the caller)."""
    if any(ord(c) < 32 for c in doc_id):
        return "must not contain control characters"
    if "/" in doc_id:
        return "must not contain '/'"
    if not is_encodable(doc_id):
        return "must be valid Unicode (no lone surrogates)"
    return None


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
