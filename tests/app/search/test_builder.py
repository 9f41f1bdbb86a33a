"""Batch index building: formats, the on-disk format the server loads, resume, Ray, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.main import create_app
from app.search.builder import BuildOptions, BuildProgress, InputError, build_index
from app.search.manager import CollectionManager
from tests.conftest import SHARED_DATA, LocalClient, make_another_version, settings_for


@pytest.fixture(scope="module")
def cranfield_records() -> list[dict]:
    """The first 96 Cranfield abstracts as builder records."""
    from training.data.beir import _smart_records

    docs = _smart_records(SHARED_DATA / "cranfield" / "cran.all.1400")[:96]
    return [{"id": f"c{d['I']}", "text": d.get("W", ""), "year": 1950 + int(d["I"]) % 10} for d in docs]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _vectors(settings, index: str) -> dict[str, np.ndarray]:
    manager = CollectionManager.from_settings(settings)
    manager.open_all()
    try:
        store = manager.get(index).store
        return {doc_id: store.get(doc_id, True).vector for doc_id in store.ids()}
    finally:
        manager.close()


def test_jsonl_csv_and_parquet_build_an_index_the_server_searches(
    default_models_dir: Path, tmp_path: Path, cranfield_records: list[dict]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "input"
    folder.mkdir()
    _write_jsonl(folder / "a.jsonl", cranfield_records[:32])
    with (folder / "b.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "text", "year"])
        writer.writeheader()
        writer.writerows(cranfield_records[32:64])
    pq.write_table(pa.Table.from_pylist(cranfield_records[64:]), folder / "c.parquet")
    settings = settings_for(default_models_dir, data_dir=tmp_path / "data")
    result = build_index(settings, "minilm-l6", folder, "cran", BuildOptions(batch_size=20))
    assert result["records"] == 96 and result["size"] == 96
    assert result["build"]["spec"] == "Flat" and result["build"]["recall_at_10"] == 1.0

    with LocalClient(create_app(settings)) as client:
        assert client.get("/indexes/cran").json()["size"] == 96
        target = cranfield_records[70]  # from the Parquet file
        hits = client.post("/indexes/cran/search", json={"query": target["text"], "top_k": 1}).json()["hits"]
        assert hits[0]["id"] == target["id"] and hits[0]["score"] > 0.99
        assert hits[0]["metadata"] == {"year": target["year"]}
        # CSV values arrive as strings, which a numeric range never matches; JSONL/Parquet keep numbers.
        filtered = client.post(
            "/indexes/cran/search", json={"query": "boundary layer", "top_k": 10, "filter": {"year": {"$gte": 1958}}}
        ).json()["hits"]
        assert len(filtered) == 10
        assert all(isinstance(h["metadata"]["year"], int) and h["metadata"]["year"] >= 1958 for h in filtered)


def test_interrupted_build_resumes_without_duplicating_work(
    default_models_dir: Path, tmp_path: Path, cranfield_records: list[dict]
) -> None:
    source = _write_jsonl(tmp_path / "docs.jsonl", cranfield_records)
    # fp32: the resumed run embeds its windows with other neighbours (padding), equal to ~1e-7
    fp32 = {"backend": "onnxruntime", "precision": "fp32"}
    settings = settings_for(default_models_dir, data_dir=tmp_path / "data", **fp32)
    seen: list[int] = []

    class CrashAfterTwoBatches(BuildProgress):
        def committed(self, done: int, total: int) -> None:
            seen.append(done)
            if done >= 32:
                raise KeyboardInterrupt

    options = BuildOptions(batch_size=16)
    with pytest.raises(KeyboardInterrupt):
        build_index(settings, "minilm-l6", source, "resume", options, CrashAfterTwoBatches())
    assert seen == [16, 32]
    result = build_index(settings, "minilm-l6", source, "resume", options)
    assert result["records"] == 96 and result["written_this_run"] == 64 and result["size"] == 96
    assert result["resumed_from"] == 32

    fresh = settings_for(default_models_dir, data_dir=tmp_path / "fresh", **fp32)
    build_index(fresh, "minilm-l6", source, "resume", options)
    resumed, clean = _vectors(settings, "resume"), _vectors(fresh, "resume")
    assert resumed.keys() == clean.keys()
    assert max(float(np.abs(resumed[k] - clean[k]).max()) for k in clean) < 1e-5


def test_ray_engine_matches_the_local_engine(
    default_models_dir: Path, tmp_path: Path, cranfield_records: list[dict]
) -> None:
    pytest.importorskip("ray")
    import ray

    source = _write_jsonl(tmp_path / "docs.jsonl", cranfield_records[:64])
    local = settings_for(default_models_dir, data_dir=tmp_path / "local", backend="onnxruntime", precision="fp32")
    on_ray = settings_for(default_models_dir, data_dir=tmp_path / "ray", backend="onnxruntime", precision="fp32")
    build_index(local, "minilm-l6", source, "docs", BuildOptions(batch_size=8, encode_window=16))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        options = BuildOptions(batch_size=8, encode_window=16, engine="ray")
        result = build_index(on_ray, "minilm-l6", source, "docs", options)
    finally:
        ray.shutdown()
    assert result["records"] == 64
    a, b = _vectors(local, "docs"), _vectors(on_ray, "docs")
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-6


def test_cli_builds_and_reports_bad_input(
    default_models_dir: Path, tmp_path: Path, cranfield_records: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.config import get_settings

    monkeypatch.setenv("TESSERA_MODELS_DIR", str(default_models_dir))
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        source = _write_jsonl(tmp_path / "docs.jsonl", cranfield_records[:24])
        ok = runner.invoke(cli, ["index", "build", "--input", str(source), "--index", "cli", "--batch-size", "8"])
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.stdout)["records"] == 24  # stdout holds the result alone
        again = runner.invoke(cli, ["index", "build", "--input", str(source), "--index", "cli", "--if-missing"])
        assert again.exit_code == 0 and "not rebuilt" in again.stderr

        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"id": "1", "text": "fine"}\n{"id": 2\n')
        cases = [
            (["--input", str(tmp_path / "missing.jsonl")], "no such file"),
            (["--input", str(bad)], "bad.jsonl:2: invalid JSON"),
            (["--input", str(source), "--model", "nope"], "model 'nope' not found"),
            (["--input", str(source), "--index", "../escape"], "invalid index name"),
        ]
        for args, message in cases:
            result = runner.invoke(cli, ["index", "build", *args])
            assert result.exit_code == 2, result.output
            assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    finally:
        get_settings.cache_clear()


def test_records_without_id_or_text_are_rejected(tmp_path: Path) -> None:
    from app.search.builder import read_records

    path = _write_jsonl(tmp_path / "x.jsonl", [{"id": "1", "text": "a"}, {"text": "no id"}])
    with pytest.raises(InputError, match=r"x.jsonl:2: no 'id' field"):
        list(read_records([path]))


def test_npy_vectors_with_and_without_ids(default_models_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(default_models_dir, data_dir=tmp_path / "data")
    vectors = np.random.default_rng(4).normal(size=(300, 384)).astype(np.float32)
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "part1.npy", vectors[:200])
    (folder / "part1.ids").write_text("".join(f"doc-{i}\n" for i in range(200)))
    np.save(folder / "part2.npy", vectors[200:].astype(np.float64))  # any float type, stored as float32
    result = build_index(settings, "minilm-l6", folder, "vec", BuildOptions(batch_size=64))
    assert result["records"] == result["size"] == 300
    stored = _vectors(settings, "vec")
    assert np.allclose(stored["doc-7"], vectors[7]) and np.allclose(stored["part2:50"], vectors[250], atol=1e-6)

    # `--engine ray`: precomputed vectors need no embedding, so Ray is never started and the
    # collection holds exactly what the local engine wrote (ids, vectors, store keys)
    on_ray = settings_for(default_models_dir, data_dir=tmp_path / "ray")
    ray_result = build_index(on_ray, "minilm-l6", folder, "vec", BuildOptions(batch_size=64, engine="ray"))
    assert ray_result["records"] == ray_result["size"] == 300
    from_ray = _vectors(on_ray, "vec")
    assert list(from_ray) == list(stored) and all(np.array_equal(from_ray[k], stored[k]) for k in stored)


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("nan", "row 17: vector contains NaN"),
        ("dim", "vectors have 16 dimensions; the model has 384"),
        ("ids", "2 ids for 40 rows"),
        ("corrupt", "not a readable .npy array"),
        ("bad id", "row 3"),
        ("truncated", "truncated at row 39 of 40"),
    ],
)
def test_npy_input_problems_name_the_file_and_row(default_models_dir: Path, tmp_path: Path, problem, message) -> None:
    vectors = np.random.default_rng(5).normal(size=(40, 384)).astype(np.float32)
    path = tmp_path / "x.npy"
    if problem == "nan":
        vectors[17, 3] = np.nan
    if problem == "dim":
        vectors = vectors[:, :16]
    np.save(path, vectors)
    if problem == "ids":
        (tmp_path / "x.ids").write_text("a\nb\n")
    if problem == "bad id":
        (tmp_path / "x.ids").write_text("".join(("bad/id" if i == 3 else f"v{i}") + "\n" for i in range(40)))
    if problem == "corrupt":
        path.write_bytes(b"\x93NUMPY garbage")
    if problem == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    settings = settings_for(default_models_dir, data_dir=tmp_path / "data")
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        build_index(settings, "minilm-l6", path, "bad", BuildOptions())
    assert not (tmp_path / "data" / "indexes" / "bad").exists()  # nothing half-written


def _another_version(models_dir: Path, tmp_path: Path) -> Path:
    """A models folder whose minilm-l6 is another version of the bundled one."""
    make_another_version(models_dir / "minilm-l6", tmp_path / "models-v2" / "minilm-l6")
    return tmp_path / "models-v2"


def test_an_index_embedded_by_another_model_version_is_never_mixed_into(
    default_models_dir: Path, tmp_path: Path, cranfield_records: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.config import get_settings
    from app.core.manifest import Manifest
    from app.search.builder import Existing, existing_index
    from app.search.collection import CollectionConfig

    data = tmp_path / "data"
    first, second = default_models_dir, _another_version(default_models_dir, tmp_path)
    old, new = (Manifest.load(m / "minilm-l6").fingerprint for m in (first, second))
    assert old and new and old != new
    source = _write_jsonl(tmp_path / "docs.jsonl", cranfield_records[:24])
    build_index(settings_for(first, data_dir=data), "minilm-l6", source, "docs", BuildOptions(batch_size=8))
    folder = data / "indexes" / "docs"
    assert CollectionConfig.load(folder).model_fingerprint == old
    assert existing_index(settings_for(first, data_dir=data), "minilm-l6", "docs") is Existing.CURRENT
    assert existing_index(settings_for(second, data_dir=data), "minilm-l6", "docs") is Existing.STALE

    # Adding to it with the new version would mix two embedding spaces: refused, the index untouched.
    more = _write_jsonl(tmp_path / "more.jsonl", cranfield_records[24:30])
    with pytest.raises(InputError, match="another version of model 'minilm-l6'"):
        build_index(settings_for(second, data_dir=data), "minilm-l6", more, "docs")
    assert len(_vectors(settings_for(first, data_dir=data), "docs")) == 24

    # A server on the new version still searches it, and /ready says why its results may be off.
    for models, listed in ((second, True), (first, False)):
        with LocalClient(create_app(settings_for(models, data_dir=data))) as client:
            ready = client.get("/ready").json()
            assert ("docs" in ready["collections_stale"]) is listed
            assert client.get("/indexes/docs").json()["model_fingerprint"] == old
            assert client.get("/v1/models/minilm-l6").json()["fingerprint"] == (new if listed else old)
            assert client.post("/indexes/docs/search", json={"query": "boundary layer", "top_k": 3}).status_code == 200
            # and refuses to embed more documents into it (a document with its own vector is still taken)
            write = client.put("/indexes/docs/documents", json={"documents": [{"id": "new", "text": "a wing"}]})
            assert write.status_code == (409 if listed else 200), write.text
            if listed:
                assert write.json()["error"]["code"] == "index_model_changed"
                vector = [1.0] + [0.0] * 383
                own = {"documents": [{"id": "own", "text": "a wing", "vector": vector}]}
                assert client.put("/indexes/docs/documents", json=own).status_code == 200

    # `--if-missing` rebuilds it from its input with the new version (and then skips it).
    monkeypatch.setenv("TESSERA_MODELS_DIR", str(second))
    monkeypatch.setenv("TESSERA_DATA_DIR", str(data))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        rebuilt = runner.invoke(cli, ["index", "build", "--input", str(more), "--index", "docs", "--if-missing"])
        assert rebuilt.exit_code == 0, rebuilt.output
        assert "rebuilding" in rebuilt.stderr
        assert CollectionConfig.load(folder).model_fingerprint == new
        assert sorted(_vectors(settings_for(second, data_dir=data), "docs")) == sorted(
            r["id"] for r in cranfield_records[24:30]
        )
        again = runner.invoke(cli, ["index", "build", "--input", str(more), "--index", "docs", "--if-missing"])
        assert again.exit_code == 0 and "not rebuilt" in again.stderr
    finally:
        get_settings.cache_clear()
    # Collections from before fingerprints were recorded are never called stale.
    assert not CollectionConfig(name="x", model="m", dim=4).model_changed(new)
