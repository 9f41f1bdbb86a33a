"""Types and the one policy every request body follows.

Policy: types are strict (no "12" for 12, no true for 1, no 1 for true: JSON numbers where numbers
are asked, JSON booleans where booleans are), and unknown fields are refused with 422 — a typo in
an option is an error, not a silent default. Fields that OpenAI-, Cohere-, Jina- or TEI-compatible
clients send and Tessera does not use are declared on their models and documented as ignored.
Text must be valid Unicode (no lone surrogates), numbers finite."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema

from app.core.numbers import INT64_MAX, INT64_MIN
from app.core.text import is_encodable


class StrictRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def _valid_text(value: str) -> str:
    if not is_encodable(value):
        raise ValueError("contains a lone surrogate (not valid Unicode)")
    return value


# Any text a request carries: inputs, queries, documents, ids, metadata keys and values.
Text = Annotated[str, AfterValidator(_valid_text)]
# Text that must not be empty (a query). The length check sits inside, so it holds (with pydantic's
# "at least 1 character" message) where the field is optional too.
NonEmptyText = Annotated[str, StringConstraints(min_length=1), AfterValidator(_valid_text)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def _whole_number(value: object) -> object:
    """JSON Schema counts 12.0 as an integer; strict validation alone would refuse it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Integer = Annotated[int, BeforeValidator(_whole_number)]  # still refuses "12", true and 12.5
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


# Index specs: the shapes and numeric ranges `app.search.vector_index.validate_spec` accepts (HNSW M
# 2..256, also of IVF's graph over its centroids; IVF nlist 1..65536, PQ bits 1..10); whether PQ m
# divides the dimension depends on the model.
_M = r"(?:[2-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-6])"
_NLIST = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-6])"
INDEX_SPEC_PATTERN = (
    rf"^(?:auto|Flat|HNSW{_M}(?:,Flat)?"
    rf"|IVF{_NLIST}(?:_HNSW{_M})?,(?:Flat|SQ8|SQ4|RaBitQ|PQ[1-9][0-9]{{0,3}}(?:x(?:[1-9]|10))?))$"
)
# A collection name (also the path segment): what `app.search.collection.NAME_PATTERN` accepts.
INDEX_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# One string or a non-empty list of them (requests normalise it to the list).
TextOrTexts = Annotated[
    list[Text],
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ]
        }
    ),
]
