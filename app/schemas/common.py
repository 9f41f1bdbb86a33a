"""Types and the one policy every request body follows.

Policy: types are strict (no "12" for 12, no true for 1, no 1 for true: JSON numbers where numbers
are asked, JSON booleans where booleans are), and unknown fields are refused with 422 — a typo in
an option is an error, not a silent default. Fields that OpenAI-, Cohere-, Jina- or TEI-compatible
clients send and Tessera does not use are declared on their models and documented as ignored.
Text must be valid Unicode (no lone surrogates), numbers finite."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.core.text import is_encodable


class StrictRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def _valid_text(value: str) -> str:
    if not is_encodable(value):
        raise ValueError("contains a lone surrogate (not valid Unicode)")
    return value


# Any text a request carries: inputs, queries, documents, ids, metadata keys and values.
Text = Annotated[str, AfterValidator(_valid_text)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
