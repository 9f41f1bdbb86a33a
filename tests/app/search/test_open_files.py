"""Collections hold files open: a server near its open-file limit refuses a new collection with a
clear 507 (keeping a reserve for connections), and one started with more collections than its limit
allows serves what fits and lists the rest as failed, with what to change."""

from __future__ import annotations

import resource
from collections.abc import Callable
from pathlib import Path

import pytest

from app.core import open_files
from app.main import create_app
from tests.conftest import LocalClient, settings_for


def _room_for(collections: int) -> Callable[[], int]:
    """A budget for the server's own files with room for `collections` collections past those open
    when it is first asked (at the first collection's check)."""
    first: list[int] = []

    def own_files_budget() -> int:
        if not first:
            first.append(open_files.own_files_open() or 0)
        return first[0] + collections * open_files.FILES_PER_COLLECTION

    return own_files_budget


def test_the_soft_limit_is_raised_to_the_hard_one_and_sockets_are_not_the_server_s_own_files() -> None:
    import socket

    soft, hard = open_files.raise_soft_limit()
    assert soft == hard or hard == resource.RLIM_INFINITY
    assert open_files.shortfall_for_collection(0) is None  # a fresh process has room
    before = open_files.own_files_open()
    with socket.socket() as _, open(__file__) as _:
        assert open_files.own_files_open() == (before or 0) + 1  # the file counts, the socket does not


def test_collections_past_the_open_file_limit_are_refused_then_listed_as_failed(
    default_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(default_models_dir, data_dir=tmp_path)
    with LocalClient(create_app(settings)) as client:
        monkeypatch.setattr(open_files, "own_files_budget", _room_for(3))
        created = [client.post("/indexes", json={"name": f"c{i}"}).status_code for i in range(8)]
        assert created[0] == 201 and 507 in created
        assert set(created[created.index(507) :]) == {507}  # once out of room, refused every time
        refused = client.post("/indexes", json={"name": "late"})
        assert refused.status_code == 507 and refused.json()["error"]["code"] == "open_file_limit"
        assert "open-file limit" in refused.json()["error"]["message"]
        assert not (tmp_path / "indexes" / "late").exists()  # nothing half-made
        assert client.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200
        kept = sorted(c["name"] for c in client.get("/indexes").json()["indexes"])
    assert len(kept) == created.count(201) >= 2

    # restarted with room for one: it serves that one, lists the others as failed, and answers
    monkeypatch.setattr(open_files, "own_files_budget", _room_for(1))
    with LocalClient(create_app(settings)) as client:
        ready = client.get("/ready").json()
        assert ready["status"] == "ready"
        failed = ready["collections_failed"]
        assert sorted(failed) == kept[1:] and all("open-file limit" in why for why in failed.values())
        assert client.get(f"/indexes/{kept[0]}").status_code == 200
        assert client.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200
    monkeypatch.undo()
    with LocalClient(create_app(settings)) as client:  # with room again, every one opens
        assert sorted(c["name"] for c in client.get("/indexes").json()["indexes"]) == kept
        assert client.get("/ready").json()["collections_failed"] == {}


def test_descriptors_are_counted_only_once_collections_could_hold_half_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counted: list[int] = []

    def own_files_open() -> int:
        counted.append(1)
        return 900

    monkeypatch.setattr(open_files, "own_files_open", own_files_open)
    monkeypatch.setattr(open_files, "own_files_budget", lambda: 1000)
    assert open_files.shortfall_for_collection(10) is None and counted == []  # 66 + 64 files: far off
    assert open_files.shortfall_for_collection(75) is None and counted == [1]  # near: 900 + 6 fit
    monkeypatch.setattr(open_files, "own_files_open", lambda: 996)
    assert "open-file limit" in (open_files.shortfall_for_collection(75) or "")
