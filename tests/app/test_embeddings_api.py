"""The embedding routes on the real default model (all-MiniLM-L6-v2 exported to ONNX)."""

import base64
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.manifest import Manifest
from app.inference.tokenizer import TextTokenizer
from app.main import create_app
from tests.conftest import DEFAULT_MODEL_DIR, LocalClient, settings_for

TEXTS = ["A man is playing a guitar.", "The cat sleeps on the warm windowsill.", "Stocks fell sharply today."]


def _vectors(body: dict) -> np.ndarray:
    return np.array([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])], dtype=np.float32)


def test_openai_shape_and_real_token_counts(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"input": TEXTS, "model": "minilm-l6"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == "minilm-l6"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 384 for d in body["data"])
    manifest = Manifest.load(DEFAULT_MODEL_DIR)
    tokenizer = TextTokenizer(DEFAULT_MODEL_DIR / "tokenizer.json", manifest.text_tower.max_tokens)
    expected_tokens = sum(len(t.ids) for t in tokenizer.encode(TEXTS))
    assert body["usage"] == {"prompt_tokens": expected_tokens, "total_tokens": expected_tokens}
    vectors = _vectors(body)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # Semantics survive: each text is most similar to itself, and a paraphrase beats an unrelated text.
    para = _vectors(client.post("/v1/embeddings", json={"input": ["Someone plays the guitar."]}).json())[0]
    assert vectors[0] @ para > vectors[2] @ para + 0.3


def test_single_string_input_equals_list_input(client: TestClient) -> None:
    single = _vectors(client.post("/v1/embeddings", json={"input": TEXTS[1]}).json())
    batch = _vectors(client.post("/v1/embeddings", json={"input": TEXTS}).json())
    np.testing.assert_allclose(single[0], batch[1], atol=2e-3)


def test_base64_is_little_endian_float32_of_the_same_vectors(client: TestClient) -> None:
    floats = _vectors(client.post("/v1/embeddings", json={"input": TEXTS}).json())
    encoded = client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"}).json()
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in encoded["data"]])
    np.testing.assert_allclose(decoded, floats, atol=1e-6)


def test_dimensions_truncates_then_renormalises(client: TestClient) -> None:
    full = _vectors(client.post("/v1/embeddings", json={"input": TEXTS}).json())
    short = _vectors(client.post("/v1/embeddings", json={"input": TEXTS, "dimensions": 64}).json())
    assert short.shape == (3, 64)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-5)


def test_native_embed_normalize_false_returns_the_pooled_vector(client: TestClient) -> None:
    normalized = np.array(client.post("/embed", json={"inputs": TEXTS}).json())
    raw = np.array(client.post("/embed", json={"inputs": TEXTS, "normalize": False}).json())
    norms = np.linalg.norm(raw, axis=1)
    assert (np.abs(norms - 1) > 0.05).all()  # really unnormalised
    np.testing.assert_allclose(raw / norms[:, None], normalized, atol=1e-4)


def test_long_input_truncated_by_default_and_413_when_truncate_false(client: TestClient) -> None:
    long_text = "word " * 600
    ok = client.post("/embed", json={"inputs": long_text})
    assert ok.status_code == 200
    refused = client.post("/embed", json={"inputs": ["short", long_text], "truncate": False})
    assert refused.status_code == 413
    assert "input 1 has 602 tokens" in refused.json()["error"]["message"]
    refused = client.post("/v1/embeddings", json={"input": long_text, "truncate": False})
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "input_too_long"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"input": []}, 422, "invalid_request"),
        ({"input": 42}, 422, "invalid_request"),
        ({"input": [1, 2, 3]}, 422, "invalid_request"),
        ({"input": ["ok", None]}, 422, "invalid_request"),
        ({}, 422, "invalid_request"),
        ({"input": "x", "encoding_format": "int4"}, 422, "invalid_request"),
        ({"input": "x", "dimensions": 0}, 422, "invalid_request"),
        ({"input": "x", "dimensions": 385}, 422, "invalid_dimensions"),
        ({"input": "x", "model": "no-such-model"}, 404, "model_not_found"),
        ({"input": ["x"] * 2049}, 413, "too_many_inputs"),
    ],
)
def test_bad_input_gets_json_4xx(client: TestClient, body: dict, status: int, code: str) -> None:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code


def test_malformed_json_and_oversized_payload(client: TestClient) -> None:
    response = client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "error" in response.json()
    huge = {"input": ["x" * 1_000_000] * 9}  # > 8 MiB default payload limit
    response = client.post("/v1/embeddings", json=huge)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_a_model_named_in_tessera_models_but_absent_is_reported_not_ignored(default_models_dir: Path) -> None:
    # A typo in TESSERA_MODELS was silently dropped: the server said "ready" without the model.
    with LocalClient(create_app(settings_for(default_models_dir, models="minilm-l6,minilm-l12"))) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        assert "TESSERA_MODELS names it" in ready.json()["failed"]["minilm-l12"]
        missing = client.post("/v1/embeddings", json={"input": "x", "model": "minilm-l12"})
        assert missing.status_code == 404 and "TESSERA_MODELS names it" in missing.json()["error"]["message"]
        assert client.post("/v1/embeddings", json={"input": "x", "model": "minilm-l6"}).status_code == 200


def test_models_health_ready_metrics(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    (entry,) = [m for m in models["data"] if m["id"] == "minilm-l6"]
    assert entry["dim"] == 384 and entry["backend"] in {"onnxruntime", "openvino"}
    assert entry["parity"]["min_cosine"] >= 0.999 and entry["parity"]["n_samples"] >= 1000
    assert client.get("/v1/models/minilm-l6").json()["id"] == "minilm-l6"
    assert client.get("/v1/models/nope").status_code == 404
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ready"
    client.post("/v1/embeddings", json={"input": TEXTS})
    text = client.get("/metrics").text
    assert 'tessera_requests_total{method="POST",route="/v1/embeddings",status="200"}' in text
    assert 'tessera_batch_size_count{model="minilm-l6"}' in text
    assert 'tessera_tokens_total{model="minilm-l6"}' in text
    assert 'tessera_queue_depth{model="minilm-l6"}' in text
    assert client.get("/no/such/route").json()["error"]["code"] == "not_found"
