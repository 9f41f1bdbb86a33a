"""The test suite never touches the checkout's own data dir (the demo collections of `make serve`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.conftest import ROOT


def test_apps_without_a_data_dir_use_the_suites_temporary_one(client: TestClient, isolated_data_dir: Path) -> None:
    data_dir = client.app.state.settings.data_dir  # type: ignore[attr-defined]
    assert data_dir == isolated_data_dir
    assert Settings().data_dir == isolated_data_dir
    assert not data_dir.resolve().is_relative_to((ROOT / "data").resolve())
    assert "cranfield" not in {c["name"] for c in client.get("/indexes").json()["indexes"]}


def test_a_developers_env_file_is_not_read_by_the_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("TESSERA_PORT=9123\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().port == 8000


def _fresh_env(env_file: str | None) -> dict[str, str]:
    """This process's environment for a fresh one, with TESSERA_ENV_FILE set to `env_file` (None:
    unset, the service's own default) and no TESSERA_PORT."""
    env = {k: v for k, v in os.environ.items() if k not in ("TESSERA_ENV_FILE", "TESSERA_PORT")}
    if env_file is not None:
        env["TESSERA_ENV_FILE"] = env_file
    env["PYTHONPATH"] = str(ROOT)
    return env


def _port_seen(cwd: Path, env_file: str | None) -> int:
    """TESSERA_PORT as a fresh process in `cwd` reads it, with TESSERA_ENV_FILE set to `env_file`."""
    env = _fresh_env(env_file)
    code = "from app.core.config import Settings; print(Settings().port)"
    return int(
        subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True
        ).stdout
    )


def test_the_service_reads_dot_env_or_the_file_tessera_env_file_names(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TESSERA_PORT=9123\n")
    (tmp_path / "secrets.env").write_text("TESSERA_PORT=9124\n")
    assert _port_seen(tmp_path, None) == 9123
    assert _port_seen(tmp_path, str(tmp_path / "secrets.env")) == 9124
    assert _port_seen(tmp_path, "") == 8000


def test_a_named_env_file_that_is_missing_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    """A secret that failed to mount must not start a server without its keys: exit 2, naming the file."""
    env = _fresh_env(str(tmp_path / "secrets.env"))
    tessera = [sys.executable, "-c", "from app.cli import main; main()"]
    for args in (["serve", "--port", "1"], ["index", "build", "--input", str(tmp_path / "none.jsonl")]):
        done = subprocess.run([*tessera, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip() == (
            f"error: TESSERA_ENV_FILE={str(tmp_path / 'secrets.env')!r}: not a file (missing, or a folder)"
        )
    (tmp_path / "secrets.env").write_text("TESSERA_PORT=9124\n")
    assert _port_seen(tmp_path, str(tmp_path / "secrets.env")) == 9124


@pytest.mark.parametrize(("name", "content"), [("folder", None), ("binary.env", bytes(range(128, 256)))])
def test_an_env_file_the_cli_cannot_read_stops_it_with_one_line(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    """A folder, or a file that is not UTF-8 text, named as the env file: exit 2 and one line, no traceback."""
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    tessera = [sys.executable, "-c", "from app.cli import main; main()"]
    done = subprocess.run(
        [*tessera, "index", "build", "--input", str(tmp_path / "none.jsonl")],
        cwd=ROOT,
        env=_fresh_env(str(path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], done.stderr


def test_uvicorn_started_directly_refuses_a_named_env_file_that_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "secrets.env"
    started = subprocess.run(
        [sys.executable, "-c", "import app.main"],
        env=_fresh_env(str(missing)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode != 0
    assert f"TESSERA_ENV_FILE={str(missing)!r}: not a file (missing, or a folder)" in started.stderr
