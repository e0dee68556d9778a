"""Request and response bodies: ``/predict`` and the KServe v2 / Open Inference Protocol tensors."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field, Strict, ValidationInfo, field_validator

# Lists from clients stop at their first bad element (``fail_fast``): a million nulls would otherwise cost a
# million error objects, seconds of event-loop time and an error response larger than the request.
Number = Annotated[float, Strict()]  # a JSON number; true/false and "1.5" are not tensor values


class Prediction(BaseModel):
    index: int = Field(description="class index in the model's output")
    label: str = Field(description="class name from the export manifest")
    score: float = Field(description="softmax probability")


class PredictResponse(BaseModel):
    model: str
    predictions: list[Prediction] = Field(description="the top_k classes, most probable first")
    latency_ms: float = Field(description="server time for this request, from arrival to response")


class ErrorResponse(BaseModel):
    detail: Any


class InferInputTensor(BaseModel):
    name: str
    shape: list[Annotated[int, Strict()]] = Field(max_length=8, fail_fast=True)
    datatype: str
    data: list[Number] = Field(
        fail_fast=True,
        description="the tensor's values in row-major order, flattened or nested as `shape` says; an error's index counts the flattened values",
        json_schema_extra={"items": {"anyOf": [{"type": "number"}, {"type": "array"}]}},
    )
    parameters: dict[str, Any] | None = None

    @field_validator("data", mode="before")
    @classmethod
    def _flatten_nested(cls, value: Any, info: ValidationInfo) -> Any:
        """The protocol allows nested data (``[[1, 2], [3, 4]]``): flatten it once its nesting matches ``shape``.

        The values keep their JSON types, so the strict number check that follows still sees every one of them.
        """
        if not (isinstance(value, list) and value and isinstance(value[0], list)):
            return value
        nested = np.array(value, dtype=object)  # ragged nesting gives a shorter shape, never an error
        shape = info.data.get("shape")
        if shape is not None and list(nested.shape) != shape:
            raise ValueError(f"data is nested as shape {list(nested.shape)}, not {shape}; nest it evenly as 'shape' says or send it flattened")
        return nested.ravel().tolist()


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInputTensor] = Field(min_length=1, max_length=8, fail_fast=True)
    outputs: list[RequestedOutput] | None = Field(None, max_length=8, fail_fast=True)


class InferOutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferOutputTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
