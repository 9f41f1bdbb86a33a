"""Search modes over HTTP: dense (default), keyword (BM25) and hybrid, with filters and rerank, on
the real default model; bad requests get a JSON 4xx."""

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import LocalClient, settings_for

DOCS = [
    ("d1", "The cat sat on the mat.", {"topic": "animals", "year": 2001}),
    ("d2", "Dogs are loyal companions.", {"topic": "animals", "year": 2010}),
    ("d3", "The stock market fell sharply today.", {"topic": "finance", "year": 2015}),
    ("d4", "Interest rates were raised by the central bank.", {"topic": "finance", "year": 2020}),
    ("d5", "Part number XK-4471 replaces the older gasket.", {"topic": "parts", "year": 2021}),
    ("d6", "A kitten is playing with a ball of yarn.", {"topic": "animals", "year": 2022}),
]


@pytest.fixture
def client(default_models_dir, tmp_path) -> TestClient:
    with LocalClient(create_app(settings_for(default_models_dir, data_dir=tmp_path))) as test_client:
        assert test_client.post("/indexes", json={"name": "docs"}).status_code == 201
        body = {"documents": [{"id": i, "text": t, "metadata": m} for i, t, m in DOCS]}
        assert test_client.put("/indexes/docs/documents", json=body).status_code == 200
        yield test_client


def _search(client: TestClient, **body: object) -> list[dict]:
    response = client.post("/indexes/docs/search", json={"top_k": 6, **body})
    assert response.status_code == 200, response.text
    return response.json()["hits"]


def test_keyword_mode_finds_exact_tokens_dense_misses(client: TestClient) -> None:
    keyword = _search(client, query="XK-4471", mode="keyword")
    assert keyword[0]["id"] == "d5" and keyword[0]["keyword_score"] == keyword[0]["score"] > 0
    assert keyword[0]["dense_score"] is None  # keyword mode embeds nothing
    assert all(h["id"] in {"d5"} for h in keyword)  # only documents holding a query word
    hybrid = _search(client, query="XK-4471", mode="hybrid")
    assert hybrid[0]["id"] == "d5" and len(hybrid) == 6  # dense adds the rest
    assert hybrid[0]["dense_score"] is not None and hybrid[0]["keyword_score"] is not None
    assert [h["score"] for h in hybrid] == sorted((h["score"] for h in hybrid), reverse=True)
    dense = _search(client, query="XK-4471")
    assert "dense_score" in dense[0] and dense[0]["keyword_score"] is None


def test_hybrid_scores_are_reciprocal_ranks(client: TestClient) -> None:
    dense = [h["id"] for h in _search(client, query="cat on a mat")]
    keyword = [h["id"] for h in _search(client, query="cat on a mat", mode="keyword")]
    hits = _search(client, query="cat on a mat", mode="hybrid", hybrid={"rrf_k": 10})
    for hit in hits:
        expected = sum(1 / (10 + ranks.index(hit["id"]) + 1) for ranks in (dense, keyword) if hit["id"] in ranks)
        assert hit["score"] == pytest.approx(expected, rel=1e-5)
    convex = _search(client, query="cat on a mat", mode="hybrid", hybrid={"fusion": "convex", "dense_weight": 1.0})
    assert [h["id"] for h in convex] == dense  # all weight on dense: the dense order


def test_filters_apply_to_both_rankings(client: TestClient) -> None:
    for mode in ("keyword", "hybrid"):
        hits = _search(client, query="the cat market bank", mode=mode, filter={"topic": "finance"})
        assert {h["id"] for h in hits} <= {"d3", "d4"} and hits
        ranged = _search(client, query="the cat kitten", mode=mode, filter={"year": {"$gte": 2020}})
        assert {h["id"] for h in ranged} <= {"d4", "d5", "d6"}


def test_hybrid_with_rerank_fuses_with_dense_scores(rerank_models_dir, tmp_path) -> None:
    with LocalClient(create_app(settings_for(rerank_models_dir, data_dir=tmp_path))) as client:
        client.post("/indexes", json={"name": "docs"})
        body = {"documents": [{"id": i, "text": t, "metadata": m} for i, t, m in DOCS]}
        client.put("/indexes/docs/documents", json=body)
        response = client.post(
            "/indexes/docs/search",
            json={"query": "kitten", "mode": "hybrid", "top_k": 3, "rerank": {"candidates": 6}, "include": []},
        )
        assert response.status_code == 200, response.text
        hits = response.json()["hits"]
        assert len(hits) == 3 and all(h["first_stage_score"] is not None and h["document"] is None for h in hits)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"vector": [0.0] * 384, "mode": "keyword"}, 422),  # keyword needs text
        ({"query": "x", "mode": "dense", "hybrid": {"fusion": "rrf"}}, 422),
        ({"query": "x", "mode": "hybrid", "hybrid": {"dense_weight": 1.5}}, 422),
        ({"query": "x", "mode": "hybrid", "hybrid": {"fusion": "max"}}, 422),
        ({"query": "x", "mode": "hybrid", "hybrid": {"rrf_k": 0}}, 422),
        ({"query": "x", "mode": "semantic"}, 422),
        ({"query": 'x" OR 1=1 --', "mode": "keyword"}, 200),
        ({"query": "NEAR(cat dog) AND ^mat *", "mode": "hybrid"}, 200),
        ({"query": "!!!", "mode": "keyword"}, 200),  # no words: no hits, not an error
    ],
)
def test_bad_mode_requests(client: TestClient, body: dict, status: int) -> None:
    response = client.post("/indexes/docs/search", json=body)
    assert response.status_code == status, response.text
    if status >= 400:
        assert "error" in response.json()


def test_keyword_search_on_a_collection_without_text_is_a_clear_422(client: TestClient) -> None:
    client.post("/indexes", json={"name": "vectors"})
    client.put("/indexes/vectors/documents", json={"documents": [{"id": "v", "vector": [0.1] * 384}]})
    for mode in ("keyword", "hybrid"):
        response = client.post("/indexes/vectors/search", json={"query": "anything", "mode": mode})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "keyword_search_unavailable"
        assert "no documents with text" in response.json()["error"]["message"]
