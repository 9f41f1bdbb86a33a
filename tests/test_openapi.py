from pathlib import Path

from app.openapi import openapi_json

SPEC = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def test_committed_openapi_matches_the_app() -> None:
    assert SPEC.read_text() == openapi_json(), "openapi/openapi.json is stale: run `make openapi`"
