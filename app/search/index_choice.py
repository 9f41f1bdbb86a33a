"""`auto`: the index type chosen by measured cost.

Up to FLAT_MAX vectors an exact (Flat) index is fast enough and needs no tuning. Above it, every
candidate whose estimated memory for the whole collection fits the budget is built on a sample of
the collection (SAMPLE vectors), tuned to the recall target on queries held out of that sample, and
timed on them one query at a time (as search runs); the fastest one that reaches the target wins
(of those within SPEED_TIE of the fastest, the smallest), or, when none does, the one with the best
recall. Every candidate's figures are recorded.

The binary candidate (IVF lists of RaBitQ codes, one bit per dimension) shortlists by code and
rescores with float vectors read from the store, so its trial reads them from the store too (as
served): its latency includes that read, and its memory is the codes only (~1/7 of SQ8's).

Write-heavy collections (since the previous build, at least WRITE_HEAVY_CHURN writes per document
that build held) do not get an IVF index while a graph index fits: IVF assigns every new vector to
lists trained on an older snapshot, so its recall at the tuned nprobe decays as the data drifts, and
each re-train is a full rebuild; HNSW inserts each vector into its graph as it comes and keeps its
recall under adds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from app.search.vector_index import (
    VectorFetch,
    VectorIndex,
    binary_code_bytes,
    coarse_bytes,
    exact_top_k,
    ivf_nlist,
    single_query_ms,
    tune,
)

FLAT_MAX = 50_000
SAMPLE = 100_000  # vectors each candidate is built on
# Held-out queries each candidate is tuned and timed on (at most a tenth of the sample). With 200 the
# recall bound moves by ~0.01 between query sets, enough to tune one candidate a breadth step (2x)
# above another with the same recall curve, and the time comparison then measures that step
# (benchmarks/results/auto_trial.md); 1,000 cut that scatter by more than half.
TRIAL_QUERIES = 1_000
TRUTH_CHUNK = 2_000  # sample vectors per chunk of the trial's exact top-10: 1,000 x 2,000 scores, ~8 MB
# Candidates whose p50 is within this factor of the fastest count as equally fast (single-query
# timings on a busy machine move by 10-30%); the one using the least memory of those wins.
SPEED_TIE = 1.3
HNSW_LINKS = 32
WRITE_HEAVY_CHURN = 1.0  # writes since the previous build per document it held


@dataclass
class Candidate:
    spec: str
    memory_bytes: int  # estimated for the whole collection
    recall_at_10: float | None = None  # on the sample's held-out queries, tuned
    recall_lower_bound: float | None = None
    search_defaults: dict[str, int] | None = None
    p50_ms: float | None = None  # single-query latency on the sample
    build_seconds: float | None = None
    skipped: str | None = None  # why it was not tried


def ivf_lists(n: int) -> int:
    return min(65_536, max(256, int(4 * math.sqrt(n))))


def estimated_memory(spec: str, n: int, dim: int) -> int:
    """Bytes `spec` takes for n vectors of `dim` (vectors, links or codes, ids, centroids)."""
    if spec.startswith("HNSW"):
        return n * (dim * 4 + HNSW_LINKS * 2 * 4 + 16)
    lists = ivf_nlist(spec)
    code = {"SQ8": dim, "RaBitQ": binary_code_bytes(dim)}.get(spec.split(",")[1], dim * 4)
    return n * (code + 8) + coarse_bytes(lists, dim)


def candidate_specs(n: int, dim: int) -> list[str]:
    """What `auto` tries above FLAT_MAX (IVF's list count for the whole collection, scaled down
    to the sample when tried). IVF compares each query with every centroid, not a graph over them
    (`IVF<n>_HNSW32`): at 1M the walk saved ~0.08 ms of FAISS's ~0.34 at equal recall, under a tenth
    of a served search's CPU, and a trial on the sample could not see it (at the sample's 1,264
    lists the walk costs more than comparing them all: benchmarks/results/coarse_quantizer.md)."""
    lists = ivf_lists(n)
    return [f"HNSW{HNSW_LINKS}", f"IVF{lists},SQ8", f"IVF{lists},RaBitQ", f"IVF{lists},Flat"]


def trial_spec(spec: str, sample_size: int) -> str:
    """`spec` for a sample: IVF with the list count the sample's size calls for (same points per list)."""
    if spec.startswith("IVF"):
        return f"IVF{ivf_lists(sample_size)}," + spec.split(",", 1)[1]
    return spec


def choose(
    sample: np.ndarray,
    n: int,
    metric: str,
    memory_budget_bytes: int,
    target: float,
    write_heavy: bool = False,
    sample_keys: np.ndarray | None = None,
    fetch: VectorFetch | None = None,
    trial_queries: int = TRIAL_QUERIES,
) -> tuple[str, list[Candidate]]:
    """(the spec to build for n vectors, every candidate's figures). `sample`: (m, dim) vectors of
    the collection, m >= 20, shuffled in place (not copied: at 100k it is 150 MB).
    `write_heavy`: IVF is not tried while a graph index fits. `sample_keys` (m,): the store's keys
    of the sample's rows, and `fetch` reading their vectors from the store, for the binary
    candidate's rescoring; without them it rescores from the sample in memory. `trial_queries`:
    how many of the sample's vectors are held out as queries (at most a tenth of them)."""
    dim = sample.shape[1]
    # One seed for both: Generator.shuffle draws the same swaps for any array of the same length,
    # so row i of the sample stays paired with key i (tests/app/search/test_optimize.py checks it).
    np.random.default_rng(0).shuffle(sample)
    if sample_keys is None or fetch is None:
        sample_keys = np.arange(len(sample), dtype=np.int64)
        fetch = in_memory_fetch(sample_keys, sample)
    else:
        sample_keys = np.array(sample_keys, dtype=np.int64)
        np.random.default_rng(0).shuffle(sample_keys)
    held_out = min(trial_queries, len(sample) // 10)
    queries, data = sample[:held_out], sample[held_out:]
    keys = sample_keys[held_out:]
    chunks = ((keys[i : i + TRUTH_CHUNK], data[i : i + TRUTH_CHUNK]) for i in range(0, len(data), TRUTH_CHUNK))
    truth = exact_top_k(chunks, queries, metric)  # chunked: one (queries x sample) block would be ~0.4 GB
    candidates = []
    specs = candidate_specs(n, dim)
    graph_fits = any(not s.startswith("IVF") and estimated_memory(s, n, dim) <= memory_budget_bytes for s in specs)
    for spec in specs:
        candidate = Candidate(spec, estimated_memory(spec, n, dim))
        if candidate.memory_bytes > memory_budget_bytes:
            candidate.skipped = f"needs ~{candidate.memory_bytes >> 20} MiB, over the budget"
        elif write_heavy and graph_fits and spec.startswith("IVF"):
            candidate.skipped = (
                f"write-heavy collection (>= {WRITE_HEAVY_CHURN:g} writes per document since the last build): "
                "IVF's lists would drift from the data; a graph index keeps its recall under adds"
            )
        else:
            _trial(candidate, trial_spec(spec, len(data)), metric, data, keys, queries, truth, target, fetch)
        candidates.append(candidate)
    return pick(candidates, target).spec, candidates


def pick(candidates: list[Candidate], target: float) -> Candidate:
    """The winner among measured `candidates`: of those whose recall bound reaches `target`, the
    smallest of the ones within SPEED_TIE of the fastest; none reaching it: the best recall;
    none tried: the smallest."""
    tried = [c for c in candidates if c.skipped is None]
    if not tried:
        return min(candidates, key=lambda c: c.memory_bytes)
    reaching = [c for c in tried if (c.recall_lower_bound or 0) >= target]
    if not reaching:
        return max(tried, key=lambda c: c.recall_at_10 or 0)
    fastest = min(c.p50_ms or 0 for c in reaching)
    close = [c for c in reaching if (c.p50_ms or 0) <= SPEED_TIE * fastest]
    return min(close, key=lambda c: c.memory_bytes)


def _trial(
    candidate: Candidate,
    spec: str,
    metric: str,
    data: np.ndarray,
    keys: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float,
    fetch: VectorFetch,
) -> None:
    start = time.perf_counter()
    index = VectorIndex(data.shape[1], metric, spec)
    index.rescore_from = fetch
    index.train(data)
    index.add(keys, data)
    candidate.build_seconds = round(time.perf_counter() - start, 2)
    tuned = tune(index, truth, queries, target)
    candidate.recall_at_10 = round(tuned.recall, 4)
    candidate.recall_lower_bound = round(tuned.lower_bound, 4)
    candidate.search_defaults = {k: v for k, v in asdict(tuned.params).items() if v is not None}
    candidate.p50_ms = round(single_query_ms(index, queries, index.defaults), 4)


def in_memory_fetch(keys: np.ndarray, vectors: np.ndarray) -> VectorFetch:
    """A `fetch` over vectors held in memory: `keys` (m,) name the rows of `vectors` (m, dim)."""
    row_of = {int(key): row for row, key in enumerate(keys)}

    def fetch(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        present = np.array([k for k in wanted if int(k) in row_of], dtype=np.int64)
        return present, vectors[[row_of[int(k)] for k in present]].reshape(len(present), vectors.shape[1])

    return fetch
