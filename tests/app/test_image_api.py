"""Image embeddings over HTTP with the real MobileNetV2 export: shapes, agreement with PyTorch,
the request forms, and every kind of bad input answered with a JSON 4xx while the server keeps serving."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from tests.app.test_images import encode, gradient, png_header_only
from tests.conftest import COCO_PHOTOS, LocalClient, settings_for

MODEL = "mobilenet-v2"


@pytest.fixture(scope="module")
def image_client(image_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = settings_for(
        image_models_dir,
        data_dir=tmp_path_factory.mktemp("image-data"),
        max_images_per_request=8,
        max_image_pixels=30_000_000,
    )
    with LocalClient(create_app(settings)) as client:
        yield client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def photo(index: int = 0) -> bytes:
    return sorted(COCO_PHOTOS.glob("*.jpg"))[index].read_bytes()


def embed(client: TestClient, items: list, model: str = MODEL, **extra: object):  # type: ignore[no-untyped-def]
    return client.post("/v1/embeddings", json={"model": model, "input": items, **extra})


def vectors(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)


def test_model_is_listed_as_an_image_embedder(image_client: TestClient) -> None:
    info = image_client.get(f"/v1/models/{MODEL}").json()
    assert info["kind"] == "image" and info["capabilities"] == ["embed:image"]
    assert info["dim"] == 1280 and info["towers"]["image"]["input_size"] == 224
    assert info["parity"]["min_cosine"] >= 0.999


def test_image_embeddings_match_pytorch(image_client: TestClient) -> None:
    import torch

    from app.core.manifest import Manifest
    from app.inference.images import ImageLimits, load_pixels
    from training.models.image import ImageEncoder

    folder = Path(image_client.app.state.settings.models_dir) / MODEL  # type: ignore[attr-defined]
    tower = Manifest.load(folder).image
    served = vectors(embed(image_client, [{"image": b64(photo(i))} for i in range(4)]))
    pixels = np.stack([load_pixels(photo(i), tower, ImageLimits()) for i in range(4)])
    with torch.inference_mode():
        reference = ImageEncoder.from_source("mobilenet_v2")(torch.from_numpy(pixels))[0].numpy()
    assert served.shape == (4, 1280)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-4)
    assert float((served * reference).sum(1).min()) > 0.999


def test_data_uri_and_native_endpoint_agree(image_client: TestClient) -> None:
    data = photo(1)
    bare = vectors(embed(image_client, [{"image": b64(data)}]))
    uri = vectors(embed(image_client, [{"image": f"data:image/jpeg;base64,{b64(data)}"}]))
    native = image_client.post("/embed", json={"model": MODEL, "inputs": [{"image": b64(data)}]})
    assert native.status_code == 200
    np.testing.assert_allclose(bare, uri, atol=1e-6)
    np.testing.assert_allclose(bare, np.array(native.json()), atol=1e-5)


def test_same_photo_is_nearer_than_another_photo(image_client: TestClient) -> None:
    original = Image.open(io.BytesIO(photo(2)))
    smaller = encode(original.resize((original.width // 2, original.height // 2)), "PNG")
    rows = vectors(embed(image_client, [{"image": b64(photo(2))}, {"image": b64(smaller)}, {"image": b64(photo(3))}]))
    assert rows[0] @ rows[1] > rows[0] @ rows[2] + 0.1


def test_dimensions_and_base64_output(image_client: TestClient) -> None:
    response = embed(image_client, [{"image": b64(photo(0))}], dimensions=64, encoding_format="base64")
    assert response.status_code == 200
    row = np.frombuffer(base64.b64decode(response.json()["data"][0]["embedding"]), dtype="<f4")
    assert row.shape == (64,) and abs(float(np.linalg.norm(row)) - 1) < 1e-4


BAD_ITEMS = {
    "not an image": ({"image": b64(b"hello, I am a text file")}, 422, "invalid_image"),
    "truncated jpeg": ({"image": b64(encode(gradient(400, 300), "JPEG")[:3000])}, 422, "invalid_image"),
    "unsupported format": ({"image": b64(encode(gradient(32, 32), "ICO"))}, 422, "invalid_image"),
    "bomb": ({"image": b64(png_header_only(20_000, 20_000))}, 413, "image_too_large"),
    "bad base64": ({"image": "@@@ not base64 @@@"}, 422, "invalid_image"),
    "wrong mime": ({"image": "data:text/html;base64,PGgxPmhpPC9oMT4="}, 422, "invalid_image"),
    "url while off": ({"image": "http://example.com/cat.png"}, 422, "image_url_refused"),
    "empty": ({"image": ""}, 422, "invalid_image"),
}


@pytest.mark.parametrize("case", list(BAD_ITEMS))
def test_bad_images_get_json_4xx(image_client: TestClient, case: str) -> None:
    item, status, code = BAD_ITEMS[case]
    response = embed(image_client, [{"image": b64(photo(0))}, item])
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert "image 1" in response.json()["error"]["message"]  # names the bad item
    assert embed(image_client, [{"image": b64(photo(0))}]).status_code == 200  # still serving


@pytest.mark.parametrize(
    "item",
    [{"image": 12}, {"image": None}, {"img": "x"}, {"image": "x", "extra": 1}, {}, [1, 2, 3]],
)
def test_malformed_items_are_422(image_client: TestClient, item: object) -> None:
    response = embed(image_client, [item])
    assert response.status_code == 422 and "error" in response.json()


def test_image_sent_to_a_text_model(image_client: TestClient) -> None:
    response = embed(image_client, [{"image": b64(photo(0))}], model="minilm-l6")
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_input"


def test_text_sent_to_an_image_model(image_client: TestClient) -> None:
    response = embed(image_client, ["a photo of a cat"])
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_input"
    mixed = embed(image_client, ["a cat", {"image": b64(photo(0))}])
    assert mixed.status_code == 400 and mixed.json()["error"]["code"] == "unsupported_input"


def test_too_many_images(image_client: TestClient) -> None:
    tiny = b64(encode(gradient(8, 8)))
    response = embed(image_client, [{"image": tiny}] * 9)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_many_inputs"
    assert embed(image_client, [{"image": tiny}] * 8).status_code == 200


def test_text_still_works_beside_images(image_client: TestClient) -> None:
    response = embed(image_client, ["hello"], model="minilm-l6")
    assert vectors(response).shape == (1, 384)


def test_image_collection_stores_references_not_bytes(image_client: TestClient) -> None:
    name = "photos"
    created = image_client.post("/indexes", json={"name": name, "model": MODEL, "index": "Flat", "thumbnails": True})
    assert created.status_code in (200, 201), created.text
    photos = sorted(COCO_PHOTOS.glob("*.jpg"))[:6]
    documents = [
        {
            "id": p.stem,
            "image": b64(p.read_bytes()),
            "image_ref": f"coco/{p.name}",
            "text": f"photo {i}",
            "metadata": {"even": i % 2 == 0},
        }
        for i, p in enumerate(photos)
    ]
    response = image_client.put(f"/indexes/{name}/documents", json={"documents": documents})
    assert response.status_code == 200, response.text
    # Query with a resized copy of photo 3: it comes first, with its reference, caption and thumbnail.
    original = Image.open(photos[3])
    query = b64(encode(original.resize((original.width // 3, original.height // 3)), "JPEG"))
    hits = image_client.post(
        f"/indexes/{name}/search", json={"image": query, "top_k": 3, "include": ["document", "image", "thumbnail"]}
    ).json()["hits"]
    assert hits[0]["id"] == photos[3].stem and hits[0]["image"] == f"coco/{photos[3].name}"
    assert hits[0]["document"] == "photo 3"
    thumbnail = base64.b64decode(hits[0]["thumbnail"].removeprefix("data:image/jpeg;base64,"))
    assert max(Image.open(io.BytesIO(thumbnail)).size) <= 96
    # Filters work as for text; the bytes of the images are nowhere in the store.
    filtered = image_client.post(
        f"/indexes/{name}/search", json={"image": query, "top_k": 6, "filter": {"even": True}}
    ).json()["hits"]
    assert {h["id"] for h in filtered} == {p.stem for p in photos[::2]}
    store = Path(image_client.app.state.settings.data_dir) / "indexes" / name  # type: ignore[attr-defined]
    for db in store.glob("*.db"):
        assert photos[3].read_bytes()[1000:1100] not in db.read_bytes()
    # Search by vector too; a text query on an image-only collection is a clear 400.
    vector = image_client.get(f"/indexes/{name}/documents/{photos[0].stem}?include_vector=true").json()["vector"]
    assert (
        image_client.post(f"/indexes/{name}/search", json={"vector": vector}).json()["hits"][0]["id"] == photos[0].stem
    )
    text = image_client.post(f"/indexes/{name}/search", json={"query": "a photo"})
    assert text.status_code == 400 and text.json()["error"]["code"] == "unsupported_input"
    bad = image_client.put(f"/indexes/{name}/documents", json={"documents": [{"id": "x", "image": "@@"}]})
    assert bad.status_code == 422
    assert image_client.get(f"/indexes/{name}").json()["size"] == 6
    image_client.delete(f"/indexes/{name}")


def test_images_to_a_text_collection_are_refused(image_client: TestClient) -> None:
    image_client.post("/indexes", json={"name": "texts", "model": "minilm-l6"})
    response = image_client.put("/indexes/texts/documents", json={"documents": [{"id": "a", "image": b64(photo(0))}]})
    assert response.status_code == 400 and response.json()["error"]["code"] == "unsupported_input"
    both = image_client.put(
        "/indexes/texts/documents", json={"documents": [{"id": "a", "image": b64(photo(0)), "vector": [0.0] * 384}]}
    )
    assert both.status_code == 422
    image_client.delete("/indexes/texts")


def test_decoded_images_queue_no_deeper_than_the_decode_pool(image_client: TestClient) -> None:
    settings = image_client.app.state.settings  # type: ignore[attr-defined]
    model = image_client.app.state.registry.get(MODEL)  # type: ignore[attr-defined]
    assert model.batcher.max_queue == settings.image_decode_queue < settings.max_queue
    assert model.decoder.max_pending == settings.image_decode_queue
