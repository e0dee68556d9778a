"""Request and response bodies: ``/predict`` and the KServe v2 / Open Inference Protocol tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

# Lists from clients stop at their first bad element (``fail_fast``): a million nulls would otherwise cost a
# million error objects, seconds of event-loop time and an error response larger than the request.
Number = Annotated[float, Strict()]  # a JSON number; true/false and "1.5" are not tensor values
FLOAT32_MAX = float(np.finfo(np.float32).max)  # larger values would become inf in the model's FP32 input


def _integral(value: Any) -> Any:
    """1.0 as 1: JSON Schema's integer includes it, which pydantic's strict int refuses (as it should true and "1")."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# A JSON integer, as the OpenAPI schema says. The before-validator goes last (outermost): inside it, a bound such as
# ``ge`` would no longer reach the JSON schema as ``minimum``.
Integer = Annotated[int, Strict(), BeforeValidator(_integral)]
Size = Annotated[int, Strict(), Field(ge=0), BeforeValidator(_integral)]


def not_null(**extra: Any) -> Callable[[dict[str, Any]], None]:
    """``json_schema_extra`` for an optional field documented without its null: null is taken as absent, but
    a client leaves the field out."""

    def edit(schema: dict[str, Any]) -> None:
        del schema["default"]
        schema.update(next(branch for branch in schema.pop("anyOf") if branch.get("type") != "null"), **extra)

    return edit


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


class InputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_size: Size | None = Field(
        None, description="binary tensor data extension: the input's values are this many bytes after the JSON",
        json_schema_extra=not_null(),
    )


class InferInputTensor(BaseModel):
    # The schema documents the JSON form, values in ``data``; the binary form (the request body's description)
    # leaves ``data`` out and puts them after the JSON.
    model_config = ConfigDict(json_schema_extra={"required": ["name", "shape", "datatype", "data"]})
    name: str
    shape: list[Integer] = Field(max_length=8, fail_fast=True)
    datatype: str = Field(json_schema_extra={"enum": ["FP32"]})  # others get a 400 naming the one supported
    data: Annotated[list[Number], Field(fail_fast=True)] | None = Field(
        None,
        description="the tensor's values in row-major order; the server also takes them nested as `shape` says "
        "(an error's index counts the flattened values), or as binary data after the JSON "
        "(parameters.binary_data_size)",
        json_schema_extra=not_null(items={"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}),
    )
    parameters: InputParameters | None = None

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
            raise ValueError(f"data is nested as shape {list(nested.shape)}, not {shape}; "
                             "nest it evenly as 'shape' says or send it flattened")
        return nested.ravel().tolist()

    @model_validator(mode="after")
    def _has_values(self) -> InferInputTensor:
        """``data`` may be left out only for the binary tensor data extension's bytes."""
        if self.data is None and self.binary_data_size is None:
            raise ValueError("the input has no values: send them in 'data', or as binary data after the JSON "
                             "with parameters.binary_data_size")
        return self

    @property
    def binary_data_size(self) -> int | None:
        return self.parameters.binary_data_size if self.parameters else None


class OutputParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data: StrictBool | None = Field(None, description="return this output as binary data after the JSON")


class RequestedOutput(BaseModel):
    name: str = Field(json_schema_extra={"enum": ["logits"]})  # others get a 400 naming the one there is
    parameters: OutputParameters | None = None


class RequestParameters(BaseModel):
    model_config = ConfigDict(extra="allow")
    binary_data_output: StrictBool | None = Field(
        None, description="return every output as binary data unless it says otherwise"
    )


class InferRequest(BaseModel):
    id: str | None = None
    parameters: RequestParameters | None = None
    # this model takes one input: a second gets a 400 that names it; the parser itself stops at 8
    inputs: list[InferInputTensor] = Field(
        min_length=1, max_length=8, fail_fast=True, json_schema_extra={"maxItems": 1}
    )
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


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str] = Field(description="protocol extensions this server supports")


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
