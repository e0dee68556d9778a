"""Request and response bodies: ``/predict`` and the KServe v2 / Open Inference Protocol tensors."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, Strict

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
    data: list[Number] = Field(fail_fast=True, description="the tensor's values, flattened in row-major order")
    parameters: dict[str, Any] | None = None


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
