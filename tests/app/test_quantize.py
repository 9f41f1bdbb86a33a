"""Quantised embedding output: the same values as sentence-transformers' quantize_embeddings, and
over HTTP on the real default model (its calibration ranges come from the export)."""

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.errors import InvalidRequest
from app.inference.quantize import quantize
from tests.conftest import LocalClient

RANGES = [[-1.0, 0.0, 0.5, 0.2], [1.0, 2.0, 0.5, 0.4]]  # the third dimension is constant


def test_int8_and_uint8_by_hand() -> None:
    vectors = np.array([[-1.0, 2.0, 0.5, 0.3], [0.0, 1.0, 9.0, -5.0]], dtype=np.float32)
    uint8 = quantize(vectors, "uint8", RANGES)
    # floor((v - min) / ((max - min) / 255)) in float32 (2 / (2 / 255) is just under 255, as in
    # sentence-transformers), clipped to 0..255; a constant dimension steps by 1
    assert uint8.tolist() == [[0, 254, 0, 127], [127, 127, 8, 0]]
    assert uint8.dtype == np.uint8
    assert quantize(vectors, "int8", RANGES).tolist() == [[-128, 126, -128, -1], [-1, -1, -120, -128]]


def test_binary_packs_signs_big_endian() -> None:
    vectors = np.array([[1, -1, 1, 1, -1, -1, -1, 1, 0.5, -0.5]], dtype=np.float32)
    ubinary = quantize(vectors, "ubinary", None)
    assert ubinary.tolist() == [[0b10110001, 0b10000000]]
    assert quantize(vectors, "binary", None).tolist() == [[0b10110001 - 128, 0b10000000 - 128]]
    with pytest.raises(InvalidRequest):
        quantize(vectors, "int8", None)


@pytest.mark.parametrize("fmt", ["int8", "uint8", "binary", "ubinary"])
def test_matches_sentence_transformers(fmt: str) -> None:
    from sentence_transformers.util.quantization import quantize_embeddings

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 384)).astype(np.float32)
    ranges = np.stack([vectors[:25].min(0), vectors[:25].max(0)])  # values outside the ranges saturate
    ours = quantize(vectors, fmt, ranges.tolist())  # type: ignore[arg-type]
    theirs = quantize_embeddings(vectors, precision=fmt, ranges=ranges)
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


SENTENCES = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply."]


def test_quantised_output_over_http(client: TestClient) -> None:
    floats = np.array([d["embedding"] for d in client.post("/v1/embeddings", json={"input": SENTENCES}).json()["data"]])
    for fmt, width, low, high in (("int8", 384, -128, 127), ("uint8", 384, 0, 255), ("ubinary", 48, 0, 255)):
        response = client.post("/v1/embeddings", json={"input": SENTENCES, "encoding_format": fmt})
        assert response.status_code == 200, response.text
        rows = np.array([d["embedding"] for d in response.json()["data"]])
        assert rows.shape == (3, width) and rows.min() >= low and rows.max() <= high
        assert all(isinstance(v, int) for v in response.json()["data"][0]["embedding"])
        if fmt != "ubinary":  # the paraphrase stays closer than the unrelated sentence
            centred = rows - rows.mean(axis=0)
            sims = centred @ centred.T
            assert sims[0, 1] > sims[0, 2]
    bits = np.unpackbits(
        np.array(
            client.post("/v1/embeddings", json={"input": SENTENCES, "encoding_format": "ubinary"}).json()["data"][0][
                "embedding"
            ],
            dtype=np.uint8,
        )
    )
    assert np.array_equal(bits.astype(bool), floats[0] > 0)
    native = client.post("/embed", json={"inputs": SENTENCES[:1], "encoding_format": "binary"}).json()
    assert len(native[0]) == 48 and min(native[0]) >= -128
    as_base64 = client.post("/v1/embeddings", json={"input": "x", "encoding_format": "base64"}).json()
    assert len(base64.b64decode(as_base64["data"][0]["embedding"])) == 384 * 4


@pytest.mark.parametrize(
    "body",
    [
        {"input": "x", "encoding_format": "int8", "dimensions": 128},
        {"input": "x", "encoding_format": "int4"},
    ],
)
def test_refused_quantisations(client: TestClient, body: dict) -> None:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 422 and "error" in response.json()
    native = client.post("/embed", json={"inputs": "x", "encoding_format": "uint8", "normalize": False})
    assert native.status_code == 422 and "normalised" in native.json()["error"]["message"]
    binary = client.post("/v1/embeddings", json={"input": "x", "encoding_format": "binary", "dimensions": 128})
    assert binary.status_code == 200 and len(binary.json()["data"][0]["embedding"]) == 16


def test_model_without_ranges_gets_an_actionable_422(tiny_models_dir, tmp_path) -> None:
    import shutil

    from app.core.manifest import Manifest
    from app.main import create_app
    from tests.conftest import settings_for

    assert Manifest.load(tiny_models_dir / "tiny").quantization is not None  # the export calibrates
    folder = shutil.copytree(tiny_models_dir / "tiny", tmp_path / "models" / "tiny")
    manifest = Manifest.load(folder)
    manifest.quantization = None  # as a folder exported before calibration ranges
    manifest.save(folder)
    with LocalClient(create_app(settings_for(tmp_path / "models"))) as client:
        body = {"input": "x", "model": "tiny"}
        response = client.post("/v1/embeddings", json={**body, "encoding_format": "int8"})
        assert response.status_code == 422 and "re-export" in response.json()["error"]["message"]
        assert client.post("/v1/embeddings", json={**body, "encoding_format": "ubinary"}).status_code == 200
