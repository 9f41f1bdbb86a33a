"""Batch index building: stream a file or folder of records, embed in large batches, write the
same on-disk collection the server loads. Resumable; `ray` runs the embedding on Ray Data.

Records: JSONL (`{"id", "text", "metadata"?, ...}`), CSV (columns `id`, `text`, others become
metadata) or Parquet (same columns; needs pyarrow). Every other field becomes metadata.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.config import Settings
from app.core.errors import CollectionNotFound, InvalidRequest
from app.core.manifest import Manifest
from app.inference.text_model import TextModel
from app.inference.variants import choose_variant
from app.search.manager import CollectionManager
from app.search.store import Document

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}
ENCODE_BATCH = 64  # rows per forward pass inside a window (length-sorted), same for both engines
ENCODE_WINDOW = 2048  # records embedded together (one Ray row); commits are smaller (batch_size)
RAY_WINDOW_CHUNKS = 64  # windows handed to Ray per dataset (its actors load the model once per dataset)


class InputError(InvalidRequest):
    """Input the builder cannot use: the message names the file (and line) and what is wrong."""

    code = "invalid_input"


@dataclass
class Record:
    id: str
    text: str
    metadata: dict[str, Any]


def input_files(path: Path) -> list[Path]:
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUPPORTED_SUFFIXES)
    else:
        raise InputError(f"{path}: no such file or folder")
    if not files or any(f.suffix not in SUPPORTED_SUFFIXES for f in files):
        raise InputError(f"{path}: expected .jsonl, .csv or .parquet files")
    return files


def _record(raw: dict[str, Any], where: str, id_field: str, text_field: str) -> Record:
    if id_field == "id" and "id" not in raw and "_id" in raw:  # BEIR corpus files
        id_field = "_id"
        if raw.get("title"):  # BEIR: title and text are embedded together, as BEIR's evaluators do
            raw = {**raw, text_field: f"{raw['title']} {raw.get(text_field, '')}"}
    if id_field not in raw or text_field not in raw:
        raise InputError(f"{where}: record needs {id_field!r} and {text_field!r} fields")
    metadata = dict(raw.get("metadata") or {})
    metadata.update({k: v for k, v in raw.items() if k not in {id_field, text_field, "metadata"}})
    return Record(str(raw[id_field]), str(raw[text_field]), metadata)


def read_records(path: Path, id_field: str = "id", text_field: str = "text") -> Iterator[Record]:
    """Stream records in a stable order (files sorted, rows in file order)."""
    for file in input_files(path):
        if file.suffix in {".jsonl", ".json"}:
            with file.open(encoding="utf-8", newline="\n") as handle:
                for line_no, line in enumerate(handle, 1):
                    if line.strip():
                        try:
                            raw = json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise InputError(f"{file}:{line_no}: invalid JSON ({exc.msg})") from exc
                        yield _record(raw, f"{file}:{line_no}", id_field, text_field)
        elif file.suffix == ".csv":
            with file.open(encoding="utf-8", newline="") as handle:
                for row_no, row in enumerate(csv.DictReader(handle), 2):
                    yield _record(row, f"{file}:{row_no}", id_field, text_field)
        else:
            try:
                import pyarrow.parquet as pq
            except ImportError as exc:
                raise InputError(f"{file}: reading Parquet needs pyarrow (pip install pyarrow)") from exc
            for batch in pq.ParquetFile(file).iter_batches(batch_size=4096):
                for row_no, raw in enumerate(batch.to_pylist()):
                    yield _record(raw, f"{file}:row {row_no}", id_field, text_field)


def _batches(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Checkpoint:
    """Records committed so far for one (input, index) pair; lets an interrupted build resume."""

    def __init__(self, folder: Path, source: Path) -> None:
        digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
        self.path = folder / f"build-{digest}.json"

    def load(self) -> int:
        return json.loads(self.path.read_text())["committed"] if self.path.is_file() else 0

    def save(self, committed: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"committed": committed}))
        tmp.replace(self.path)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


Embedder = Callable[[list[str]], np.ndarray]  # texts -> (n, dim)


def load_text_model(settings: Settings, model_name: str) -> TextModel:
    folder = settings.models_dir / model_name
    if not (folder / "manifest.json").is_file():
        raise InputError(f"model {model_name!r} not found in {settings.models_dir}")
    manifest = Manifest.load(folder)
    variant = choose_variant(manifest, settings.backend, settings.precision)
    return TextModel(folder, manifest, variant, threads=settings.threads)


def build_index(
    settings: Settings,
    model_name: str,
    source: Path,
    index_name: str,
    *,
    batch_size: int = 256,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int = 1,
    index_spec: str = "auto",
    optimize: bool = True,
    progress: Callable[[int, int | None], None] | None = None,
    encode_window: int = ENCODE_WINDOW,
) -> dict[str, Any]:
    """Embed every record of `source` into collection `index_name` (created if missing).
    `batch_size` records are committed (durably, then checkpointed) at a time."""
    files = input_files(source)
    total = _count_records(files) if all(f.suffix in {".jsonl", ".json", ".csv"} for f in files) else None
    model = load_text_model(settings, model_name)
    manager = CollectionManager.from_settings(settings)
    manager.open_all()
    try:
        try:
            collection = manager.get(index_name)
        except CollectionNotFound:
            collection = manager.create(index_name, model_name, model.dim, "cosine", index_spec)
        if collection.config.model != model_name:
            raise InputError(f"index {index_name!r} is bound to model {collection.config.model!r}, not {model_name!r}")
        checkpoint = Checkpoint(collection.folder, source)
        done = checkpoint.load()
        if done:
            log.info("resuming %s after %d committed records", index_name, done)
        records = read_records(source)
        for _ in range(done):  # skip what an earlier run already committed
            next(records, None)
        if progress:
            progress(done, total)  # where this run starts (records committed by an earlier run)
        start = time.perf_counter()
        # Embed a window of records at a time (length-sorted inside it, so little padding) and
        # commit it in `batch_size` chunks on a writer thread while the next window is embedded.
        windows = _batches(records, max(batch_size, encode_window))
        embed_stream = (
            _ray_embed(windows, lambda b: _texts(b, model), model_name, settings, ray_address, ray_actors)
            if engine == "ray"
            else ((window, model.encode(_texts(window, model), batch_size=ENCODE_BATCH)) for window in windows)
        )
        committed = [done]

        def commit(window: list[Record], vectors: np.ndarray) -> None:
            for offset in range(0, len(window), batch_size):
                chunk = window[offset : offset + batch_size]
                rows = vectors[offset : offset + batch_size]
                collection.upsert([Document(r.id, r.text, r.metadata, v) for r, v in zip(chunk, rows, strict=True)])
                committed[0] += len(chunk)
                checkpoint.save(committed[0])  # after the durable upsert: a crash here only repeats work
                if progress:
                    progress(committed[0], total)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-writer") as writer:
            pending: Future[None] | None = None
            for window, vectors in embed_stream:
                if pending is not None:
                    pending.result()  # in order; re-raises a failed commit
                pending = writer.submit(commit, window, vectors)
            if pending is not None:
                pending.result()
        embedded = committed[0] - done
        done = committed[0]
        elapsed = time.perf_counter() - start
        report = collection.optimize(index_spec) if optimize else None
        collection.snapshot()
        checkpoint.finish()
        return {
            "index": index_name,
            "records": done,
            "embedded_this_run": embedded,
            "seconds": round(elapsed, 2),
            "records_per_s": round(embedded / elapsed, 1) if elapsed > 0 else None,
            "size": collection.store.count(),
            "build": report.__dict__ if report else None,
        }
    finally:
        manager.close()


def _texts(batch: list[Record], model: TextModel) -> list[str]:
    prefix = model.manifest.text_tower.document_prefix
    return [prefix + r.text for r in batch]


def _count_records(files: list[Path]) -> int:
    total = 0
    for file in files:
        with file.open("rb") as handle:
            lines = sum(1 for line in handle if line.strip())
        total += lines - 1 if file.suffix == ".csv" else lines
    return total


class _RayEmbedder:
    """Ray Data actor: loads the model once, then embeds one chunk (row) per call exactly as the
    local engine does, so both engines produce the same vectors."""

    def __init__(self, model_name: str, settings_json: str) -> None:
        self.model = load_text_model(Settings.model_validate_json(settings_json), model_name)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = [
            self.model.encode([str(t) for t in texts], batch_size=ENCODE_BATCH).tobytes() for texts in batch["texts"]
        ]
        return {"chunk": batch["chunk"], "vectors": np.array(vectors, dtype=object)}


def _ray_embed(
    batches: Iterator[list[Record]],
    texts_of: Callable[[list[Record]], list[str]],
    model_name: str,
    settings: Settings,
    address: str | None,
    actors: int,
) -> Iterator[tuple[list[Record], np.ndarray]]:
    """Embed chunks on Ray Data: `map_batches` over an actor pool, one chunk per row, order kept.

    Chunks are read on the driver (so resume and input errors work as in the local engine) and
    handed to Ray a window at a time; each window is one dataset, so actors start once per window."""
    try:
        import ray
    except ImportError as exc:
        raise InputError("--engine ray needs Ray: pip install 'tessera[ray]'") from exc
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    settings_json = settings.model_dump_json()
    while True:
        window = list(itertools.islice(batches, RAY_WINDOW_CHUNKS))
        if not window:
            return
        items = [{"chunk": i, "texts": texts_of(chunk)} for i, chunk in enumerate(window)]
        embedded = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * actors)).map_batches(
            _RayEmbedder,
            fn_constructor_args=(model_name, settings_json),
            batch_size=1,
            concurrency=actors,
            num_cpus=1,
            batch_format="numpy",
        )
        for row in embedded.iter_rows():
            chunk = window[int(row["chunk"])]
            yield chunk, np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(chunk), -1)
