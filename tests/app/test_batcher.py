"""Dynamic batching: packing under the token budget, cross-request batches, bounded queue."""

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

from app.inference.batcher import DynamicBatcher, QueueFull
from tests.conftest import live_server, settings_for


class RecordingForward:
    """Fake forward pass: row i -> [len(seq_i)], records each batch's lengths, can be held."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, sequences: list[np.ndarray]) -> np.ndarray:
        self.release.wait(10)
        self.batches.append([len(s) for s in sequences])
        return np.array([[float(len(s))] for s in sequences], dtype=np.float32)


def _seq(length: int) -> np.ndarray:
    return np.arange(length, dtype=np.int64)


async def _submit(batcher: DynamicBatcher, sequences: list[np.ndarray]) -> np.ndarray:
    """Token sequences cost their length, as the text models submit them."""
    return await batcher.submit(sequences, [len(s) for s in sequences])


def test_batches_respect_the_token_budget_and_results_keep_order() -> None:
    forward = RecordingForward()

    async def scenario() -> list[np.ndarray]:
        batcher = DynamicBatcher("t", forward, (1,), cost_budget=100, max_batch_size=8, max_queue=1000)
        batcher.start()
        try:
            lengths = [[30, 5, 12], [50, 3], [7] * 20]
            return await asyncio.gather(*[_submit(batcher, [_seq(n) for n in req]) for req in lengths])
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert [r[:, 0].tolist() for r in results] == [[30, 5, 12], [50, 3], [7] * 20]
    for batch in forward.batches:
        assert len(batch) * max(batch) <= 100 or len(batch) == 1
        assert len(batch) <= 8
    # Three concurrent requests were packed together: fewer passes than requests' texts.
    assert sum(len(b) for b in forward.batches) == 25 and len(forward.batches) < 25
    assert any(len(b) > 3 for b in forward.batches)


def test_queue_full_raises_and_a_lone_oversized_request_is_split_not_refused() -> None:
    forward = RecordingForward()

    async def scenario() -> None:
        batcher = DynamicBatcher("t", forward, (1,), cost_budget=64, max_batch_size=4, max_queue=10)
        batcher.start()
        try:
            big = await _submit(batcher, [_seq(4)] * 25)  # 25 > max_queue, alone: admitted and split
            assert big.shape == (25, 1)
            forward.release.clear()
            first = asyncio.ensure_future(_submit(batcher, [_seq(4)] * 8))
            await asyncio.sleep(0.05)
            with pytest.raises(QueueFull):
                await _submit(batcher, [_seq(4)] * 3)
            forward.release.set()
            assert (await first).shape == (8, 1)
            assert batcher.depth == 0
        finally:
            forward.release.set()
            await batcher.stop()

    asyncio.run(scenario())
    assert max(len(b) for b in forward.batches) <= 4


def test_a_failed_forward_fails_its_requests_and_the_worker_survives() -> None:
    calls = {"n": 0}

    def flaky(sequences: list[np.ndarray]) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return np.zeros((len(sequences), 1), dtype=np.float32)

    async def scenario() -> None:
        batcher = DynamicBatcher("t", flaky, (1,), cost_budget=64, max_batch_size=4, max_queue=10)
        batcher.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await _submit(batcher, [_seq(3)])
            assert (await _submit(batcher, [_seq(3)])).shape == (1, 1)
        finally:
            await batcher.stop()

    asyncio.run(scenario())


def test_costs_come_from_the_caller_not_the_payload() -> None:
    """An image-like payload (one array) costs what the caller says (pixels), not its length."""
    forward = RecordingForward()

    async def scenario() -> None:
        batcher = DynamicBatcher("t", forward, (1,), cost_budget=100, max_batch_size=8, max_queue=1000)
        batcher.start()
        try:
            await batcher.submit([_seq(1)] * 6, [40] * 6)  # 6 items of cost 40: at most 2 per pass
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert sum(len(b) for b in forward.batches) == 6
    assert max(len(b) for b in forward.batches) <= 2


def test_work_of_a_cancelled_request_is_dropped_before_it_is_computed() -> None:
    forward = RecordingForward()

    async def scenario() -> None:
        batcher = DynamicBatcher("t", forward, (1,), cost_budget=8, max_batch_size=1, max_queue=1000, workers=1)
        batcher.start()
        try:
            forward.release.clear()
            busy = asyncio.ensure_future(_submit(batcher, [_seq(5)]))  # holds the only stream
            await asyncio.sleep(0.05)
            gone = asyncio.ensure_future(_submit(batcher, [_seq(7)] * 20))
            await asyncio.sleep(0.05)
            gone.cancel()  # the client went away while its inputs waited
            forward.release.set()
            assert (await busy).shape == (1, 1)
            kept = await _submit(batcher, [_seq(3)])
            assert kept[:, 0].tolist() == [3.0]
            assert batcher.depth == 0
        finally:
            forward.release.set()
            await batcher.stop()

    asyncio.run(scenario())
    computed = [n for batch in forward.batches for n in batch]
    assert computed.count(7) <= 1  # at most the batch already taken when it was cancelled
    assert 5 in computed and 3 in computed


def test_http_concurrent_clients_share_forward_passes_and_429_when_full(default_models_dir) -> None:
    settings = settings_for(default_models_dir, max_queue=16)
    with live_server(settings) as base_url:

        async def burst(n_clients: int, per_request: int) -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
                body = {"input": [f"sentence number {i} about the weather" for i in range(per_request)]}
                return await asyncio.gather(*[http.post("/v1/embeddings", json=body) for _ in range(n_clients)])

        before = _metric(base_url, 'tessera_batch_size_count{model="minilm-l6"}')
        responses = asyncio.run(burst(12, 1))
        assert all(r.status_code == 200 for r in responses)
        passes = _metric(base_url, 'tessera_batch_size_count{model="minilm-l6"}') - before
        assert passes < 12  # requests from concurrent clients were packed together

        responses = asyncio.run(burst(40, 8))  # 320 texts against a queue of 16
        statuses = {r.status_code for r in responses}
        assert statuses <= {200, 429} and 429 in statuses and 200 in statuses
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"


def _metric(base_url: str, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics").text
    line = next(line for line in text.splitlines() if line.startswith(name))
    return float(line.split()[-1])


def test_http_inputs_of_clients_that_disconnect_are_dropped_not_computed(default_models_dir) -> None:
    """Clients that give up (time out and close the connection) while their inputs wait: the server
    cancels their requests, and inputs not yet computed are never computed. A request cancelled
    while it waits in the queue is dropped by the batcher; one cancelled while still tokenising (a
    loaded machine) never reaches the queue. Either way the forward passes stay far short of all
    the inputs sent."""
    settings = settings_for(default_models_dir, streams=1, max_batch_size=4, batch_token_budget=512)
    long_texts = [" ".join(["turbulent boundary layer"] * 60)] * 32
    with live_server(settings) as base_url:
        computed_before = _metric_or_zero(base_url, 'tessera_batch_size_sum{model="minilm-l6"}')

        async def impatient(n: int) -> int:
            async with httpx.AsyncClient(base_url=base_url, timeout=0.2) as http:
                results = await asyncio.gather(
                    *[http.post("/v1/embeddings", json={"input": long_texts}) for _ in range(n)],
                    return_exceptions=True,
                )
            return sum(isinstance(r, httpx.TimeoutException) for r in results)

        gave_up = asyncio.run(impatient(8))
        assert gave_up >= 6  # 8 x 32 long texts cannot be embedded in 0.2 s here
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _metric_or_zero(base_url, 'tessera_queue_depth{model="minilm-l6"}') > 0:
            time.sleep(0.2)
        computed = _metric_or_zero(base_url, 'tessera_batch_size_sum{model="minilm-l6"}') - computed_before
        assert computed <= 8 * 32 - 32, computed  # at least one whole request's inputs were never computed
        ok = httpx.post(f"{base_url}/v1/embeddings", json={"input": "still serving"}, timeout=30)
        assert ok.status_code == 200


def _metric_or_zero(base_url: str, name: str) -> float:
    text = httpx.get(f"{base_url}/metrics").text
    line = next((line for line in text.splitlines() if line.startswith(name)), None)
    return float(line.split()[-1]) if line else 0.0
