"""`TESSERA_OPENTELEMETRY`: FastAPI's native request spans, off by default, on by the setting, never
for probes and scrapes. The process's tracer provider is a recording one made here (only the
OpenTelemetry API is installed, not an SDK)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanKind

from app.main import create_app
from tests.conftest import LocalClient, settings_for


class _RecordingTracer(trace.Tracer):
    def __init__(self, spans: list[tuple[str, SpanKind, dict[str, Any]]]) -> None:
        self.spans = spans

    def start_span(
        self,
        name: str,
        context: Any = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> trace.Span:
        self.spans.append((name, kind, dict(attributes or {})))
        return NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)

    def start_as_current_span(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return trace.use_span(self.start_span(name, *args, **kwargs), end_on_exit=True)


class _RecordingProvider(trace.TracerProvider):
    def __init__(self) -> None:
        self.spans: list[tuple[str, SpanKind, dict[str, Any]]] = []

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _RecordingTracer(self.spans)


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[_RecordingProvider]:
    recording = _RecordingProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: recording)
    yield recording


def _server_spans(provider: _RecordingProvider) -> list[tuple[str, str]]:
    return [(name, attributes["url.path"]) for name, kind, attributes in provider.spans if kind == SpanKind.SERVER]


def test_requests_are_not_traced_by_default(default_models_dir: Path, provider: _RecordingProvider) -> None:
    with LocalClient(create_app(settings_for(default_models_dir))) as client:
        assert client.post("/v1/embeddings", json={"input": "a wing"}).status_code == 200
    assert provider.spans == []


def test_the_setting_traces_each_request_but_not_probes_or_scrapes(
    default_models_dir: Path, provider: _RecordingProvider
) -> None:
    with LocalClient(create_app(settings_for(default_models_dir, opentelemetry=True))) as client:
        assert client.post("/v1/embeddings", json={"input": "a wing"}).status_code == 200  # a direct-call path
        assert client.get("/v1/models").status_code == 200
        assert client.post("/v1/embeddings", json={"input": []}).status_code == 422  # errors are traced too
        for path in ("/health", "/ready", "/metrics"):
            assert client.get(path).status_code == 200
    assert _server_spans(provider) == [
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
        ("POST", "/v1/embeddings"),
    ]
