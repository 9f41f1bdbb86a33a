"""Batch index building: stream a file or folder of records, embed in large batches, write the
same on-disk collection the server loads. Resumable; `ray` runs the embedding on Ray Data.

Input: JSONL (`.jsonl`, and `.json` read as JSONL: one object per line), CSV (a header row),
Parquet, or NPY (`.npy`: an (n, dim) array of precomputed vectors, read memory-mapped; ids one per
line in a sibling `<name>.ids` file, else `<name>:<row>`; no text or metadata). Fields: `id`
(string or integer; BEIR's `_id` too), `text` (BEIR's `title` is prepended),
optional `vector` (a precomputed embedding of the model's dimension: then `text` may be omitted),
optional `metadata` (an object); every other field is metadata as well.

Guarantees: the whole input is read and checked first, before the model loads or anything is
created, and every problem is reported as `file:line` (Parquet: row group and row) with the field;
ids must be non-empty, without control characters or "/"; texts non-empty; numbers finite. A
build holds the collection's writer lock (app/search/lock.py) for its whole run. Commits are
durable and checkpointed with a fingerprint of every input file, so an interrupted build resumes
where it stopped, and refuses to resume over an input that changed. A first build that fails
before its first commit removes the collection it created.
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
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from app.core.config import Settings
from app.core.errors import InvalidRequest
from app.core.manifest import MANIFEST_FILE, Manifest, ModelKind
from app.core.memory import map_large_blocks_directly, release_free_memory
from app.core.text import MAX_ID_CHARS, document_id_problem, is_encodable
from app.inference.image_model import ImageFileEncoder, ImageModel
from app.inference.images import ImageLimits
from app.inference.text_model import TextModel
from app.inference.variants import choose_variant
from app.search.build_policies import Engine, OnBadImage, OnDuplicate, OnEmpty
from app.search.collection import Collection, CollectionConfig
from app.search.image_input import SIDECAR, check_header, image_files, iter_images, read_sidecar, sidecar_fields
from app.search.manager import CollectionManager, validate_name
from app.search.store import Document, encode_metadata
from app.search.vector_index import BuildReport, fsync_path, validate_spec

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet", ".npy"}
NPY_CHUNK = 8192  # rows of an .npy file checked and read at a time
ENCODE_BATCH = 64  # rows per forward pass inside a window (length-sorted), same for both engines
IMAGE_ENCODE_BATCH = 32  # images per forward pass
ENCODE_WINDOW = 2048  # records embedded together (one Ray row); commits are smaller (batch_size)
RAY_WINDOW_CHUNKS = 64  # windows handed to Ray per dataset (its actors load the model once per dataset)
FINGERPRINT_FULL_BYTES = 1 << 20  # files up to this size are hashed whole; larger ones head + tail
FINGERPRINT_BLOCK = 1 << 16


class InputError(InvalidRequest):
    """Input the builder cannot use: the message names the file (and line) and what is wrong."""

    code = "invalid_input"


@dataclass
class Record:
    id: str
    text: str | None
    metadata: dict[str, Any]
    vector: np.ndarray | None = None  # (dim,) float32, when the input brings it
    where: str = ""  # file:line, for messages
    empty: bool = False  # no text to embed and no vector: written only if the policy allows
    image: str | None = None  # an image file to embed (folder input): its absolute path, stored as the reference


def input_files(path: Path) -> tuple[list[Path], list[Path]]:
    """(files to read, files in a folder that are skipped for their suffix), sorted."""
    if path.is_file():
        if path.suffix not in SUPPORTED_SUFFIXES:
            raise InputError(
                f"{path}: unsupported file type {path.suffix!r}: use .jsonl, .json, .csv, .parquet or .npy"
            )
        return [path], []
    if not path.is_dir():
        raise InputError(f"{path}: no such file or folder")
    found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    files = [p for p in found if p.suffix in SUPPORTED_SUFFIXES]
    if not files:
        raise InputError(f"{path}: no .jsonl, .json, .csv, .parquet or .npy file in this folder")
    id_files = {npy_id_file(p) for p in files if p.suffix == ".npy"}  # read with their .npy
    return files, [p for p in found if p.suffix not in SUPPORTED_SUFFIXES and p not in id_files]


# A UTF-8 byte-order mark: Excel's "CSV UTF-8" and Windows editors put one before the first line;
# read as text it would become part of the first column's name or the first JSON line.
BOM = "\ufeff"


def _check_id(value: Any, where: str) -> str:
    if value is None:
        raise InputError(f"{where}: 'id' is null")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InputError(f"{where}: 'id' must be a string or an integer, not {type(value).__name__}")
    doc_id = str(value)
    if not doc_id:
        raise InputError(f"{where}: 'id' is empty")
    if len(doc_id) > MAX_ID_CHARS:
        raise InputError(f"{where}: 'id' has {len(doc_id)} characters, more than {MAX_ID_CHARS}")
    problem = document_id_problem(doc_id)
    if problem is not None:
        raise InputError(f"{where}: 'id' {doc_id[:40]!r} {problem}")
    return doc_id


def _check_vector(value: Any, where: str, dim: int | None) -> np.ndarray:
    if not isinstance(value, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise InputError(f"{where}: 'vector' must be a list of numbers")
    if dim is not None and len(value) != dim:
        raise InputError(f"{where}: 'vector' has {len(value)} dimensions; the model has {dim}")
    vector = np.asarray(value, dtype=np.float32)
    if not np.isfinite(vector).all():
        raise InputError(f"{where}: 'vector' contains NaN or infinity")
    return vector


def _check_metadata(metadata: dict[str, Any], where: str) -> dict[str, Any]:
    """The store's own rule (what it would refuse mid-build), reported with the place."""
    try:
        encode_metadata(metadata)
    except InvalidRequest as exc:
        raise InputError(f"{where}: {exc.message}") from exc
    return metadata


def _record(raw: Any, where: str, dim: int | None) -> Record:
    if not isinstance(raw, dict):
        kind = (
            "an array (a JSON array file? convert it with: jq -c '.[]')"
            if isinstance(raw, list)
            else type(raw).__name__
        )
        raise InputError(f"{where}: expected one JSON object per line, got {kind}")
    id_field = "id"
    if "id" not in raw and "_id" in raw:  # BEIR corpus files
        id_field = "_id"
        if raw.get("title"):  # BEIR: title and text are embedded together, as BEIR's evaluators do
            raw = {**raw, "text": f"{raw['title']} {raw.get('text', '')}"}
    if id_field not in raw:
        raise InputError(f"{where}: no 'id' field (fields: {', '.join(map(str, raw)) or 'none'})")
    doc_id = _check_id(raw[id_field], where)
    vector = _check_vector(raw["vector"], where, dim) if raw.get("vector") is not None else None
    text = raw.get("text")
    if text is None and vector is None:
        raise InputError(f"{where}: no 'text' field (and no 'vector')")
    empty = False
    if text is not None:
        if not isinstance(text, str):
            raise InputError(f"{where}: 'text' must be a string, not {type(text).__name__}")
        empty = not text.strip() and vector is None  # the plan refuses or skips it (--on-empty)
        if not is_encodable(text):
            raise InputError(f"{where}: 'text' contains invalid Unicode (a lone surrogate)")
    extra = raw.get("metadata")
    if extra is not None and not isinstance(extra, dict):
        raise InputError(f"{where}: 'metadata' must be an object")
    metadata = dict(extra or {})
    metadata.update({k: v for k, v in raw.items() if k not in {id_field, "text", "metadata", "vector"}})
    return Record(doc_id, text, _check_metadata(metadata, where), vector, where, empty)


def _jsonl_records(file: Path, dim: int | None) -> Iterator[Record]:
    with file.open("rb") as handle:
        for line_no, raw_line in enumerate(handle, 1):
            where = f"{file}:{line_no}"
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{where}: not UTF-8 text (byte {raw_line[exc.start]:#04x} at column {exc.start + 1})"
                ) from exc
            if line_no == 1:
                line = line.removeprefix(BOM)
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: invalid JSON ({exc.msg}, column {exc.colno})") from exc
            yield _record(raw, where, dim)


def _csv_records(file: Path, dim: int | None) -> Iterator[Record]:
    with file.open(encoding="utf-8-sig", newline="") as handle:  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(handle)
        try:
            columns = reader.fieldnames or []
            if not ({"id", "_id"} & set(columns)) or not ({"text", "vector"} & set(columns)):
                raise InputError(
                    f"{file}:1: CSV needs 'id' and 'text' columns (columns: {', '.join(columns) or 'none'})"
                )
            for row in reader:
                raw: dict[str, Any] = {k: v for k, v in row.items() if k is not None}
                if None in row:
                    raise InputError(f"{file}:{reader.line_num}: more fields than the header has columns")
                if raw.get("vector"):
                    try:
                        raw["vector"] = json.loads(raw["vector"])
                    except json.JSONDecodeError as exc:
                        raise InputError(f"{file}:{reader.line_num}: 'vector' is not a JSON list") from exc
                yield _record(raw, f"{file}:{reader.line_num}", dim)
        except UnicodeDecodeError as exc:
            raise InputError(f"{file}:{reader.line_num + 1}: not UTF-8 text ({exc.reason})") from exc
        except csv.Error as exc:
            raise InputError(f"{file}:{reader.line_num}: malformed CSV ({exc})") from exc


def _parquet_records(file: Path, dim: int | None) -> Iterator[Record]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError(f"{file}: reading Parquet needs pyarrow (pip install pyarrow)") from exc
    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{file}: not a readable Parquet file ({exc})") from exc
    columns = parquet.schema_arrow.names
    if not ({"id", "_id"} & set(columns)) or not ({"text", "vector"} & set(columns)):
        raise InputError(f"{file}: Parquet needs 'id' and 'text' columns (columns: {', '.join(columns) or 'none'})")
    for group in range(parquet.num_row_groups):
        try:
            rows = parquet.read_row_group(group).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{file}: row group {group}: unreadable ({exc})") from exc
        for row_no, raw in enumerate(rows):
            yield _record(raw, f"{file}: row group {group}, row {row_no}", dim)


def _npy_records(file: Path, dim: int | None) -> Iterator[Record]:
    """Rows of an (n, dim) .npy array, read NPY_CHUNK rows at a time from the file (not mapped: a
    1M x 384 file never sits in memory whole), ids from `<name>.ids` (one per line) or `<name>:<row>`."""
    with file.open("rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"format version {version[0]}.{version[1]} (1.0 and 2.0 are read)")
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(handle)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{file}: not a readable .npy array ({exc})") from exc
        if len(shape) != 2 or fortran or dtype.kind not in "fiu" or dtype.hasobject:
            raise InputError(f"{file}: expected a 2-d numeric C-order array (rows x dimensions), got {dtype} {shape}")
        rows, width = shape
        if dim is not None and width != dim:
            raise InputError(f"{file}: vectors have {width} dimensions; the model has {dim}")
        ids = _npy_ids(file, rows)
        for start in range(0, rows, NPY_CHUNK):
            count = min(NPY_CHUNK, rows - start)
            flat = np.fromfile(handle, dtype=dtype, count=count * width)
            if len(flat) != count * width:
                raise InputError(f"{file}: truncated at row {start + len(flat) // max(1, width)} of {rows}")
            chunk = flat.reshape(count, width).astype(np.float32)
            bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
            if len(bad):
                raise InputError(f"{file}: row {start + int(bad[0])}: vector contains NaN or infinity")
            for offset, vector in enumerate(chunk):
                row = start + offset
                where = f"{file}: row {row}"
                doc_id = _check_id(ids[row], where) if ids is not None else f"{file.stem}:{row}"
                yield Record(doc_id, None, {}, vector, where)


def npy_id_file(file: Path) -> Path:
    """Where the ids of an .npy input's rows are: `<name>.ids` beside it."""
    return file.with_suffix(".ids")


def _npy_ids(file: Path, rows: int) -> list[str] | None:
    id_file = npy_id_file(file)
    if not id_file.is_file():
        return None
    try:
        ids = id_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{id_file}: not UTF-8 text") from exc
    if len(ids) != rows:
        raise InputError(f"{id_file}: {len(ids)} ids for {rows} rows of {file.name}")
    return ids


def _image_records(root: Path, files: list[Path]) -> Iterator[Record]:
    sidecar = read_sidecar(root, InputError)
    for file, relative, entry in iter_images(root, files, sidecar):
        where = str(file)
        text, metadata = sidecar_fields(entry)
        if text is not None and (not isinstance(text, str) or not is_encodable(text)):
            raise InputError(f"{root / SIDECAR}: {relative!r}: 'text' must be valid Unicode text")
        doc_id = _check_id(relative.replace("/", ":"), where)
        yield Record(doc_id, text, _check_metadata(metadata, where), None, where, False, str(file.resolve()))


def read_records(files: list[Path], dim: int | None = None, images_root: Path | None = None) -> Iterator[Record]:
    """Every record of `files`, checked, in a stable order (files sorted, rows in file order); with
    `images_root`, `files` are that folder's images, one record each."""
    if images_root is not None:
        yield from _image_records(images_root, files)
        return
    for file in files:
        if file.suffix in {".jsonl", ".json"}:
            yield from _jsonl_records(file, dim)
        elif file.suffix == ".csv":
            yield from _csv_records(file, dim)
        elif file.suffix == ".npy":
            yield from _npy_records(file, dim)
        else:
            yield from _parquet_records(file, dim)


def fingerprint(files: list[Path]) -> list[dict[str, Any]]:
    """What identifies each input file's content: size, mtime, and a SHA-256 of the whole file
    (small ones) or of its first and last 64 KiB."""
    prints = []
    for file in files:
        stat = file.stat()
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            if stat.st_size <= FINGERPRINT_FULL_BYTES:
                digest.update(handle.read())
            else:
                digest.update(handle.read(FINGERPRINT_BLOCK))
                handle.seek(-FINGERPRINT_BLOCK, 2)
                digest.update(handle.read())
        prints.append(
            {
                "file": str(file.resolve()),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": digest.hexdigest(),
            }
        )
    return prints


@dataclass
class InputPlan:
    """The checked input: what a build will write, known before anything is created."""

    files: list[Path]
    skipped_files: list[Path]
    rows: int  # records read
    skip: set[int] = field(default_factory=set)  # ordinals superseded by a duplicate id (not written)
    duplicates: int = 0  # ids that occur more than once
    empty: int = 0  # records left out for an empty text (--on-empty skip)
    without_vector: int = 0  # records the model has to embed
    fingerprint: list[dict[str, Any]] = field(default_factory=list)
    images_root: Path | None = None  # a folder of images (an image model's input)
    bad_images: list[str] = field(default_factory=list)  # files left out (--on-bad-image skip), with why

    def read(self, dim: int | None) -> Iterator[Record]:
        """The input's records again, in plan order (ordinals match `skip`)."""
        return read_records(self.files, dim, self.images_root)

    @property
    def records(self) -> int:
        return self.rows - len(self.skip)


def plan_images(source: Path, limits: ImageLimits, on_bad: OnBadImage) -> InputPlan:
    """A folder of images: every file's header checked (format, size, pixels), none decoded."""
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    files = image_files(source)
    if not files:
        raise InputError(f"{source}: no .jpg, .jpeg, .png or .webp image here (an image model embeds image files)")
    skip: set[int] = set()
    bad: list[str] = []
    for ordinal, file in enumerate(files):
        problem = check_header(file, limits)
        if problem is None:
            continue
        if on_bad == OnBadImage.ERROR:
            raise InputError(f"{file}: {problem} (--on-bad-image skip leaves such files out)")
        skip.add(ordinal)
        bad.append(f"{file}: {problem}")
    rows = sum(1 for _ in read_records(files, None, source))  # checks ids and the sidecar
    if rows == len(skip):
        raise InputError(f"{source}: no usable image ({len(bad)} left out)")
    sidecar = [source / SIDECAR] if (source / SIDECAR).is_file() else []
    return InputPlan(files, [], rows, skip, 0, 0, rows - len(skip), fingerprint(files + sidecar), source, bad)


def plan_input(
    source: Path,
    on_duplicate: OnDuplicate = OnDuplicate.LAST,
    dim: int | None = None,
    on_empty: OnEmpty = OnEmpty.ERROR,
) -> InputPlan:
    """Read and check the whole input once (raises InputError naming file:line), count it, and
    decide which duplicates and empty records are written."""
    files, skipped = input_files(source)
    seen: dict[str, int] = {}  # id -> ordinal of the record that is written
    skip: set[int] = set()
    duplicated: set[str] = set()
    rows = without_vector = empty = 0
    for ordinal, record in enumerate(read_records(files, dim)):
        rows += 1
        if record.empty:
            if on_empty == OnEmpty.ERROR:
                raise InputError(f"{record.where}: 'text' is empty (--on-empty skip leaves such records out)")
            empty += 1
            skip.add(ordinal)
            continue
        without_vector += record.vector is None
        earlier = seen.get(record.id)
        if earlier is None:
            seen[record.id] = ordinal
            continue
        duplicated.add(record.id)
        if on_duplicate == OnDuplicate.ERROR:
            raise InputError(
                f"{source}: id {record.id!r} occurs more than once (record {ordinal + 1}); see --on-duplicate"
            )
        if on_duplicate == OnDuplicate.LAST:
            skip.add(earlier)
            seen[record.id] = ordinal
        else:
            skip.add(ordinal)
    if rows - len(skip) == 0:
        raise InputError(f"{source}: no records" + (f" ({empty} with an empty text left out)" if empty else ""))
    id_files = [npy_id_file(f) for f in files if f.suffix == ".npy" and npy_id_file(f).is_file()]
    prints = fingerprint(files + id_files)  # a changed .ids file is a changed input too
    return InputPlan(files, skipped, rows, skip, len(duplicated), empty, without_vector, prints)


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
    """Records committed so far for one (input, index) pair, with the input's fingerprint; lets an
    interrupted build resume, and only over the same input."""

    def __init__(self, folder: Path, source: Path) -> None:
        digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
        self.path = folder / f"build-{digest}.json"

    def load(self, plan: InputPlan, restart: bool) -> int:
        """Records already committed by an interrupted build of this input (0 to start afresh)."""
        if not self.path.is_file():
            return 0
        if restart:
            self.finish()
            return 0
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            committed = int(saved["committed"])
        except (ValueError, KeyError, TypeError) as exc:  # cut short, not JSON, or not ours
            raise InputError(
                f"{self.path}: the interrupted build's checkpoint is unreadable ({exc}): run again with --restart "
                "to build from the first record (documents already written are replaced by id)"
            ) from exc
        if saved.get("inputs") != plan.fingerprint or saved.get("skip") != sorted(plan.skip):
            changed = _changed_file(saved.get("inputs") or [], plan.fingerprint)
            raise InputError(
                f"the input changed since the interrupted build ({changed}): run again with --restart to "
                "build from the first record (documents already written are replaced by id)"
            )
        return committed

    def save(self, committed: int, plan: InputPlan) -> None:
        """Atomic and durable (temp file, fsync, rename): a crash leaves the previous checkpoint."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"committed": committed, "inputs": plan.fingerprint, "skip": sorted(plan.skip)}))
        fsync_path(tmp)
        tmp.replace(self.path)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


def _changed_file(before: list[dict[str, Any]], now: list[dict[str, Any]]) -> str:
    old = {entry["file"]: entry for entry in before}
    for entry in now:
        if entry["file"] not in old:
            return f"new file {entry['file']}"
        if old.pop(entry["file"]) != entry:
            return f"{entry['file']} differs"
    return f"{next(iter(old))} is gone" if old else "the duplicate or empty-text policy differs"


def load_text_model(settings: Settings, model_name: str) -> TextModel:
    manifest = model_manifest(settings, model_name)
    variant = choose_variant(manifest, settings.backend, settings.precision)
    return TextModel(settings.models_dir / model_name, manifest, variant, threads=settings.threads)


class _TextPayloads:
    """What a text model embeds of a record (its text, with the document prefix), and how."""

    def __init__(self, model: TextModel) -> None:
        self.model = model
        self.dim = model.dim
        self.prefix = model.manifest.text_tower.document_prefix

    def payloads(self, batch: list[Record]) -> list[str]:
        return [self.prefix + (r.text or "") for r in batch if r.vector is None]

    def encode(self, payloads: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        return self.model.encode(payloads, batch_size=ENCODE_BATCH), {}


class _ImagePayloads:
    """What an image model embeds of a record (its file), and how: files that fail to decode come
    back as problems, for the --on-bad-image policy."""

    def __init__(self, encoder: ImageFileEncoder) -> None:
        self.encoder = encoder
        self.dim = encoder.dim

    def payloads(self, batch: list[Record]) -> list[str]:
        return [r.image or "" for r in batch if r.vector is None]

    def encode(self, payloads: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        return self.encoder.encode(payloads, batch_size=IMAGE_ENCODE_BATCH)


class _RescoredPayloads:
    """A text record embedded by the collection's model and by its second-stage (rescore) model,
    each with its own document prefix: rows are [first vector | second vector]."""

    def __init__(self, first: TextModel, second: TextModel) -> None:
        self.first, self.second = _TextPayloads(first), _TextPayloads(second)
        self.dim = first.dim + second.dim

    def payloads(self, batch: list[Record]) -> list[str]:
        return [r.text or "" for r in batch if r.vector is None]

    def encode(self, payloads: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        first, _ = self.first.encode([self.first.prefix + p for p in payloads])
        second, _ = self.second.encode([self.second.prefix + p for p in payloads])
        return np.hstack([first, second]), {}


Payloads = _TextPayloads | _ImagePayloads | _RescoredPayloads


def load_encoder(settings: Settings, model_name: str, images: bool = False, rescore: str | None = None) -> Payloads:
    """The model `model_name` as the builder runs it: its image tower for `images` (an image or
    clip model), else its text tower, with the `rescore` model's vectors beside when given."""
    manifest = model_manifest(settings, model_name)
    if rescore is not None and not images:
        return _RescoredPayloads(load_text_model(settings, model_name), load_text_model(settings, rescore))
    if images:
        variant = choose_variant(manifest, settings.backend, settings.precision, tower="image")
        model = ImageModel(settings.models_dir / model_name, manifest, variant, threads=settings.threads)
        limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        return _ImagePayloads(ImageFileEncoder(model, limits, settings.image_decode_workers))
    return _TextPayloads(load_text_model(settings, model_name))


def reads_images(manifest: Manifest, source: Path) -> bool:
    """Whether `source` is read as image files: always for an image model; for a clip model when it
    holds images (a folder of images may carry a metadata.jsonl sidecar), else as text records."""
    if manifest.kind == ModelKind.IMAGE:
        return True
    return manifest.kind == ModelKind.CLIP and bool(image_files(source))


def _rescore_spec(settings: Settings, model_name: str | None) -> dict[str, Any] | None:
    """A new collection's `rescore` record for second-stage model `model_name` (--rescore): its size,
    its own first-stage weight and the fingerprint of the version that will embed the vectors."""
    if model_name is None:
        return None
    manifest = model_manifest(settings, model_name)
    if manifest.kind not in (ModelKind.BI_ENCODER, ModelKind.TEXT):
        raise InputError(f"--rescore {model_name!r} is a {manifest.kind.value} model; use a bi-encoder or text model")
    weight = manifest.bi_encoder.first_stage_weight if manifest.bi_encoder else 0.0
    return {"model": model_name, "dim": manifest.embedding_dim, "weight": weight, "fingerprint": manifest.fingerprint}


def _rescore_model(settings: Settings, collection: Collection, images: bool) -> str | None:
    """The collection's second-stage model, checked before anything is embedded (its folder, its
    kind, its size against the vectors the collection already keeps)."""
    spec = collection.config.rescore
    if not spec or images:
        return None
    manifest = model_manifest(settings, spec["model"])
    if manifest.kind not in (ModelKind.BI_ENCODER, ModelKind.TEXT) or manifest.dim != spec["dim"]:
        raise InputError(
            f"index {collection.config.name!r} keeps {spec['dim']}-d second-stage vectors of {spec['model']!r}; "
            f"that folder is now a {manifest.dim}-d {manifest.kind.value} model"
        )
    return str(spec["model"])


def model_manifest(settings: Settings, model_name: str) -> Manifest:
    folder = settings.models_dir / model_name
    if not (folder / MANIFEST_FILE).is_file():
        raise InputError(f"model {model_name!r} not found in {settings.models_dir}")
    return Manifest.load(folder)


class Existing(StrEnum):
    """What a build would find under an index name."""

    NONE = "none"
    CURRENT = "current"  # built (no interrupted build), by this version of the model or an unrecorded one
    INTERRUPTED = "interrupted"  # a build's checkpoint is left: the next build resumes it
    STALE = "stale"  # embedded by another version of the model (or of its second-stage model)


def existing_index(settings: Settings, model_name: str, index_name: str) -> Existing:
    """Read-only look at index `index_name` for a build with `model_name` (`--if-missing`)."""
    validate_name(index_name)
    folder = settings.data_dir / "indexes" / index_name
    if not (folder / "collection.json").is_file():
        return Existing.NONE
    try:
        config = CollectionConfig.load(folder)
    except (OSError, ValueError, TypeError):  # unreadable: the server reports it; a build would refuse it
        return Existing.CURRENT
    # (bound to another model: the build refuses it, as it always did)
    if config.model == model_name and _stale_reason(settings, config, model_manifest(settings, model_name)):
        return Existing.STALE
    return Existing.INTERRUPTED if any(folder.glob("build-*.json")) else Existing.CURRENT


def _stale_reason(settings: Settings, config: CollectionConfig, manifest: Manifest) -> str | None:
    """Why the collection's vectors (first-stage, whose model's manifest is `manifest`, or its
    second-stage ones) came from another version of their model than the one in the models folder
    now; None if neither did (a missing second-stage model is reported when the build needs it)."""
    changed = config.model_changed(manifest.fingerprint)
    rescore = config.rescore
    if changed is None and rescore and (settings.models_dir / rescore["model"] / MANIFEST_FILE).is_file():
        changed = config.rescore_changed(model_manifest(settings, rescore["model"]).fingerprint)
    return changed


@dataclass
class BuildOptions:
    batch_size: int = 256  # records per durable commit (and checkpoint)
    engine: Engine = Engine.LOCAL
    ray_address: str | None = None
    ray_actors: int = 1
    index_spec: str = "auto"
    optimize: bool = True
    on_duplicate: OnDuplicate = OnDuplicate.LAST
    on_empty: OnEmpty = OnEmpty.ERROR
    restart: bool = False  # ignore an interrupted build's checkpoint and start from the first record
    encode_window: int = ENCODE_WINDOW
    on_bad_image: OnBadImage = OnBadImage.ERROR
    rescore: str | None = None  # a new collection's second-stage model (an existing one keeps its own)
    # An existing collection embedded by another version of the model is rebuilt from this input
    # (else refused: adding to it would mix two embedding spaces).
    replace_stale: bool = False


class BuildProgress:
    """What a build reports as it goes (the CLI draws it on stderr)."""

    def planned(self, plan: InputPlan, resumed_from: int) -> None: ...

    def committed(self, done: int, total: int) -> None: ...


def build_index(
    settings: Settings,
    model_name: str,
    source: Path,
    index_name: str,
    options: BuildOptions | None = None,
    progress: BuildProgress | None = None,
) -> dict[str, Any]:
    """Embed every record of `source` into collection `index_name` (created if missing).
    Checks, in order, before anything is written: the name and spec, the model's manifest, the
    whole input, and the collection's writer lock."""
    options = options or BuildOptions()
    map_large_blocks_directly()  # the ingest's chunks go back to the system when freed
    progress = progress or BuildProgress()
    if options.engine not in set(Engine):  # a library caller may pass a plain string
        raise InputError(f"engine {options.engine!r}: use {' or '.join(Engine)}")
    validate_name(index_name)
    manifest = model_manifest(settings, model_name)
    dim = manifest.embedding_dim
    validate_spec(options.index_spec, dim)
    if reads_images(manifest, source):
        limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)
        plan = plan_images(source, limits, options.on_bad_image)
    else:
        plan = plan_input(source, options.on_duplicate, dim, options.on_empty)
    manager = CollectionManager.from_settings(settings, holder="builder")
    created = False
    collection: Collection | None = None
    try:
        collection = manager.open_one(index_name, require_lock=True)
        rescore_model = options.rescore
        if collection is not None:
            # a stale collection rebuilt keeps its second-stage model unless --rescore names another
            rescore_model = rescore_model or (collection.config.rescore or {}).get("model")
            collection = _reusable(settings, manager, collection, model_name, manifest, options.replace_stale)
        if collection is None:
            collection = manager.create(
                index_name,
                model_name,
                dim,
                "cosine",
                options.index_spec,
                rescore=_rescore_spec(settings, rescore_model),
                model_fingerprint=manifest.fingerprint,
            )
            created = True
        return _run_build(settings, model_name, source, collection, plan, options, progress)
    except BaseException:
        if created and collection is not None and collection.store.count() == 0:
            manager.delete(index_name)  # a first build that wrote nothing leaves nothing behind
        raise
    finally:
        manager.close()


def _reusable(
    settings: Settings,
    manager: CollectionManager,
    collection: Collection,
    model_name: str,
    manifest: Manifest,
    replace_stale: bool,
) -> Collection | None:
    """The existing collection to build into, or None once it is deleted to be rebuilt because another
    version of its model (or of its second-stage model) embedded it (`replace_stale`)."""
    config = collection.config
    if config.model != model_name:
        raise InputError(f"index {config.name!r} is bound to model {config.model!r}, not {model_name!r}")
    changed = _stale_reason(settings, config, manifest)
    if changed is None:
        return collection
    if not replace_stale:
        raise InputError(
            f"{changed}: adding to it would mix two embedding spaces. Build into a new index, delete this one, "
            "or pass --replace-stale to rebuild it"
        )
    log.warning("%s: rebuilding it", changed)
    manager.delete(config.name)
    return None


def _run_build(
    settings: Settings,
    model_name: str,
    source: Path,
    collection: Collection,
    plan: InputPlan,
    options: BuildOptions,
    progress: BuildProgress,
) -> dict[str, Any]:
    checkpoint = Checkpoint(collection.folder, source)
    done = checkpoint.load(plan, options.restart)
    progress.planned(plan, done)
    images = plan.images_root is not None
    rescore = _rescore_model(settings, collection, images)
    needed = plan.without_vector and done < plan.records
    model = load_encoder(settings, model_name, images, rescore) if needed else None
    records = (r for i, r in enumerate(plan.read(collection.config.dim)) if i not in plan.skip)
    records = itertools.islice(records, done, None)  # what an earlier run already committed
    start = time.perf_counter()
    # Embed a window of records at a time (length-sorted inside it, so little padding) and commit it
    # in `batch_size` chunks on a writer thread while the next window is embedded.
    windows = _batches(records, max(options.batch_size, options.encode_window))
    embed_stream = _embedded(windows, model, model_name, settings, options)
    writer = _WindowWriter(collection, checkpoint, plan, options, progress, done)
    collection.defer_indexing()  # the store alone until the end; the index is built once from it
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-writer") as pool:
            pending: Future[None] | None = None
            for window, vectors, problems in embed_stream:
                if pending is not None:
                    pending.result()  # in order; re-raises a failed commit
                pending = pool.submit(writer.commit, window, vectors, problems)
            if pending is not None:
                pending.result()
        elapsed = time.perf_counter() - start
        release_free_memory()  # the ingest's chunks: the index build starts from live data only
        report = collection.optimize(options.index_spec) if options.optimize else None
    finally:
        collection.resume_indexing()  # a no-op after optimize; else the index replays the writes
    collection.snapshot()
    checkpoint.finish()
    return _build_report(collection, plan, options, writer, done, elapsed, report)


class _WindowWriter:
    """Commits embedded windows in `batch_size` chunks, each durable before the checkpoint moves past
    it (so a resumed build restarts after the last commit and loses nothing acknowledged)."""

    def __init__(
        self,
        collection: Collection,
        checkpoint: Checkpoint,
        plan: InputPlan,
        options: BuildOptions,
        progress: BuildProgress,
        done: int,
    ) -> None:
        self.collection, self.checkpoint, self.plan = collection, checkpoint, plan
        self.options, self.progress = options, progress
        self.committed = done  # records committed, this run's and earlier runs'
        self.bad_images = list(plan.bad_images)

    def commit(self, window: list[Record], vectors: np.ndarray, problems: dict[int, str]) -> None:
        """`vectors` (len(window), dim [+ rescore dim]); `problems`: window row -> why its image failed."""
        for row, problem in sorted(problems.items()):
            if self.options.on_bad_image == OnBadImage.ERROR:
                raise InputError(
                    f"{window[row].where}: {problem} (--on-bad-image skip leaves such files out; "
                    "the build resumes after the last commit)"
                )
            self.bad_images.append(f"{window[row].where}: {problem}")
        batch_size = self.options.batch_size
        for offset in range(0, len(window), batch_size):
            chunk = window[offset : offset + batch_size]
            rows = vectors[offset : offset + batch_size]
            docs = [
                self._document(record, vector)
                for i, (record, vector) in enumerate(zip(chunk, rows, strict=True))
                if offset + i not in problems
            ]
            if docs:
                self.collection.upsert(docs)
            self.committed += len(chunk)
            self.checkpoint.save(self.committed, self.plan)  # after the durable upsert
            self.progress.committed(self.committed, self.plan.records)

    def _document(self, record: Record, vector: np.ndarray) -> Document:
        # the rescore model's vector, when there is one, follows the first; NaN marks a record without
        dim = self.collection.config.dim
        second = vector[dim:] if len(vector) > dim and np.isfinite(vector[dim]) else None
        return Document(
            record.id,
            record.text,
            record.metadata,
            vector[:dim],
            record.image,
            modality="image" if record.image else "text",
            rescore_vector=second,
        )


def _build_report(
    collection: Collection,
    plan: InputPlan,
    options: BuildOptions,
    writer: _WindowWriter,
    done: int,
    elapsed: float,
    report: BuildReport | None,
) -> dict[str, Any]:
    embedded = writer.committed - done
    return {
        "index": collection.config.name,
        "records": writer.committed,
        "written_this_run": embedded,
        "resumed_from": done,
        "duplicates": plan.duplicates,
        "empty_skipped": plan.empty,
        "bad_images_skipped": writer.bad_images,
        "on_duplicate": options.on_duplicate.value,
        "files_read": [str(f) for f in plan.files],
        "files_skipped": [str(f) for f in plan.skipped_files],
        "seconds": round(elapsed, 2),
        "records_per_s": round(embedded / elapsed, 1) if elapsed > 0 else None,
        "size": collection.store.count(),
        "build": report.__dict__ if report else None,
    }


def _embedded(
    windows: Iterator[list[Record]], model: Payloads | None, model_name: str, settings: Settings, options: BuildOptions
) -> Iterator[tuple[list[Record], np.ndarray, dict[int, str]]]:
    """(window, its vectors, {window row: problem}): the input's own vectors where it brings them,
    the model's elsewhere; a problem is a file the model could not read (images)."""
    if model is None:  # every record brings its vector
        for window in windows:
            yield window, np.stack([r.vector for r in window]), {}  # type: ignore[misc]
        return
    stream = (
        _ray_embed(
            windows,
            model.payloads,
            model_name,
            settings,
            options.ray_address,
            options.ray_actors,
            isinstance(model, _ImagePayloads),
            model.second.model.manifest.name if isinstance(model, _RescoredPayloads) else None,
        )
        if options.engine == Engine.RAY
        else ((window, *model.encode(model.payloads(window))) for window in windows)
    )
    for window, embedded, problems in stream:
        vectors, rows = _merge(window, embedded, model.dim)
        yield window, vectors, {rows[j]: problem for j, problem in problems.items()}


def _merge(window: list[Record], embedded: np.ndarray, dim: int) -> tuple[np.ndarray, list[int]]:
    """The window's vectors (its own, else the next embedded row) and, per embedded row, its window row."""
    vectors = np.full((len(window), dim), np.nan, dtype=np.float32)  # (n, dim)
    rows = iter(embedded.reshape(-1, dim))
    embedded_rows = []
    for i, record in enumerate(window):
        if record.vector is not None:  # its own vector; no second-stage vector (NaN) where rows have one
            vectors[i, : len(record.vector)] = record.vector
        else:
            vectors[i] = next(rows)
            embedded_rows.append(i)
    return vectors, embedded_rows


class _RayEmbedder:
    """Ray Data actor: loads the model once, then embeds one chunk (row) per call exactly as the
    local engine does, so both engines produce the same vectors."""

    def __init__(self, model_name: str, settings_json: str, images: bool, rescore: str | None) -> None:
        self.model = load_encoder(Settings.model_validate_json(settings_json), model_name, images, rescore)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors, problems = [], []
        for payloads in batch["texts"]:
            embedded, found = self.model.encode([str(p) for p in payloads])
            vectors.append(embedded.tobytes())
            problems.append(json.dumps(found))
        return {
            "chunk": batch["chunk"],
            "vectors": np.array(vectors, dtype=object),
            "problems": np.array(problems, dtype=object),
        }


def _ray_embed(
    batches: Iterator[list[Record]],
    payloads_of: Callable[[list[Record]], list[str]],
    model_name: str,
    settings: Settings,
    address: str | None,
    actors: int,
    images: bool,
    rescore: str | None,
) -> Iterator[tuple[list[Record], np.ndarray, dict[int, str]]]:
    """Embed chunks (texts, or image paths) on Ray Data: `map_batches` over an actor pool, one chunk
    per row, order kept.

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
        items = [{"chunk": i, "texts": payloads_of(chunk)} for i, chunk in enumerate(window)]
        embedded = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * actors)).map_batches(
            _RayEmbedder,
            fn_constructor_args=(model_name, settings_json, images, rescore),
            batch_size=1,
            concurrency=actors,
            num_cpus=1,
            batch_format="numpy",
        )
        for row in embedded.iter_rows():
            chunk = window[int(row["chunk"])]
            problems = {int(k): v for k, v in json.loads(str(row["problems"])).items()}
            yield chunk, np.frombuffer(row["vectors"], dtype=np.float32), problems  # flat: _merge shapes it
