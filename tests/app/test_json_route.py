"""The fast JSON parsing of request bodies answers exactly as the standard library's would."""

import asyncio
import json
from collections.abc import Iterator

import fastapi.routing
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.responses import Response

from app.api.deps import Services, ServicesDep, get_services
from app.api.json_route import DirectCall, DirectCallMiddleware, FastJSONRequest, FastJSONRoute
from app.api.routes import classify, embeddings, indexes
from app.main import create_app
from tests.conftest import LocalClient, settings_for

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


# -- the direct call: well-formed requests to plain endpoints skip FastAPI's request handler --------


@pytest.fixture(scope="module")
def client(default_models_dir, tmp_path_factory) -> Iterator[TestClient]:
    settings = settings_for(default_models_dir, data_dir=tmp_path_factory.mktemp("data"))
    with LocalClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def handler_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each request FastAPI's own handler answered: it solves the dependencies of every request."""
    calls: list[str] = []
    original = fastapi.routing.solve_dependencies

    async def counting(*, request, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(request.url.path)
        return await original(request=request, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    return calls


def _routes(router: APIRouter) -> dict[tuple[str, str], APIRoute]:
    return {(r.path, m): r for r in router.routes if isinstance(r, APIRoute) for m in r.methods}


def test_only_endpoints_of_the_plain_shape_get_the_direct_call() -> None:
    routes = {**_routes(indexes.router), **_routes(embeddings.router), **_routes(classify.router)}
    direct = {key for key, route in routes.items() if DirectCall.fits(route)}
    assert direct == {("/indexes/{name}/search", "POST"), ("/v1/embeddings", "POST"), ("/embed", "POST")}
    # Not these: a response model to serialise (classify, upsert), a constrained path parameter
    # (a document id's max_length), no body (GET).
    assert ("/v1/classify", "POST") in routes and ("/indexes/{name}/documents", "PUT") in routes
    assert ("/indexes/{name}/documents/{doc_id:path}", "GET") in routes


def test_well_formed_requests_skip_fastapis_handler_and_answer_the_same(client, handler_calls) -> None:
    texts = ["wing flutter at supersonic speed", "boundary layer transition"]
    name = "direct-call"
    client.post("/indexes", json={"name": name, "model": "minilm-l6"}).raise_for_status()
    client.put(
        f"/indexes/{name}/documents", json={"documents": [{"id": str(i), "text": t} for i, t in enumerate(texts)]}
    ).raise_for_status()
    handler_calls.clear()
    search = {"query": "flutter", "top_k": 2}
    direct = client.post(f"/indexes/{name}/search", json=search)
    embedded = client.post("/v1/embeddings", json={"input": texts, "model": "minilm-l6"})
    assert direct.status_code == 200 and embedded.status_code == 200
    assert handler_calls == []  # neither went through FastAPI's handler
    # The same requests through FastAPI's handler (another spelling of the JSON content type).
    standard_headers = {"content-type": "application/json; charset=utf-8"}
    standard = client.post(f"/indexes/{name}/search", content=json.dumps(search), headers=standard_headers)
    embedded_again = client.post(
        "/v1/embeddings", content=json.dumps({"input": texts, "model": "minilm-l6"}), headers=standard_headers
    )
    assert handler_calls == [f"/indexes/{name}/search", "/v1/embeddings"]
    assert [h["id"] for h in direct.json()["hits"]] == [h["id"] for h in standard.json()["hits"]] == ["0", "1"]
    assert [h["score"] for h in direct.json()["hits"]] == [h["score"] for h in standard.json()["hits"]]
    assert embedded.json()["data"] == embedded_again.json()["data"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"query": "x", "top_k": 0}', "top_k: Input should be greater than or equal to 1"),
        (b'{"vector": [NaN]}', "finite"),
        (b"", "Field required"),
        (b"[1, 2]", "valid dictionary"),
        (b'{"query": "x", "top_k": 10', "JSON decode error"),  # FastAPI refuses it before its solver
    ],
)
def test_malformed_requests_answer_as_fastapis_handler_does(client, handler_calls, body, message) -> None:
    response = client.post("/indexes/anything/search", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]["message"]
    if message != "JSON decode error":
        assert handler_calls == ["/indexes/anything/search"]  # answered by FastAPI's handler, as before


def test_dependency_overrides_are_honoured(client, handler_calls) -> None:
    real = client.app.state  # type: ignore[attr-defined]
    refused = []

    async def override(request: Request) -> Services:
        refused.append(request.url.path)
        return Services(real.settings, real.registry, real.collections, real.image_fetcher)

    client.app.dependency_overrides[get_services] = override  # type: ignore[attr-defined]
    try:
        response = client.post("/v1/embeddings", json={"input": "override", "model": "minilm-l6"})
    finally:
        client.app.dependency_overrides.clear()  # type: ignore[attr-defined]
    assert response.status_code == 200
    assert refused == ["/v1/embeddings"] and handler_calls == ["/v1/embeddings"]


class _Echo(BaseModel):
    text: str


def _echo_router() -> APIRouter:
    router = APIRouter(route_class=FastJSONRoute)

    @router.post("/echo/{name}")
    async def echo(body: _Echo, services: ServicesDep, name: str) -> Response:
        return Response(f"{name}:{body.text}:{services.settings}")

    return router


def test_a_dependency_added_where_a_router_is_included_is_never_skipped(handler_calls) -> None:
    """The direct call reads the route as FastAPI builds it: a dependency the inclusion adds (say,
    an audit or an auth check) makes the route FastAPI's again, so it runs."""
    audited: list[str] = []

    async def audit(request: Request) -> None:
        audited.append(request.url.path)

    plain, checked = FastAPI(), FastAPI()
    plain.include_router(_echo_router())
    checked.include_router(_echo_router(), dependencies=[Depends(audit)])
    for app in (plain, checked):
        app.state.settings, app.state.registry, app.state.collections, app.state.image_fetcher = "s", None, None, None
    with LocalClient(plain) as http:
        assert http.post("/echo/a", json={"text": "hi"}).text == "a:hi:s"
    assert handler_calls == [] and audited == []  # the direct call
    with LocalClient(checked) as http:
        assert http.post("/echo/b", json={"text": "hi"}).text == "b:hi:s"
    assert handler_calls == ["/echo/b"] and audited == ["/echo/b"]


def test_a_body_cut_off_by_a_disconnect_is_answered_as_before(client) -> None:
    """The client goes (or the size cap cuts the body off) mid-body: FastAPI's handler answers it,
    a 400 nobody reads, as before; nothing escapes to be logged as a server error."""
    messages = iter([{"type": "http.request", "body": b'{"query": "wi', "more_body": True}])
    sent: list[dict] = []

    async def receive() -> dict:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/indexes/anything/search",
        "raw_path": b"/indexes/anything/search",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "state": {},
    }
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400


# -- the direct call from middleware: once learned, the router is skipped too ------------------------


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch, default_models_dir, tmp_path) -> Iterator[tuple[TestClient, list[str]]]:
    """A fresh app (nothing learned yet) and the paths of the requests its router saw."""
    seen: list[str] = []
    original = fastapi.routing.APIRouter.app

    async def counting(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http":
            seen.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(fastapi.routing.APIRouter, "app", counting)  # before the app binds it
    app = create_app(settings_for(default_models_dir, data_dir=tmp_path / "data"))
    with LocalClient(app, raise_server_exceptions=False) as test_client:
        test_client.post("/indexes", json={"name": "learned", "model": "minilm-l6"}).raise_for_status()
        docs = [{"id": "a", "text": "wing flutter"}, {"id": "b", "text": "boundary layer"}]
        test_client.put("/indexes/learned/documents", json={"documents": docs}).raise_for_status()
        seen.clear()
        yield test_client, seen


def test_after_its_first_request_a_route_is_answered_without_the_router(routed) -> None:
    client, seen = routed
    search = {"query": "flutter", "top_k": 2}
    first = client.post("/indexes/learned/search", json=search)
    assert seen == ["/indexes/learned/search"]  # learned from the router's own direct call
    counted = _search_requests_counted(client)
    again = [client.post("/indexes/learned/search", json=search) for _ in range(3)]
    assert _search_requests_counted(client) == counted + 3  # under the route's template, as the router's
    embedded = [client.post("/v1/embeddings", json={"input": "flutter", "model": "minilm-l6"}) for _ in range(2)]
    assert [path for path in seen if path != "/metrics"] == ["/indexes/learned/search", "/v1/embeddings"]
    assert all(r.status_code == 200 for r in [first, *again, *embedded])
    assert [r.json()["hits"] for r in again] == [first.json()["hits"]] * 3 and first.json()["hits"][0]["id"] == "a"
    assert embedded[0].json()["data"] == embedded[1].json()["data"]
    assert first.headers["x-request-id"] != again[0].headers["x-request-id"]  # the outer middleware still runs


def _timeless(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key != "took_ms"}


def _direct_call_middleware(app) -> DirectCallMiddleware:  # type: ignore[no-untyped-def]
    layer = app.middleware_stack
    while not isinstance(layer, DirectCallMiddleware):
        layer = layer.app
    return layer


def _search_requests_counted(client: TestClient) -> float:
    prefix = 'tessera_requests_total{method="POST",route="/indexes/{name}/search",status="200"} '
    line = next(line for line in client.get("/metrics").text.splitlines() if line.startswith(prefix))
    return float(line.removeprefix(prefix))


def test_errors_after_learning_answer_as_the_router_did(routed) -> None:
    """The same requests before the route is learned (the router answers) and after (the
    middleware does): the same statuses and JSON bodies, for endpoint errors and malformed bodies."""
    client, seen = routed
    requests = [  # (path, body, status, whether the direct call takes it)
        ("/indexes/missing/search", b'{"query": "x"}', 404, True),  # a domain error from the service
        ("/indexes/learned/search", b'{"query": "x", "rerank": {"model": "nope"}}', 404, True),
        ("/indexes/bad name!/search", b'{"query": "x"}', 422, True),
        ("/indexes/learned/search", b'{"query": "x", "top_k": 0}', 422, False),  # refused by the schema
        ("/indexes/learned/search", b'{"vector": [NaN]}', 422, False),
        ("/indexes/learned/search", b'{"query": "x", "top_k": 10', 422, False),
        ("/indexes/learned/search", b"", 422, False),
        ("/indexes/learned/search", json.dumps({"query": "wing"}).encode("utf-16"), 200, False),
    ]
    headers = {"content-type": "application/json"}
    learned = _direct_call_middleware(client.app).learned
    before = []
    for path, body, _, _ in requests:
        learned.clear()  # each answered by the router
        before.append(client.post(path, content=body, headers=headers))
    assert len(seen) == len(requests)
    client.post("/indexes/learned/search", json={"query": "flutter"}).raise_for_status()
    seen.clear()
    after = [client.post(path, content=body, headers=headers) for path, body, _, _ in requests]
    for (path, body, status, _), b, a in zip(requests, before, after, strict=True):
        assert a.status_code == b.status_code == status, (path, body)
        assert _timeless(a.json()) == _timeless(b.json()), (path, body)
    # only the bodies the direct call cannot take reached the router (the body replayed to it)
    assert seen == [path for path, _, _, direct in requests if not direct]


def test_an_unexpected_error_after_learning_is_a_json_500(routed, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = routed
    client.post("/indexes/learned/search", json={"query": "flutter"}).raise_for_status()

    async def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    monkeypatch.setattr(indexes.service, "search", broken)
    response = client.post("/indexes/learned/search", json={"query": "flutter"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"


def test_a_body_cut_off_after_learning_is_answered_as_before(routed) -> None:
    client, seen = routed
    client.post("/indexes/learned/search", json={"query": "flutter"}).raise_for_status()
    test_a_body_cut_off_by_a_disconnect_is_answered_as_before(client)
    assert seen[-1] == "/indexes/anything/search"  # replayed to the router, which answered the 400


def test_no_earlier_route_takes_the_middlewares_paths(client) -> None:
    """The middleware matches its paths itself: the router must send them to the same routes."""
    from starlette.routing import Match

    for path, template, router in [
        ("/indexes/x/search", "/indexes/{name}/search", indexes.router),
        ("/v1/embeddings", "/v1/embeddings", embeddings.router),
        ("/embed", "/embed", embeddings.router),
    ]:
        scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "headers": []}
        first = next(route for route in client.app.router.routes if route.matches(scope)[0] is Match.FULL)
        assert first.original_router is router, (path, first)
        inner = next(route for route in router.routes if route.matches(scope)[0] is Match.FULL)
        assert inner.path == template
