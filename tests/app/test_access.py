"""API keys, read-only keys, rate limits, CORS, request ids and the JSON access log."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.auth import KeyConfigError, KeyStore, RateLimiter, is_remote_caller, parse_keys
from app.main import create_app
from tests.conftest import ROOT, LocalClient, live_server, settings_for

ADMIN, READER = "admin-key-0123456789", "reader-key-0123456789"
KEYS = f"admin={ADMIN},reader={READER}:ro"


@pytest.fixture(scope="module")
def keyed(default_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    settings = settings_for(default_models_dir, data_dir=tmp_path_factory.mktemp("data"), api_keys=KEYS)
    with LocalClient(create_app(settings)) as client:
        yield client


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_without_a_key_every_route_but_health_and_ready_is_401(keyed: TestClient) -> None:
    assert keyed.get("/health").status_code == 200 and keyed.get("/ready").status_code == 200
    for method, path in [("POST", "/v1/embeddings"), ("GET", "/v1/models"), ("GET", "/indexes"), ("GET", "/metrics")]:
        response = keyed.request(method, path, json={"input": "x"} if method == "POST" else None)
        assert response.status_code == 401, path
        assert response.json()["error"] == {
            "message": "an API key is required: send Authorization: Bearer <key>",
            "type": "authentication_error",
            "code": "missing_api_key",
        }
        assert response.headers["www-authenticate"] == "Bearer"
    wrong = keyed.post("/v1/embeddings", json={"input": "x"}, headers=_auth("not-the-key-at-all"))
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("header", ["authorization", "api-key", "x-api-key"])
def test_keys_are_read_from_each_header_clients_use(keyed: TestClient, header: str) -> None:
    value = f"Bearer {ADMIN}" if header == "authorization" else ADMIN
    assert keyed.post("/v1/embeddings", json={"input": "x"}, headers={header: value}).status_code == 200


def test_a_read_only_key_reads_but_never_writes(keyed: TestClient) -> None:
    assert keyed.post("/indexes", json={"name": "acl"}, headers=_auth(ADMIN)).status_code == 201
    doc = {"documents": [{"id": "a", "text": "hello"}]}
    assert keyed.put("/indexes/acl/documents", json=doc, headers=_auth(ADMIN)).status_code == 200
    reader = _auth(READER)
    assert keyed.post("/v1/embeddings", json={"input": "x"}, headers=reader).status_code == 200
    assert keyed.post("/indexes/acl/search", json={"query": "hi"}, headers=reader).status_code == 200
    assert keyed.get("/indexes/acl/documents/a", headers=reader).status_code == 200
    for method, path, body in [
        ("PUT", "/indexes/acl/documents", doc),
        ("POST", "/indexes", {"name": "nope"}),
        ("DELETE", "/indexes/acl/documents/a", None),
        ("POST", "/indexes/acl/optimize", None),
        ("POST", "/indexes/acl/documents/delete", {"ids": ["a"]}),
        ("DELETE", "/indexes/acl", None),
    ]:
        response = keyed.request(method, path, json=body, headers=reader)
        assert response.status_code == 403, (method, path)
        assert response.json()["error"]["code"] == "read_only_key"
    assert keyed.get("/indexes/acl", headers=reader).json()["size"] == 1


def test_request_ids_and_one_json_log_line_without_secrets(keyed: TestClient, caplog) -> None:  # type: ignore[no-untyped-def]
    access = logging.getLogger("tessera.access")  # it writes through its own queue, not the root logger
    access.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="tessera.access"):
        headers = {**_auth(ADMIN), "x-request-id": "abc-123"}
        given = keyed.post("/v1/embeddings", json={"input": "secret text"}, headers=headers)
        fresh = keyed.post("/v1/embeddings", json={"input": "x"}, headers=_auth(READER))
        refused = keyed.get("/v1/models")
    access.removeHandler(caplog.handler)
    assert given.headers["x-request-id"] == "abc-123"
    assert len(fresh.headers["x-request-id"]) == 32 and refused.headers["x-request-id"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tessera.access"]
    by_id = {line["request_id"]: line for line in lines}
    first = by_id["abc-123"]
    assert first["route"] == "/v1/embeddings" and first["status"] == 200 and first["key_id"] == "admin"
    assert first["method"] == "POST" and first["latency_ms"] > 0
    assert by_id[fresh.headers["x-request-id"]]["key_id"] == "reader"
    assert by_id[refused.headers["x-request-id"]]["status"] == 401
    text = " ".join(r.getMessage() for r in caplog.records)
    assert ADMIN not in text and READER not in text and "secret text" not in text


def test_rate_limit_per_key_answers_429_with_retry_after(default_models_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(
        default_models_dir, data_dir=tmp_path, api_keys=KEYS, rate_limit_per_s=0.5, rate_limit_burst=2
    )
    with LocalClient(create_app(settings)) as client:
        codes = [client.get("/v1/models", headers=_auth(ADMIN)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        limited = client.get("/v1/models", headers=_auth(ADMIN))
        assert limited.json()["error"]["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        assert client.get("/v1/models", headers=_auth(READER)).status_code == 200  # its own bucket
        assert client.get("/health").status_code == 200  # never limited


def test_failed_key_attempts_are_rate_limited_per_address_without_touching_valid_keys(
    default_models_dir: Path, tmp_path: Path
) -> None:
    settings = settings_for(
        default_models_dir, data_dir=tmp_path, api_keys=KEYS, rate_limit_per_s=0.5, rate_limit_burst=3
    )
    with LocalClient(create_app(settings)) as client:
        guesses = [client.get("/v1/models", headers=_auth(f"guess-{i}")).status_code for i in range(3)]
        assert guesses == [401, 401, 401]
        assert client.get("/v1/models", headers=_auth("guess-3")).status_code == 429  # the address's tokens
        assert client.get("/v1/models").status_code == 429  # no key at all spends the same ones
        assert client.get("/v1/models", headers=_auth(ADMIN)).status_code == 200  # a valid key: its own bucket
        assert client.get("/health").status_code == 200


def test_the_rate_limiter_tracks_a_bounded_number_of_callers_and_keeps_holding_back_the_active_one() -> None:
    # An IPv6 client can send from a new address every time: the buckets must not grow without
    # bound, and spraying addresses must not free a caller being held back (as clearing all did).
    limiter = RateLimiter(rate=0.001, burst=2, max_callers=100)
    assert limiter.acquire("abuser") == 0 and limiter.acquire("abuser") == 0
    for i in range(1_000):
        assert limiter.acquire(f"2001:db8::{i:x}") == 0  # each new address has its own full bucket
        if i % 20 == 0:
            assert limiter.acquire("abuser") > 0  # still held back, however many others came by
        assert limiter.tracked() <= 100
    assert limiter.acquire("abuser") > 0


def test_a_stalled_access_log_drops_and_counts_lines_instead_of_blocking_or_growing() -> None:
    import queue

    from app.api.access import DroppingQueueHandler
    from app.core.metrics import REGISTRY

    def dropped() -> float:
        return REGISTRY.get_sample_value("tessera_access_log_dropped_total") or 0.0

    lines: queue.Queue[logging.LogRecord] = queue.Queue(3)  # a writer stuck on stderr takes none
    handler = DroppingQueueHandler(lines)
    before = dropped()
    for i in range(10):
        handler.handle(logging.LogRecord("tessera.access", logging.INFO, __file__, 1, f"line {i}", None, None))
    assert lines.qsize() == 3 and dropped() - before == 7
    assert [lines.get_nowait().getMessage() for _ in range(3)] == ["line 0", "line 1", "line 2"]


def test_cors_is_off_by_default_and_an_allow_list_when_set(default_models_dir: Path, tmp_path: Path) -> None:
    preflight = {"origin": "http://ui.example", "access-control-request-method": "POST"}
    with LocalClient(create_app(settings_for(default_models_dir, data_dir=tmp_path))) as client:
        response = client.options("/v1/embeddings", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    settings = settings_for(default_models_dir, data_dir=tmp_path, cors_origins="http://ui.example", api_keys=KEYS)
    with LocalClient(create_app(settings)) as client:
        response = client.options("/v1/embeddings", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "http://ui.example"
        other = client.options("/v1/embeddings", headers={**preflight, "origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_the_official_clients_work_with_a_key(default_models_dir: Path, rerank_models_dir: Path, tmp_path) -> None:
    import cohere
    from openai import AuthenticationError, OpenAI

    settings = settings_for(rerank_models_dir, data_dir=tmp_path, api_keys=KEYS)
    with live_server(settings) as base:
        client = OpenAI(base_url=f"{base}/v1", api_key=ADMIN)
        assert len(client.embeddings.create(model="minilm-l6", input=["hello"]).data[0].embedding) == 384
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{base}/v1", api_key="wrong-key-xxxxxxxx").embeddings.create(model="minilm-l6", input="x")
        co = cohere.ClientV2(api_key=READER, base_url=base)
        ranked = co.rerank(model="tiny-ce", query="lift", documents=["wings and lift", "cake"])
        assert len(ranked.results) == 2


def test_key_entries_parse_from_a_list_or_a_secrets_file(tmp_path: Path) -> None:
    keys = parse_keys("admin=abcdefgh12,zyxwvuts98:ro")
    assert [(k.key_id, k.read_only) for k in keys] == [("admin", False), (keys[1].key_id, True)]
    assert len(keys[1].key_id) == 8  # a digest prefix, never the key
    secret = tmp_path / "keys"
    secret.write_text("# one per line\nops=0123456789abcdef\n\nview=fedcba9876543210:ro\n")
    assert [(k.key_id, k.read_only) for k in parse_keys(str(secret))] == [("ops", False), ("view", True)]
    with pytest.raises(KeyConfigError):
        parse_keys("short")
    saved_on_windows = tmp_path / "keys-bom"  # a byte-order mark, CRLF: the key is still the key
    saved_on_windows.write_bytes("0123456789abcdef\r\nops=fedcba9876543210\r\n".encode("utf-8-sig"))
    store = KeyStore(parse_keys(str(saved_on_windows)))
    assert store.authenticate("0123456789abcdef") is not None and store.authenticate("fedcba9876543210") is not None
    (tmp_path / "keys-latin1").write_bytes("cl\u00e9=0123456789abcdef\n".encode("latin-1"))
    with pytest.raises(KeyConfigError, match="keys-latin1 is not UTF-8 text"):
        parse_keys(str(tmp_path / "keys-latin1"))


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "serve", *args],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_refuses_an_open_non_loopback_bind_and_bad_settings_in_one_line() -> None:
    refused = _serve({"TESSERA_HOST": "0.0.0.0"})
    assert refused.returncode == 2 and "TESSERA_API_KEYS" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    bad = _serve({"TESSERA_PORT": "99999"})
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: TESSERA_PORT='99999': Input should be less than or equal to 65535"
    ]
    # a stream is a thread and a backend request: a runaway value is refused before any model loads
    many = _serve({"TESSERA_STREAMS": "100000"})
    assert many.returncode == 2 and many.stderr.strip().splitlines() == [
        "error: TESSERA_STREAMS='100000': Input should be less than or equal to 256"
    ]


@pytest.mark.parametrize(
    ("host", "remote"),
    [
        ("203.0.113.7", True),
        ("10.0.0.2", True),
        ("2001:db8::1", True),
        ("::ffff:203.0.113.7", True),
        ("127.0.0.1", False),
        ("127.8.0.1", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),  # a dual-stack socket's form of 127.0.0.1
        ("testclient", True),  # Starlette's in-process transport's name, no address: a forwarded header can say it
        ("localhost", False),
        ("_hidden", True),  # an obfuscated identifier a proxy may forward (RFC 7239): fail closed
        ("unknown", True),
        ("gateway.internal", True),
        ("", False),  # a Unix socket has none
        (None, False),
    ],
)
def test_which_callers_are_on_another_machine(host: str | None, remote: bool) -> None:
    assert is_remote_caller(host) is remote


def test_without_keys_callers_on_other_machines_get_403_however_the_app_was_started(client: TestClient) -> None:
    # the session app: no keys and not allowed open, as `uvicorn app.main:app --host 0.0.0.0` would run it
    for host in ("203.0.113.7", "2001:db8::1", "::ffff:10.1.2.3", "_hidden", "testclient"):
        # routes that need no batcher: these clients' requests run outside the app's event loop
        remote = LocalClient(client.app, client=(host, 50000))
        refused = remote.get("/v1/models")
        assert refused.status_code == 403, host
        assert refused.json()["error"]["code"] == "unauthenticated_remote_caller"
        assert "TESSERA_API_KEYS" in refused.json()["error"]["message"]
        assert remote.get("/health").status_code == 200  # probes still answer
    for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        local = LocalClient(client.app, client=(host, 50000))
        assert local.get("/v1/models").status_code == 200, host


def test_keys_or_an_explicit_open_setting_serve_other_machines(
    keyed: TestClient, default_models_dir: Path, tmp_path: Path
) -> None:
    remote = LocalClient(keyed.app, client=("203.0.113.7", 50000))
    assert remote.get("/v1/models").status_code == 401
    assert remote.get("/v1/models", headers=_auth(READER)).status_code == 200
    open_app = create_app(settings_for(default_models_dir, data_dir=tmp_path, allow_unauthenticated=True))
    # no lifespan here (no models loaded): an unknown path shows the caller got past access control
    assert LocalClient(open_app, client=("203.0.113.7", 50000)).get("/no-such-route").status_code == 404
    closed_app = create_app(settings_for(default_models_dir, data_dir=tmp_path))
    assert LocalClient(closed_app, client=("203.0.113.7", 50000)).get("/no-such-route").status_code == 403
