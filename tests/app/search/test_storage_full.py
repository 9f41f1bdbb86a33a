"""A full data volume: writes get a clear 507 (nothing of them stored), reads go on, nothing
acknowledged is lost, and writes work again once there is room.

The store's case is SQLite's own "database or disk is full" (SQLITE_FULL), reached for real through
`PRAGMA max_page_count`; the snapshot and the collection file, which the OS writes, get ENOSPC-like
failures injected where they are written."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from app.main import create_app
from tests.conftest import LocalClient, settings_for

DIM = 384


def _docs(start: int, n: int, pad: int = 0) -> list[dict]:
    rng = np.random.default_rng(start)
    return [
        {"id": f"d{i}", "vector": rng.standard_normal(DIM).tolist(), "metadata": {"pad": "x" * pad}}
        for i in range(start, start + n)
    ]


def _error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


def test_a_full_store_refuses_writes_with_507_and_keeps_every_acknowledged_one(
    default_models_dir: Path, tmp_path: Path
) -> None:
    settings = settings_for(default_models_dir, data_dir=tmp_path)
    with LocalClient(create_app(settings)) as client:
        assert client.post("/indexes", json={"name": "full", "index": "Flat"}).status_code == 201
        assert client.put("/indexes/full/documents", json={"documents": _docs(0, 5)}).status_code == 200
        db = client.app.state.collections.get("full").store._db  # type: ignore[attr-defined]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")  # the volume is full: no page more

        refused = client.put("/indexes/full/documents", json={"documents": _docs(5, 20, 4000)})
        error = _error(refused, 507, "storage_full")
        assert "full" in error["message"] and "nothing was written" in error["message"]
        # reads go on, with exactly what was acknowledged
        assert client.get("/indexes/full").json()["size"] == 5
        assert client.get("/indexes/full/documents/d5").status_code == 404
        hits = client.post("/indexes/full/search", json={"vector": _docs(0, 1)[0]["vector"], "top_k": 10}).json()
        assert {h["id"] for h in hits["hits"]} == {f"d{i}" for i in range(5)}
        assert client.get("/ready").status_code == 200

        db.execute("PRAGMA max_page_count = 1073741823")  # room again
        assert client.put("/indexes/full/documents", json={"documents": _docs(5, 20, 4000)}).status_code == 200
        assert client.post("/indexes/full/documents/delete", json={"ids": ["d0"]}).json()["deleted"] == ["d0"]
    with LocalClient(create_app(settings)) as client:  # and a restart holds the same
        assert client.get("/indexes/full").json()["size"] == 24
        assert client.get("/indexes/full/documents/d0").status_code == 404


def test_creating_an_index_on_a_full_volume_gets_507_and_leaves_nothing(
    default_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.search.collection as collection_module

    real_fsync = collection_module.fsync_path

    def no_room(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with LocalClient(create_app(settings_for(default_models_dir, data_dir=tmp_path))) as client:
        monkeypatch.setattr(collection_module, "fsync_path", no_room)
        _error(client.post("/indexes", json={"name": "late"}), 507, "storage_full")
        assert not (tmp_path / "indexes" / "late").exists()  # no half-created collection to trip a restart
        monkeypatch.setattr(collection_module, "fsync_path", real_fsync)
        assert client.post("/indexes", json={"name": "late"}).status_code == 201
        assert not list((tmp_path / "indexes" / "late").glob("*.tmp"))


def test_a_snapshot_that_fails_after_a_durable_write_does_not_fail_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.search.vector_index as vector_index_module
    from app.search.collection import Collection, CollectionConfig
    from app.search.store import Document

    def part_written(index: object, path: str) -> None:
        Path(path).write_bytes(b"half an index")  # what a full disk leaves: a part of the file
        raise RuntimeError("Error: 'ret == (n)' failed: write error")  # how faiss reports it

    vectors = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    config = CollectionConfig("snap", "m", 8, index="Flat")
    config.save(tmp_path)
    collection = Collection(tmp_path, config, 1 << 30, snapshot_every_ops=10, snapshot_growth=0)
    monkeypatch.setattr(vector_index_module.faiss, "write_index", part_written)
    for start in range(0, 30, 10):  # each write is due a snapshot; each snapshot fails
        collection.upsert([Document(f"v{i}", None, {}, vectors[i]) for i in range(start, start + 10)])
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.faiss"))
    monkeypatch.undo()
    reopened = Collection(tmp_path, CollectionConfig.load(tmp_path), 1 << 30)  # as after a crash
    try:
        assert reopened.index.live == 30  # no snapshot was ever written: all rebuilt from the store
        assert reopened.search(vectors[29], 1, None, set(), reopened.index.defaults)[0].id == "v29"
    finally:
        reopened.close()
        collection.close()
