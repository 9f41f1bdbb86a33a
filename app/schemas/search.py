"""Bodies for /indexes: collections, documents and search."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MetadataValue = str | int | float | bool | None | list[str | int | float | bool]


def _check_id(value: str) -> str:
    if any(ord(c) < 32 for c in value):
        raise ValueError("document ids must not contain control characters")
    return value


class CreateIndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="1-64 of [A-Za-z0-9_-], starting alphanumeric")
    model: str | None = Field(None, description="text model from models/; the default model if omitted")
    metric: Literal["cosine", "ip", "l2"] = "cosine"
    index: str = Field("auto", description="auto, or a FAISS factory string: Flat, HNSW32, IVF1024,SQ8, IVF1024,PQ48")


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=512)
    text: str | None = None
    vector: list[float] | None = Field(None, description="bring your own vector (the collection's dim)")
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)

    _id = field_validator("id")(_check_id)

    @model_validator(mode="after")
    def _text_or_vector(self) -> DocumentIn:
        if self.text is None and self.vector is None:
            raise ValueError("each document needs text or vector")
        return self


class UpsertRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1)


class UpsertResponse(BaseModel):
    upserted: int
    size: int


class BulkDeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1, max_length=10_000)


class DeleteResponse(BaseModel):
    deleted: list[str]
    not_found: list[str]


class DocumentOut(BaseModel):
    id: str
    text: str | None
    metadata: dict[str, Any]
    vector: list[float] | None = None


class RerankOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="cross-encoder model folder; default: the first served")
    candidates: int = Field(50, ge=1, le=1000, description="first-stage hits to rerank")
    top_n: int | None = Field(None, ge=1, le=1000, description="hits returned after reranking (default top_k)")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(None, description="text, embedded with the collection's model")
    vector: list[float] | None = Field(None, description="a raw query vector instead of text")
    top_k: int = Field(10, ge=1, le=1000)
    filter: dict[str, Any] | None = Field(None, description='e.g. {"lang": "en", "year": {"$gte": 2000}}')
    include: list[Literal["document", "metadata", "vector"]] = Field(default_factory=lambda: ["document", "metadata"])
    ef_search: int | None = Field(None, ge=1, le=4096, description="HNSW breadth (recall vs speed)")
    nprobe: int | None = Field(None, ge=1, le=65536, description="IVF lists probed (recall vs speed)")
    rerank: RerankOptions | None = Field(None, description="rerank the first-stage hits with a cross-encoder")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.query is None) == (self.vector is None):
            raise ValueError("give exactly one of query (text) or vector")
        return self


class SearchHit(BaseModel):
    id: str
    score: float
    first_stage_score: float | None = Field(None, description="the vector score, when the hits were reranked")
    document: str | None = None
    metadata: dict[str, Any] | None = None
    vector: list[float] | None = None


class SearchResponse(BaseModel):
    hits: list[SearchHit]
    took_ms: float
    index_type: str


class OptimizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: str | None = Field(None, description="override the collection's index spec for this build")
