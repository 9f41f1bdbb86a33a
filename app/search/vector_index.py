"""FAISS index with external int64 ids, online add/remove, filtered search and atomic snapshots."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from app.core.errors import InvalidIndexSpec

log = logging.getLogger(__name__)

METRICS = {"cosine": faiss.METRIC_INNER_PRODUCT, "ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
# Index factory strings we accept: exact, graph, inverted lists with flat/SQ/PQ/binary codes. The
# numbers are checked by `validate_spec` too: FAISS aborts the process (not an exception) on some.
# ASCII digits only: `\d` alone also matches other scripts' digits ("IVF٣"), which int() reads but
# FAISS's parser refuses.
SPEC_PATTERN = re.compile(
    r"^(?:Flat|HNSW(?P<m>\d{1,4})(?:,Flat)?"
    r"|IVF(?P<nlist>\d{1,7})(?:_HNSW(?P<coarse_m>\d{1,4}))?,(?:Flat|SQ8|SQ4|RaBitQ|PQ(?P<pq>\d{1,4})(?:x(?P<bits>\d{1,2}))?))$",
    re.ASCII,
)
# Binary codes (RaBitQ: one bit per dimension and two floats per vector, a 384-d vector in 56 bytes
# instead of 1,536) only shortlist: a search takes depth x k candidates by their codes and orders
# them by their float vectors read from the store, so its scores are exact. The depth is tuned per
# build (fewer dimensions, coarser codes): on 100k 384-d MiniLM-like vectors the top 40 by code
# held the exact top 10 as often as the top 200 did; 64-d clustered vectors need 16x or more.
# Reading 40 vectors from SQLite takes ~0.15 ms, 400 ~1.5 ms.
RESCORE_DEPTHS = (4, 8, 16, 32, 64)
# At most this many candidates are read and rescored per query (a top_k of 1,000 at depth 64 would
# read 64,000 vectors, ~100 MB, per request); deep result lists get a shallower shortlist.
RESCORE_SHORTLIST_MAX = 4_096
# FAISS's OpenMP threads (OpenMP keeps the count per calling thread): a search of one query runs
# on one, as parallelism comes from concurrent requests and a two-thread exact search of one query
# measured slower than one thread here (benchmarks/faiss_threads.py); everything else gets them all.
FAISS_THREADS = faiss.omp_get_max_threads()
MAX_KEPT_PARAMS = 64  # unfiltered searches' FAISS parameters kept, one per breadth asked for
HNSW_M_RANGE = (2, 256)  # M < 2 aborts inside FAISS (HNSW.cpp assertion) or segfaults
IVF_NLIST_RANGE = (1, 65_536)
PQ_BITS_RANGE = (1, 10)  # 16 bits asks FAISS for ~100 GB of polysemous-training memory
EF_SEARCH_BOUNDS = (1, 4096)
# IVF with a graph over its centroids (`IVF<nlist>_HNSW<M>,...`, asked for by name; `auto` does not
# choose it): a query finds its nearest lists by walking the graph with this breadth (at least
# nprobe) instead of comparing it with every centroid, which grows with the list count (0.19 ms at
# 4,000 lists of 384-d). A breadth of 64 missed the nearest list for 4% of queries at 4,000 lists,
# 128 for 1% (benchmarks/results/coarse_quantizer.md); what the walk misses costs recall at a given
# nprobe. Adds file each vector under its nearest list by comparing every centroid (`_assign`).
COARSE_EF_SEARCH = 128
# Other IVF indexes under COARSE_SCAN_MIN_LISTS lists (and those saved before the scan) keep their
# centroids in float16 (`IVF<nlist>(SQfp16),...` to FAISS): the coarse step reads every centroid
# for each query, and at 4,000 lists of 384-d (6 MB in float32) that read was the larger part of a
# 1M-vector search. Half the bytes took 0.08-0.1 ms off every search of a 1M index (0.309 -> 0.215
# ms at nprobe 2), the lists probed the same for 400 of 400 queries at every nprobe
# (benchmarks/results/coarse_fp16.md). Training and bulk adds still compare in float32 (BLAS).
COARSE_CODEC, COARSE_BYTES = "SQfp16", 2  # bytes per centroid dimension
# From COARSE_SCAN_MIN_LISTS lists on (1M vectors: `auto`'s 4,000), the coarse step is a 4-bit
# fast scan (`PQ<dim/2>x4fs`: a 4-bit code per 2 dimensions, compared through SIMD lookup tables) that
# shortlists COARSE_SHORTLIST_FACTOR x nprobe centroids (at least COARSE_MIN_SHORTLIST), re-ranked
# exactly against the float32 centroids it keeps beside (`RFlat`): the lists probed are the exact
# ones unless the scan's shortlist missed one. A 1M-vector IVF4000,SQ8 search took 0.05-0.09 ms
# less at nprobe 1-16 (0.180 -> 0.087 ms at nprobe 1), probing the lists float32 centroids pick
# for 400 of 400 queries at every nprobe (float16: 398 at 16), recall identical (coarse_scan.md). At
# ~1,000 lists the scan was no faster than float16 (an informal check). A shortlist of 8 per list
# probed missed one of the nearest 8 lists for 14% of queries over nearly equidistant centroids
# (test_optimize's clustered vectors, 2,048 lists), 16 for none.
COARSE_SCAN_MIN_LISTS = 2_048
COARSE_SHORTLIST_FACTOR, COARSE_MIN_SHORTLIST = 16, 64
HNSW_EF_CONSTRUCTION = 128
# Filtered searches over at most this many matches are scored exactly with vectors read from the
# store; larger match sets search the index with an id selector (as unfiltered search, approximate)
# and fall back to exact only when that comes up short. Reading 50k vectors from SQLite per query
# took ~0.2 s at 100k documents (benchmarks/results/vs_chroma.md).
EXACT_FALLBACK_MAX = 4_096
# keys (m,) -> (the keys still stored (m',), their vectors (m', dim)), in that order
VectorFetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class IndexSpecError(InvalidIndexSpec):
    """An index spec this service does not build."""


def validate_spec(spec: str, dim: int | None = None) -> str:
    """`spec` in its canonical form (numbers without leading zeros: `IVF04,Flat` is `IVF4,Flat`,
    the form the published pattern allows) if this service can build it (for vectors of `dim`,
    when given), else IndexSpecError.

    A strict whitelist, not a trial build: FAISS answers some bad parameters by aborting the
    process (HNSW with M < 2), which no exception handler survives."""
    if spec == "auto":
        return spec
    match = SPEC_PATTERN.match(spec)
    if not match:
        raise IndexSpecError(
            f"unsupported index spec {spec!r}: use auto, Flat, HNSW<M>, IVF<nlist>[_HNSW<M>],Flat|SQ8|SQ4|RaBitQ|PQ<m>"
        )
    _in_range(spec, "HNSW M", match["m"], HNSW_M_RANGE)
    _in_range(spec, "IVF nlist", match["nlist"], IVF_NLIST_RANGE)
    _in_range(spec, "IVF coarse graph M", match["coarse_m"], HNSW_M_RANGE)
    _in_range(spec, "PQ bits per code", match["bits"], PQ_BITS_RANGE)
    if match["pq"] is not None:
        m = int(match["pq"])
        if m < 1 or (dim is not None and (m > dim or dim % m)):
            raise IndexSpecError(f"index spec {spec!r}: PQ{m} needs m to divide the dimension ({dim})")
    return re.sub(r"[0-9]+", lambda number: str(int(number.group())), spec)


def _in_range(spec: str, what: str, value: str | None, bounds: tuple[int, int]) -> None:
    if value is not None and not bounds[0] <= int(value) <= bounds[1]:
        raise IndexSpecError(f"index spec {spec!r}: {what} must be in {bounds[0]}..{bounds[1]}")


def ivf_nlist(spec: str) -> int:
    """The list count of an IVF `spec` (`IVF4000,SQ8`, `IVF4000_HNSW32,SQ8`: 4000)."""
    return int(re.match(r"IVF(\d+)", spec)[1])  # type: ignore[index]


def coarse_graph_degree(spec: str) -> int | None:
    """The M of the graph over an IVF `spec`'s centroids (`IVF4000_HNSW32,SQ8`: 32), None without one."""
    found = re.match(r"IVF\d+_HNSW(\d+),", spec)
    return int(found[1]) if found else None


def training_points_needed(spec: str) -> int:
    """Vectors an index of `spec` needs to train: one per IVF list, and 2^bits per PQ sub-quantizer."""
    match = SPEC_PATTERN.match(spec)
    if not match:
        return 0
    needed = int(match["nlist"] or 0)
    if match["pq"] is not None:
        needed = max(needed, 2 ** int(match["bits"] or 8))
    return needed


@dataclass
class SearchParams:
    ef_search: int | None = None
    nprobe: int | None = None
    rescore_depth: int | None = None  # binary indexes: candidates per result rescored with float vectors


@dataclass
class BuildReport:
    spec: str
    n: int
    recall_at_10: float | None
    sample_queries: int
    search_defaults: dict[str, int] = field(default_factory=dict)
    build_seconds: float = 0.0
    # How recall was measured: documents held out of the index while it was tuned, then added
    # (their neighbours are what a query near, not equal to, a stored vector finds).
    recall_queries: str = "held-out documents"
    recall_lower_bound: float | None = None  # one-sided 95% bound of recall_at_10
    recall_target: float | None = None
    # `auto` only: every index type tried on a sample, with its recall, latency and memory.
    candidates: list[dict[str, Any]] = field(default_factory=list)
    # The built index's own single-query median at full size with `search_defaults`, on the held-out
    # queries (the candidates' p50 is on the sample, which for IVF has fewer, shorter lists).
    p50_ms: float | None = None
    ops_at_build: int = 0  # the store's op counter when the build read it (writes since = now - this)
    # `auto` only: writes since the previous build per document it held (None: no previous build)
    write_churn: float | None = None


class VectorIndex:
    def __init__(self, dim: int, metric: str, spec: str = "Flat", index: faiss.Index | None = None) -> None:
        self.dim, self.metric, self.spec = dim, metric, spec
        self.coarse_graph_m = coarse_graph_degree(spec)  # read once: searches consult it every time
        if index is None:
            index = faiss.index_factory(dim, _factory(spec, dim), METRICS[metric])
            if spec.startswith("HNSW"):
                # A better-connected graph (FAISS default 40): recall@10 ≥ 0.95 on 1M real-like
                # vectors needs it (benchmarks/results/search.md); costs build time, not memory.
                faiss.downcast_index(index.index).hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            elif self.coarse_graph_m is not None:
                faiss.downcast_index(faiss.extract_index_ivf(index).quantizer).hnsw.efSearch = COARSE_EF_SEARCH
        self.index = index
        # By what the index holds, not its spec: one saved before the scan keeps its float16 step.
        quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer) if self.is_ivf else None
        self.coarse_scan = isinstance(quantizer, faiss.IndexRefine)
        if self.coarse_scan:  # FAISS's own calls without a search's parameters (its default is 1)
            quantizer.k_factor = COARSE_SHORTLIST_FACTOR
        self.tombstones: set[int] = set()  # removed from the store but still in a graph index
        self.defaults = SearchParams()
        self._unfiltered_params: dict[int, faiss.SearchParameters] = {}  # by breadth: see _params
        # Where a binary index reads the float vectors it rescores with when a search is given no
        # `fetch` (a build's tuning reads its snapshot); without either its scores are the codes' estimates.
        self.rescore_from: VectorFetch | None = None

    @property
    def is_graph(self) -> bool:
        return self.spec.startswith("HNSW")

    @property
    def is_ivf(self) -> bool:
        return self.spec.startswith("IVF")

    @property
    def is_binary(self) -> bool:
        """Codes that only shortlist: searches rescore with the stored float vectors."""
        return self.spec.endswith("RaBitQ")

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def live(self) -> int:
        return self.ntotal - len(self.tombstones)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        return _prepared(vectors, self.metric, self.dim)

    def train(self, vectors: np.ndarray) -> None:
        if self.index.is_trained:
            return
        if not self.is_ivf or self.coarse_graph_m is not None:
            self.index.train(self.prepare(vectors))
            return
        # k-means compares every point with every centroid each round: in float32 through BLAS,
        # then the centroids go into the coarse step (float16, or the fast scan's codes and float32
        # copies), which would compare code by code
        ivf = faiss.extract_index_ivf(self.index)
        clustering = faiss.IndexFlat(self.dim, ivf.metric_type)  # referenced here: FAISS only points at it
        ivf.clustering_index = clustering
        try:
            self.index.train(self.prepare(vectors))
        finally:
            ivf.clustering_index = None  # Python owns it: no pointer to it may outlive this call

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        if not len(keys):
            return
        prepared = np.ascontiguousarray(self.prepare(vectors))
        ids = np.ascontiguousarray(keys, dtype=np.int64)
        if self.coarse_graph_m is None and not self.coarse_scan:
            self.index.add_with_ids(prepared, ids)
        else:  # filed under the nearest centroid, not the nearest the walk or the scan finds
            lists = np.ascontiguousarray(self._assign(prepared, self._exact_coarse()))
            ivf = faiss.extract_index_ivf(self.index)
            ivf.add_core(len(ids), faiss.swig_ptr(prepared), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
        self.tombstones.difference_update(int(k) for k in keys)

    def _exact_coarse(self) -> faiss.IndexFlat:
        """The IVF centroids in a float32 flat index, compared one by one through BLAS, even where
        searches walk a graph over them (see COARSE_EF_SEARCH) or keep them in float16
        (COARSE_CODEC). Built once per fill: reconstructing 4,096 centroids is not free."""
        ivf = faiss.extract_index_ivf(self.index)
        quantizer = faiss.downcast_index(ivf.quantizer)
        if self.coarse_graph_m is not None:
            return faiss.downcast_index(quantizer.storage)
        if self.coarse_scan:
            return faiss.downcast_index(quantizer.refine_index)
        if isinstance(quantizer, faiss.IndexFlat):  # built before COARSE_CODEC
            return quantizer
        exact = faiss.IndexFlat(self.dim, ivf.metric_type)
        exact.add(quantizer.reconstruct_n(0, ivf.nlist))
        return exact

    @staticmethod
    def _assign(prepared: np.ndarray, exact: faiss.IndexFlat) -> np.ndarray:
        """(m,) the IVF list of each prepared vector: its nearest centroid in `exact`."""
        _, assigned = exact.search(prepared, 1)
        return assigned.ravel()

    def fill(
        self, chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], to_come: np.ndarray | None = None
    ) -> None:
        """Add every (keys, vectors) chunk `chunks()` yields; it must yield the same chunks each call.

        An IVF index takes two passes: the first assigns every vector to its list and sizes each
        list once, the second writes the codes with those assignments. Adding in one pass grows
        each list by doubling, so at the end of a 1M fill the lists held ~100 MB more than the
        final index; the price is reading the chunks twice (the coarse assignment is not repeated).
        `to_come` (m, dim): vectors the caller adds right after (a build's held-out documents),
        whose lists get room for them too: adding 1,000 to full lists doubled ~1,000 of them, +84 MB
        at 1M."""
        if not self.is_ivf:
            for keys, vectors in chunks():
                self.add(keys, vectors)
            return
        ivf = faiss.extract_index_ivf(self.index)
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        assignments: list[np.ndarray] = []
        counts = np.zeros(ivf.nlist, np.int64)
        exact = self._exact_coarse()
        for _, vectors in chunks():
            assignments.append(self._assign(self.prepare(vectors), exact))
            counts += np.bincount(assignments[-1], minlength=ivf.nlist)
        if to_come is not None and len(to_come):
            counts += np.bincount(self._assign(self.prepare(to_come), exact), minlength=ivf.nlist)
        if isinstance(lists, faiss.ArrayInvertedLists):  # std::vector: shrinking keeps the capacity
            for list_no in np.flatnonzero(counts):
                size = lists.list_size(int(list_no))
                lists.resize(int(list_no), size + int(counts[list_no]))
                lists.resize(int(list_no), size)
        for (keys, vectors), assigned in zip(chunks(), assignments, strict=True):
            if len(keys):
                prepared = np.ascontiguousarray(self.prepare(vectors))
                ids = np.ascontiguousarray(keys, dtype=np.int64)
                ivf.add_core(len(ids), faiss.swig_ptr(prepared), faiss.swig_ptr(ids), faiss.swig_ptr(assigned))

    def remove(self, keys: list[int]) -> None:
        if not keys:
            return
        if self.is_graph:  # HNSW cannot unlink nodes: hide them until the next rebuild
            self.tombstones.update(keys)
        else:
            self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(keys, dtype=np.int64)))

    @property
    def _graph_degree(self) -> int:
        """HNSW's M (links per vector on the base layer: 2 × M), from a spec like `HNSW32`."""
        return int(re.findall(r"\d+", self.spec)[0])

    def _ef_search(self, params: SearchParams) -> int:
        return params.ef_search or self.defaults.ef_search or 64

    def _nprobe(self, params: SearchParams) -> int:
        return params.nprobe or self.defaults.nprobe or 16

    def memory_bytes(self) -> int:
        per_vector = {"Flat": self.dim * 4}.get(self.spec)
        if per_vector is None:
            if self.is_graph:
                per_vector = self.dim * 4 + self._graph_degree * 2 * 4
            elif "SQ8" in self.spec:
                per_vector = self.dim
            elif "SQ4" in self.spec:
                per_vector = self.dim // 2
            elif self.is_binary:
                per_vector = binary_code_bytes(self.dim)
            elif "PQ" in self.spec:
                per_vector = int(re.findall(r"PQ(\d+)", self.spec)[0])
            else:
                per_vector = self.dim * 4
        return self.ntotal * (per_vector + 16)  # + id map

    def vectors_compared(self, params: SearchParams) -> int | None:
        """About how many stored vectors one unfiltered query is compared with (plus the hidden keys
        it must skip), or None where that is not bounded this way (other specs). A binary index's
        codes count as vectors (each is cheaper to compare than an SQ8 code); its rescoring reads
        the shortlist from the store besides."""
        if self.spec == "Flat":
            return self.ntotal
        if self.is_ivf:
            nlist = ivf_nlist(self.spec)
            nprobe = min(self._nprobe(params), nlist)
            # the coarse step: every centroid, or the graph walk's ~breadth x 2M neighbours read
            # (a fast scan's 4-bit codes count as a quarter of a centroid each, then its shortlist)
            graph_m = self.coarse_graph_m
            if graph_m is not None:
                coarse = min(nlist, max(COARSE_EF_SEARCH, nprobe) * 2 * graph_m)
            elif self.coarse_scan:
                coarse = nlist // 4 + _coarse_shortlist(nprobe) * nprobe
            else:
                coarse = nlist
            return coarse + self.ntotal * nprobe // nlist
        if self.is_graph:
            return self._ef_search(params) * 2 * self._graph_degree + len(self.tombstones)
        return None

    def _params(self, selector: faiss.IDSelector | None, params: SearchParams) -> faiss.SearchParameters | None:
        """FAISS's parameters for one search. Those of unfiltered searches are kept per breadth and
        reused (FAISS only reads them): building them took ~8 us of a sub-millisecond search."""
        if selector is not None or not (self.is_graph or self.is_ivf):
            return self._new_params(selector, params)
        breadth = self._ef_search(params) if self.is_graph else self._nprobe(params)
        found = self._unfiltered_params.get(breadth)
        if found is None:
            if len(self._unfiltered_params) >= MAX_KEPT_PARAMS:  # breadths come from requests: bounded
                self._unfiltered_params.clear()
            found = self._unfiltered_params[breadth] = self._new_params(None, params)
        return found

    def _new_params(self, selector: faiss.IDSelector | None, params: SearchParams) -> faiss.SearchParameters | None:
        if self.is_graph:
            p = faiss.SearchParametersHNSW()
            p.efSearch = self._ef_search(params)
        elif self.is_ivf:
            p = faiss.IVFRaBitQSearchParameters() if self.is_binary else faiss.SearchParametersIVF()
            p.nprobe = self._nprobe(params)
            if self.coarse_graph_m is not None:
                p.quantizer_params = faiss.SearchParametersHNSW(efSearch=max(COARSE_EF_SEARCH, p.nprobe))
            elif self.coarse_scan:
                p.quantizer_params = faiss.IndexRefineSearchParameters(k_factor=_coarse_shortlist(p.nprobe))
        else:
            if selector is None:
                return None
            p = faiss.SearchParameters()
        if selector is not None:
            p.sel = selector
        return p

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        params: SearchParams | None = None,
        fetch: VectorFetch | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, keys), each (q, k), higher score is better; missing slots have key -1.

        `allowed`: keys the hits must come from (a metadata filter). Exact top-k among them is
        guaranteed: small subsets are scored exactly with vectors from `fetch` (the store), and
        an approximate search that comes up short falls back to that too. A binary index rescores
        its shortlist with vectors from `fetch` (or `rescore_from`)."""
        params = params or SearchParams()
        fetch = fetch or self.rescore_from
        queries = self.prepare(queries)
        exact_index = self.spec == "Flat"  # its selector search is already exact, from memory
        if allowed is not None and fetch is not None and len(allowed) <= EXACT_FALLBACK_MAX and not exact_index:
            return self._exact_subset(queries, k, allowed, fetch)
        selector: faiss.IDSelector | None = None
        keep_alive: list[object] = []
        if allowed is not None:
            selector = faiss.IDSelectorBatch(allowed)
            params = self._widened(params, len(allowed))
        elif self.tombstones:
            hidden = faiss.IDSelectorBatch(np.fromiter(self.tombstones, dtype=np.int64))
            keep_alive.append(hidden)
            selector = faiss.IDSelectorNot(hidden)
        search_params = self._params(selector, params)
        rescoring = self.is_binary and fetch is not None
        depth = params.rescore_depth or self.defaults.rescore_depth or RESCORE_DEPTHS[0]
        shortlist = max(k, min(k * depth, RESCORE_SHORTLIST_MAX)) if rescoring else k
        scores, keys = _faiss_search(self.index, queries, shortlist, search_params)
        if rescoring:
            scores, keys = self._rescored(queries, keys, k, fetch)
        else:
            scores = self._to_similarity(scores)
        found = (keys != -1).sum(axis=1).min()
        if allowed is not None and fetch is not None and found < min(k, len(allowed)):
            # An approximate index under a restrictive filter can come up short: answer exactly.
            return self._exact_subset(queries, k, allowed, fetch)
        return scores, keys

    def _rescored(
        self, queries: np.ndarray, shortlist: np.ndarray, k: int, fetch: VectorFetch
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's top-k of its `shortlist` (q, depth) keys by exact similarity to their
        stored vectors (one read for all queries): (scores (q, k), keys (q, k))."""
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        keys = np.full((len(queries), k), -1, dtype=np.int64)
        present, vectors = fetch(np.unique(shortlist[shortlist >= 0]))  # sorted; keys deleted meanwhile drop out
        if not len(present):
            return scores, keys
        vectors = self.prepare(vectors)
        for i, query in enumerate(queries):
            at = np.minimum(np.searchsorted(present, shortlist[i]), len(present) - 1)  # (depth,)
            rows = at[present[at] == shortlist[i]]
            sims = _similarities(query[None, :], vectors[rows], self.metric)[0]  # (m,)
            top = np.argsort(-sims, kind="stable")[:k]
            scores[i, : len(top)] = sims[top]
            keys[i, : len(top)] = present[rows[top]]
        return scores, keys

    def _exact_subset(
        self, queries: np.ndarray, k: int, allowed: np.ndarray, fetch: VectorFetch
    ) -> tuple[np.ndarray, np.ndarray]:
        n_q = len(queries)
        scores = np.full((n_q, k), -np.inf, dtype=np.float32)
        keys = np.full((n_q, k), -1, dtype=np.int64)
        if len(allowed) == 0:
            return scores, keys
        allowed, vectors = fetch(allowed)  # keys deleted since the filter ran drop out here
        sims = _similarities(queries, self.prepare(vectors), self.metric)  # (q, m)
        top = min(k, len(allowed))
        order = np.argsort(-sims, axis=1, kind="stable")[:, :top]
        scores[:, :top] = np.take_along_axis(sims, order, axis=1)
        keys[:, :top] = allowed[order]
        return scores, keys

    def exact_scores(self, query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """(m,) scores of stored `vectors` (m, dim) for `query` (dim,), as `search` would give them."""
        return _similarities(self.prepare(query), self.prepare(vectors), self.metric)[0]

    def _widened(self, params: SearchParams, matching: int) -> SearchParams:
        """Search breadth for a filter matching a fraction f of the vectors. IVF: a filter
        uncorrelated with position keeps each neighbour with probability f, so a query's top-10
        matches lie among its unfiltered top-10/f, and the nprobe tuned for a top-10 finds less of
        a deeper list: nprobe grows with 2 / f (at most 16x). HNSW is left as tuned: its filtered
        search already walks until it holds efSearch matching candidates.
        benchmarks/results/filtered_recall.md (100k, IVF-SQ8 tuned to 0.95 unfiltered): 1 / f
        left filters matching 50% / 25% at 0.949 / 0.942, 2 / f reaches >= 0.95 at every
        selectivity tried for < 0.5 ms; HNSW32 0.97-0.99 unwidened, while widening it bought +0.01
        for 4-22x the latency."""
        if not self.is_ivf or matching >= self.live:  # a filter that keeps everything changes nothing
            return params
        factor = min(16, math.ceil(2 * self.live / max(1, matching)))
        nprobe = (params.nprobe or self.defaults.nprobe or 16) * factor
        return replace(params, nprobe=nprobe)

    def _to_similarity(self, scores: np.ndarray) -> np.ndarray:
        """Higher is better for every metric: l2 distances come back negated."""
        return -scores if self.metric == "l2" else scores

    # --- persistence -------------------------------------------------------------------------
    def save(self, path: Path, applied_op: int) -> None:
        """Atomic: the index goes to a new file named after its op, then the meta file (written to a
        temp file, fsynced, renamed) switches to it; older index files are removed only after that.
        A crash at any point leaves a meta file that names a complete index of its op."""
        data_path = path.with_name(f"{path.stem}.{applied_op}.faiss")
        tmp = data_path.with_suffix(".faiss.tmp")
        try:
            faiss.write_index(self.index, str(tmp))
            fsync_path(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a part-written copy (a full disk) would only take more room
            raise
        tmp.replace(data_path)
        meta = {
            "file": data_path.name,
            "spec": self.spec,
            "applied_op": applied_op,
            "ntotal": self.ntotal,
            "ef_search": self.defaults.ef_search,
            "nprobe": self.defaults.nprobe,
            "rescore_depth": self.defaults.rescore_depth,
        }
        meta_path = path.with_suffix(".json")
        tmp_meta = meta_path.with_suffix(".json.tmp")
        try:
            tmp_meta.write_text(json.dumps(meta))
            fsync_path(tmp_meta)
        except BaseException:
            tmp_meta.unlink(missing_ok=True)  # the index file stays: the meta may name it (the same op)
            raise
        tmp_meta.replace(meta_path)
        fsync_path(path.parent)
        for old in path.parent.glob(f"{path.stem}.*.faiss"):
            if old != data_path:
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path, dim: int, metric: str) -> tuple[VectorIndex, int] | None:
        """The snapshot and the op it holds, or None when there is no usable one: the caller then
        rebuilds from the store, which holds every document. A snapshot is only a cache of it, so
        an unreadable one (bit rot, a file cut short) must never make the collection unavailable."""
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            data_path = path.with_name(meta["file"])
            if not data_path.is_file():
                return None
            index = faiss.read_index(str(data_path))
            if index.ntotal != meta["ntotal"] or index.d != dim:
                return None  # snapshot and its meta disagree: rebuild from the store instead
            vector_index = cls(dim, metric, meta["spec"], index)
            vector_index.defaults = SearchParams(meta.get("ef_search"), meta.get("nprobe"), meta.get("rescore_depth"))
            return vector_index, int(meta["applied_op"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:  # bad JSON or fields; faiss: RuntimeError
            log.warning("%s: snapshot unreadable (%s); rebuilding it from the store", path.parent.name, exc)
            return None


def binary_code_bytes(dim: int) -> int:
    """Bytes a RaBitQ code of a `dim`-d vector takes: its sign bits and two floats (norm and correction)."""
    return (dim + 7) // 8 + 8


def exact_top_k(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, metric: str, k: int = 10
) -> np.ndarray:
    """(q, k) keys of each query's exact top-k over `chunks` of (keys (m,), vectors (m, dim)), best
    first, -1 where fewer exist: streamed, so a million stored vectors are never held at once."""
    dim = queries.shape[1]
    prepared = _prepared(queries, metric, dim)
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_keys = np.full((len(queries), k), -1, dtype=np.int64)
    for keys, vectors in chunks:
        if not len(keys):
            continue
        sims = _similarities(prepared, _prepared(vectors, metric, dim), metric)  # (q, m)
        scores = np.concatenate([best_scores, sims], axis=1)
        candidates = np.concatenate([best_keys, np.broadcast_to(keys, (len(queries), len(keys)))], axis=1)
        top = _top_k_columns(scores, k)
        best_scores = np.take_along_axis(scores, top, axis=1)
        best_keys = np.take_along_axis(candidates, top, axis=1)
    best_keys[~np.isfinite(best_scores)] = -1
    return best_keys


def _top_k_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """(q, min(k, m)) column indices of each row's k highest `scores` (q, m), best first: a partition
    then a sort of those k (a full sort of each 10k-wide chunk was ~12x slower, ~20 s of a 1M build)."""
    if scores.shape[1] <= k:
        return np.argsort(-scores, axis=1, kind="stable")
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _factory(spec: str, dim: int) -> str:
    """FAISS's factory string for an index `spec`. IVF stores external ids itself and removes by
    them; Flat and HNSW get an id map (an id map over IVF would break on removal: it assumes the
    sub-index renumbers rows). IVF without a graph finds its lists with a fast scan and an exact
    re-rank (COARSE_SCAN_MIN_LISTS), or over centroids in COARSE_CODEC."""
    if not spec.startswith("IVF"):
        return f"IDMap2,{spec}"
    if coarse_graph_degree(spec) is not None:
        return spec
    lists, codec = spec.split(",", 1)
    return f"{lists}({_coarse_codec(ivf_nlist(spec), dim)}),{codec}"


def _coarse_codec(nlist: int, dim: int) -> str:
    """The coarse step of an IVF index without a graph: a fast scan of 2 dimensions per 4-bit code
    (its sub-quantizers must pair up, so `dim` a multiple of 4) with an exact re-rank, or float16."""
    return f"PQ{dim // 2}x4fs,RFlat" if nlist >= COARSE_SCAN_MIN_LISTS and dim % 4 == 0 else COARSE_CODEC


def coarse_bytes(nlist: int, dim: int) -> int:
    """Bytes the coarse step of `IVF<nlist>` over `dim` dimensions holds: float32 centroids and
    their half-byte-per-pair codes, or float16 centroids."""
    if _coarse_codec(nlist, dim) == COARSE_CODEC:
        return nlist * dim * COARSE_BYTES
    return nlist * (dim * 4 + dim // 4)


def _coarse_shortlist(nprobe: int) -> int:
    """The fast scan's shortlist per list probed (FAISS's k_factor): COARSE_SHORTLIST_FACTOR, or
    more where nprobe x that is under COARSE_MIN_SHORTLIST."""
    return max(COARSE_SHORTLIST_FACTOR, -(-COARSE_MIN_SHORTLIST // max(1, nprobe)))


def _faiss_search(
    index: faiss.Index, queries: np.ndarray, k: int, params: faiss.SearchParameters | None
) -> tuple[np.ndarray, np.ndarray]:
    """`index.search`, one query on one OpenMP thread (FAISS_THREADS); the thread's count is put
    back after, so FAISS work that later runs on this pooled thread (training, adds) keeps them all."""
    if len(queries) != 1:
        return index.search(queries, k, params=params)
    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k, params=params)
    finally:
        faiss.omp_set_num_threads(FAISS_THREADS)


def _prepared(vectors: np.ndarray, metric: str, dim: int) -> np.ndarray:
    """(m, dim) contiguous float32, unit length for cosine: what the index stores and searches with.
    Vectors already in that form (the store keeps unit vectors for cosine) are returned as they
    are, not copied: a 100k-vector sample is 150 MB."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
    if metric == "cosine":
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]  # (m, 1), no (m, dim) temporary
        if not float(np.abs(norms - 1.0).max(initial=0.0)) <= 1e-5:  # np.allclose's test, ~10x cheaper
            vectors = vectors / norms.clip(min=1e-12)
    return vectors


def _similarities(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """(q, m) scores, higher is better, of prepared `vectors` (m, dim) for prepared `queries`
    (q, dim): the dot product, or -(squared l2 distance) computed a query at a time (never a
    (q, m, dim) array)."""
    if metric != "l2":
        return queries @ vectors.T
    rows = [-((vectors - query) ** 2).sum(-1) for query in queries]
    return np.array(rows, dtype=np.float32).reshape(len(queries), len(vectors))


def recall_per_query(index: VectorIndex, truth: np.ndarray, queries: np.ndarray, params: SearchParams) -> np.ndarray:
    """(q,) overlap of each query's top-10 from `index` with its true top-10 keys `truth` (q, 10).
    Searched RECALL_QUERY_BATCH queries at a time: a binary index reads its whole batch's shortlist
    from the store at once (1,000 queries at depth 16 would be ~100k float vectors, ~300 MB read)."""
    if not len(queries):
        return np.zeros(0)
    got = np.concatenate(
        [
            index.search(queries[i : i + RECALL_QUERY_BATCH], 10, params=params)[1]
            for i in range(0, len(queries), RECALL_QUERY_BATCH)
        ]
    ).reshape(len(queries), 10)
    return np.array(
        [len(set(t[t >= 0]) & set(g[g >= 0])) / max(1, (t >= 0).sum()) for t, g in zip(truth, got, strict=True)]
    )


def recall_at_10(index: VectorIndex, exact: VectorIndex, queries: np.ndarray, params: SearchParams) -> float:
    """Mean overlap of the top-10 with exact search's top-10 over `queries`."""
    _, truth = exact.search(queries, 10)
    return float(np.mean(recall_per_query(index, truth, queries, params)))


EF_SEARCH_STEPS = (16, 32, 64, 128, 256, 512, 1024, 2048)
RECALL_QUERY_BATCH = 100
NPROBE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# One-sided 95% bound: a 200-query estimate scatters by about +-0.01 around the truth (1,000: about
# +-0.005), so tuning stops where the estimate's lower bound, not the estimate itself, reaches the target.
CONFIDENCE_Z = 1.645
TIMED_QUERIES = 100  # single queries timed per alternative where tuning weighs speed (binary codes)


@dataclass
class Tuned:
    params: SearchParams
    recall: float  # mean recall@10 over the queries
    lower_bound: float  # recall - CONFIDENCE_Z x its standard error


def tune(index: VectorIndex, truth: np.ndarray, queries: np.ndarray, target: float) -> Tuned:
    """The cheapest efSearch / nprobe whose recall@10 against the true top-10 keys `truth` (q, 10)
    reaches `target` with 95% confidence (or the largest tried); sets it as the index's default.
    A binary index tunes its rescoring depth with it (`_tune_binary`)."""
    if index.is_binary:
        tuned = _tune_binary(index, truth, queries, target)
    else:
        if index.is_graph:
            candidates = [SearchParams(ef_search=ef) for ef in EF_SEARCH_STEPS]
        elif index.is_ivf:
            candidates = [SearchParams(nprobe=p) for p in _nprobe_steps(index)]
        else:
            candidates = [SearchParams()]
        tuned = _cheapest(index, truth, queries, target, candidates)
    index.defaults = tuned.params
    return tuned


def _nprobe_steps(index: VectorIndex) -> list[int]:
    nlist = faiss.extract_index_ivf(index.index).nlist
    return [p for p in NPROBE_STEPS if p < nlist] + [nlist]


def _tune_binary(index: VectorIndex, truth: np.ndarray, queries: np.ndarray, target: float) -> Tuned:
    """Depth and nprobe trade against each other: a deeper shortlist makes up for codes that rank
    true neighbours lower, and may let fewer lists be probed, but reads more vectors. The shallowest
    depth reaching the target probing every list (what the codes alone lose) and the next two
    depths each get their cheapest nprobe; the one of those whose single queries run fastest (timed
    as served, reading from `rescore_from`) wins. No depth reaching it: the deepest, every list."""
    steps = _nprobe_steps(index)
    every_list = [SearchParams(nprobe=steps[-1], rescore_depth=d) for d in RESCORE_DEPTHS]
    shallowest = _cheapest(index, truth, queries, target, every_list)
    if shallowest.lower_bound < target:
        return shallowest
    options: list[Tuned] = []
    for depth in [d for d in RESCORE_DEPTHS if d >= (shallowest.params.rescore_depth or 0)][:3]:
        most = options[-1].params.nprobe if options else steps[-1]  # deeper never needs more lists
        tried = [SearchParams(nprobe=p, rescore_depth=depth) for p in steps if p <= (most or steps[-1])]
        tuned = _cheapest(index, truth, queries, target, tried)
        if tuned.lower_bound >= target:
            options.append(tuned)
        if tuned.params.nprobe == steps[0]:  # nothing cheaper left to trade for
            break
    if len(options) == 1:
        return options[0]
    return min(options, key=lambda t: single_query_ms(index, queries[:TIMED_QUERIES], t.params))


def single_query_ms(index: VectorIndex, queries: np.ndarray, params: SearchParams) -> float:
    """Median ms of `queries` searched one at a time with `params`."""
    seconds = []
    for query in queries:
        start = time.perf_counter()
        index.search(query[None, :], 10, params=params)
        seconds.append(time.perf_counter() - start)
    return 1000 * float(np.median(seconds))


def _cheapest(
    index: VectorIndex, truth: np.ndarray, queries: np.ndarray, target: float, candidates: list[SearchParams]
) -> Tuned:
    """The first of `candidates` (cheapest first) reaching `target` with 95% confidence, else the last."""
    tuned = Tuned(candidates[0], 0.0, 0.0)
    for params in candidates:
        recalls = recall_per_query(index, truth, queries, params)
        error = float(np.std(recalls, ddof=1) / np.sqrt(len(recalls))) if len(recalls) > 1 else 0.0
        tuned = Tuned(params, float(np.mean(recalls)), float(np.mean(recalls)) - CONFIDENCE_Z * error)
        if tuned.lower_bound >= target:
            break
    return tuned


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (so a rename in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
