"""The request and response bodies of /predict and /: lorabench's form and the Hugging Face Inference API's."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, StrictStr, Tag, model_validator


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] | None = Field(None, description="the texts to classify")
    rows: list[dict[str, StrictStr | None]] | None = Field(
        None, description="instead of texts, for a run trained with data.text_template: the template's columns"
    )
    probabilities: StrictBool = Field(False, description="also answer every class's probability for each text")

    @model_validator(mode="after")
    def _texts_or_rows(self) -> PredictRequest:
        if (self.texts is None) == (self.rows is None):
            raise ValueError("send either texts or rows")
        return self


class InferenceParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top_k: int | None = Field(None, ge=1, description="answer the k most probable classes only (default: all)")
    function_to_apply: StrictStr | None = Field(
        None, description="accepted as Hugging Face clients send it, and ignored: scores are the model's probabilities"
    )


class InferenceRequest(BaseModel):
    """The Hugging Face Inference API's text-classification body, so its clients call a run as a hub model."""

    model_config = ConfigDict(extra="forbid")
    inputs: StrictStr | list[StrictStr] = Field(description="a text, or a list of texts")
    parameters: InferenceParameters | None = None


def _body_form(body) -> str:
    """Which request form a body is: the Hugging Face one has `inputs` (so a malformed body is told the errors of
    the form it meant, not of both)."""
    return "InferenceRequest" if isinstance(body, dict) and "inputs" in body else "PredictRequest"


PredictBody = Annotated[
    Annotated[PredictRequest, Tag("PredictRequest")] | Annotated[InferenceRequest, Tag("InferenceRequest")],
    Discriminator(_body_form),
]


class LabelScore(BaseModel):
    label: str = Field(description="a class name")
    score: float = Field(description="its probability")


class Prediction(BaseModel):
    label: int | str = Field(description="the predicted class name")
    score: float = Field(description="P(positive class) for two classes, else P(predicted class)")
    probabilities: dict[str, float] | None = Field(
        None,
        description="every class's probability by class name, when the request asks for them",
        exclude_if=lambda value: value is None,
    )


class PredictResponse(BaseModel):
    model: str
    threshold: float | None
    predictions: list[Prediction]
