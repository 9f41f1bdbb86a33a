"""Bodies for /indexes: collections, documents and search."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.text import MAX_ID_CHARS, document_id_problem
from app.schemas.common import INDEX_NAME_PATTERN, INDEX_SPEC_PATTERN, FiniteFloat, Int64, Integer, StrictRequest, Text

# bool before the numbers: strict validation keeps true a boolean and 1 a number.
MetadataScalar = Text | bool | Int64 | FiniteFloat
MetadataValue = MetadataScalar | None | list[MetadataScalar]


def _check_id(value: str) -> str:
    problem = document_id_problem(value)
    if problem is not None:
        raise ValueError(f"document ids {problem}")
    return value


class CreateIndexRequest(StrictRequest):
    name: str = Field(
        json_schema_extra={"pattern": INDEX_NAME_PATTERN},  # checked by validate_name, with a clearer message
        description="1-64 of [A-Za-z0-9_-], starting alphanumeric",
    )
    model: str | None = Field(None, description="text model from models/; the default model if omitted")
    metric: Literal["cosine", "ip", "l2"] = "cosine"
    index: str = Field(
        "auto",
        json_schema_extra={"pattern": INDEX_SPEC_PATTERN},  # checked by validate_spec, with a clearer message
        description="auto, or a FAISS factory string: Flat, HNSW32, IVF1024,SQ8, IVF1024,PQ48",
    )


class DocumentIn(StrictRequest):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={"anyOf": [{"required": ["text"]}, {"required": ["vector"]}]},
    )

    id: Text = Field(
        min_length=1,
        max_length=MAX_ID_CHARS,
        json_schema_extra={"pattern": r"^[^\x00-\x1f/]+$"},  # checked by _check_id, with a clearer message
        description="no control characters, no '/'",
    )
    text: Text | None = None
    vector: list[FiniteFloat] | None = Field(None, description="bring your own vector (the collection's dim)")
    metadata: dict[Text, MetadataValue] = Field(
        default_factory=dict, description="values: strings, finite numbers, booleans, null, or lists of them"
    )

    _id = field_validator("id")(_check_id)

    @model_validator(mode="after")
    def _text_or_vector(self) -> DocumentIn:
        if self.text is None and self.vector is None:
            raise ValueError("each document needs text or vector")
        return self


class UpsertRequest(StrictRequest):
    documents: list[DocumentIn] = Field(min_length=1)


class UpsertResponse(BaseModel):
    upserted: int
    size: int


class BulkDeleteRequest(StrictRequest):
    ids: list[Text] = Field(min_length=1, max_length=10_000)


class DeleteResponse(BaseModel):
    deleted: list[str]
    not_found: list[str]


class DocumentOut(BaseModel):
    id: str
    text: str | None
    metadata: dict[str, Any]
    vector: list[float] | None = None


class RerankOptions(StrictRequest):
    model: str | None = Field(None, description="cross-encoder model folder; default: the first served")
    candidates: Integer = Field(50, ge=1, le=1000, description="first-stage hits to rerank")
    top_n: Integer | None = Field(None, ge=1, le=1000, description="hits returned after reranking (default top_k)")


class SearchRequest(StrictRequest):
    # Exactly one of `query` and `vector`, given as a string / an array (null counts as absent).
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["query"], "properties": {"query": {"type": "string"}, "vector": {"type": "null"}}},
                {"required": ["vector"], "properties": {"vector": {"type": "array"}, "query": {"type": "null"}}},
            ]
        },
    )

    query: Text | None = Field(None, description="text, embedded with the collection's model")
    vector: list[FiniteFloat] | None = Field(None, description="a raw query vector instead of text")
    top_k: Integer = Field(10, ge=1, le=1000)
    filter: dict[str, Any] | None = Field(None, description='e.g. {"lang": "en", "year": {"$gte": 2000}}')
    include: list[Literal["document", "metadata", "vector"]] = Field(default_factory=lambda: ["document", "metadata"])
    ef_search: Integer | None = Field(None, ge=1, le=4096, description="HNSW breadth (recall vs speed)")
    nprobe: Integer | None = Field(None, ge=1, le=65536, description="IVF lists probed (recall vs speed)")
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


class OptimizeRequest(StrictRequest):
    index: str | None = Field(
        None,
        json_schema_extra={"pattern": INDEX_SPEC_PATTERN},
        description="override the collection's index spec for this build",
    )
