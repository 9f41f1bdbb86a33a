"""The fast JSON parsing of request bodies answers exactly as the standard library's would."""

import asyncio
import json

import pytest

from app.api.json_route import FastJSONRequest

# Bodies both parsers read, including the corners where parsers differ: big integers, NaN and
# Infinity (the schemas refuse them later, with a message), duplicate keys, escapes, -0.0, 1e400.
READABLE = [
    b'{"vector": [0.25, -1, 3e-5], "top_k": 10, "include": []}',
    b'{"n": 123456789012345678901234567890, "m": -9223372036854775809}',
    b'{"a": NaN, "b": Infinity, "c": -Infinity}',
    b'{"a": 1, "a": 2}',
    b'{"s": "\\u00e9\\ud83d\\ude00 caf\xc3\xa9", "t": "tab\\tnew\\nline"}',
    b'{"z": -0.0, "big": 1e400, "tiny": 5e-324}',
    b"  [true, false, null, {}, []]  ",
]
# Bodies only the standard library reads (the fast parser refuses them): they must still be read.
FALLBACK = [
    json.dumps({"query": "wing"}).encode("utf-16"),
    json.dumps({"query": "wing"}).encode("utf-32"),
    b'{"query": "\\ud800"}',  # a lone surrogate: read, then refused by the schema with its own message
    b'{"filter": ' + b'{"$and": [' * 150 + b"{}" + b"]}" * 150 + b"}",  # past the fast parser's depth
]
REFUSED = [b'{"a": 1} x', b"", b"{", b"\xff\xfe\x00", b"[" * 5000 + b"]" * 5000]


def _read(body: bytes):
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    request = FastJSONRequest({"type": "http", "method": "POST", "headers": []}, receive)
    return asyncio.run(request.json())


def _equal(a, b) -> bool:  # NaN-aware
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("body", READABLE + FALLBACK)
def test_bodies_read_as_the_standard_library_reads_them(body: bytes) -> None:
    parsed = _read(body)
    assert _equal(parsed, json.loads(body))
    if b"12345678901234567890" in body:
        assert parsed["n"] == 123456789012345678901234567890 and isinstance(parsed["n"], int)


@pytest.mark.parametrize("body", REFUSED)
def test_bodies_refused_raise_what_the_standard_library_raises(body: bytes) -> None:
    with pytest.raises(Exception) as expected:
        json.loads(body)
    with pytest.raises(type(expected.value)):
        _read(body)
