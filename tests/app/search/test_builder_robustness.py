"""Batch building never loses or corrupts silently (issue 20): the writer lock, input fingerprints,
clean failures, explicit data decisions, scriptable output; and a fuzz of malformed input files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.core.errors import CollectionLocked
from app.main import create_app
from app.search.builder import BuildOptions, BuildProgress, InputError, OnDuplicate, build_index
from tests.conftest import ROOT, LocalClient, settings_for

TEXTS = [
    "Heat transfer in laminar boundary layers.",
    "Supersonic flow past a slender cone.",
    "Buckling of thin cylindrical shells.",
    "Shock waves in hypersonic wind tunnels.",
    "Flutter of swept wings at high speed.",
    "Skin friction in turbulent flow.",
]


def _records(n: int, prefix: str = "r") -> list[dict]:
    return [{"id": f"{prefix}{i}", "text": f"{TEXTS[i % len(TEXTS)]} Number {i}.", "n": i} for i in range(n)]


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


class Gate(BuildProgress):
    """Holds a build after its first commit until released (to have it hold its lock)."""

    def __init__(self) -> None:
        self.first_commit = threading.Event()
        self.release = threading.Event()

    def committed(self, done: int, total: int) -> None:
        self.first_commit.set()
        assert self.release.wait(60)


def _in_thread(target, *args) -> tuple[threading.Thread, list]:  # type: ignore[no-untyped-def]
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(target(*args))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


# --- 1: one writer per collection ----------------------------------------------------------------
def test_a_second_build_into_the_same_index_fails_at_once(default_models_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(default_models_dir, data_dir=tmp_path / "data")
    source = _jsonl(tmp_path / "a.jsonl", _records(40))
    gate = Gate()
    thread, outcome = _in_thread(build_index, settings, "minilm-l6", source, "docs", BuildOptions(batch_size=8), gate)
    try:
        assert gate.first_commit.wait(120)
        with pytest.raises(CollectionLocked, match="being written by a builder"):
            build_index(settings, "minilm-l6", source, "docs", BuildOptions(batch_size=8))
    finally:
        gate.release.set()
        thread.join()
    assert outcome[0]["size"] == 40 and outcome[0]["records"] == 40


def test_server_and_builder_refuse_each_others_collection(default_models_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(default_models_dir, data_dir=tmp_path / "data")
    source = _jsonl(tmp_path / "a.jsonl", _records(24))
    with LocalClient(create_app(settings)) as client:  # the server holds what it has open
        client.post("/indexes", json={"name": "served"})
        with pytest.raises(CollectionLocked, match="being written by a server"):
            build_index(settings, "minilm-l6", source, "served")
    gate = Gate()
    thread, _ = _in_thread(build_index, settings, "minilm-l6", source, "built", BuildOptions(batch_size=8), gate)
    try:
        assert gate.first_commit.wait(120)
        with LocalClient(create_app(settings)) as client:  # started while the build holds "built"
            write = client.put("/indexes/built/documents", json={"documents": [{"id": "x", "text": "hello"}]})
            assert write.status_code == 409 and write.json()["error"]["code"] == "index_locked"
            assert client.post("/indexes/built/search", json={"query": "shock", "top_k": 1}).status_code == 200
            gate.release.set()
            thread.join()
            write = client.put("/indexes/built/documents", json={"documents": [{"id": "x", "text": "hello"}]})
            assert write.status_code == 200 and write.json()["size"] == 25  # the build's 24 + this one
            hits = client.post("/indexes/built/search", json={"query": TEXTS[3], "top_k": 24}).json()["hits"]
            assert len(hits) == 24  # the server reloaded the index the build wrote
    finally:
        gate.release.set()
        thread.join()


def test_a_running_server_serves_what_a_build_creates_after_it_started(
    default_models_dir: Path, tmp_path: Path
) -> None:
    settings = settings_for(default_models_dir, data_dir=tmp_path / "data")
    with LocalClient(create_app(settings)) as client:
        # built to the end while the server runs: listed, searched, written, deleted like its own
        build_index(settings, "minilm-l6", _jsonl(tmp_path / "a.jsonl", _records(12)), "after")
        assert [i["name"] for i in client.get("/indexes").json()["indexes"]] == ["after"]
        hits = client.post("/indexes/after/search", json={"query": TEXTS[3], "top_k": 12}).json()["hits"]
        assert len(hits) == 12 and hits[0]["id"] in {"r3", "r9"}
        created = client.post("/indexes", json={"name": "after"})
        assert created.status_code == 409 and created.json()["error"]["message"] == "index 'after' already exists"
        write = client.put("/indexes/after/documents", json={"documents": [{"id": "x", "text": "hello"}]})
        assert write.status_code == 200 and write.json()["size"] == 13  # the server holds its lock now
        assert client.delete("/indexes/after").status_code == 204
        assert client.get("/indexes/after").status_code == 404 and client.get("/indexes").json()["indexes"] == []

        # found while the build still writes it: read as it was, then, once the build ends, all of it
        gate = Gate()
        source = _jsonl(tmp_path / "b.jsonl", _records(24))
        thread, outcome = _in_thread(
            build_index, settings, "minilm-l6", source, "during", BuildOptions(batch_size=8), gate
        )
        try:
            assert gate.first_commit.wait(120)
            assert client.get("/indexes/during").json()["size"] == 8
            write = client.put("/indexes/during/documents", json={"documents": [{"id": "x", "text": "hello"}]})
            assert write.status_code == 409 and write.json()["error"]["code"] == "index_locked"
            gate.release.set()
            thread.join()
            assert isinstance(outcome[0], dict) and outcome[0]["size"] == 24
            assert client.get("/indexes/during").json()["size"] == 24  # no write needed to see it
            hits = client.post("/indexes/during/search", json={"query": TEXTS[3], "top_k": 24}).json()["hits"]
            assert len(hits) == 24
        finally:
            gate.release.set()
            thread.join()


def _interrupted_build(settings, source: Path, after: int) -> None:  # type: ignore[no-untyped-def]
    """A build of `source` into "docs", batches of 8, stopped (Ctrl-C) once `after` records committed."""

    class Interrupt(BuildProgress):
        def committed(self, done: int, total: int) -> None:
            if done >= after:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(settings, "minilm-l6", source, "docs", BuildOptions(batch_size=8), Interrupt())


# --- 2: resume only over the same input ---------------------------------------------------------
def test_resume_refuses_a_changed_input_and_restart_rebuilds(default_models_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(default_models_dir, data_dir=tmp_path / "data")
    source = _jsonl(tmp_path / "a.jsonl", _records(40))

    _interrupted_build(settings, source, after=16)
    _jsonl(source, _records(10, "new") + _records(40))  # 10 lines added at the top
    with pytest.raises(InputError, match=r"input changed since the interrupted build.*--restart"):
        build_index(settings, "minilm-l6", source, "docs", BuildOptions(batch_size=8))
    result = build_index(settings, "minilm-l6", source, "docs", BuildOptions(batch_size=8, restart=True))
    assert result["records"] == 50 and result["size"] == 50 and result["resumed_from"] == 0


def test_an_unreadable_checkpoint_says_restart_and_restart_works(default_models_dir: Path, tmp_path: Path) -> None:
    # A checkpoint cut short (a crash, a full disk) parsed before --restart was looked at: every
    # build of that index, --restart included, ended in a JSONDecodeError traceback.
    settings = settings_for(default_models_dir, data_dir=tmp_path / "data")
    source = _jsonl(tmp_path / "a.jsonl", _records(24))

    _interrupted_build(settings, source, after=8)
    (checkpoint,) = (tmp_path / "data" / "indexes" / "docs").glob("build-*.json")
    checkpoint.write_text('{"committed": 8, "inpu')
    with pytest.raises(InputError, match=r"checkpoint is unreadable.*--restart"):
        build_index(settings, "minilm-l6", source, "docs", BuildOptions(batch_size=8))
    result = build_index(settings, "minilm-l6", source, "docs", BuildOptions(batch_size=8, restart=True))
    assert result["size"] == 24 and result["resumed_from"] == 0 and not checkpoint.exists()


# --- 3: a failed first build leaves nothing -----------------------------------------------------
def test_a_first_build_that_fails_leaves_no_collection(default_models_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(default_models_dir, data_dir=tmp_path / "data")
    source = _jsonl(tmp_path / "a.jsonl", _records(20))

    class FailBeforeWriting(BuildProgress):
        def planned(self, plan, resumed_from: int) -> None:  # type: ignore[no-untyped-def]
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(settings, "minilm-l6", source, "docs", progress=FailBeforeWriting())
    assert not (tmp_path / "data" / "indexes" / "docs").exists()
    assert build_index(settings, "minilm-l6", source, "docs")["size"] == 20  # and --if-missing would build it


# --- 5: explicit data decisions -----------------------------------------------------------------
def test_duplicates_follow_the_policy_and_are_counted(default_models_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(default_models_dir, data_dir=tmp_path / "data")
    records = [*_records(6), {"id": "r1", "text": "Replacement text for r1.", "n": 100}]
    source = _jsonl(tmp_path / "a.jsonl", records)
    with pytest.raises(InputError, match="'r1' occurs more than once"):
        build_index(settings, "minilm-l6", source, "strict", BuildOptions(on_duplicate=OnDuplicate.ERROR))
    last = build_index(settings, "minilm-l6", source, "last", BuildOptions(batch_size=3))
    first = build_index(settings, "minilm-l6", source, "first", BuildOptions(on_duplicate=OnDuplicate.FIRST))
    assert last["duplicates"] == first["duplicates"] == 1 and last["size"] == first["size"] == 6
    with LocalClient(create_app(settings)) as client:
        assert client.get("/indexes/last/documents/r1").json()["metadata"] == {"n": 100}
        assert client.get("/indexes/first/documents/r1").json()["metadata"] == {"n": 1}
        assert client.get("/indexes/last").json()["index_vectors"] == 6  # nothing stale in the index


def test_empty_texts_are_refused_or_skipped_and_counted(default_models_dir: Path, tmp_path: Path) -> None:
    from app.search.builder import OnEmpty

    settings = settings_for(default_models_dir, data_dir=tmp_path / "data")
    source = _jsonl(tmp_path / "a.jsonl", [*_records(3), {"id": "blank", "text": " "}, *_records(2, "s")])
    with pytest.raises(InputError, match=r"a.jsonl:4: 'text' is empty"):
        build_index(settings, "minilm-l6", source, "strict")
    result = build_index(settings, "minilm-l6", source, "lenient", BuildOptions(on_empty=OnEmpty.SKIP))
    assert result["size"] == 5 and result["empty_skipped"] == 1


def test_a_byte_order_mark_is_not_part_of_the_first_record(default_models_dir: Path, tmp_path: Path) -> None:
    # Excel's "CSV UTF-8" and Windows editors write one; read as text it was a column name ("\ufeffid").
    settings = settings_for(default_models_dir, data_dir=tmp_path / "data")
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "a.csv").write_text("id,text,lang\nc1,Heat transfer in laminar flow.,en\n", encoding="utf-8-sig")
    (folder / "b.jsonl").write_text('{"id": "j1", "text": "Buckling of shells."}\n', encoding="utf-8-sig")
    result = build_index(settings, "minilm-l6", folder, "bom")
    assert result["size"] == 2
    with LocalClient(create_app(settings)) as client:
        assert client.get("/indexes/bom/documents/c1").json()["metadata"] == {"lang": "en"}
        assert client.get("/indexes/bom/documents/j1").status_code == 200


def test_skipped_files_are_listed_and_vectors_may_come_with_the_input(default_models_dir: Path, tmp_path) -> None:
    settings = settings_for(default_models_dir, data_dir=tmp_path / "data")
    folder = tmp_path / "input"
    folder.mkdir()
    _jsonl(folder / "a.jsonl", _records(4))
    vector = [1.0] + [0.0] * 383
    _jsonl(folder / "b.jsonl", [{"id": "v1", "vector": vector, "tag": "own"}])
    (folder / "notes.txt").write_text("not input")
    result = build_index(settings, "minilm-l6", folder, "mixed")
    assert result["size"] == 5 and result["files_skipped"] == [str(folder / "notes.txt")]
    with LocalClient(create_app(settings)) as client:
        hits = client.post("/indexes/mixed/search", json={"vector": vector, "top_k": 1}).json()["hits"]
        assert hits[0]["id"] == "v1" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_a_build_that_fills_the_volume_stops_in_one_line_and_resumes_when_run_again(
    default_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.config import get_settings
    from app.core.errors import StorageFull
    from app.search.store import DocumentStore

    real_upsert = DocumentStore.upsert
    writes: list[int] = []

    def fills_up(store: DocumentStore, docs: list) -> tuple[list[int], list[int]]:  # type: ignore[type-arg]
        writes.append(len(docs))
        if len(writes) > 2:  # the store's own refusal when SQLite finds the volume full
            raise StorageFull(f"writing {len(docs)} documents: the data volume is full; nothing was written")
        return real_upsert(store, docs)

    monkeypatch.setenv("TESSERA_MODELS_DIR", str(default_models_dir))
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        source = _jsonl(tmp_path / "a.jsonl", _records(12))
        args = ["index", "build", "--input", str(source), "--index", "s", "--batch-size", "4"]
        monkeypatch.setattr(DocumentStore, "upsert", fills_up)
        full = CliRunner().invoke(cli, args)
        assert full.exit_code != 0 and full.stdout == ""
        assert "the data volume is full" in full.stderr and "resumes after its 8 committed records" in full.stderr
        monkeypatch.setattr(DocumentStore, "upsert", real_upsert)  # room again
        again = CliRunner().invoke(cli, args)
        assert again.exit_code == 0, again.output
        result = json.loads(again.stdout)
        assert result["resumed_from"] == 8 and result["size"] == 12
    finally:
        get_settings.cache_clear()


# --- 6, 7: scriptable output, one-line errors -----------------------------------------------------
def test_cli_output_is_scriptable(default_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.config import get_settings

    monkeypatch.setenv("TESSERA_MODELS_DIR", str(default_models_dir))
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        source = _jsonl(tmp_path / "a.jsonl", _records(12))
        args = ["index", "build", "--input", str(source), "--index", "s", "--batch-size", "4"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["records"] == 12  # stdout: the JSON result alone
        assert "12 records in 1 file" in result.stderr
    finally:
        get_settings.cache_clear()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    bad = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "index", "build", "--input", str(source)],
        env={**env, "TESSERA_SNAPSHOT_EVERY_OPS": "0"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: TESSERA_SNAPSHOT_EVERY_OPS='0': Input should be greater than or equal to 1"
    ]


# --- the fuzz: malformed files -------------------------------------------------------------------
def _parquet(path: Path, rows: list[dict], truncate: bool = False) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])


def _malformed(folder: Path) -> list[tuple[str, Path]]:
    """(what, input path) for each kind of broken input."""
    cases: list[tuple[str, Path]] = []

    def add(name: str, write) -> None:  # type: ignore[no-untyped-def]
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        write(target)
        cases.append((name, target))

    good = json.dumps({"id": "ok", "text": "fine"}) + "\n"
    add("bad-json.jsonl", lambda p: p.write_text(good + '{"id": 2\n'))
    add("array.json", lambda p: p.write_text(json.dumps([{"id": "a", "text": "x"}])))
    add("scalar.jsonl", lambda p: p.write_text(good + "42\n"))
    add("latin1.jsonl", lambda p: p.write_bytes(good.encode() + '{"id": "é", "text": "café"}\n'.encode("latin-1")))
    add("no-text.csv", lambda p: p.write_text("id,body\n1,hello\n"))
    add("no-id.csv", lambda p: p.write_text("key,text\n1,hello\n"))
    add("latin1.csv", lambda p: p.write_bytes("id,text\n1,ok\n2,caf\xe9 noir\n".encode("latin-1")))
    add("extra-field.csv", lambda p: p.write_text("id,text\n1,hello,surprise\n"))
    add("truncated.parquet", lambda p: _parquet(p, _records(200), truncate=True))
    add("no-text.parquet", lambda p: _parquet(p, [{"id": "1", "body": "x"}]))
    add("empty.jsonl", lambda p: p.write_text(""))
    add("blank.jsonl", lambda p: p.write_text("\n   \n\n"))
    add("null-id.jsonl", lambda p: p.write_text(good + '{"id": null, "text": "x"}\n'))
    add("empty-id.jsonl", lambda p: p.write_text(good + '{"id": "", "text": "x"}\n'))
    add("slash-id.jsonl", lambda p: p.write_text(good + '{"id": "a/b", "text": "x"}\n'))
    add("bool-id.jsonl", lambda p: p.write_text(good + '{"id": true, "text": "x"}\n'))
    add("long-id.jsonl", lambda p: p.write_text(good + json.dumps({"id": "x" * 600, "text": "x"}) + "\n"))
    add("empty-text.jsonl", lambda p: p.write_text(good + '{"id": "e", "text": "   "}\n'))
    add("only-empty.jsonl", lambda p: p.write_text('{"id": "e", "text": ""}\n'))  # with --on-empty skip
    add("number-text.jsonl", lambda p: p.write_text(good + '{"id": "n", "text": 12}\n'))
    add("surrogate-text.jsonl", lambda p: p.write_text(good + '{"id": "s", "text": "\\ud800"}\n'))
    add("metadata-list.jsonl", lambda p: p.write_text(good + '{"id": "m", "text": "x", "metadata": [1]}\n'))
    add("nan-metadata.jsonl", lambda p: p.write_text(good + '{"id": "m", "text": "x", "score": NaN}\n'))
    add("nested-metadata.jsonl", lambda p: p.write_text(good + '{"id": "m", "text": "x", "author": {"name": "a"}}\n'))
    add("nested-list.jsonl", lambda p: p.write_text(good + '{"id": "m", "text": "x", "metadata": {"tags": [["a"]]}}\n'))
    add("big-int.jsonl", lambda p: p.write_text(good + '{"id": "m", "text": "x", "n": 18446744073709551616}\n'))
    add("short-vector.jsonl", lambda p: p.write_text(good + '{"id": "v", "vector": [0.1, 0.2]}\n'))
    add("text-vector.jsonl", lambda p: p.write_text(good + json.dumps({"id": "v", "vector": ["a"] * 384}) + "\n"))
    add("duplicate.jsonl", lambda p: p.write_text(good + good))
    add("notes.txt", lambda p: p.write_text("plain text"))
    add("folder/a.jsonl", lambda p: p.write_text(good))
    add("folder/b.jsonl", lambda p: p.write_text('{"id": "b", "txt": "typo"}\n'))
    cases = [(name, path) for name, path in cases if name != "folder/a.jsonl"]
    return [(name, folder / "folder" if name.startswith("folder/") else path) for name, path in cases]


def test_fuzz_malformed_inputs_fail_cleanly_and_harm_nothing(
    default_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.config import get_settings

    data = tmp_path / "data"
    settings = settings_for(default_models_dir, data_dir=data)
    build_index(settings, "minilm-l6", _jsonl(tmp_path / "good.jsonl", _records(10)), "keep")
    before = sorted(p.name for p in (data / "indexes" / "keep").iterdir())
    monkeypatch.setenv("TESSERA_MODELS_DIR", str(default_models_dir))
    monkeypatch.setenv("TESSERA_DATA_DIR", str(data))
    get_settings.cache_clear()
    runner = CliRunner()
    cases = _malformed(tmp_path / "inputs")
    assert len(cases) >= 20
    try:
        for number, (name, path) in enumerate(cases):
            index = f"fuzz{number}"
            args = ["index", "build", "--input", str(path), "--index", index]
            if name == "duplicate.jsonl":
                args += ["--on-duplicate", "error"]
            if name == "only-empty.jsonl":  # skipping leaves nothing: an empty input is an error too
                args += ["--on-empty", "skip"]
            result = runner.invoke(cli, args)
            assert result.exit_code != 0, (name, result.output)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (name, result.stderr)
            shown = "b.jsonl" if name.startswith("folder/") else Path(name).name
            assert shown in lines[0], (name, lines[0])
            assert result.stdout == "", name
            assert not (data / "indexes" / index).exists(), name  # no collection, no checkpoint
    finally:
        get_settings.cache_clear()
    assert sorted(p.name for p in (data / "indexes").iterdir()) == ["keep"]
    assert sorted(p.name for p in (data / "indexes" / "keep").iterdir()) == before
    with LocalClient(create_app(settings)) as client:
        assert client.get("/ready").json()["collections_failed"] == {}
        assert client.get("/indexes/keep").json()["size"] == 10
        hits = client.post("/indexes/keep/search", json={"query": TEXTS[1], "top_k": 1}).json()["hits"]
        assert hits[0]["id"] in {"r1", "r7"}


def test_deferred_indexing_loses_nothing_and_snapshots_nothing_stale(tmp_path: Path) -> None:
    """A bulk load writes the store only; a crash meanwhile (a fresh open of the folder) recovers every
    write from the op log; resume_indexing / optimize bring the index up to date."""
    import numpy as np

    from app.search.collection import Collection, CollectionConfig
    from app.search.store import Document

    dim = 8
    vectors = np.random.default_rng(1).normal(size=(300, dim)).astype(np.float32)
    config = CollectionConfig("bulk", "m", dim)
    config.save(tmp_path)
    collection = Collection(tmp_path, config, 1 << 30, snapshot_every_ops=50)
    collection.upsert([Document(f"v{i}", None, {}, vectors[i]) for i in range(100)])
    collection.defer_indexing()
    collection.upsert([Document(f"v{i}", None, {}, vectors[i]) for i in range(100, 250)])
    collection.delete(["v0", "v120"])
    assert collection.index.live == 100  # the index was left alone
    collection.snapshot()  # refused while deferred: it would claim writes the index lacks
    # as if the process died here (no close, no snapshot): a fresh open of the folder
    recovered = Collection(tmp_path, CollectionConfig.load(tmp_path), 1 << 30)
    assert recovered.index.live == recovered.store.count() == 248  # replayed from the op log
    recovered.close()
    collection.resume_indexing()
    assert collection.index.live == 248
    hits = collection.search(vectors[200], 1, None, set(), collection.index.defaults)
    assert hits[0].id == "v200"
    collection.defer_indexing()
    collection.upsert([Document(f"v{i}", None, {}, vectors[i]) for i in range(250, 300)])
    collection.optimize("Flat")  # built from the store: holds the deferred writes, ends deferral
    collection.upsert([Document("late", None, {}, vectors[0])])
    assert collection.index.live == collection.store.count() == 299
    collection.close()


@pytest.mark.parametrize(
    "value",
    [
        "a",
        0,
        -1.5,
        True,
        None,
        [],
        [1, "a", None, False, 2.5],
        2**63 - 1,
        -(2**63),
        2**63,
        -(2**63) - 1,
        [1, 2**64],
        {"nested": 1},
        [[1]],
        [{"a": 1}],
        float("nan"),
        [float("inf")],
        "\ud800",
    ],
)
def test_the_store_takes_exactly_the_metadata_the_api_takes(value: object) -> None:
    """The builder writes through `encode_metadata`: a built collection holds nothing a request
    could not have stored (a nested object, an integer past 64 bits, NaN, a lone surrogate)."""
    from pydantic import ValidationError

    from app.core.errors import InvalidRequest
    from app.schemas.search import DocumentIn
    from app.search.store import encode_metadata

    try:
        DocumentIn.model_validate({"id": "d", "text": "t", "metadata": {"k": value}})
        api_takes = True
    except ValidationError:
        api_takes = False
    try:
        encode_metadata({"k": value})
        store_takes = True
    except InvalidRequest:
        store_takes = False
    assert store_takes == api_takes, value


@pytest.mark.parametrize(
    ("option", "value", "choices"),
    [
        ("--on-duplicate", "newest", "'error', 'last', 'first'"),
        ("--on-empty", "drop", "'error', 'skip'"),
        ("--on-bad-image", "ignore", "'error', 'skip'"),
        ("--engine", "spark", "'local', 'ray'"),
    ],
)
def test_cli_refuses_an_unknown_policy_before_reading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, value: str, choices: str
) -> None:
    """A build policy outside its choices is a usage error (exit 2) that lists the choices; nothing is
    read or written, not even the settings (the input path does not exist)."""
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["index", "build", "--input", str(tmp_path / "none.jsonl"), option, value])
    assert result.exit_code == 2, result.output
    shown = " ".join(result.output.replace("│", " ").split())  # the message as read, without Rich's box
    assert f"'{value}' is not one of {choices}" in shown
    assert not (tmp_path / "data").exists()
