"""The image-text model kind (`clip`) served: one space for text and images in /v1/embeddings,
zero-shot /v1/classify (and every bad request it can get), clip collections holding both kinds with
search by text, image or vector and a `modality` filter, and the batch builder on both inputs."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.search.builder import BuildOptions, build_index
from tests.conftest import COCO_PHOTOS, LocalClient, settings_for

MODEL = "clip-conse"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def photo(index: int) -> bytes:
    return sorted(COCO_PHOTOS.glob("*.jpg"))[index].read_bytes()


def cat_photo() -> bytes:
    import skimage.data

    out = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def clip_client(clip_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = settings_for(
        clip_models_dir, data_dir=tmp_path_factory.mktemp("clip-data"), max_images_per_request=8, max_classify_labels=50
    )
    with LocalClient(create_app(settings)) as client:
        yield client


def vectors(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)


def test_listed_with_both_towers(clip_client: TestClient) -> None:
    info = clip_client.get(f"/v1/models/{MODEL}").json()
    assert info["kind"] == "clip" and info["capabilities"] == ["embed:image", "embed:text"]
    assert info["dim"] == 384 and set(info["towers"]) == {"text", "image"}
    assert info["towers"]["image"]["input_size"] == 224 and info["towers"]["text"]["max_tokens"] == 256


def test_one_request_mixes_text_and_images_in_one_space(clip_client: TestClient) -> None:
    rows = vectors(
        clip_client.post(
            "/v1/embeddings",
            json={"model": MODEL, "input": ["a photo of a cat", {"image": b64(cat_photo())}, "a plate of pizza"]},
        )
    )
    assert rows.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-4)
    assert rows[1] @ rows[0] > rows[1] @ rows[2] + 0.1  # the cat photo is nearer the cat text
    # The text tower is MiniLM unchanged: text vectors equal the text model's (same space).
    minilm = vectors(clip_client.post("/v1/embeddings", json={"model": "minilm-l6", "input": ["a photo of a cat"]}))
    assert float(rows[0] @ minilm[0]) > 0.999


def test_classify_ranks_labels_with_probabilities(clip_client: TestClient) -> None:
    labels = ["car", "cat", "pizza", "airplane"]
    response = clip_client.post("/v1/classify", json={"images": [b64(cat_photo())], "labels": labels})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == MODEL and body["usage"]["images"] == 1 and body["usage"]["prompt_tokens"] > 0
    (result,) = body["data"]
    ranked = result["labels"]
    assert ranked[0]["label"] == "cat" and ranked[0]["index"] == 1
    assert [r["probability"] for r in ranked] == sorted((r["probability"] for r in ranked), reverse=True)
    assert sum(r["probability"] for r in ranked) == pytest.approx(1.0, abs=1e-5)
    assert all(-1.0 <= r["score"] <= 1.0 for r in ranked)
    custom = clip_client.post(
        "/v1/classify", json={"images": [b64(cat_photo())], "labels": labels, "prompt": "a drawing of a {label}"}
    )
    assert custom.status_code == 200 and custom.json()["data"][0]["labels"][0]["score"] != ranked[0]["score"]


BAD_CLASSIFY = {
    "no labels": ({"labels": []}, 422),
    "empty label": ({"labels": ["cat", ""]}, 422),
    "blank label": ({"labels": ["   "]}, 422),
    "10,000 labels": ({"labels": ["cat"] * 10_000}, 413),
    "over the cap": ({"labels": ["cat"] * 10_001}, 422),
    "label over the token limit": ({"labels": ["cat " * 600]}, 413),
    "label over the char limit": ({"labels": ["c" * 200_000]}, 413),
    "prompt without a slot": ({"labels": ["cat"], "prompt": "a photo"}, 422),
    "labels not strings": ({"labels": [1, 2]}, 422),
    "no images": ({"images": []}, 422),
    "too many images": ({"images": ["x"] * 9}, 413),
    "not an image": ({"images": [b64(b"plain text")]}, 422),
    "bad base64": ({"images": ["@@@"]}, 422),
    "text model": ({"model": "minilm-l6"}, 400),
    "unknown model": ({"model": "nope"}, 404),
    "unknown field": ({"top_k": 3}, 422),
}


@pytest.mark.parametrize("case", list(BAD_CLASSIFY))
def test_bad_classify_requests_get_json_4xx(clip_client: TestClient, case: str) -> None:
    change, status = BAD_CLASSIFY[case]
    body = {"images": [b64(photo(0))], "labels": ["cat", "dog"], **change}
    response = clip_client.post("/v1/classify", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]
    assert clip_client.post("/v1/classify", json={"images": [b64(photo(0))], "labels": ["a"]}).status_code == 200


def test_a_clip_collection_holds_both_kinds_and_filters_by_modality(clip_client: TestClient) -> None:
    created = clip_client.post("/indexes", json={"name": "mixed", "model": MODEL, "thumbnails": True})
    assert created.status_code in (200, 201), created.text
    documents = [
        {"id": "cat-photo", "image": b64(cat_photo()), "text": "Chelsea the cat"},
        {"id": "street-photo", "image": b64(photo(3))},
        {"id": "cat-text", "text": "a small grey cat asleep on a sofa"},
        {"id": "pizza-text", "text": "a pepperoni pizza on a plate"},
    ]
    upserted = clip_client.put("/indexes/mixed/documents", json={"documents": documents})
    assert upserted.status_code == 200, upserted.text

    def ids(**body: object) -> list[str]:
        response = clip_client.post("/indexes/mixed/search", json={"top_k": 4, **body})
        assert response.status_code == 200, response.text
        return [hit["id"] for hit in response.json()["hits"]]

    assert set(ids(query="a cat")) == {"cat-photo", "street-photo", "cat-text", "pizza-text"}
    assert ids(query="a cat", modality="image")[0] == "cat-photo"
    assert set(ids(query="a cat", modality="image")) == {"cat-photo", "street-photo"}
    assert set(ids(query="a cat", modality="text")) == {"cat-text", "pizza-text"}
    assert ids(image=b64(cat_photo()), modality="text")[0] == "cat-text"  # image -> text
    cat = vectors(clip_client.post("/v1/embeddings", json={"model": MODEL, "input": [{"image": b64(cat_photo())}]}))
    assert ids(vector=cat[0].tolist(), modality="image")[0] == "cat-photo"
    assert ids(query="a cat", modality="text", filter={"missing": 1}) == []  # filter and modality combine
    bad = clip_client.post("/indexes/mixed/search", json={"query": "a cat", "modality": "audio"})
    assert bad.status_code == 422 and "error" in bad.json()


def test_the_builder_embeds_image_folders_and_text_files_with_a_clip_model(
    clip_models_dir: Path, tmp_path: Path
) -> None:
    settings = settings_for(clip_models_dir, data_dir=tmp_path / "data", backend="onnxruntime", precision="fp32")
    images = tmp_path / "images"
    images.mkdir()
    (images / "cat.jpg").write_bytes(cat_photo())
    (images / "street.jpg").write_bytes(photo(3))
    (images / "metadata.jsonl").write_text(json.dumps({"file": "cat.jpg", "caption": "Chelsea"}) + "\n")
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"id": "t1", "text": "a cat on a sofa"}) + "\n")
    assert build_index(settings, MODEL, images, "gallery", BuildOptions())["size"] == 2
    assert build_index(settings, MODEL, texts, "gallery", BuildOptions())["size"] == 3
    with LocalClient(create_app(settings)) as client:
        response = client.post("/indexes/gallery/search", json={"query": "a cat", "modality": "image", "top_k": 5})
        hits = response.json()["hits"]
        assert next(h["id"] for h in hits) == "cat.jpg" and len(hits) == 2
        only_text = client.post("/indexes/gallery/search", json={"query": "a cat", "modality": "text"}).json()
        assert [h["id"] for h in only_text["hits"]] == ["t1"]
