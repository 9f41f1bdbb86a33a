"""The one error table: every domain error maps to its HTTP status and the OpenAI JSON shape."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.errors import install_error_handlers
from app.core import errors
from app.core.errors import HTTP_ERRORS, TesseraError, http_mapping
from tests.conftest import LocalClient

EXPECTED_STATUS = {
    errors.InvalidRequest: 422,
    errors.InvalidDimensions: 422,
    errors.WrongDimension: 422,
    errors.InvalidVector: 422,
    errors.DuplicateIds: 422,
    errors.InvalidFilter: 422,
    errors.InvalidIndexSpec: 422,
    errors.InvalidIndexName: 422,
    errors.InvalidMetric: 422,
    errors.KeywordSearchUnavailable: 422,
    errors.WrongModelKind: 400,
    errors.ReadOnly: 403,
    errors.ReadOnlyKey: 403,
    errors.RemoteCallerRefused: 403,
    errors.MissingApiKey: 401,
    errors.InvalidApiKey: 401,
    errors.RateLimited: 429,
    errors.ModelNotFound: 404,
    errors.CollectionNotFound: 404,
    errors.DocumentNotFound: 404,
    errors.CollectionExists: 409,
    errors.OptimizeRunning: 409,
    errors.CollectionLocked: 409,
    errors.ModelVersionChanged: 409,
    errors.TooManyInputs: 413,
    errors.QueueFull: 429,
    errors.StorageFull: 507,
    errors.OpenFileLimit: 507,
    errors.RescoreUnavailable: 503,
    errors.InvalidImage: 422,
    errors.ImageFetchRefused: 422,
    errors.ImageTooLarge: 413,
    errors.UnsupportedInput: 400,
}


def _all_errors(cls: type[TesseraError] = TesseraError) -> list[type[TesseraError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_errors(sub)]
    return found


def _make(cls: type[TesseraError]) -> TesseraError:
    if issubclass(cls, errors.InputTooLong):
        return cls(2, 300, 256)
    return cls(f"{cls.__name__} happened")


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app, retry_after_s=3)

    @app.get("/raise/{name}")
    async def raise_it(name: str) -> None:
        cls = next(c for c in _all_errors() if c.__name__ == name)
        raise _make(cls)

    @app.get("/quoting-a-lone-surrogate")
    async def quote_it() -> None:
        raise errors.ModelNotFound("model 'a\ud800b' not found")

    return LocalClient(app)


def test_every_error_in_app_core_has_an_expected_status() -> None:
    declared = {c for c in _all_errors() if c.__module__ == "app.core.errors"}
    assert declared - {errors.InputTooLong} == set(EXPECTED_STATUS)
    assert http_mapping(errors.InputTooLong(0, 9, 8)).status == 413


@pytest.mark.parametrize("cls", sorted(_all_errors(), key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_domain_error_maps_to_status_and_openai_json(client: TestClient, cls: type[TesseraError]) -> None:
    response = client.get(f"/raise/{cls.__name__}")
    expected = http_mapping(_make(cls)).status
    if cls in EXPECTED_STATUS:
        assert expected == EXPECTED_STATUS[cls]
    assert response.status_code == expected
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}
    assert body["error"]["code"] == cls.code and body["error"]["message"]
    if expected == 429:
        assert body["error"]["type"] == "rate_limit_error" and response.headers["retry-after"] == "3"
    elif expected == 401:
        assert body["error"]["type"] == "authentication_error" and response.headers["www-authenticate"] == "Bearer"
    else:
        assert "retry-after" not in response.headers


def test_an_error_quoting_a_lone_surrogate_still_encodes(client: TestClient) -> None:
    # A message may quote what the client sent; "\ud800" is valid JSON but no UTF-8 encoder takes it.
    response = client.get("/quoting-a-lone-surrogate")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "model 'a\\ud800b' not found"


def test_errors_carry_no_http_status_and_the_table_is_the_only_mapping() -> None:
    assert all(not hasattr(cls, "status") for cls in _all_errors())
    assert set(HTTP_ERRORS) <= {TesseraError, *_all_errors()}
    # Client errors, except a server-side state the client cannot fix: a collection whose second-stage
    # model is not served (503 until an operator restores it).
    # no room on the server (a full data volume, the open-file limit): 507
    server_side = {errors.RescoreUnavailable: 503, errors.StorageFull: 507, errors.OpenFileLimit: 507}
    assert all(400 <= m.status < 500 for cls, m in HTTP_ERRORS.items() if cls not in server_side)
    assert all(HTTP_ERRORS[cls].status == status for cls, status in server_side.items())
