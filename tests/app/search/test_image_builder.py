"""Building an image collection from a folder (real MobileNetV2 export, COCO-mini photos): ids,
references, sidecar captions and metadata, bad files under both policies, resume, Ray, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.main import create_app
from app.search.builder import BuildOptions, BuildProgress, InputError, OnBadImage, build_index
from app.search.manager import CollectionManager
from tests.conftest import COCO_PHOTOS, LocalClient, settings_for

MODEL = "mobilenet-v2"
FP32 = {"backend": "onnxruntime", "precision": "fp32"}


def photo_folder(root: Path, count: int = 12) -> Path:
    """`count` COCO photos in two subfolders, with a sidecar captioning and tagging some."""
    photos = sorted(COCO_PHOTOS.glob("*.jpg"))[:count]
    for i, photo in enumerate(photos):
        target = root / ("a" if i % 2 else "b") / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, target)
    sidecar = [
        {"file": f"{'a' if i % 2 else 'b'}/{p.name}", "caption": f"photo number {i}", "n": i}
        for i, p in enumerate(photos)
        if i % 3 == 0
    ]
    (root / "metadata.jsonl").write_text("".join(json.dumps(e) + "\n" for e in sidecar))
    (root / "notes.txt").write_text("not an image, not a sidecar: ignored")
    return root


def stored(settings, index: str) -> dict:  # type: ignore[no-untyped-def]
    manager = CollectionManager.from_settings(settings)
    manager.open_all()
    try:
        store = manager.get(index).store
        return {doc_id: store.get(doc_id, True) for doc_id in store.ids()}
    finally:
        manager.close()


def test_folder_of_images_builds_a_searchable_collection(image_models_dir: Path, tmp_path: Path) -> None:
    folder = photo_folder(tmp_path / "photos")
    settings = settings_for(image_models_dir, data_dir=tmp_path / "data")
    result = build_index(settings, MODEL, folder, "photos", BuildOptions(batch_size=5))
    assert result["records"] == 12 and result["size"] == 12 and result["bad_images_skipped"] == []
    docs = stored(settings, "photos")
    first = sorted(COCO_PHOTOS.glob("*.jpg"))[0]
    doc = docs[f"b:{first.name}"]
    assert doc.image == str((folder / "b" / first.name).resolve())
    assert doc.text == "photo number 0" and doc.metadata == {"n": 0}
    assert docs[f"a:{sorted(COCO_PHOTOS.glob('*.jpg'))[1].name}"].text is None
    with LocalClient(create_app(settings)) as client:
        import base64

        query = base64.b64encode(first.read_bytes()).decode()
        hits = client.post("/indexes/photos/search", json={"image": query, "top_k": 2}).json()["hits"]
        assert hits[0]["id"] == f"b:{first.name}" and hits[0]["score"] > 0.999
        assert hits[0]["image"] == doc.image


def test_bad_images_stop_before_anything_is_written_or_are_skipped(image_models_dir: Path, tmp_path: Path) -> None:
    folder = photo_folder(tmp_path / "photos", count=6)
    (folder / "a" / "fake.jpg").write_text("this is text, not a JPEG")
    settings = settings_for(image_models_dir, data_dir=tmp_path / "data")
    with pytest.raises(InputError, match=r"fake.jpg: not a JPEG"):
        build_index(settings, MODEL, folder, "photos")
    assert not (tmp_path / "data" / "indexes" / "photos").exists()
    result = build_index(settings, MODEL, folder, "photos", BuildOptions(on_bad_image=OnBadImage.SKIP))
    assert result["size"] == 6 and len(result["bad_images_skipped"]) == 1


def test_a_sidecar_with_a_byte_order_mark_reads_and_one_not_utf8_fails_with_its_line(tmp_path: Path) -> None:
    from app.search.image_input import read_sidecar

    (tmp_path / "metadata.jsonl").write_text('{"file": "a.png", "caption": "red"}\n', encoding="utf-8-sig")
    assert read_sidecar(tmp_path, InputError) == {"a.png": {"caption": "red"}}
    (tmp_path / "metadata.jsonl").write_bytes(b'{"file": "a.png"}\n{"file": "b.png", "caption": "\xff"}\n')
    with pytest.raises(InputError, match=r"metadata.jsonl:2: not UTF-8 text"):
        read_sidecar(tmp_path, InputError)


def test_truncated_image_found_while_embedding(image_models_dir: Path, tmp_path: Path) -> None:
    folder = photo_folder(tmp_path / "photos", count=6)
    data = sorted(COCO_PHOTOS.glob("*.jpg"))[10].read_bytes()
    (folder / "b" / "zz-truncated.jpg").write_bytes(data[: len(data) // 3])  # header fine, pixels cut off
    settings = settings_for(image_models_dir, data_dir=tmp_path / "data")
    with pytest.raises(InputError, match=r"zz-truncated.jpg: .*could not be decoded"):
        build_index(settings, MODEL, folder, "photos", BuildOptions(batch_size=100))
    result = build_index(settings, MODEL, folder, "photos2", BuildOptions(on_bad_image=OnBadImage.SKIP))
    assert result["size"] == 6 and "zz-truncated.jpg" in result["bad_images_skipped"][0]


def test_interrupted_image_build_resumes(image_models_dir: Path, tmp_path: Path) -> None:
    folder = photo_folder(tmp_path / "photos", count=12)
    settings = settings_for(image_models_dir, data_dir=tmp_path / "data", **FP32)

    class CrashAfterOneCommit(BuildProgress):
        def committed(self, done: int, total: int) -> None:
            if done >= 4:
                raise KeyboardInterrupt

    options = BuildOptions(batch_size=4, encode_window=4)
    with pytest.raises(KeyboardInterrupt):
        build_index(settings, MODEL, folder, "photos", options, CrashAfterOneCommit())
    result = build_index(settings, MODEL, folder, "photos", options)
    assert result["resumed_from"] == 4 and result["written_this_run"] == 8 and result["size"] == 12
    fresh = settings_for(image_models_dir, data_dir=tmp_path / "fresh", **FP32)
    build_index(fresh, MODEL, folder, "photos", options)
    a, b = stored(settings, "photos"), stored(fresh, "photos")
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k].vector - b[k].vector).max()) for k in a) < 1e-5


def test_ray_engine_matches_local_for_images(image_models_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    import ray

    folder = photo_folder(tmp_path / "photos", count=8)
    local = settings_for(image_models_dir, data_dir=tmp_path / "local", **FP32)
    on_ray = settings_for(image_models_dir, data_dir=tmp_path / "ray", **FP32)
    build_index(local, MODEL, folder, "photos", BuildOptions(batch_size=4, encode_window=4))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = build_index(on_ray, MODEL, folder, "photos", BuildOptions(batch_size=4, encode_window=4, engine="ray"))
    finally:
        ray.shutdown()
    assert result["records"] == 8
    a, b = stored(local, "photos"), stored(on_ray, "photos")
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k].vector - b[k].vector).max()) for k in a) < 1e-5
    assert all(a[k].image == b[k].image for k in a)


def test_cli_builds_an_image_folder(image_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.config import get_settings

    folder = photo_folder(tmp_path / "photos", count=4)
    monkeypatch.setenv("TESSERA_MODELS_DIR", str(image_models_dir))
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        ok = runner.invoke(cli, ["index", "build", "--input", str(folder), "--model", MODEL, "--index", "pics"])
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.stdout[ok.stdout.index("{") :])["size"] == 4
        empty = tmp_path / "empty"
        empty.mkdir()
        bad = runner.invoke(cli, ["index", "build", "--input", str(empty), "--model", MODEL, "--index", "none"])
        assert bad.exit_code != 0 and "no .jpg" in bad.output
    finally:
        get_settings.cache_clear()
