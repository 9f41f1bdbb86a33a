"""Print the API's OpenAPI document (committed as openapi/openapi.json; a test checks drift)."""

from __future__ import annotations

import json

from app.core.config import Settings


def openapi_json() -> str:
    from app.main import create_app

    return json.dumps(create_app(Settings()).openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(openapi_json(), end="")
