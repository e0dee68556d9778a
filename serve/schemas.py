"""Request and response bodies: ``/predict`` and the KServe v2 / Open Inference Protocol tensors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


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
    shape: list[int]
    datatype: str
    data: list[float] = Field(description="row-major flattened tensor values")
    parameters: dict[str, Any] | None = None


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


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
