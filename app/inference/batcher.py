"""Dynamic cross-request batching under a padded-cost budget, with a bounded queue.

Requests hand in work items, each a payload for the forward pass (token ids, a preprocessed image)
and a cost the caller supplies (tokens for text, pixels for an image). Preparation (tokenising,
decoding) runs in the request handlers, so it overlaps the forward pass of earlier batches. One
worker per model takes a window of waiting items in arrival order, sorts it by cost, and splits it
into batches that minimise padded cost plus a per-pass cost, each within the budget
(`rows x largest cost`), and runs them on `workers` dedicated threads (one per inference stream),
so the event loop stays free and a batch is dispatched the moment a stream is free. Items whose
request has gone (its future cancelled: the client disconnected) are dropped before they are
computed. A full queue raises `QueueFull` (429 + Retry-After at the HTTP layer).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from app.core import metrics
from app.core.errors import QueueFull

log = logging.getLogger(__name__)

ForwardFn = Callable[[list[Any]], np.ndarray]  # payloads -> (batch, ...) float32


# Fixed cost of one forward pass, in padded-token equivalents (measured: a 1-text pass costs
# about as much as ~64 extra tokens in a full batch on MiniLM / 2 cores).
BATCH_OVERHEAD_TOKENS = 64


def plan_batches(lengths: list[int], budget: int, max_batch_size: int) -> list[int]:
    """Split ascending `lengths` (item costs) into contiguous batches minimising padded cost + per-pass cost.

    A batch [i, j) costs BATCH_OVERHEAD_TOKENS + (j - i) * lengths[j - 1] (padding to its longest)
    and must fit the budget (a single over-budget item still gets a batch of its own). Dynamic
    programming over split points; returns the end index of each batch. For text a cost is a
    token count; for images, whose rows are all the same size, it is their pixel count.
    """
    n = len(lengths)
    if n == 0:
        return []
    lens = np.asarray(lengths, dtype=np.int64)
    best = np.full(n + 1, np.iinfo(np.int64).max // 2, dtype=np.int64)  # best[j]: cost of first j items
    best[0] = 0
    prev = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        longest = int(lens[j - 1])
        max_rows = max(1, min(max_batch_size, budget // max(1, longest), j))
        starts = np.arange(j - max_rows, j)  # candidate batch starts i: batch is [i, j)
        costs = best[starts] + BATCH_OVERHEAD_TOKENS + (j - starts) * longest
        pick = int(np.argmin(costs))
        best[j] = costs[pick]
        prev[j] = starts[pick]
    cuts = []
    j = n
    while j > 0:
        cuts.append(j)
        j = int(prev[j])
    return cuts[::-1]


@dataclass(slots=True)
class _Job:
    rows: np.ndarray  # (n, ...) results, filled as batches finish
    remaining: int
    future: asyncio.Future[np.ndarray]


@dataclass(slots=True)
class _Item:
    payload: Any  # what the forward pass receives for this row, e.g. (seq,) int64 token ids
    cost: int  # padded-cost units of this row (tokens, pixels), supplied by the caller
    job: _Job
    row: int


class DynamicBatcher:
    def __init__(
        self,
        name: str,
        forward: ForwardFn,
        row_shape: tuple[int, ...],
        cost_budget: int,
        max_batch_size: int,
        max_queue: int,
        workers: int = 1,
    ) -> None:
        self.name = name
        self._forward = forward
        self._row_shape = row_shape
        self.cost_budget = cost_budget
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.workers = workers
        self._pending: deque[_Item] = deque()
        self._queued = 0  # submitted and not yet finished, in-flight included
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"forward-{name}")
        self._task: asyncio.Task[None] | None = None
        self._depth = metrics.QUEUE_DEPTH.labels(name)
        self._batch_size = metrics.BATCH_SIZE.labels(name)
        self._batch_tokens = metrics.BATCH_TOKENS.labels(name)
        self._forward_latency = metrics.FORWARD_LATENCY.labels(name)
        self._dropped = metrics.DROPPED_ITEMS.labels(name)

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

    async def submit(self, payloads: Sequence[Any], costs: Sequence[int]) -> np.ndarray:
        """Run `payloads` (one cost each); returns rows in the order given. Raises QueueFull when
        saturated. Cancelling the awaiting task drops the rows that have not been computed yet."""
        count = len(payloads)
        if len(costs) != count:
            raise ValueError(f"{count} payloads but {len(costs)} costs")
        if count == 0:
            return np.empty((0, *self._row_shape), dtype=np.float32)
        # A lone request larger than the queue is admitted (and split into batches) rather than
        # refused forever; otherwise the bound holds.
        if self._queued and self._queued + count > self.max_queue:
            raise QueueFull(
                f"server busy: {self.name} queue is full ({self._queued} items queued, limit {self.max_queue})"
            )
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        job = _Job(np.empty((count, *self._row_shape), dtype=np.float32), count, future)
        self._pending.extend(
            _Item(payload, cost, job, row) for row, (payload, cost) in enumerate(zip(payloads, costs, strict=True))
        )
        self._queued += count
        self._depth.set(self._queued)
        self._wakeup.set()
        return await future

    def _take_batches(self) -> list[list[_Item]]:
        """Pop a window of the oldest live items, sort it by cost and split it into batches."""
        window_size = self.max_batch_size * 4
        window: list[_Item] = []
        while self._pending and len(window) < window_size:
            window.append(self._pending.popleft())
        window = self._live(window)
        window.sort(key=lambda item: item.cost)
        cuts = plan_batches([item.cost for item in window], self.cost_budget, self.max_batch_size)
        return [window[start:end] for start, end in itertools.pairwise([0, *cuts])]

    def _live(self, items: list[_Item]) -> list[_Item]:
        """Drop the items whose request has gone (its future cancelled) or already failed."""
        live = [item for item in items if not item.job.future.done()]
        if len(live) < len(items):
            dropped = len(items) - len(live)
            self._queued -= dropped
            self._depth.set(self._queued)
            self._dropped.inc(dropped)
        return live

    def _run_batch(self, payloads: list[Any], padded_cost: int) -> np.ndarray:
        start = time.perf_counter()
        out = self._forward(payloads)
        self._forward_latency.observe(time.perf_counter() - start)
        self._batch_size.observe(len(payloads))
        self._batch_tokens.observe(padded_cost)
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.workers)
        packed: deque[list[_Item]] = deque()
        while True:
            if not packed:
                if not self._pending:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                packed.extend(self._take_batches())
                if not packed:  # every waiting item belonged to a request that has gone
                    continue
            # Dispatch as soon as a stream is free: the next batch is already queued when the
            # previous one finishes, and results are handed out from the done-callback.
            await slots.acquire()
            batch = self._live(packed.popleft())  # a request may have gone while its batch waited
            if not batch:
                slots.release()
                continue
            padded_cost = len(batch) * batch[-1].cost  # sorted ascending: the last is the largest
            pending_result = loop.run_in_executor(
                self._executor, self._run_batch, [item.payload for item in batch], padded_cost
            )
            pending_result.add_done_callback(partial(self._finish, batch, slots))

    def _finish(self, batch: list[_Item], slots: asyncio.Semaphore, result: asyncio.Future[np.ndarray]) -> None:
        slots.release()
        if result.cancelled():
            self._fail(batch, asyncio.CancelledError())
        elif (exc := result.exception()) is not None:  # a failed forward fails its requests, not the worker
            log.error("forward pass failed on %s: %r", self.name, exc)
            self._fail(batch, exc)  # type: ignore[arg-type]
        else:
            self._deliver(batch, result.result())
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
    def _fail(batch: list[_Item], exc: BaseException) -> None:
        for item in batch:
            if not item.job.future.done():
                item.job.future.set_exception(exc)
