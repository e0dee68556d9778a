"""The KServe v2 / Open Inference Protocol routes: infer, model and server metadata, readiness and health."""

from __future__ import annotations

import asyncio
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from edgekd import __version__
from edgekd.runtimes import RUNTIMES
from edgekd.serve.binary import (
    EXTENSION,
    FP32,
    HEADER_LENGTH,
    binary_response,
    binary_values,
    split_body,
    wants_binary,
)
from edgekd.serve.json_bounds import OTHER_VALUES, check_json_bounds
from edgekd.serve.predict import ERRORS, MODEL_ERRORS
from edgekd.serve.schemas import (
    ErrorResponse,
    InferInputTensor,
    InferRequest,
    InferResponse,
    ModelMetadata,
    ServerMetadata,
)
from edgekd.serve.state import ServeState

MAX_INFER_BATCH = 64  # samples in one /v2 infer request
INLINE_BODY = 256 * 1024  # bytes of a body parsed on the event loop: a few images' JSON, a millisecond or two
INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "The JSON request, or with the binary tensor data extension: the JSON, then the input's FP32 "
        f"bytes (little-endian, row major), the JSON's length in the `{HEADER_LENGTH}` header and the bytes' count in "
        "the input's `parameters.binary_data_size`.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}},
    }
}
BINARY_OUTPUT = {
    200: {
        "description": f"JSON; or, when an output is asked for as binary data, `{HEADER_LENGTH}` bytes of JSON "
        "followed by the output's FP32 bytes (its `parameters.binary_data_size`)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@dataclass(frozen=True)
class InferCall:
    """What a checked infer request asks of the model: the batch, the request's id, and the output's form."""

    x: np.ndarray
    id: str | None
    binary_output: bool


async def read_infer_call(request: Request, s: ServeState) -> InferCall:
    """The request's body read, parsed and checked only now: after the API key check, which FastAPI runs after
    parsing a declared body.

    A body is refused before parsing when it could build more than this model's largest request
    (``check_json_bounds``). A small body is handled on the event loop; larger ones are read and parsed a few at a
    time (``ServeState.json_slots``), in the decode threads, so neither their memory nor their parse time falls
    on other clients. Only the float32 batch outlives the parse, not the request's Python objects.
    """
    decode = functools.partial(infer_call, s=s, length=request.headers.get(HEADER_LENGTH))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) <= INLINE_BODY:
        return decode(await request.body())
    async with s.json_slots:
        body = b"".join([chunk async for chunk in request.stream()])  # not kept on the request: freed once parsed
        return await asyncio.get_running_loop().run_in_executor(s.decode_pool, decode, body)


def infer_call(body: bytes, s: ServeState, length: str | None) -> InferCall:
    """``body`` parsed (``length``: its JSON part's, from the binary extension's header) and checked against the
    model: one input of its name, datatype and shape, finite values, and no output but the logits."""
    request, tail = parse_infer_request(body, s.sample_shape, length)
    tensor = model_input(request, s)
    x = binary_values(tensor, tail)
    if x is None:
        x = json_values(tensor)
    for out in request.outputs or []:
        if out.name != "logits":
            raise HTTPException(400, f"unknown output {out.name!r}; this model's output is 'logits'")
    if not np.isfinite(x).all():
        raise HTTPException(400, "input data must be finite float32 values")
    return InferCall(x, request.id, wants_binary(request, "logits"))


def parse_infer_request(body: bytes, sample_shape: list[int], length: str | None) -> tuple[InferRequest, bytes | None]:
    """The request in ``body`` (``length``: its JSON part's, from the binary extension's header), and the bytes after
    its JSON; the schema's errors are 422s."""
    head, tail = split_body(body, length)
    check_json_bounds(head, sample_shape, MAX_INFER_BATCH)
    try:
        return InferRequest.model_validate_json(head), tail
    except ValidationError as e:
        errors = e.errors(include_input=False)
        if tail is not None and errors[0]["type"] == "json_invalid":  # most likely the length header is wrong
            message = f"the body's first {len(head)} bytes ({HEADER_LENGTH}) are not one JSON object"
            raise HTTPException(400, f"{message}: {errors[0]['msg']}") from None
        raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in errors]) from None


def model_input(body: InferRequest, s: ServeState) -> InferInputTensor:
    """The request's one input tensor, checked against the model's input: name, datatype, shape, batch size."""
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
        raise HTTPException(
            400, f"batch of {tensor.shape[0]} is too large; send at most {MAX_INFER_BATCH} samples per request"
        )
    return tensor


def json_values(tensor: InferInputTensor) -> np.ndarray:
    """The tensor's ``data`` as a float32 array of its shape (values past float32's range become inf)."""
    assert tensor.data is not None  # the schema's validator: data, or binary_data_size
    if len(tensor.data) != math.prod(tensor.shape):
        raise HTTPException(400, f"shape {tensor.shape} needs {math.prod(tensor.shape)} values; got {len(tensor.data)}")
    with np.errstate(over="ignore"):
        return np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)


def document_limits(schema: dict[str, Any], s: ServeState, max_body: int) -> None:
    """Write the served model's own limits into the /v2 infer request's schemas, which hold only what any model
    shares, and the body size cap (every route's) into its description."""
    body = schema["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]
    body["description"] += (f" At most {max_body:,} bytes in all (413 above), and no more JSON values or lists than "
                            f"{MAX_INFER_BATCH} samples nested as `shape` says, plus {OTHER_VALUES:,} for the other "
                            "fields (400 above, before the body is parsed).")
    zeros = [0.0] * math.prod(s.sample_shape)
    one = {"name": s.input_name, "shape": [1, *s.sample_shape], "datatype": "FP32", "data": zeros}
    body["content"]["application/json"]["example"] = {"inputs": [one]}  # a request that works, as it is
    components = schema["components"]["schemas"]
    tensor = components["InferInputTensor"]["properties"]
    tensor["name"]["enum"] = [s.input_name]
    batch = {"type": "integer", "minimum": 1, "maximum": MAX_INFER_BATCH}
    tensor["shape"] = {
        "type": "array", "minItems": 4, "maxItems": 4, "prefixItems": [batch, *({"const": n} for n in s.sample_shape)],
        "description": f"[N, {', '.join(map(str, s.sample_shape))}], N from 1 to {MAX_INFER_BATCH}",
    }
    most = MAX_INFER_BATCH * math.prod(s.sample_shape)
    tensor["data"]["maxItems"] = most
    components["InputParameters"]["properties"]["binary_data_size"]["maximum"] = most * FP32.itemsize


def v2_router(state: ServeState, guarded: list[Any]) -> APIRouter:
    """The /v2 routes of ``state``; ``guarded``: the API key dependency (empty without a key). Health needs no key."""
    router = APIRouter()

    @router.post(
        "/v2/models/{name}/infer",
        response_model=InferResponse,
        dependencies=guarded,
        openapi_extra=INFER_BODY,
        responses=ERRORS | MODEL_ERRORS | BINARY_OUTPUT,
    )
    async def infer_v2(name: str, request: Request) -> Any:
        """Open Inference Protocol: one FP32 tensor of shape [N, 3, H, W] in, logits [N, classes] out.

        Takes and gives tensors as JSON or, with the binary tensor data extension, as raw bytes after the JSON.
        """
        s = state.require(name)
        call = await read_infer_call(request, s)
        logits = await state.infer(call.x)
        header = {"model_name": s.model_name, "model_version": s.artifact, "id": call.id}
        if call.binary_output:
            return binary_response(header, "logits", logits)
        output = {"name": "logits", "shape": list(logits.shape), "datatype": "FP32", "data": logits.ravel().tolist()}
        return {**header, "outputs": [output]}

    @router.get("/v2/models/{name}", response_model=ModelMetadata, dependencies=guarded, responses=MODEL_ERRORS)
    async def model_metadata(name: str) -> dict[str, Any]:
        s = state.require(name)
        return {
            "name": s.model_name,
            "versions": [s.artifact],
            "platform": RUNTIMES[s.runtime_used].platform,
            "inputs": [{"name": s.input_name, "datatype": "FP32", "shape": [-1, *s.sample_shape]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, s.num_classes]}],
        }

    @router.get("/v2/models/{name}/ready", dependencies=guarded, responses=MODEL_ERRORS)
    async def model_ready(name: str) -> dict[str, Any]:
        state.require(name)
        return {"name": name, "ready": True}

    @router.get("/v2", response_model=ServerMetadata, dependencies=guarded, responses={401: {"model": ErrorResponse}})
    async def server_metadata() -> dict[str, Any]:
        return {"name": "edgekd", "version": __version__, "extensions": [EXTENSION]}

    @router.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/v2/health/ready", responses={503: {"model": ErrorResponse}})
    async def ready() -> JSONResponse:
        if state.ready and state.batcher.running:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "detail": "the model is still loading"}, status_code=503,
                            headers={"Retry-After": "1"})

    return router
