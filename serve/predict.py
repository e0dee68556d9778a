"""``POST /predict``: one image as multipart field ``file`` in, the top ``top_k`` classes out.

A plain Starlette route, not a FastAPI one: FastAPI's per-request dependency and response machinery costs
event-loop CPU on every request, a share of the throughput under load (docs/decisions.md). It keeps what the
FastAPI routes do (the API key first, the same 422 body for a bad ``top_k``, the same JSON errors and metrics), and
``predict_operation`` writes its OpenAPI entry, which FastAPI cannot see.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import Field, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgekd.serve.middleware import APIKeyCheck
from edgekd.serve.offline import softmax, top_classes
from edgekd.serve.preprocess import INLINE_MAX_PIXELS, ImageError
from edgekd.serve.schemas import ErrorResponse
from edgekd.serve.state import ServeState

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 503)}
MODEL_ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 503)}  # key, model name, still loading
TOP_K = TypeAdapter(Annotated[int, Field(ge=1, description="how many classes to return (default: 5, or all if fewer)")])


def _top_k(raw: str | None) -> int | None:
    """``?top_k=`` validated as FastAPI would a query parameter: the same 422 body for a bad value."""
    if raw is None:
        return None
    try:
        return TOP_K.validate_python(raw)
    except ValidationError as e:
        raise RequestValidationError(
            [{**err, "loc": ("query", "top_k")} for err in e.errors(include_input=False)]) from None


async def read_image_field(request: Request, max_file: int, max_upload_mb: float) -> bytes:
    """The bytes of multipart field ``file``, read under the size cap; 415/422/413 for the wrong shape of request."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise HTTPException(415, f"unsupported request type {content_type or 'none'!r}; "
                                 "send multipart/form-data with the image in field 'file'")
    try:
        form = await request.form(max_files=1, max_fields=16)
    except StarletteHTTPException as e:
        # Starlette's 400 for a form over its limits is a wrong request shape here, like a missing field
        if str(e.detail).startswith("Too many"):
            raise HTTPException(422, f"{e.detail} Send one image, in field 'file'.") from None
        raise
    try:
        upload = form.get("file")
        if upload is None:
            raise HTTPException(422, "missing form field 'file': send the image as a file upload in field 'file'")
        if isinstance(upload, str):
            raise HTTPException(
                422, "form field 'file' is text, not a file: send it as a file upload (a part with a filename)")
        part_type = (upload.content_type or "").split(";")[0].strip().lower()
        if part_type and not part_type.startswith("image/") and part_type != "application/octet-stream":
            raise HTTPException(
                415, f"unsupported content type {part_type!r} for 'file'; send an image (image/png, image/jpeg, ...)")
        data = await upload.read(max_file + 1)
    finally:
        await form.close()
    if len(data) > max_file:
        raise HTTPException(413, f"the image file is larger than {max_upload_mb:g} MB")
    return data


def predict_endpoint(
    state: ServeState, key_check: APIKeyCheck | None, max_file: int, max_upload_mb: float
) -> Callable[[Request], Awaitable[JSONResponse]]:
    """The ``/predict`` handler for ``state``, with the upload cap and the API key (if any) it checks."""

    async def predict(request: Request) -> JSONResponse:
        """Classify one image sent as multipart field ``file``; ``?top_k=`` classes come back (default 5)."""
        start = time.perf_counter()
        if key_check:
            await key_check.check(request)
        top_k = _top_k(request.query_params.get("top_k"))
        s = state.require()
        if top_k is None:
            top_k = min(5, s.num_classes)
        elif top_k > s.num_classes:
            raise HTTPException(
                422, f"top_k must be between 1 and {s.num_classes} (the number of classes); got {top_k}")
        with s.batcher.incoming():
            data = await read_image_field(request, max_file, max_upload_mb)
            try:
                img = s.preprocess.open(data)  # header only: unreadable or oversized input is refused here
                if img.width * img.height <= INLINE_MAX_PIXELS:
                    x = s.preprocess.array_from(img)
                else:
                    x = await asyncio.get_running_loop().run_in_executor(s.decode_pool, s.preprocess.array_from, img)
            except ImageError as e:
                raise HTTPException(e.status_code, str(e)) from None
        probs = softmax((await s.infer(x[None]))[0])
        order = top_classes(probs, top_k)
        return JSONResponse(
            {
                "model": s.model_name,
                "predictions": [{"index": int(i), "label": s.label(int(i)), "score": float(probs[i])} for i in order],
                "latency_ms": (time.perf_counter() - start) * 1000.0,
            }
        )

    return predict


def predict_operation(
    security: list[dict[str, list[str]]] | None, num_classes: int, max_upload_mb: float, max_pixels: int
) -> dict[str, Any]:
    """The OpenAPI operation of ``POST /predict`` (a plain Starlette route, which FastAPI does not document),
    with the limits the handler enforces: ``top_k`` up to the class count, the upload's size and pixels."""
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    top_k = {**TOP_K.json_schema(), "maximum": num_classes}
    image = f"an image (PNG, JPEG, ...) of at most {max_upload_mb:g} MB and {max_pixels:,} pixels (413 above)"
    operation = {
        "summary": "Predict",
        "description": "Classify one image sent as multipart field `file`.",
        "operationId": "predict_predict_post",
        "parameters": [
            {"name": "top_k", "in": "query", "required": False, "description": top_k["description"], "schema": top_k},
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary", "description": image}},
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "Successful Response",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}},
            },
            **{str(code): {"description": HTTPStatus(code).phrase, **error} for code in ERRORS},
        },
    }
    if security:
        operation["security"] = security
    return operation
