"""Bodies for /indexes: collections, documents and search."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.core.numbers import fits_int64
from app.core.text import MAX_ID_CHARS, document_id_problem
from app.schemas.common import (
    INDEX_NAME_PATTERN,
    INDEX_SPEC_PATTERN,
    FiniteFloat,
    Int64,
    Integer,
    NonEmptyText,
    StrictRequest,
    Text,
)

# bool before the numbers: strict validation keeps true a boolean and 1 a number.
MetadataScalar = Text | bool | Int64 | FiniteFloat


def _beyond_int64(value: Any) -> bool:
    return type(value) is int and not fits_int64(value)


def _one_metadata_error(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One message for a value no branch of the union takes, instead of one per branch. An integer
    beyond 64 bits is refused rather than stored as the nearest float (a silent change of value)."""
    if _beyond_int64(value) or (isinstance(value, list) and any(map(_beyond_int64, value))):
        raise PydanticCustomError(
            "metadata_value", "an integer metadata value must fit in 64 bits; send a larger one as a string"
        )
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "metadata_value",
            "a metadata value is a string (valid Unicode), a finite number, a boolean, null, or a list of those",
        ) from None


MetadataValue = Annotated[MetadataScalar | list[MetadataScalar] | None, WrapValidator(_one_metadata_error)]


def _check_id(value: str) -> str:
    problem = document_id_problem(value)
    if problem is not None:
        raise ValueError(f"document ids {problem}")
    return value


class RescoreIn(StrictRequest):
    model: Text = Field(description="a bi-encoder reranker or a text embedding model from models/")
    weight: FiniteFloat | None = Field(
        None,
        ge=0,
        le=100,  # fused scores stay finite float32 (1e308 would make every score infinite)
        description="the first stage's weight in the fused score; default: the reranker's own",
    )


class CreateIndexRequest(StrictRequest):
    name: str = Field(
        json_schema_extra={"pattern": INDEX_NAME_PATTERN},  # checked by validate_name, with a clearer message
        description="1-64 of [A-Za-z0-9_-], starting alphanumeric",
    )
    model: Text | None = Field(None, description="text model from models/; the default model if omitted")
    metric: Literal["cosine", "ip", "l2"] = "cosine"
    index: str = Field(
        "auto",
        json_schema_extra={"pattern": INDEX_SPEC_PATTERN},  # checked by validate_spec, with a clearer message
        description=(
            "auto, or a FAISS factory string: Flat, HNSW32, IVF1024,SQ8, IVF1024,PQ48, IVF1024,RaBitQ "
            "(binary codes, one bit per dimension; searches rescore the shortlist with the stored float vectors); "
            "IVF4096_HNSW32,SQ8 finds a query's lists by walking a graph over the centroids instead of comparing "
            "every one (for very many lists; it costs some recall at a given nprobe)"
        ),
    )
    thumbnails: bool = Field(
        False, description="image collections: keep a small JPEG of each image (otherwise only its reference)"
    )
    rescore: RescoreIn | None = Field(
        None,
        description="text collections: also embed every document with this (stronger) model and keep the "
        "vector, so search's `rerank` rescores its candidates with one query embedding",
    )


class DocumentIn(StrictRequest):
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["text"]},
                {"required": ["vector"]},
                {"required": ["vector_base64"]},
                {"required": ["image"]},
            ]
        },
    )

    id: Text = Field(
        min_length=1,
        max_length=MAX_ID_CHARS,
        json_schema_extra={"pattern": r"^[^\x00-\x1f/]+$"},  # checked by _check_id, with a clearer message
        description="no control characters, no '/'",
    )
    text: Text | None = Field(
        None, description="text to embed; with `image`, the image's caption (stored, not embedded)"
    )
    vector: list[FiniteFloat] | None = Field(None, description="bring your own vector (the collection's dim)")
    vector_base64: Text | None = Field(
        None,
        description="the same as base64 of little-endian float32 (what /v1/embeddings returns with "
        "encoding_format base64): several times faster to send and parse than a JSON array",
    )
    image: Text | None = Field(
        None, description="image collections: the image to embed (base64, data URI, or an http(s) URL if enabled)"
    )
    image_ref: Text | None = Field(
        None,
        max_length=2048,
        description="where the image lives (path or URI), stored and returned; default: `image` when it is a URL",
    )
    metadata: dict[Text, MetadataValue] = Field(
        default_factory=dict, description="values: strings, finite numbers, booleans, null, or lists of them"
    )

    _id = field_validator("id")(_check_id)

    @model_validator(mode="after")
    def _text_or_vector(self) -> DocumentIn:
        if self.text is None and self.vector is None and self.vector_base64 is None and self.image is None:
            raise ValueError("each document needs text, image or vector")
        if self.vector is not None and self.vector_base64 is not None:
            raise ValueError("give vector or vector_base64, not both")
        if self.image is not None and (self.vector is not None or self.vector_base64 is not None):
            raise ValueError("give image or vector, not both")
        return self

    @property
    def has_vector(self) -> bool:
        return self.vector is not None or self.vector_base64 is not None


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
    image: str | None = Field(None, description="the image's reference (path or URI), for image documents")
    thumbnail: str | None = Field(None, description="a data:image/jpeg URI, where the collection keeps thumbnails")


class RerankOptions(StrictRequest):
    model: Text | None = Field(None, description="cross-encoder model folder; default: the first served")
    candidates: Integer = Field(50, ge=1, le=1000, description="first-stage hits to rerank")
    top_n: Integer | None = Field(None, ge=1, le=1000, description="hits returned after reranking (default top_k)")


class HybridOptions(StrictRequest):
    fusion: Literal["rrf", "convex"] = Field(
        "rrf", description="rrf: reciprocal-rank fusion (ranks only); convex: min-max scaled scores, weighted"
    )
    dense_weight: FiniteFloat = Field(
        0.5, ge=0, le=1, description="the dense ranking's share (keyword: 1 - dense_weight); 0.5 is plain RRF"
    )
    rrf_k: Integer = Field(60, ge=1, le=10_000, description="RRF's rank constant")
    candidates: Integer = Field(100, ge=1, le=1000, description="hits taken from each ranking before fusing")


class SearchRequest(StrictRequest):
    # Exactly one of `query` and `vector`, given as a string / an array (null counts as absent).
    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["query"],
                    "properties": {"query": {"type": "string"}, "vector": {"type": "null"}, "image": {"type": "null"}},
                },
                {
                    "required": ["vector"],
                    "properties": {"vector": {"type": "array"}, "query": {"type": "null"}, "image": {"type": "null"}},
                },
                {
                    "required": ["image"],
                    "properties": {"image": {"type": "string"}, "query": {"type": "null"}, "vector": {"type": "null"}},
                },
            ]
        },
    )

    query: NonEmptyText | None = Field(None, description="text, embedded with the collection's model")
    vector: list[FiniteFloat] | None = Field(None, description="a raw query vector instead of text")
    image: Text | None = Field(None, description="a query image (base64 or data URI; a URL if enabled)")
    modality: Literal["text", "image"] | None = Field(
        None, description="only documents embedded from text, or only from images (a clip collection holds both)"
    )
    top_k: Integer = Field(10, ge=1, le=1000)
    filter: dict[str, Any] | None = Field(None, description='e.g. {"lang": "en", "year": {"$gte": 2000}}')
    include: list[Literal["document", "metadata", "vector", "image", "thumbnail"]] = Field(
        default_factory=lambda: ["document", "metadata", "image"]
    )
    ef_search: Integer | None = Field(None, ge=1, le=4096, description="HNSW breadth (recall vs speed)")
    nprobe: Integer | None = Field(None, ge=1, le=65536, description="IVF lists probed (recall vs speed)")
    rerank: RerankOptions | None = Field(None, description="rerank the first-stage hits with a cross-encoder")
    mode: Literal["dense", "keyword", "hybrid"] = Field(
        "dense",
        description="dense: vectors; keyword: BM25 over the documents' text (SQLite FTS5, every word OR-ed, "
        "stemmed); hybrid: both, fused. Filters apply to both",
    )
    hybrid: HybridOptions | None = Field(None, description="mode hybrid: how the two rankings are fused")
    hubness_correction: bool = Field(
        True,
        description="dense text or image queries over a clip collection whose model ships a hubness bank for "
        "that query kind (captions for text, training images for images): image hits rank by cosine minus the "
        "image's hub penalty (CSLS; `dense_score` keeps the cosine). Vector queries are never corrected. "
        "false: plain cosine",
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if sum(x is not None for x in (self.query, self.vector, self.image)) != 1:
            raise ValueError("give exactly one of query (text), image or vector")
        if self.mode != "dense" and self.query is None:
            raise ValueError(f"mode {self.mode} needs a text query")
        if self.hybrid is not None and self.mode != "hybrid":
            raise ValueError("hybrid options need mode: hybrid")
        return self


class SearchHit(BaseModel):
    id: str
    score: float
    first_stage_score: float | None = Field(None, description="the score before reranking, when the hits were reranked")
    dense_score: float | None = Field(
        None, description="keyword and hybrid modes, and hubness-corrected image hits: the exact vector score"
    )
    keyword_score: float | None = Field(
        None, description="keyword and hybrid modes: the BM25 score (null: not among the keyword candidates)"
    )
    document: str | None = None
    metadata: dict[str, Any] | None = None
    vector: list[float] | None = None
    image: str | None = Field(None, description="image documents: their reference (path or URI)")
    thumbnail: str | None = Field(None, description="a data:image/jpeg URI (include thumbnail)")


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
