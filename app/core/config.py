"""All service settings, from `TESSERA_*` environment variables (or a .env file: `ENV_FILE`)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Concurrent forward passes per model: each is a thread and a backend stream; far more than cores
# only costs memory, and a runaway value (100000) made every model fail to load.
MAX_STREAMS = 256
# The env file read beneath the environment: `.env` in the working directory, or the file that
# TESSERA_ENV_FILE names (read once, at import); empty reads none, as the test suite sets it so a
# developer's `.env` (keys, another data dir) never changes what the tests see.
ENV_FILE_NAMED = os.environ.get("TESSERA_ENV_FILE")  # None: unset
ENV_FILE = ".env" if ENV_FILE_NAMED is None else (ENV_FILE_NAMED or None)


def env_file_problem() -> str | None:
    """What is wrong when the env file TESSERA_ENV_FILE names is not a file (a missing `.env`, the
    default, just means none): a secret that failed to mount must not start a server without its keys."""
    if ENV_FILE_NAMED and not Path(ENV_FILE_NAMED).is_file():
        return f"TESSERA_ENV_FILE={ENV_FILE_NAMED!r}: not a file (missing, or a folder)"
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TESSERA_", env_file=ENV_FILE, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    models_dir: Path = Path("models")
    data_dir: Path = Path("data")
    default_model: str = "minilm-l6"
    # The reranker /v1/rerank and search's `rerank` use when a request names none (empty: the first
    # served reranker by name).
    default_reranker: str = ""
    # Only these model folders are loaded (comma-separated); empty = every folder in models_dir.
    models: str = ""
    backend: Literal["auto", "onnxruntime", "openvino"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "int8"] = "auto"
    # Inference threads per model (0 = let the backend use every core).
    threads: int = Field(0, ge=0)
    # Forward passes run concurrently per model, each on threads/streams cores. Two single-thread
    # streams beat one two-thread pass here for short and long inputs alike
    # (benchmarks/results/embed_http.md): no barrier stalls when the event loop takes a core.
    streams: int = Field(2, ge=1, le=MAX_STREAMS)
    # Streams of a bi-encoder reranker (the rescore model): its single query embedding is on search's
    # latency path, where one stream of every thread halves it (all-mpnet-base-v2: 14 vs 25 ms)
    # while its document throughput is unchanged (28-30 docs/s either way; rerank_reading.md).
    bi_encoder_streams: int = Field(1, ge=1, le=MAX_STREAMS)
    # Which text models also open their lowest-latency variant (by the export's query_ms, e.g.
    # weight-only int8) for passes of one input alone, when clearly faster than their batch variant:
    # `rerankers` (bi-encoder rerankers, whose single query is on search-with-rescore's latency path),
    # `all` (embedding models too: a text embedded alone then differs slightly from the same text in
    # a batch, within the parity bar), `off`. Each costs a second compiled model's memory.
    query_variant: Literal["off", "rerankers", "all"] = "rerankers"
    # A bi-encoder reranker's distilled query tower (manifest `bi_encoder.query_tower`), when it has
    # one, embeds search's query for rescoring with stored vectors (a third of mpnet's layers; off:
    # the reranker's own graph embeds it, slower and a little closer to the stored vectors' model).
    rescore_query_tower: bool = True
    # OpenVINO's cache of kernels compiled per input shape (its default, thousands, grows memory
    # without bound under varied batches); and padding of each batch's length up to a multiple of
    # pad_to_multiple tokens, so fewer distinct shapes reach the backends (1 = no rounding).
    ov_runtime_cache_capacity: int = Field(256, ge=0)
    pad_to_multiple: int = Field(8, ge=1, le=256)
    # Dynamic batching: padded tokens (batch x longest sequence) in one forward pass.
    batch_token_budget: int = Field(8192, ge=64)
    max_batch_size: int = Field(256, ge=1)
    # Texts waiting for the model, across all requests; beyond it requests get 429.
    max_queue: int = Field(8192, ge=1)
    max_inputs_per_request: int = Field(2048, ge=1)
    max_payload_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # Characters in one input (text to embed, query, document to rerank): beyond it 413 before any
    # tokenising. Far above any model's token limit; it bounds the CPU one string can take.
    max_input_chars: int = Field(100_000, ge=1)
    retry_after_s: int = Field(1, ge=1)
    # Images (kind image / clip): limits checked before decoding (bytes; width x height from the
    # header, so a decompression bomb is refused unread), images per request, the decode workers
    # (decoding + preprocessing run there, off the event loop, beside inference) and their queue,
    # and the pixels one forward pass may take (the batcher's budget for images).
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_images_per_request: int = Field(64, ge=1)
    # POST /v1/classify: candidate labels per request (each one is a prompt the text tower embeds).
    max_classify_labels: int = Field(1000, ge=1)
    image_decode_workers: int = Field(2, ge=1)
    image_decode_queue: int = Field(512, ge=1)
    image_batch_pixels: int = Field(32 * 224 * 224, ge=1)
    # Fetching `{"image": "https://..."}` items: off by default. On, only http(s) to public addresses
    # (no private, loopback or link-local: no SSRF), within a total timeout and max_image_bytes.
    image_urls: bool = False
    image_url_timeout_s: float = Field(10.0, gt=0, le=120)
    # Memory an `auto` index may use before it falls back from HNSW to IVF-SQ8.
    index_memory_budget_mb: int = Field(4096, ge=16)
    # Approximate indexes are tuned (efSearch / nprobe) at build time until recall@10 on documents
    # held out of the index reaches this with 95% confidence.
    recall_target: float = Field(0.95, gt=0, le=1)
    # An IVF index re-trains in the background once the collection holds this many times the
    # vectors it was trained on.
    ivf_retrain_growth: float = Field(2.0, gt=1)
    # A collection snapshots its FAISS index after this many writes, and at least a quarter of the
    # index's vectors in writes (a snapshot rewrites the whole index); a restart replays the rest
    # from the SQLite op log (smaller = faster restarts, more snapshot I/O).
    snapshot_every_ops: int = Field(20_000, ge=1)
    # Metadata filters: nested $and levels and conditions in one filter (beyond them: 422).
    filter_max_depth: int = Field(8, ge=1, le=64)
    filter_max_conditions: int = Field(256, ge=1, le=10_000)
    # A read-only replica: serves the indexes in data_dir as they were at start-up (the volume may
    # be mounted read-only) and answers writes with 403. One writer, any number of replicas.
    read_only: bool = False
    log_level: str = "info"
    # One JSON line per request on the `tessera.access` logger (request id, route, status, latency, key id).
    access_log: bool = True
    # API keys: comma-separated `[name=]key[:ro]` entries, or a file with one per line (Docker secrets).
    # Set, every route but /health and /ready needs one. Unset, the server binds only loopback
    # addresses unless allow_unauthenticated is true.
    api_keys: str = ""
    allow_unauthenticated: bool = False
    metrics_public: bool = False  # with keys set: /metrics without a key (for a scraper on a private network)
    # FastAPI's native OpenTelemetry (a span and duration metrics per request), exported
    # wherever the process's OpenTelemetry providers send them. Off: it costs ~5-9 us a request even
    # with no provider configured, and our metrics are Prometheus.
    opentelemetry: bool = False
    # Requests per second per key (per client address without keys), bursts of rate_limit_burst; 0 = off.
    rate_limit_per_s: float = Field(0.0, ge=0)
    rate_limit_burst: int = Field(20, ge=1)
    # Origins a browser may call the API from (comma-separated; "" = CORS off).
    cors_origins: str = ""


@lru_cache
def get_settings() -> Settings:
    return Settings()
