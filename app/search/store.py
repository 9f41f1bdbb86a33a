"""SQLite (WAL, synchronous=FULL) document store: the durable source of truth of a collection.

Every document has an external string `id` and an internal int64 `key` (the FAISS id). An upsert
of an existing id deletes the old key and inserts a new one, so FAISS never needs in-place
updates. Every change is also appended to `ops`, which lets the in-memory index catch up from
its last snapshot after a restart or a crash.
"""

from __future__ import annotations

import errno
import json
import math
import re
import sqlite3
import threading
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from app.core.errors import CollectionNotFound, InvalidRequest, KeywordSearchUnavailable, StorageFull
from app.core.numbers import fits_int64
from app.core.text import is_encodable
from app.search.key_ids import KeyIds

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    text TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    vector BLOB NOT NULL,
    image TEXT,
    thumbnail BLOB,
    modality TEXT,
    rescore_vector BLOB
);
-- Ids by key without reading the rows: a search returning ids alone reads only this index, whose
-- pages are dense and stay cached, instead of one table page (vector, text) per hit.
CREATE INDEX IF NOT EXISTS documents_key_id ON documents(key, id);
CREATE TABLE IF NOT EXISTS ops (
    op INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('add', 'del')),
    key INTEGER NOT NULL
);
"""

# The keyword (BM25) index: an FTS5 table over documents.text (external content, so the text is
# stored once), kept in step by triggers, i.e. in the same transaction as the document itself: a
# document is searchable by keyword exactly when it is durable. Porter stemming over unicode61
# ("flows" finds "flow"); diacritics folded. Upserts delete and insert rows, never UPDATE them.
KEYWORD_SCHEMA = (
    "CREATE VIRTUAL TABLE documents_fts USING fts5(text, content='documents', content_rowid='key',"
    " tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER documents_fts_add AFTER INSERT ON documents WHEN new.text IS NOT NULL BEGIN"
    " INSERT INTO documents_fts (rowid, text) VALUES (new.key, new.text); END",
    "CREATE TRIGGER documents_fts_del AFTER DELETE ON documents WHEN old.text IS NOT NULL BEGIN"
    " INSERT INTO documents_fts (documents_fts, rowid, text) VALUES ('delete', old.key, old.text); END",
)
# Words of a keyword query: each is quoted for FTS5 (so operators, quotes, NEAR, column filters and
# '*' in user text are plain words, never syntax) and the words are OR-ed, as BM25 expects.
_WORD = re.compile(r"\w+")
MAX_KEYWORD_TERMS = 64
_T = TypeVar("_T")


@dataclass(slots=True)
class Document:
    id: str
    text: str | None
    metadata: dict[str, Any]
    vector: np.ndarray | None = None  # (dim,) float32
    image: str | None = None  # an image document's reference: the path or URI it was given (never its bytes)
    thumbnail: bytes | None = None  # a small JPEG, only where the collection keeps thumbnails
    # What was embedded: "text" or "image" (None: a caller's own vector); search's `modality` selects by it.
    modality: str | None = None
    # The collection's second-stage (rescore) model's vector of the text, where it declares one.
    rescore_vector: np.ndarray | None = None


# What `by_keys` can read besides a document's id (search's `include` names), and their columns.
DOCUMENT_FIELDS = ("document", "metadata", "vector", "image", "thumbnail")
DOCUMENT_COLUMNS = ("text", "metadata", "vector", "image", "thumbnail")
IMAGE_FIELDS = frozenset({"image", "thumbnail"})  # absent on a read-only replica of an older collection


@dataclass(slots=True)
class Change:
    op: int
    kind: str  # "add" | "del"
    key: int


_IN_CHUNK = 500  # values bound per `IN (...)`: under SQLite's bound-parameter limit on every build


# What a write gets when the data volume has no room: too little space, a quota, a file-size limit.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def is_storage_full(exc: BaseException) -> bool:
    """True for the errors SQLite and the OS raise when a write finds no room on the volume."""
    if isinstance(exc, sqlite3.OperationalError):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in _NO_ROOM


@contextmanager
def storage_full_as_domain_error(what: str) -> Iterator[None]:
    """`what` fails with StorageFull (a clear 507) instead of the raw error where the volume is full."""
    try:
        yield
    except (sqlite3.OperationalError, OSError) as exc:
        if is_storage_full(exc):
            raise StorageFull(f"{what}: the data volume is full; nothing was written, free space and retry") from exc
        raise


def _rows_in(db: sqlite3.Connection, select: str, column: str, values: Sequence[Any], tail: str = "") -> Iterator[list]:
    """The rows of `{select} WHERE {column} IN (values){tail}`, one fetched list per chunk of
    `_IN_CHUNK` values: a single statement cannot bind more parameters than SQLite allows."""
    for start in range(0, len(values), _IN_CHUNK):
        chunk = values[start : start + _IN_CHUNK]
        yield db.execute(f"{select} WHERE {column} IN ({','.join('?' * len(chunk))}){tail}", chunk).fetchall()


def _vector_bytes(db: sqlite3.Connection, keys: Iterable[int], only: str = "") -> dict[int, bytes]:
    """key -> stored float32 bytes of those `keys` present in `db`; `only`: a fixed extra
    condition (" AND modality = 'image'")."""
    found: dict[int, bytes] = {}
    for rows in _rows_in(db, "SELECT key, vector FROM documents", "key", [int(k) for k in keys], only):
        found.update(rows)
    return found


def _present_in_order(keys: np.ndarray, found: dict[int, bytes], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(the keys of `keys` that `found` holds, in that order (m,), their vectors (m, dim))."""
    present = np.array([k for k in keys if int(k) in found], dtype=np.int64)
    if not len(present):
        return present, np.empty((0, dim), np.float32)
    return present, np.stack([np.frombuffer(found[int(k)], dtype=np.float32) for k in present])


def _chunks(db: sqlite3.Connection, dim: int, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All live (keys, vectors) of `db` in key order, in chunks: (n,), (n, dim)."""
    last = -1
    while True:
        rows = db.execute(
            "SELECT key, vector FROM documents WHERE key > ? ORDER BY key LIMIT ?", (last, batch)
        ).fetchall()
        if not rows:
            return
        keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        yield keys, vectors
        last = int(keys[-1])


@dataclass
class StoreSnapshot:
    """A consistent read of the store as of op `last_op`: its documents are exactly those the ops up
    to `last_op` produced (one SQLite read transaction, which WAL keeps stable under writers)."""

    db: sqlite3.Connection
    dim: int
    last_op: int

    def iter_vectors(self, batch: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return _chunks(self.db, self.dim, batch)

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]

    def keys(self) -> np.ndarray:
        # streamed from the cursor: a fetched list of 1M row tuples took ~80 MB for a moment
        return np.fromiter((r[0] for r in self.db.execute("SELECT key FROM documents ORDER BY key")), dtype=np.int64)

    def vectors(self, keys: np.ndarray) -> np.ndarray:
        """Vectors of `keys` (all present in this snapshot) in that order: (m, dim)."""
        found = _vector_bytes(self.db, keys)
        if not len(keys):
            return np.empty((0, self.dim), np.float32)
        return np.stack([np.frombuffer(found[int(k)], dtype=np.float32) for k in keys])

    def live_vectors(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the keys of `keys` in this snapshot, in that order (m,), their vectors (m, dim)): the
        `fetch` a build's binary index rescores with while it is tuned."""
        return _present_in_order(keys, _vector_bytes(self.db, keys), self.dim)


class DocumentStore:
    def __init__(self, path: Path, dim: int, read_only: bool = False) -> None:
        self.path = path
        self.dim = dim
        self.read_only = read_only
        self._lock = threading.Lock()
        self._closed = False
        if read_only:
            # A replica on a read-only volume: `immutable` skips the WAL's shared-memory file, which
            # could not be created there; it reads the database as it was when opened.
            uri = f"file:{path.resolve()}?mode=ro&immutable=1"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        else:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before we acknowledge
            self._db.executescript(SCHEMA)
            self._add_image_columns()
            self._add_keyword_index()
        # Fixed from here on; a read-only replica of an older collection may lack the newer columns.
        self._columns = frozenset(row[1] for row in self._db.execute("PRAGMA table_info(documents)"))
        self.has_keyword_index = self._table_exists("documents_fts")
        self._has_id_index = self._table_exists("documents_key_id")  # not in a read-only older replica
        self._key_ids: KeyIds | None = None  # see keep_ids_in_memory

    def _table_exists(self, name: str) -> bool:
        row = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        return row is not None

    def _add_keyword_index(self) -> None:
        """Collections made before keyword search get their FTS5 index built from the stored texts,
        in one transaction with its triggers (a crash leaves either none or all of it)."""
        if self._table_exists("documents_fts"):
            return
        with self._transaction("adding the keyword index") as cur:
            for statement in KEYWORD_SCHEMA:
                cur.execute(statement)
            cur.execute("INSERT INTO documents_fts (documents_fts) VALUES ('rebuild')")

    def _add_image_columns(self) -> None:
        """Collections made before image documents lack these columns: added in place (NULL)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(documents)")}
        for column, kind in (
            ("image", "TEXT"),
            ("thumbnail", "BLOB"),
            ("modality", "TEXT"),
            ("rescore_vector", "BLOB"),
        ):
            if column not in columns:
                self._db.execute(f"ALTER TABLE documents ADD COLUMN {column} {kind}")

    @property
    def _image_columns(self) -> str:
        """The image columns, or NULLs on a read-only replica of a collection made before them."""
        return "image, thumbnail" if "image" in self._columns else "NULL, NULL"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()

    def check_open(self) -> None:
        if self._closed:  # the collection was deleted while a request was using it
            raise CollectionNotFound(f"index {self.path.parent.name!r} was deleted")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            self.check_open()
            yield

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Cursor]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any failure. SQLite rolls a transaction back
        itself when the disk fills (a ROLLBACK then fails and would hide why): that becomes
        StorageFull."""
        with storage_full_as_domain_error(what):
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    cur.execute("ROLLBACK")
                raise

    def _now(self, read: Callable[[], _T]) -> _T | None:
        """`read()` under the store's lock, or None at once when a writer holds it (the caller then
        reads on a worker thread instead of waiting on the event loop)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self.check_open()
            return read()
        finally:
            self._lock.release()

    def keep_ids_in_memory(self) -> None:
        """Read every (key, id) once and answer id-only reads (`by_keys` with no fields) from memory
        from now on, kept in step by this store's writes. Only for a store no other process writes
        (this process holds the collection's writer lock, or the database is an immutable replica):
        another writer's commits would not reach the map. Not kept where the keys are too sparse
        (most documents replaced many times): SQLite's index answers those."""
        with self._locked():
            select = "SELECT key, id FROM documents" + (" INDEXED BY documents_key_id" if self._has_id_index else "")
            key_ids = KeyIds(self._db.execute(select + " ORDER BY key"))
            self._key_ids = None if key_ids.sparse else key_ids

    def upsert(self, docs: list[Document]) -> tuple[list[int], list[int]]:
        """One transaction. Returns (removed keys, added keys in docs' order)."""
        removed: list[int] = []
        added: list[int] = []
        with self._locked():
            with self._transaction(f"writing {len(docs)} documents") as cur:
                for doc in docs:
                    row = cur.execute("SELECT key FROM documents WHERE id = ?", (doc.id,)).fetchone()
                    if row:
                        cur.execute("DELETE FROM documents WHERE key = ?", row)
                        cur.execute("INSERT INTO ops (kind, key) VALUES ('del', ?)", row)
                        removed.append(row[0])
                    vector = np.ascontiguousarray(doc.vector, dtype=np.float32)
                    cur.execute(
                        "INSERT INTO documents (id, text, metadata, vector, image, thumbnail, modality, rescore_vector)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            doc.id,
                            doc.text,
                            encode_metadata(doc.metadata),
                            vector.tobytes(),
                            doc.image,
                            doc.thumbnail,
                            doc.modality,
                            None
                            if doc.rescore_vector is None
                            else np.ascontiguousarray(doc.rescore_vector, dtype=np.float32).tobytes(),
                        ),
                    )
                    key = cur.lastrowid
                    cur.execute("INSERT INTO ops (kind, key) VALUES ('add', ?)", (key,))
                    added.append(key)  # type: ignore[arg-type]
            self._ids_committed(removed, added, [doc.id for doc in docs])
        return removed, added

    def delete(self, ids: list[str]) -> tuple[list[str], list[int]]:
        """One transaction. Returns (ids that existed, their keys)."""
        found: list[str] = []
        keys: list[int] = []
        with self._locked():
            with self._transaction(f"deleting {len(ids)} documents") as cur:
                for doc_id in ids:
                    row = cur.execute("SELECT key FROM documents WHERE id = ?", (doc_id,)).fetchone()
                    if row:
                        cur.execute("DELETE FROM documents WHERE key = ?", row)
                        cur.execute("INSERT INTO ops (kind, key) VALUES ('del', ?)", row)
                        found.append(doc_id)
                        keys.append(row[0])
            self._ids_committed(keys)
        return found, keys

    def _ids_committed(self, removed: list[int], added: Sequence[int] = (), ids: Sequence[str] = ()) -> None:
        """The ids in memory follow a committed write (called after COMMIT: a rollback leaves them as
        they were); keys grown too sparse send id reads back to SQLite's (key, id) index."""
        if self._key_ids is None:
            return
        self._key_ids.remove(removed)
        self._key_ids.add(added, ids)
        if self._key_ids.sparse:
            self._key_ids = None

    def get(self, doc_id: str, with_vector: bool = False) -> Document | None:
        with self._locked():
            row = self._db.execute(
                f"SELECT id, text, metadata, vector, {self._image_columns} FROM documents WHERE id = ?", (doc_id,)
            ).fetchone()
        return self._document(row, with_vector) if row else None

    def rescore_vectors(self, ids: list[str]) -> dict[str, np.ndarray]:
        """id -> its stored second-stage vector (ids without one are absent)."""
        out: dict[str, np.ndarray] = {}
        with self._locked():
            if "rescore_vector" not in self._columns:
                return out  # a read-only replica of a collection made before second-stage vectors
            select = "SELECT id, rescore_vector FROM documents"
            for rows in _rows_in(self._db, select, "id", ids, " AND rescore_vector IS NOT NULL"):
                out.update((doc_id, np.frombuffer(blob, dtype=np.float32)) for doc_id, blob in rows)
        return out

    def by_keys(self, keys: list[int], fields: Container[str] = DOCUMENT_FIELDS) -> dict[int, Document]:
        """key -> its document (keys not stored are absent), reading the id and only the columns
        `fields` names (a subset of DOCUMENT_FIELDS; the others read as None, metadata as {}): a
        search that returns ids alone then reads neither vectors nor texts."""
        with self._locked():
            return self._by_keys(keys, fields)

    def by_keys_now(self, keys: list[int], fields: Container[str] = DOCUMENT_FIELDS) -> dict[int, Document] | None:
        """`by_keys`, or None at once when a writer holds the store (`_now`)."""
        return self._now(lambda: self._by_keys(keys, fields))

    def _by_keys(self, keys: list[int], fields: Container[str]) -> dict[int, Document]:
        if (self._has_id_index or self._key_ids is not None) and not any(field in fields for field in DOCUMENT_FIELDS):
            return self._ids_by_keys(keys)
        has_images = "image" in self._columns
        selected = ", ".join(
            column if field in fields and (has_images or field not in IMAGE_FIELDS) else "NULL"
            for field, column in zip(DOCUMENT_FIELDS, DOCUMENT_COLUMNS, strict=True)
        )
        out: dict[int, Document] = {}
        for rows in _rows_in(self._db, f"SELECT key, id, {selected} FROM documents", "key", keys):
            for key, *rest in rows:
                out[key] = self._document(tuple(rest), "vector" in fields)
        return out

    def _ids_by_keys(self, keys: list[int]) -> dict[int, Document]:
        """`_by_keys` reading ids alone: from memory where `keep_ids_in_memory` was called, else from
        the (key, id) index (SQLite's planner would look each key up in the table itself, a rowid
        lookup reading the row's page for its id)."""
        if self._key_ids is not None:
            return {key: Document(doc_id, None, {}) for key, doc_id in self._key_ids.get(keys).items()}
        out: dict[int, Document] = {}
        select = "SELECT key, id FROM documents INDEXED BY documents_key_id"
        for rows in _rows_in(self._db, select, "key", keys):
            for key, doc_id in rows:
                out[key] = Document(doc_id, None, {})
        return out

    def modality_clause(self, modality: str) -> tuple[str, list[Any]]:
        """SQL selecting documents embedded from `modality`. Rows written before the column existed
        (NULL) count as images when they hold an image reference or thumbnail, else as text."""
        columns = self._columns
        legacy_image = "(image IS NOT NULL OR thumbnail IS NOT NULL)" if "image" in columns else "0"
        legacy = legacy_image if modality == "image" else f"(text IS NOT NULL AND NOT {legacy_image})"
        if "modality" not in columns:  # a read-only replica of an older collection
            return legacy, []
        return f"(modality = ? OR (modality IS NULL AND {legacy}))", [modality]

    def keyword_search(
        self, query: str, top_k: int, where: str = "1", params: list[Any] | None = None
    ) -> list[tuple[int, float]]:
        """(key, BM25 score: higher is better) of the best `top_k` documents whose text holds any
        word of `query` and that match the SQL condition `where` (a compiled filter), best first."""
        if not self.has_keyword_index:
            raise KeywordSearchUnavailable(
                f"index {self.path.parent.name!r} has no keyword index yet (a read-only replica of a collection "
                "made before keyword search): open it writable once to build it"
            )
        expression = keyword_expression(query)
        if expression is None:
            return []
        sql = "SELECT rowid, -bm25(documents_fts) FROM documents_fts WHERE documents_fts MATCH ?"
        if where != "1":
            sql += f" AND rowid IN (SELECT key FROM documents WHERE {where})"
        with self._locked():
            rows = self._db.execute(sql + " ORDER BY rank LIMIT ?", [expression, *(params or []), top_k]).fetchall()
        return [(int(key), float(score)) for key, score in rows]

    def has_text(self) -> bool:
        """Whether any document has text the keyword index holds."""
        if not self.has_keyword_index:
            return False
        with self._locked():
            return self._db.execute("SELECT 1 FROM documents_fts_docsize LIMIT 1").fetchone() is not None

    def keys_matching(self, where: str, params: list[Any]) -> np.ndarray:
        with self._locked():
            rows = self._db.execute(f"SELECT key FROM documents WHERE {where}", params).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def ids(self) -> list[str]:
        with self._locked():
            return [row[0] for row in self._db.execute("SELECT id FROM documents ORDER BY key")]

    def count(self) -> int:
        with self._locked():
            return self._db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]

    def last_op(self) -> int:
        with self._locked():
            row = self._db.execute("SELECT MAX(op) FROM ops").fetchone()
        return row[0] or 0

    def ops_written(self) -> int:
        """Ops ever written (one per document added or deleted), pruned ones included: the op log's
        AUTOINCREMENT counter, which never goes back."""
        with self._locked():
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'ops'").fetchone()
        return row[0] if row else 0

    def changes_since(self, op: int) -> list[Change]:
        with self._locked():
            rows = self._db.execute("SELECT op, kind, key FROM ops WHERE op > ? ORDER BY op", (op,)).fetchall()
        return [Change(*r) for r in rows]

    def vectors_for(self, keys: list[int]) -> dict[int, np.ndarray]:
        with self._locked():
            found = _vector_bytes(self._db, keys)
        return {k: np.frombuffer(v, dtype=np.float32) for k, v in found.items()}

    def image_vectors_for(self, keys: list[int]) -> dict[int, np.ndarray]:
        """key -> stored vector of those `keys` that are image documents."""
        with self._locked():
            if "modality" not in self._columns:
                return {}  # a read-only replica of a collection made before image documents
            found = _vector_bytes(self._db, keys, " AND modality = 'image'")
        return {k: np.frombuffer(v, dtype=np.float32) for k, v in found.items()}

    def live_vectors(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the keys of `keys` still stored, in that order (m,), their vectors (m, dim)): a key
        deleted since the caller found it (a concurrent write) is left out, never an error."""
        with self._locked():
            found = _vector_bytes(self._db, keys)
        return _present_in_order(keys, found, self.dim)

    def live_vectors_now(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """`live_vectors`, or None at once when a writer holds the store (`_now`)."""
        found = self._now(lambda: _vector_bytes(self._db, keys))
        return None if found is None else _present_in_order(keys, found, self.dim)

    def iter_vectors(self, batch: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All live (keys, vectors) in key order, in chunks: (n,), (n, dim). Not one snapshot: a
        write between chunks may show (use `snapshot()` where that matters)."""
        with self.snapshot() as snap:
            yield from snap.iter_vectors(batch)

    @contextmanager
    def snapshot(self) -> Iterator[StoreSnapshot]:
        """A consistent read of the documents and the op position they reflect, on its own
        connection (writers go on; the WAL keeps this reader's view)."""
        self.check_open()
        if self.read_only:
            uri = f"file:{self.path.resolve()}?mode=ro&immutable=1"
        else:
            uri = f"file:{self.path.resolve()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        try:
            db.execute("BEGIN")
            last = db.execute("SELECT MAX(op) FROM ops").fetchone()[0] or 0  # starts the read transaction
            yield StoreSnapshot(db, self.dim, last)
        finally:
            db.close()

    def prune_ops(self, up_to: int) -> None:
        """Drop ops a durable snapshot already contains (AUTOINCREMENT keeps numbering monotonic)."""
        with self._locked():
            self._db.execute("DELETE FROM ops WHERE op <= ?", (up_to,))

    @staticmethod
    def _document(row: tuple, with_vector: bool) -> Document:
        doc_id, text, metadata, vector, image, thumbnail = row
        return Document(
            doc_id,
            text,  # ids and texts cannot hold lone surrogates: sqlite3 refuses to store them
            {} if metadata is None else decode_metadata(metadata),  # (None: not read; stored is never NULL)
            np.frombuffer(vector, dtype=np.float32).copy() if with_vector else None,
            image,
            thumbnail,
        )


def keyword_expression(query: str) -> str | None:
    """An FTS5 MATCH expression for a user's words: each word of `query` quoted (a phrase of one
    word, so nothing in it is FTS5 syntax), OR-ed, first MAX_KEYWORD_TERMS distinct words; None when
    it has no words."""
    words = list(dict.fromkeys(word.lower() for word in _WORD.findall(query)))[:MAX_KEYWORD_TERMS]
    return " OR ".join(f'"{word}"' for word in words) or None


def encode_metadata(metadata: dict[str, Any]) -> str:
    """Strict JSON (no NaN/Infinity, which SQLite's JSON functions reject: every filtered search on
    the collection would fail; no lone surrogates, which no response could encode) of the shape the
    API takes (`metadata_problem`). Requests are validated before this; this is the last line, and
    the batch builder's check, so a built collection holds nothing the API would refuse."""
    if (problem := metadata_problem(metadata)) is not None:
        raise InvalidRequest(problem)
    try:
        encoded = json.dumps(metadata, allow_nan=False)
    except ValueError as exc:
        raise InvalidRequest(f"metadata has a value JSON cannot hold ({exc})") from exc
    if "\\ud" in encoded.lower() and not _all_encodable(metadata):  # an escaped surrogate may be a lone one
        raise InvalidRequest("metadata contains invalid Unicode (a lone surrogate)")
    return encoded


def metadata_problem(metadata: dict[str, Any]) -> str | None:
    """Why `metadata` is not what the API stores (app/schemas/search.py `MetadataValue`): an object
    whose values are null, a string, a number, a boolean or a flat list of the last three, integers
    within signed 64 bits (SQLite's JSON reads a larger one as an approximate float); None if it is."""
    for key, value in metadata.items():
        if not isinstance(key, str):
            return f"metadata key {key!r} is not a string"
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool | str | float) or (item is None and not isinstance(value, list)):
                continue
            if isinstance(item, int):
                if not fits_int64(item):
                    return f"metadata {key!r}: an integer value must fit in 64 bits; store a larger one as a string"
                continue
            return (
                f"metadata {key!r}: a value is null, a string, a number, a boolean, or a flat list of the last "
                f"three, not {type(item).__name__}"
            )
    return None


def _all_encodable(value: Any) -> bool:
    if isinstance(value, str):
        return is_encodable(value)
    if isinstance(value, dict):
        return all(_all_encodable(k) and _all_encodable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_all_encodable(v) for v in value)
    return True


def decode_metadata(stored: str) -> dict[str, Any]:
    """Metadata as stored; rows written before strict checks (NaN, lone surrogates) still read."""
    try:
        value = json.loads(stored)
    except ValueError:
        return {}
    if "NaN" in stored or "Infinity" in stored or "\\ud" in stored.lower():
        value = _printable_json(value)  # non-finite numbers -> null, lone surrogates -> U+FFFD
    return value if isinstance(value, dict) else {}


_SURROGATE = re.compile("[\ud800-\udfff]")


def _printable(text: str) -> str:
    """`text` with any lone surrogate replaced (U+FFFD), so every response can be encoded."""
    return _SURROGATE.sub("\ufffd", text)  # in a Python str every surrogate code point is a lone one


def _printable_json(value: Any) -> Any:
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, list):
        return [_printable_json(v) for v in value]
    if isinstance(value, dict):
        return {_printable(k): _printable_json(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
