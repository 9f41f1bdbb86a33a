"""Request/response bodies for /v1/embeddings (OpenAI) and /embed (TEI-style native form)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from app.schemas.common import Integer, StrictRequest, TextOrTexts


def _as_text_list(value: object) -> object:
    """Accept a string or a list of strings; token-id arrays (OpenAI allows them) are refused clearly."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if not value:
            raise ValueError("must not be empty")
        if any(not isinstance(v, str) for v in value):
            raise ValueError("must be a string or a list of strings (token-id arrays are not supported)")
    return value


class EmbeddingRequest(StrictRequest):
    """OpenAI `POST /v1/embeddings`."""

    input: TextOrTexts = Field(description="a string or a non-empty list of strings")
    model: str | None = Field(None, description="model folder name; default model if omitted")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Integer | None = Field(None, ge=1, description="truncate to this many dimensions, then re-normalise")
    user: str | None = Field(None, description="OpenAI field, accepted and ignored")
    truncate: bool = Field(True, description="Tessera extension: false -> 413 for inputs over the model's max tokens")

    _normalize_input = field_validator("input", mode="before")(_as_text_list)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class EmbedRequest(StrictRequest):
    """Native `POST /embed` (the text-embeddings-inference shape); answers a bare list of vectors."""

    inputs: TextOrTexts = Field(description="a string or a non-empty list of strings")
    model: str | None = None
    normalize: bool = True
    truncate: bool = True
    truncation_direction: Literal["right", "Right"] = Field(
        "right", description="TEI field; Tessera truncates the end of an input only"
    )
    dimensions: Integer | None = Field(None, ge=1)

    _normalize_input = field_validator("inputs", mode="before")(_as_text_list)
