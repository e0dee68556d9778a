"""The KServe v2 / Open Inference Protocol routes: infer, model and server metadata, readiness and health."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from edgekd import __version__
from edgekd.runtimes import RUNTIMES
from edgekd.serve.predict import ERRORS
from edgekd.serve.schemas import ErrorResponse, InferRequest, InferResponse, ModelMetadata
from edgekd.serve.state import ServeState

MAX_INFER_BATCH = 64  # samples in one /v2 infer request
INFER_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}}}
}


async def read_infer_request(request: Request) -> InferRequest:
    """The JSON body, parsed only now: after the API key check, which FastAPI runs after parsing a declared body."""
    try:
        return InferRequest.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_input=False)]) from None


def v2_router(state: ServeState, guarded: list[Any]) -> APIRouter:
    """The /v2 routes of ``state``; ``guarded``: the API key dependency (empty without a key). Health needs no key."""
    router = APIRouter()

    @router.post(
        "/v2/models/{name}/infer",
        response_model=InferResponse,
        dependencies=guarded,
        openapi_extra=INFER_BODY,
        responses=ERRORS | {404: {"model": ErrorResponse}},
    )
    async def infer_v2(name: str, request: Request) -> dict[str, Any]:
        """Open Inference Protocol: one FP32 tensor of shape [N, 3, H, W] in, logits [N, classes] out."""
        s = state.require(name)
        body = await read_infer_request(request)
        if len(body.inputs) != 1:
            raise HTTPException(400, f"expected exactly one input tensor ({s.input_name!r}); got {len(body.inputs)}")
        tensor = body.inputs[0]
        expected = ["N", *s.sample_shape]
        if tensor.name != s.input_name:
            raise HTTPException(400, f"unknown input {tensor.name!r}; this model's input is {s.input_name!r}")
        if tensor.datatype != "FP32":
            raise HTTPException(400, f"datatype {tensor.datatype!r} is not supported; send FP32")
        if len(tensor.shape) != 4 or tensor.shape[1:] != s.sample_shape or tensor.shape[0] < 1:
            raise HTTPException(400, f"input shape {tensor.shape} does not match {expected}")
        if tensor.shape[0] > MAX_INFER_BATCH:
            raise HTTPException(400, f"batch of {tensor.shape[0]} is too large; send at most {MAX_INFER_BATCH} samples per request")
        if len(tensor.data) != math.prod(tensor.shape):
            raise HTTPException(400, f"shape {tensor.shape} needs {math.prod(tensor.shape)} values; got {len(tensor.data)}")
        for out in body.outputs or []:
            if out.name != "logits":
                raise HTTPException(400, f"unknown output {out.name!r}; this model's output is 'logits'")
        with np.errstate(over="ignore"):
            x = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
        if not np.isfinite(x).all():
            raise HTTPException(400, "input data must be finite float32 values")
        logits = await state.infer(x)
        return {
            "model_name": s.model_name,
            "model_version": s.artifact,
            "id": body.id,
            "outputs": [{"name": "logits", "shape": list(logits.shape), "datatype": "FP32", "data": logits.ravel().tolist()}],
        }

    @router.get("/v2/models/{name}", response_model=ModelMetadata, dependencies=guarded, responses={404: {"model": ErrorResponse}})
    async def model_metadata(name: str) -> dict[str, Any]:
        s = state.require(name)
        return {
            "name": s.model_name,
            "versions": [s.artifact],
            "platform": RUNTIMES[s.runtime_used].platform,
            "inputs": [{"name": s.input_name, "datatype": "FP32", "shape": [-1, *s.sample_shape]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, s.num_classes]}],
        }

    @router.get("/v2/models/{name}/ready", dependencies=guarded, responses={404: {"model": ErrorResponse}})
    async def model_ready(name: str) -> dict[str, Any]:
        state.require(name)
        return {"name": name, "ready": True}

    @router.get("/v2", dependencies=guarded)
    async def server_metadata() -> dict[str, Any]:
        return {"name": "edgekd", "version": __version__, "extensions": []}

    @router.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/v2/health/ready", responses={503: {"model": ErrorResponse}})
    async def ready() -> JSONResponse:
        if state.ready and state.batcher.running:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "detail": "the model is still loading"}, status_code=503, headers={"Retry-After": "1"})

    return router
