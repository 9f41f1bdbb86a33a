"""Cheap unfiltered searches run on the event loop (no thread hop), and fall back to a worker
thread, never waiting on the loop, when a writer holds the index or the store."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.main import create_app
from app.search import collection as collection_module
from app.search.collection import Collection
from app.search.manager import CollectionManager
from app.search.store import Document
from app.search.vector_index import COARSE_EF_SEARCH, SearchParams, VectorIndex
from tests.app.search.test_optimize import DIM, clustered
from tests.conftest import LocalClient, settings_for, wait_for_build


@pytest.fixture
def collection(tmp_path: Path) -> Iterator[Collection]:
    manager = CollectionManager(tmp_path, 1 << 30)
    created = manager.create("inline", "m", DIM, "cosine", "Flat")
    vectors = clustered(500, seed=1)
    created.upsert([Document(f"d{i}", f"text {i}", {"i": i}, v) for i, v in enumerate(vectors)])
    yield created
    manager.close()


def _held(lock: threading.Lock | threading.RLock, seconds: float) -> threading.Thread:
    """A thread holding `lock` for `seconds` (started, and holding it on return)."""
    taken = threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    taken.wait()
    return thread


def test_the_inline_search_finds_what_the_threaded_one_does(collection: Collection) -> None:
    queries = clustered(20, seed=2)
    params = SearchParams()
    for query in queries:
        pairs = collection.dense_keys_now(query, 10, params)
        assert pairs == collection.dense_keys(query, 10, None, params)
        include = {"document", "metadata"}
        assert collection.hits_now(pairs, include) == collection.hits(pairs, include)  # type: ignore[arg-type]


def test_a_busy_writer_or_a_costly_search_sends_it_to_a_thread(
    collection: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    query, params = clustered(1, seed=4)[0], SearchParams()
    pairs = collection.dense_keys(query, 5, None, params)
    for lock, attempt in (
        (collection._index_lock, lambda: collection.dense_keys_now(query, 5, params)),
        (collection.store._lock, lambda: collection.hits_now(pairs, set())),
    ):
        holder = _held(lock, 0.5)
        start = time.perf_counter()
        assert attempt() is None
        assert time.perf_counter() - start < 0.2  # answered at once, not after the writer
        holder.join()
        assert attempt() is not None
    monkeypatch.setattr(collection_module, "INLINE_SEARCH_MAX_COMPARED", 499)  # the Flat index holds 500
    assert collection.dense_keys_now(query, 5, params) is None
    monkeypatch.setattr(collection_module, "INLINE_SEARCH_MAX_COMPARED", 500)
    assert collection.dense_keys_now(query, collection_module.INLINE_SEARCH_MAX_K + 1, params) is None


def test_how_many_vectors_a_query_is_compared_with() -> None:
    vectors = clustered(2000, seed=5)
    keys = np.arange(2000)
    flat, ivf = VectorIndex(DIM, "cosine", "Flat"), VectorIndex(DIM, "cosine", "IVF20,SQ8")
    ivf.train(vectors)
    hnsw = VectorIndex(DIM, "cosine", "HNSW16")
    for index in (flat, ivf, hnsw):
        index.add(keys, vectors)
    assert flat.vectors_compared(SearchParams()) == 2000
    assert ivf.vectors_compared(SearchParams(nprobe=5)) == 20 + 2000 * 5 // 20
    assert ivf.vectors_compared(SearchParams(nprobe=50)) == 20 + 2000  # nprobe past nlist: every list
    hnsw.remove([1, 2, 3])  # hidden keys are skipped one by one
    assert hnsw.vectors_compared(SearchParams(ef_search=32)) == 32 * 2 * 16 + 3
    binary = VectorIndex(DIM, "cosine", "IVF20,RaBitQ")  # its codes count as vectors
    binary.train(vectors)
    binary.add(keys, vectors)
    assert binary.vectors_compared(SearchParams(nprobe=5)) == 20 + 2000 * 5 // 20
    graph = VectorIndex(DIM, "cosine", "IVF1000_HNSW2,SQ8")  # lists found by a walk over ~breadth x 2 x 2 centroids
    graph.train(vectors)
    graph.add(keys, vectors)
    assert COARSE_EF_SEARCH * 4 < 1000
    assert graph.vectors_compared(SearchParams(nprobe=5)) == COARSE_EF_SEARCH * 2 * 2 + 2000 * 5 // 1000
    wide = COARSE_EF_SEARCH + 10  # the walk's breadth is at least nprobe
    assert graph.vectors_compared(SearchParams(nprobe=wide)) == wide * 2 * 2 + 2000 * wide // 1000
    assert graph.vectors_compared(SearchParams(nprobe=300)) == 1000 + 2000 * 300 // 1000  # the walk reaches them all


def test_a_binary_index_searches_inline_and_rescores_from_the_store(tmp_path: Path) -> None:
    manager = CollectionManager(tmp_path, 1 << 30)
    try:
        binary = manager.create("bin", "m", DIM, "cosine", "IVF8,RaBitQ")
        vectors = clustered(1000, seed=9)
        binary.upsert([Document(f"d{i}", None, {}, v) for i, v in enumerate(vectors)])
        binary.optimize()
        assert binary.index.is_binary and binary.index.ntotal == 1000
        params = SearchParams(nprobe=8, rescore_depth=8)  # every list: exact after rescoring
        for i in (3, 500, 999):
            pairs = binary.dense_keys_now(vectors[i], 10, params)
            assert pairs is not None and pairs == binary.dense_keys(vectors[i], 10, None, params)
            assert pairs[0][1] == pytest.approx(1.0, abs=1e-5)  # a rescored (float) score, not a code's estimate
        holder = _held(binary.store._lock, 0.5)  # a writer holds the store: the rescoring read would wait
        start = time.perf_counter()
        assert binary.dense_keys_now(vectors[3], 10, params) is None
        assert time.perf_counter() - start < 0.2
        holder.join()
        assert binary.dense_keys_now(vectors[3], 10, params) is not None
    finally:
        manager.close()


def test_a_search_waiting_on_a_writer_does_not_hold_up_other_requests(default_models_dir: Path, tmp_path: Path) -> None:
    with LocalClient(create_app(settings_for(default_models_dir, data_dir=tmp_path / "data"))) as client:
        vectors = clustered(50, seed=6)
        docs = [{"id": f"v{i}", "vector": v.tolist()} for i, v in enumerate(vectors)]
        assert client.post("/indexes", json={"name": "busy", "model": "minilm-l6"}).status_code == 201
        assert client.put("/indexes/busy/documents", json={"documents": docs}).status_code == 200
        store = client.app.state.collections.get("busy").store  # type: ignore[attr-defined]
        answers: list = []
        holder = _held(store._lock, 1.0)
        searcher = threading.Thread(
            target=lambda: answers.append(
                client.post("/indexes/busy/search", json={"vector": vectors[7].tolist(), "top_k": 3})
            )
        )
        searcher.start()
        time.sleep(0.1)
        start = time.perf_counter()
        assert client.get("/health").status_code == 200
        assert time.perf_counter() - start < 0.5  # the event loop was not waiting on the store
        assert not answers  # the search still waits for the writer, on a worker thread
        holder.join()
        searcher.join()
        assert answers[0].status_code == 200 and answers[0].json()["hits"][0]["id"] == "v7"


def test_inline_searches_racing_optimize_and_deletes_stay_correct(default_models_dir: Path, tmp_path: Path) -> None:
    """Searches (on the loop while the index is free, on a thread while a writer has it) racing index
    swaps by optimize and a stream of deletes and re-adds: every answer a 200, every stable
    document found as its own nearest neighbour, and a deleted document never returned once its
    delete was acknowledged and before its re-add was sent."""
    with LocalClient(create_app(settings_for(default_models_dir, data_dir=tmp_path / "data"))) as client:
        vectors = clustered(1200, seed=7)
        docs = [{"id": f"v{i}", "vector": v.tolist()} for i, v in enumerate(vectors)]
        assert client.post("/indexes", json={"name": "race", "model": "minilm-l6", "index": "Flat"}).status_code == 201
        for start in range(0, len(docs), 400):
            assert (
                client.put("/indexes/race/documents", json={"documents": docs[start : start + 400]}).status_code == 200
            )
        churn = range(1000, 1200)  # deleted and re-added; 0..999 stay
        gone: dict[str, int] = {}  # deleted, acknowledged, not yet re-added: id -> which deletion
        gone_lock = threading.Lock()
        stop = threading.Event()
        failures: list[str] = []

        def optimize() -> None:
            try:  # whatever happens, the searching loop below must end
                for spec in ("IVF8,Flat", "Flat", "HNSW16", "IVF8,Flat"):  # nprobe 16 > 8 lists: exact
                    response = client.post("/indexes/race/optimize", json={"index": spec})
                    if response.status_code not in (200, 202):
                        failures.append(f"optimize {spec}: {response.status_code} {response.text}")
                    wait_for_build(client, "race")
            except Exception as exc:  # recorded: a thread's exception is otherwise lost
                failures.append(f"optimize raised {exc!r}")
            finally:
                stop.set()

        def delete_and_readd() -> None:
            try:
                churn_until_stopped()
            except Exception as exc:
                failures.append(f"delete/re-add raised {exc!r}")

        def churn_until_stopped() -> None:
            k = 0
            while not stop.is_set():
                i = churn[k % len(churn)]
                k += 1
                if client.post("/indexes/race/documents/delete", json={"ids": [f"v{i}"]}).status_code != 200:
                    failures.append(f"delete v{i}")
                with gone_lock:
                    gone[f"v{i}"] = k
                time.sleep(0.005)
                with gone_lock:
                    del gone[f"v{i}"]
                if client.put("/indexes/race/documents", json={"documents": [docs[i]]}).status_code != 200:
                    failures.append(f"re-add v{i}")

        writers = [threading.Thread(target=optimize), threading.Thread(target=delete_and_readd)]
        for thread in writers:
            thread.start()
        searches = 0
        rng = np.random.default_rng(8)
        while not stop.is_set() or searches < 50:
            i = int(rng.integers(0, 1000))
            with gone_lock:
                deleted_before = dict(gone)
            # ef_search 256 over 1,200 vectors: HNSW as good as exact, so a miss is the race's, not the graph's
            body = {"vector": docs[i]["vector"], "top_k": 20, "ef_search": 256}
            response = client.post("/indexes/race/search", json=body)
            searches += 1
            if response.status_code != 200:
                failures.append(f"search: {response.status_code} {response.text}")
                continue
            ids = [hit["id"] for hit in response.json()["hits"]]
            if ids[0] != f"v{i}":
                failures.append(f"v{i} not its own nearest: {ids[:3]}")
            with gone_lock:
                still_gone = {d for d, which in deleted_before.items() if gone.get(d) == which}  # throughout
            if still_gone & set(ids):
                failures.append(f"deleted {still_gone & set(ids)} returned")
        for thread in writers:
            thread.join()
        assert not failures, failures[:5]
        assert searches >= 50
