"""Creates, opens and deletes collections under `<data_dir>/indexes/<name>/`."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from app.core import open_files
from app.core.config import Settings
from app.core.errors import (
    CollectionExists,
    CollectionNotFound,
    InvalidIndexName,
    InvalidMetric,
    OpenFileLimit,
    ReadOnly,
)
from app.search.collection import (
    DEFAULT_RECALL_TARGET,
    DEFAULT_RETRAIN_GROWTH,
    NAME_PATTERN,
    Collection,
    CollectionConfig,
)
from app.search.filters import FilterLimits
from app.search.lock import CollectionLock
from app.search.store import storage_full_as_domain_error
from app.search.vector_index import METRICS, validate_spec

log = logging.getLogger(__name__)


def validate_name(name: str) -> str:
    # Also rules out path traversal ("../x", "/", NUL): only [A-Za-z0-9_-], no leading separator.
    if not NAME_PATTERN.match(name):
        raise InvalidIndexName(f"invalid index name {name!r}: 1-64 of [A-Za-z0-9_-], starting alphanumeric")
    return name


class CollectionManager:
    def __init__(
        self,
        data_dir: Path,
        memory_budget_bytes: int,
        snapshot_every_ops: int = 20_000,
        read_only: bool = False,
        filter_limits: FilterLimits | None = None,
        holder: str = "server",
        recall_target: float = DEFAULT_RECALL_TARGET,
        retrain_growth: float = DEFAULT_RETRAIN_GROWTH,
    ) -> None:
        """`holder`: who this process is, in the writer lock of each collection it opens for writing
        ("server", "builder"); someone refused the lock is told."""
        self.root = data_dir / "indexes"
        self.holder = holder
        self.read_only = read_only
        self.memory_budget_bytes = memory_budget_bytes
        self.snapshot_every_ops = snapshot_every_ops
        self.filter_limits = filter_limits or FilterLimits()
        self.recall_target = recall_target
        self.retrain_growth = retrain_growth
        self.collections: dict[str, Collection] = {}
        # Collections found on disk that could not be opened: name -> reason (in /ready and GET /indexes).
        self.failed: dict[str, str] = {}
        self._deleting: set[str] = set()  # removed from `collections`, files not yet gone
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, holder: str = "server") -> CollectionManager:
        return cls(
            settings.data_dir,
            settings.index_memory_budget_mb * 1024 * 1024,
            settings.snapshot_every_ops,
            settings.read_only,
            FilterLimits(settings.filter_max_depth, settings.filter_max_conditions),
            holder,
            settings.recall_target,
            settings.ivf_retrain_growth,
        )

    def _open(self, folder: Path, config: CollectionConfig, lock: CollectionLock | None = None) -> Collection:
        _check_open_files(folder.name, len(self.collections))
        if lock is None and not self.read_only:
            lock = CollectionLock(folder, self.holder)
        return Collection(  # a lock held elsewhere: opened for reads, writes get CollectionLocked until it is free
            folder,
            config,
            self.memory_budget_bytes,
            self.snapshot_every_ops,
            self.read_only,
            self.filter_limits,
            lock,
            self.recall_target,
            self.retrain_growth,
        )

    def open_one(self, name: str, require_lock: bool = False) -> Collection | None:
        """Open only collection `name` (a batch build touches no other); None if it does not exist.
        `require_lock`: CollectionLocked at once if another process writes it (before any loading)."""
        validate_name(name)
        folder = self.root / name
        if not (folder / "collection.json").is_file():
            return None
        lock = None if self.read_only else CollectionLock(folder, self.holder)
        if require_lock and lock is not None and not lock.try_acquire():
            raise lock.refusal(name, "wait for it to finish (or stop it), then run this again")
        collection = self._open(folder, CollectionConfig.load(folder), lock)
        self.collections[name] = collection
        return collection

    def check_writable(self) -> None:
        if self.read_only:
            raise ReadOnly("this replica serves indexes read-only (TESSERA_READ_ONLY); send writes to the writer")

    def open_all(self) -> None:
        if not self.read_only:
            self.root.mkdir(parents=True, exist_ok=True)
        self.discover()

    def discover(self) -> None:
        """Open every collection on disk this process has not: all of them at start-up, later those
        a batch build created since (GET /indexes looks). One bad collection never stops the others
        (no crash loop on start-up): it is listed in `failed`."""
        for config_file in sorted(self.root.glob("*/collection.json")):
            name = config_file.parent.name
            if name not in self.collections and name not in self.failed:
                self._discover(name)

    def _discover(self, name: str) -> Collection | None:
        """Open collection `name` if another process created it on disk (None if nothing is there,
        or it is being deleted here). A build still writing it holds its lock: opened for reads,
        and taken over when the build ends (`Collection.reload_if_released`)."""
        folder = self.root / name
        if not (folder / "collection.json").is_file() or name in self.failed:
            return None  # without the lock: a request for a missing name never waits on an open
        with self._lock:  # after a create or delete here has finished with the folder
            if name in self.collections or name in self.failed or name in self._deleting:
                return self.collections.get(name)
            if not (folder / "collection.json").is_file():
                return None
            try:
                collection = self._open(folder, CollectionConfig.load(folder))
            except Exception as exc:
                if (folder / "collection.json").is_file():  # not a folder deleted while it was read
                    if isinstance(exc, OpenFileLimit):  # it says all there is: no traceback
                        log.error("collection %s not opened: %s", name, exc.message)
                    else:
                        log.exception("collection %s could not be opened", name)
                    self.failed[name] = f"{type(exc).__name__}: {exc}"
                return None
            self.collections[name] = collection
            return collection

    def create(
        self,
        name: str,
        model: str,
        dim: int,
        metric: str,
        index: str,
        thumbnails: bool = False,
        rescore: dict[str, Any] | None = None,
        model_fingerprint: str | None = None,
    ) -> Collection:
        validate_name(name)
        if metric not in METRICS:
            raise InvalidMetric(f"unknown metric {metric!r}: {sorted(METRICS)}")
        index = validate_spec(index, dim)
        with self._lock:
            if name in self.collections or name in self.failed:
                raise CollectionExists(f"index {name!r} already exists")
            folder = self.root / name
            if name in self._deleting:
                raise CollectionExists(f"index {name!r} is being deleted; create it again when that is done")
            if (folder / "collection.json").is_file():  # a build created it since start-up
                raise CollectionExists(f"index {name!r} already exists")
            if folder.exists():  # left by a crash mid-create: never adopt it silently
                raise CollectionExists(f"index {name!r} already exists on disk (not loaded); remove {folder}")
            _check_open_files(name, len(self.collections))
            with storage_full_as_domain_error(f"creating index {name!r}"):
                folder.mkdir(parents=True)  # outside the clean-up below: a folder made by another process stays
            lock = None if self.read_only else CollectionLock(folder, self.holder)
            try:
                with storage_full_as_domain_error(f"creating index {name!r}"):
                    if lock is not None:  # before collection.json: a server that finds the folder only reads it
                        lock.try_acquire()
                    config = CollectionConfig(
                        name=name,
                        model=model,
                        dim=dim,
                        metric=metric,
                        index=index,
                        thumbnails=thumbnails,
                        rescore=rescore,
                        model_fingerprint=model_fingerprint,
                    )
                    config.save(folder)
                    collection = self._open(folder, config, lock)
            except BaseException:
                if lock is not None:
                    lock.release()
                shutil.rmtree(folder, ignore_errors=True)  # never a half-created collection
                raise
            self.collections[name] = collection
        return collection

    def loaded(self) -> list[Collection]:
        """The open collections, as a copy: create, delete and discovery change the dict from
        worker threads while a caller on the event loop goes through it."""
        return list(self.collections.values())

    def get(self, name: str) -> Collection:
        """Collection `name`; one a build created since start-up is opened here (once, on this
        call: a large one takes the time its loading takes)."""
        validate_name(name)
        collection = self.collections.get(name) or self._discover(name)
        if collection is not None:
            collection.reload_if_released()
        return self._lookup(name)

    def _lookup(self, name: str) -> Collection:
        collection = self.collections.get(name)
        if collection is None and name in self.failed:
            raise CollectionNotFound(f"index {name!r} could not be opened: {self.failed[name]}")
        if collection is None:
            raise CollectionNotFound(f"index {name!r} not found")
        return collection

    def delete(self, name: str) -> None:
        """Remove a collection (also one that failed to open). Requests still using it get 404.
        CollectionLocked while another process (a build) writes it: its files are never removed
        from under that writer."""
        validate_name(name)
        self._discover(name)  # one a build created since start-up is deleted as one opened then
        with self._lock:
            if name in self.failed and name not in self.collections:
                lock = CollectionLock(self.root / name, self.holder)
                _take_to_delete(name, lock)
                del self.failed[name]
                shutil.rmtree(self.root / name, ignore_errors=True)
                lock.release()
                return
            collection = self._lookup(name)
            if collection.lock is not None:
                _take_to_delete(name, collection.lock)  # released by close()
            del self.collections[name]
            self._deleting.add(name)  # not rediscovered from the files about to go
        try:
            collection.close()
            shutil.rmtree(collection.folder, ignore_errors=True)
        finally:
            with self._lock:
                self._deleting.discard(name)

    def describe_failed(self) -> list[dict[str, str]]:
        return [{"name": name, "status": "failed", "error": reason} for name, reason in sorted(self.failed.items())]

    def close(self) -> None:
        for collection in self.loaded():
            try:
                if collection.writable:
                    collection.snapshot_between_writes()
            except Exception:
                log.exception("snapshot of %s failed at shutdown", collection.config.name)
            collection.close()


def _take_to_delete(name: str, lock: CollectionLock) -> None:
    """Hold the writer lock of a collection about to be deleted, or refuse while another holds it."""
    try:
        taken = lock.try_acquire()
    except FileNotFoundError:  # its folder is gone already: nobody writes there
        return
    if not taken:
        raise lock.refusal(name, "stop it (or let it finish), then delete the index")


def _check_open_files(name: str, collections_open: int) -> None:
    """OpenFileLimit before a collection would take descriptors kept for connections."""
    shortfall = open_files.shortfall_for_collection(collections_open)
    if shortfall is not None:
        raise OpenFileLimit(f"index {name!r} not opened: {shortfall}")
