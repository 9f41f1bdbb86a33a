"""`POST /v1/rerank` (and `/rerank`): the Cohere and Jina request/response shapes."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, WithJsonSchema, field_validator

from app.schemas.common import Integer, NonEmptyText, StrictRequest, Text


class RerankRequest(StrictRequest):
    model: Text | None = Field(
        None,
        description="a model folder of kind bi-encoder, cross-encoder or blockrank; default: "
        "TESSERA_DEFAULT_RERANKER, else the first served",
    )
    query: NonEmptyText
    documents: Annotated[
        list[Text],
        WithJsonSchema(
            {
                "type": "array",
                "minItems": 1,
                "items": {
                    "anyOf": [
                        {"type": "string"},
                        {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
                    ]
                },
            }
        ),
    ] = Field(description="strings, or objects with a `text` field (Cohere/Jina)")
    top_n: Integer | None = Field(None, ge=1, description="return only the best n (default: all)")
    return_documents: bool = Field(False, description="include each document's text in its result")
    max_tokens_per_doc: Integer | None = Field(
        None, ge=1, description="truncate each document to this many tokens (not for a bi-encoder: its own cap)"
    )
    truncate: bool = Field(
        True, description="Tessera extension: false -> 413 for a document over max_tokens_per_doc or the model's cap"
    )

    @field_validator("documents", mode="before")
    @classmethod
    def _texts(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError("must be a non-empty list")
        texts = []
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                texts.append(item["text"])
            elif isinstance(item, str):
                texts.append(item)
            else:
                raise ValueError("each document must be a string or an object with a string `text`")
        return texts


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float = Field(
        description="bi-encoder: the cosine of its query and document vectors, in [-1, 1]; cross-encoder: "
        "sigmoid of its logit, in (0, 1); blockrank: the document's share of the in-context attention "
        "distribution over all documents (the scores sum to 1)"
    )
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage
    meta: dict[str, Any] = Field(default_factory=dict)
