"""Dynamic cross-request batching under a padded-token budget, with a bounded queue.

Requests hand in already-tokenised sequences (tokenisation runs in the request handlers, so it
overlaps the forward pass of earlier batches). One worker per model takes a window of waiting
sequences in arrival order, sorts it by length, packs batches whose padded size
(`rows x longest`) fits the token budget, and runs them back to back on a dedicated thread, so
the event loop stays free and the next batch is queued before the previous one's results are
handed out. A full queue raises `QueueFull` (the HTTP layer turns it into 429 + Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from app.core import metrics

log = logging.getLogger(__name__)

ForwardFn = Callable[[list[np.ndarray]], np.ndarray]  # sequences -> (batch, ...) float32


class QueueFull(Exception):
    """More sequences are waiting than the queue admits."""


@dataclass(slots=True)
class _Job:
    rows: np.ndarray  # (n, ...) results, filled as batches finish
    remaining: int
    future: asyncio.Future[np.ndarray]


@dataclass(slots=True)
class _Item:
    ids: np.ndarray  # (seq,) int64
    job: _Job
    row: int


class DynamicBatcher:
    def __init__(
        self,
        name: str,
        forward: ForwardFn,
        row_shape: tuple[int, ...],
        token_budget: int,
        max_batch_size: int,
        max_queue: int,
    ) -> None:
        self.name = name
        self._forward = forward
        self._row_shape = row_shape
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._pending: deque[_Item] = deque()
        self._queued = 0  # submitted and not yet finished, in-flight included
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"forward-{name}")
        self._task: asyncio.Task[None] | None = None
        self._depth = metrics.QUEUE_DEPTH.labels(name)
        self._batch_size = metrics.BATCH_SIZE.labels(name)
        self._batch_tokens = metrics.BATCH_TOKENS.labels(name)
        self._forward_latency = metrics.FORWARD_LATENCY.labels(name)

    @property
    def depth(self) -> int:
        return self._queued

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, sequences: list[np.ndarray]) -> np.ndarray:
        """Embed `sequences`; returns rows in the order given. Raises QueueFull when saturated."""
        count = len(sequences)
        if count == 0:
            return np.empty((0, *self._row_shape), dtype=np.float32)
        # A lone request larger than the queue is admitted (and split into batches) rather than
        # refused forever; otherwise the bound holds.
        if self._queued and self._queued + count > self.max_queue:
            raise QueueFull(f"{self.name}: {self._queued} texts queued, limit {self.max_queue}")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        job = _Job(np.empty((count, *self._row_shape), dtype=np.float32), count, future)
        self._pending.extend(_Item(ids, job, row) for row, ids in enumerate(sequences))
        self._queued += count
        self._depth.set(self._queued)
        self._wakeup.set()
        return await future

    def _take_batches(self) -> list[list[_Item]]:
        """Pop a window of the oldest items and pack it, sorted by length, under the budget."""
        window_size = self.max_batch_size * 4
        window = [self._pending.popleft() for _ in range(min(window_size, len(self._pending)))]
        window.sort(key=lambda item: len(item.ids))
        batches: list[list[_Item]] = []
        current: list[_Item] = []
        for item in window:
            longest = len(item.ids)  # ascending order: the newcomer is the longest so far
            if current and ((len(current) + 1) * longest > self.token_budget or len(current) >= self.max_batch_size):
                batches.append(current)
                current = []
            current.append(item)
        if current:
            batches.append(current)
        return batches

    def _run_batch(self, sequences: list[np.ndarray]) -> np.ndarray:
        start = time.perf_counter()
        out = self._forward(sequences)
        self._forward_latency.observe(time.perf_counter() - start)
        self._batch_size.observe(len(sequences))
        self._batch_tokens.observe(len(sequences) * max(len(s) for s in sequences))
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batches = self._take_batches()
            # Queue every batch of the window on the forward thread at once, so it never idles
            # while the loop hands out the previous batch's results.
            futures = [
                loop.run_in_executor(self._executor, self._run_batch, [item.ids for item in batch]) for batch in batches
            ]
            for batch, pending_result in zip(batches, futures, strict=True):
                try:
                    out = await pending_result
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a failed forward fails its requests, not the worker
                    log.exception("forward pass failed on %s", self.name)
                    self._fail(batch, exc)
                else:
                    self._deliver(batch, out)
                self._queued -= len(batch)
                self._depth.set(self._queued)

    @staticmethod
    def _deliver(batch: list[_Item], out: np.ndarray) -> None:
        for k, item in enumerate(batch):
            job = item.job
            job.rows[item.row] = out[k]
            job.remaining -= 1
            if job.remaining == 0 and not job.future.done():
                job.future.set_result(job.rows)

    @staticmethod
    def _fail(batch: list[_Item], exc: Exception) -> None:
        for item in batch:
            if not item.job.future.done():
                item.job.future.set_exception(exc)
