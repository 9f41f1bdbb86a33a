"""Request/response bodies for POST /v1/classify (zero-shot image classification by label)."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from app.schemas.common import StrictRequest, Text
from app.schemas.embeddings import IMAGE_ITEM_DESCRIPTION

# A hard cap the schema enforces before anything is read; the served limit is the
# `max_classify_labels` setting (default 1,000), checked by the service.
LABELS_CAP = 10_000


class ClassifyRequest(StrictRequest):
    images: list[Text] = Field(min_length=1, description=f"images to classify, each {IMAGE_ITEM_DESCRIPTION}")
    labels: list[Text] = Field(
        min_length=1,
        max_length=LABELS_CAP,
        description="candidate labels (at most the server's max_classify_labels, default 1,000)",
    )
    prompt: Text | None = Field(
        None,
        description='template each label is put into, with "{label}" where the label goes; the model\'s '
        'default ("a photo of a {label}") when omitted',
    )
    model: Text | None = Field(None, description="a clip model; the first served clip model when omitted")

    @field_validator("labels")
    @classmethod
    def _non_blank(cls, labels: list[str]) -> list[str]:
        for index, label in enumerate(labels):
            if not label.strip():
                raise ValueError(f"label {index} is empty")
        return labels

    @field_validator("prompt")
    @classmethod
    def _has_slot(cls, prompt: str | None) -> str | None:
        if prompt is not None and "{label}" not in prompt:
            raise ValueError('must contain "{label}"')
        return prompt


class LabelScore(BaseModel):
    label: str
    index: int = Field(description="the label's position in the request")
    score: float = Field(description="cosine between the image and the prompted label")
    probability: float = Field(description="softmax of the cosines over the labels at the model's temperature")


class ImageLabels(BaseModel):
    index: int
    labels: list[LabelScore] = Field(description="every label, most probable first")


class ClassifyUsage(BaseModel):
    prompt_tokens: int
    images: int


class ClassifyResponse(BaseModel):
    object: str = "list"
    model: str
    data: list[ImageLabels]
    usage: ClassifyUsage
