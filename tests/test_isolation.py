"""The test suite never touches the checkout's own data dir (the demo collections of `make serve`)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.conftest import ROOT


def test_apps_without_a_data_dir_use_the_suites_temporary_one(client: TestClient, isolated_data_dir: Path) -> None:
    data_dir = client.app.state.settings.data_dir  # type: ignore[attr-defined]
    assert data_dir == isolated_data_dir
    assert Settings().data_dir == isolated_data_dir
    assert not data_dir.resolve().is_relative_to((ROOT / "data").resolve())
    assert "cranfield" not in {c["name"] for c in client.get("/indexes").json()["indexes"]}
