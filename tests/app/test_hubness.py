"""Search's hubness correction (CSLS): the penalty on hand-computed values, the bank's checks, and
search over a clip collection whose model ships a bank for text queries (captions) and one for
image queries (training images), against the plain ranking."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.manifest import ClipSpec, HubnessSpec, Manifest, sha256_file
from app.inference.hubness import HubCorrection, neighbourhood_similarity
from app.inference.text_model import TextModel
from app.main import create_app
from tests.app.test_clip_api import b64, cat_photo, photo
from tests.conftest import LocalClient, settings_for

QUERY = "a photo of a cat"
BANK_FILE = "hubness_bank.npy"
IMAGE_BANK_FILE = "hubness_image_bank.npy"


def test_neighbourhood_similarity_is_the_mean_of_the_nearest_bank_cosines() -> None:
    bank = np.array([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], dtype=np.float32)
    vectors = np.array([[1, 0], [0, 1]], dtype=np.float32)
    # [1, 0]: cosines 1, 0, 0.6, -1 -> top 2 mean 0.8; [0, 1]: 0, 1, 0.8, 0 -> 0.9
    np.testing.assert_allclose(neighbourhood_similarity(bank, vectors, 2), [0.8, 0.9], atol=1e-6)
    np.testing.assert_allclose(neighbourhood_similarity(bank, vectors, 99), [0.15, 0.45], atol=1e-6)  # k > bank


def test_the_penalty_is_the_weighted_centred_neighbourhood_similarity() -> None:
    bank = np.array([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], dtype=np.float32)
    hubs = HubCorrection(bank, neighbours=2, weight=0.5, mean=0.7)
    np.testing.assert_allclose(hubs.penalties(np.array([[1, 0], [0, 1]], np.float32)), [0.05, 0.1], atol=1e-6)
    assert hubs.penalties(np.zeros((0, 2), np.float32)).shape == (0,)


@pytest.mark.parametrize(
    ("bank", "why"),
    [
        (np.zeros((3, 5), np.float32), "(3, 5)"),
        (np.zeros((0, 4), np.float32), "(0, 4)"),
        (np.array([[np.nan, 0, 0, 0]], np.float32), "finite"),
        (np.zeros(4, np.float32), "(4,)"),
    ],
)
def test_a_bank_of_the_wrong_shape_or_values_is_refused(tmp_path: Path, bank: np.ndarray, why: str) -> None:
    np.save(tmp_path / BANK_FILE, bank)
    with pytest.raises(ValueError, match="hubness bank") as error:
        HubCorrection.load(tmp_path, HubnessSpec(file=BANK_FILE, mean=0.0), dim=4)
    assert why in str(error.value) or why == "finite"


@pytest.mark.parametrize("section", ["hubness", "image_hubness"])
def test_a_manifest_naming_a_bank_it_does_not_list_is_refused(clip_models_dir: Path, section: str) -> None:
    manifest = Manifest.load(clip_models_dir / "clip-conse")
    data = manifest.model_dump(mode="json")
    data["clip"][section] = {"file": BANK_FILE, "mean": 0.0}
    with pytest.raises(ValueError, match=f"`clip.{section}.file` .* not among the folder's `files`"):
        Manifest.model_validate(data)


def _hub_model(
    source: Path, target: Path, bank: np.ndarray, weight: float, image_bank: np.ndarray | None = None
) -> None:
    """`source` (a clip folder) copied as model `clip-hub` with `bank` as its text queries' hubness
    bank and `image_bank` (if any) as its image queries'."""
    shutil.copytree(source, target, symlinks=True)
    manifest = Manifest.load(target)
    files, update = dict(manifest.files), {}
    for section, file, vectors in (("hubness", BANK_FILE, bank), ("image_hubness", IMAGE_BANK_FILE, image_bank)):
        if vectors is not None:
            np.save(target / file, vectors)
            files[file] = sha256_file(target / file)
            update[section] = HubnessSpec(file=file, neighbours=10, weight=weight, mean=0.0)
    clip = (manifest.clip or ClipSpec()).model_copy(update=update)
    manifest.model_copy(update={"name": "clip-hub", "files": files, "clip": clip}).save(target)


@pytest.fixture(scope="module")
def hub_client(
    clip_models_dir: Path, default_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """clip-conse served as `clip-hub` with a bank that is the query text itself (10 copies, and 2 of
    its opposite that never come near): an image's penalty is then 2 x cos(image, query), so a query
    for that text ranks the images by -cos, exactly reversed; everything else must stay as it was."""
    text = TextModel(default_models_dir / "minilm-l6", Manifest.load(default_models_dir / "minilm-l6"))
    query = text.encode([QUERY])[0]
    bank = np.stack([query] * 10 + [-query] * 2).astype(np.float32)
    # fp32 variants only: the banks are embedded offline in fp32, and the exact reversals below need
    # the served query vectors to be those vectors (an int8 variant, which `auto` serves where it is
    # the fastest, moves scores by up to ~1e-2)
    plain_settings = settings_for(clip_models_dir, data_dir=tmp_path_factory.mktemp("hub-plain"), precision="fp32")
    with LocalClient(create_app(plain_settings)) as plain:  # the cat photo's vector, as served
        embedded = plain.post("/v1/embeddings", json={"model": "clip-conse", "input": [{"image": b64(cat_photo())}]})
        cat = np.asarray(embedded.json()["data"][0]["embedding"], np.float32)
    image_bank = np.stack([cat] * 10 + [-cat] * 2).astype(np.float32)  # the same design, for image queries
    models = tmp_path_factory.mktemp("hub-models")
    (models / "minilm-l6").symlink_to(default_models_dir / "minilm-l6")
    _hub_model(clip_models_dir / "clip-conse", models / "clip-hub", bank, weight=2.0, image_bank=image_bank)
    settings = settings_for(models, data_dir=tmp_path_factory.mktemp("hub-data"), precision="fp32")
    with LocalClient(create_app(settings)) as client:
        created = client.post("/indexes", json={"name": "gallery", "model": "clip-hub"})
        assert created.status_code in (200, 201), created.text
        documents = [
            {"id": "cat", "image": b64(cat_photo())},
            *({"id": f"photo-{i}", "image": b64(photo(i))} for i in range(5)),
            {"id": "cat-text", "text": "a small grey cat asleep on a sofa"},
        ]
        upserted = client.put("/indexes/gallery/documents", json={"documents": documents})
        assert upserted.status_code == 200, upserted.text
        yield client


def _search(client: TestClient, **body: object) -> list[dict]:
    response = client.post("/indexes/gallery/search", json={"top_k": 7, **body})
    assert response.status_code == 200, response.text
    return response.json()["hits"]


def _assert_images_turned_round(plain: list[dict], corrected: list[dict]) -> None:
    """The bank is the query's own vector (weight 2, mean 0): each image scores cos - 2 (cos - 0) =
    -cos, so the images come in reverse order; the text document keeps its cosine."""
    assert all(hit["dense_score"] is None for hit in plain)
    plain_images = [hit for hit in plain if hit["id"] != "cat-text"]
    assert plain_images[0]["id"] == "cat" and all(hit["score"] > 0 for hit in plain_images)
    images = [hit for hit in corrected if hit["id"] != "cat-text"]
    assert [hit["id"] for hit in images] == [hit["id"] for hit in reversed(plain_images)]
    cosine = {hit["id"]: hit["score"] for hit in plain}
    for hit in images:
        assert hit["dense_score"] == pytest.approx(cosine[hit["id"]], abs=1e-5)
        # the bank was embedded offline, the query by the served fp32 variant (ONNX Runtime or OpenVINO)
        assert hit["score"] == pytest.approx(-cosine[hit["id"]], abs=1e-3)
    text_hit = next(hit for hit in corrected if hit["id"] == "cat-text")  # texts are not penalised
    assert text_hit["score"] == pytest.approx(cosine["cat-text"], abs=1e-6) and text_hit["dense_score"] is None


def test_text_queries_rank_images_by_cosine_minus_their_hub_penalty(hub_client: TestClient) -> None:
    corrected = _search(hub_client, query=QUERY)
    _assert_images_turned_round(_search(hub_client, query=QUERY, hubness_correction=False), corrected)
    assert corrected[0]["id"] == "cat-text"


def test_the_correction_keeps_top_k_and_filters(hub_client: TestClient) -> None:
    ranked = [hit["id"] for hit in _search(hub_client, query=QUERY, modality="image")]
    top = _search(hub_client, query=QUERY, modality="image", top_k=2)
    assert [hit["id"] for hit in top] == ranked[:2] and len(ranked) == 6  # from the 50 re-ranked, not the plain 2


def test_image_queries_rank_images_by_cosine_minus_their_image_bank_penalty(hub_client: TestClient) -> None:
    plain = _search(hub_client, image=b64(cat_photo()), hubness_correction=False)
    assert plain[0]["id"] == "cat" and plain[0]["score"] == pytest.approx(1.0, abs=1e-3)
    _assert_images_turned_round(plain, _search(hub_client, image=b64(cat_photo())))


def test_the_two_query_kinds_keep_their_own_penalties(hub_client: TestClient) -> None:
    # alternating kinds: each search must use its own bank's penalties, not the other kind's cached ones
    for _ in range(2):
        by_text = {h["id"]: h["score"] for h in _search(hub_client, query=QUERY)}
        by_image = {h["id"]: h["score"] for h in _search(hub_client, image=b64(cat_photo()))}
        plain_text = {h["id"]: h["score"] for h in _search(hub_client, query=QUERY, hubness_correction=False)}
        plain_image = {
            h["id"]: h["score"] for h in _search(hub_client, image=b64(cat_photo()), hubness_correction=False)
        }
        for image_id in ("cat", "photo-1"):
            assert by_text[image_id] == pytest.approx(-plain_text[image_id], abs=1e-3)
            assert by_image[image_id] == pytest.approx(-plain_image[image_id], abs=1e-3)


def test_vector_and_keyword_queries_are_not_corrected(hub_client: TestClient) -> None:
    cat = hub_client.post("/v1/embeddings", json={"model": "clip-hub", "input": [{"image": b64(cat_photo())}]})
    hits = _search(hub_client, vector=cat.json()["data"][0]["embedding"])
    assert hits[0]["id"] == "cat" and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert all(hit["dense_score"] is None for hit in hits)
    hybrid = _search(hub_client, query=QUERY, mode="hybrid")
    assert hybrid == _search(hub_client, query=QUERY, mode="hybrid", hubness_correction=False)


def test_the_model_says_it_corrects_hubness(hub_client: TestClient) -> None:
    image = hub_client.get("/v1/models/clip-hub").json()["towers"]["image"]
    assert image["hubness_correction"] == {"bank_texts": 12, "neighbours": 10, "weight": 2.0}
    assert image["image_hubness_correction"] == {"bank_images": 12, "neighbours": 10, "weight": 2.0}


def test_a_bad_hubness_flag_is_a_4xx(hub_client: TestClient) -> None:
    for flag in ("yes", 1, None):
        response = hub_client.post("/indexes/gallery/search", json={"query": QUERY, "hubness_correction": flag})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["message"]


def test_penalties_are_computed_once_per_stored_image_and_follow_a_replaced_one(
    hub_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    computed: list[int] = []
    original = HubCorrection.penalties

    def counting(self: HubCorrection, vectors: np.ndarray) -> np.ndarray:
        computed.append(len(vectors))
        return original(self, vectors)

    monkeypatch.setattr(HubCorrection, "penalties", counting)
    _search(hub_client, query=QUERY)
    computed.clear()
    again = _search(hub_client, query=QUERY)
    assert computed == []  # every candidate's penalty is cached by its key
    # "photo-0" replaced by another picture: a new key, so a new vector and penalty (computed once)
    replaced = hub_client.put(
        "/indexes/gallery/documents", json={"documents": [{"id": "photo-0", "image": b64(photo(7))}]}
    )
    assert replaced.status_code == 200, replaced.text
    plain = {h["id"]: h["score"] for h in _search(hub_client, query=QUERY, hubness_correction=False)}
    corrected = {h["id"]: h for h in _search(hub_client, query=QUERY)}
    assert computed == [1]
    assert corrected["photo-0"]["score"] == pytest.approx(-plain["photo-0"], abs=1e-3)
    assert corrected["photo-0"]["dense_score"] != next(h["dense_score"] for h in again if h["id"] == "photo-0")
