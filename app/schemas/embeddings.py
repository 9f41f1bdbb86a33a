"""Request/response bodies for /v1/embeddings (OpenAI) and /embed (TEI-style native form)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, WithJsonSchema, field_validator

from app.schemas.common import Integer, StrictRequest, Text

IMAGE_ITEM_DESCRIPTION = (
    "an image: base64 of its bytes, a data URI (data:image/png;base64,...), or an http(s) URL when the "
    "server fetches URLs (TESSERA_IMAGE_URLS); JPEG, PNG, WebP, GIF, BMP, TIFF"
)


class ImageItem(StrictRequest):
    """An image to embed, inside `input` (only for a model that embeds images)."""

    image: Text = Field(description=IMAGE_ITEM_DESCRIPTION)


_ITEM_SCHEMA = {
    "anyOf": [
        {"type": "string"},
        {
            "type": "object",
            "properties": {"image": {"type": "string", "description": IMAGE_ITEM_DESCRIPTION}},
            "required": ["image"],
            "additionalProperties": False,
        },
    ]
}


def _item_kind(value: Any) -> str:
    # Items are strings or objects by now (`_as_input_list`): an object's errors then name its own
    # fields, not every branch of the union.
    return "text" if isinstance(value, str) else "image"


InputItem = Annotated[Annotated[Text, Tag("text")] | Annotated[ImageItem, Tag("image")], Discriminator(_item_kind)]
# A string, or a non-empty list of strings and image items (requests normalise it to the list).
Inputs = Annotated[
    list[InputItem],
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": _ITEM_SCHEMA, "minItems": 1}]}),
]


def _as_input_list(value: object) -> object:
    """Accept a string or a list of strings / image items; token-id arrays (OpenAI allows them) are
    refused clearly."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if not value:
            raise ValueError("must not be empty")
        if any(not isinstance(v, str | dict) for v in value):
            raise ValueError(
                'must be a string or a list of strings and {"image": ...} items (token-id arrays are not supported)'
            )
    return value


class EmbeddingRequest(StrictRequest):
    """OpenAI `POST /v1/embeddings`."""

    input: Inputs = Field(description='a string, or a non-empty list of strings and {"image": ...} items')
    model: Text | None = Field(None, description="model folder name; default model if omitted")
    encoding_format: Literal["float", "base64", "int8", "uint8", "binary", "ubinary"] = Field(
        "float",
        description="float; base64 (little-endian float32); int8 / uint8 (each dimension's calibrated range in 256 "
        "steps); binary / ubinary (sign bits, 8 per byte, as int8 / uint8): sentence-transformers' semantics",
    )
    dimensions: Integer | None = Field(None, ge=1, description="truncate to this many dimensions, then re-normalise")
    user: str | None = Field(None, description="OpenAI field, accepted and ignored")
    truncate: bool = Field(True, description="Tessera extension: false -> 413 for inputs over the model's max tokens")

    _normalize_input = field_validator("input", mode="before")(_as_input_list)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[int] | str


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

    inputs: Inputs = Field(description='a string, or a non-empty list of strings and {"image": ...} items')
    model: Text | None = None
    normalize: bool = True
    truncate: bool = True
    truncation_direction: Literal["right", "Right"] = Field(
        "right", description="TEI field; Tessera truncates the end of an input only"
    )
    dimensions: Integer | None = Field(None, ge=1)
    encoding_format: Literal["float", "int8", "uint8", "binary", "ubinary"] = Field(
        "float", description="as /v1/embeddings (Tessera extension; TEI answers floats)"
    )

    _normalize_input = field_validator("inputs", mode="before")(_as_input_list)
