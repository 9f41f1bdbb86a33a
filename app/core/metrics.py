"""Prometheus metrics (prometheus-client), served at GET /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("tessera_requests", "HTTP requests", ["route", "method", "status"], registry=REGISTRY)
REQUEST_LATENCY = Histogram(
    "tessera_request_latency_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("tessera_queue_depth", "Inputs waiting for a forward pass", ["model"], registry=REGISTRY)
BATCH_SIZE = Histogram(
    "tessera_batch_size",
    "Inputs per forward pass",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
BATCH_TOKENS = Histogram(
    "tessera_batch_padded_tokens",
    "Padded cost per forward pass (tokens for text)",
    ["model"],
    buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768),
    registry=REGISTRY,
)
FORWARD_LATENCY = Histogram(
    "tessera_forward_seconds",
    "Forward pass latency",
    ["model"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
DROPPED_ITEMS = Counter(
    "tessera_dropped_items", "Queued inputs dropped because their request had gone", ["model"], registry=REGISTRY
)
TOKENS = Counter("tessera_tokens", "Input tokens embedded", ["model"], registry=REGISTRY)
REJECTED = Counter("tessera_rejected", "Requests refused for a full queue (429)", ["model"], registry=REGISTRY)
IMAGE_DECODE_SECONDS = Histogram(
    "tessera_image_decode_seconds",
    "Time to decode and preprocess one image (decode pool)",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    registry=REGISTRY,
)
IMAGES = Counter("tessera_images", "Images embedded", ["model"], registry=REGISTRY)
ACCESS_LOG_DROPPED = Counter(
    "tessera_access_log_dropped", "Access log lines dropped: stderr stalled and the queue was full", registry=REGISTRY
)
