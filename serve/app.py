"""The FastAPI app's wiring: ``create_app`` checks its options, makes the ``ServeState`` and puts the routes
(``predict``, ``v2``, ``/metrics``), the middleware and the error handlers around it.

``create_app`` only records options; the lifespan loads the export (``ServeState.load``: manifest, sha256-checked
artifact, warm-up) and starts the batcher, so the server accepts traffic only once it can answer at full speed.
Bad input never reaches a 500: each failure maps to 400/401/413/415/422/503 with a JSON ``{"detail": ...}``.
"""

from __future__ import annotations

import asyncio
import math
import warnings
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import Response
from PIL import Image

from edgekd import __version__
from edgekd.contracts.manifest import PRECISIONS
from edgekd.errors import EdgeKDError
from edgekd.runtimes import check_runtime_name
from edgekd.serve.docs import docs_router
from edgekd.serve.middleware import APIKeyCheck, RequestGuard, install_error_handlers
from edgekd.serve.predict import predict_endpoint, predict_operation
from edgekd.serve.schemas import ErrorResponse, InferRequest, PredictResponse
from edgekd.serve.state import ServeState, log
from edgekd.serve.v2 import document_limits, v2_router
from edgekd.settings import SERVE

MB = 1_000_000  # --max-upload-mb in SI megabytes, like every size edgekd prints
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file, on top of --max-upload-mb
MAX_BATCH = 1024  # images per model call; far past where batching stops paying on a CPU


def create_app(
    export_dir: str | Path,
    *,
    runtime: str | None = None,
    precision: str | None = None,
    max_batch: int = SERVE.max_batch,
    batch_timeout_ms: float = SERVE.batch_timeout_ms,
    api_key: str | None = None,
    max_upload_mb: float = SERVE.max_upload_mb,
    queue_size: int = SERVE.queue_size,
    threads: int | None = None,
    max_pixels: int = SERVE.max_pixels,
    decode_threads: int | None = None,
) -> FastAPI:
    """A FastAPI app serving the export in ``export_dir`` (loaded when the app starts; see module doc)."""
    check_runtime_name(runtime)
    if precision is not None and precision not in PRECISIONS:
        raise EdgeKDError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if (max_batch < 1 or queue_size < 1 or not 0 <= batch_timeout_ms < math.inf or not 0 < max_upload_mb < math.inf
            or max_pixels < 1):
        raise EdgeKDError(
            "max_batch, queue_size and max_pixels must be >= 1, batch_timeout_ms >= 0 and max_upload_mb > 0 (finite)")
    if max_batch > MAX_BATCH:  # the warm-up runs one batch this large
        raise EdgeKDError(f"max_batch must be at most {MAX_BATCH}, got {max_batch}")
    if threads is not None and threads < 1:
        raise EdgeKDError(f"threads must be >= 1 (or left out for the runtime's default); got {threads}")
    if api_key is not None and not api_key.strip():
        raise EdgeKDError("the API key is empty; pass a non-empty key or none to disable authentication")
    if api_key is not None and not api_key.isascii():
        raise EdgeKDError("the API key must be ASCII (it travels in an HTTP header)")

    # max_pixels refuses big images after the header is read; Pillow's own warning above 89 MP would only add log noise
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    state = ServeState(Path(export_dir), runtime, precision, threads, max_pixels, max_batch=max_batch,
                       batch_timeout_ms=batch_timeout_ms, queue_size=queue_size, decode_threads=decode_threads)
    max_file = int(max_upload_mb * MB)
    max_body = max_file + MULTIPART_OVERHEAD

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not state.loaded:  # run_server loads before uvicorn starts; an app made by create_app alone loads here
            try:
                await asyncio.to_thread(state.load)
            except EdgeKDError as e:
                state.error = str(e)
                log.error("cannot serve %s: %s", state.export_dir, e)
                raise
        state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="edgekd serve",
        version=__version__,
        description="Image classification with a distilled, quantized model exported by edgekd.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None, openapi_url=None,  # ``docs_router``'s instead: offline, and behind the key
    )
    app.state.serve = state
    app.add_middleware(RequestGuard, metrics=state.metrics, max_body=max_body)
    install_error_handlers(app)
    key_check = APIKeyCheck(api_key) if api_key else None
    guarded = [Depends(key_check.dependency())] if key_check else []
    app.add_route("/predict", predict_endpoint(state, key_check, max_file, max_upload_mb), methods=["POST"],
                  include_in_schema=False)  # documented by ``openapi`` below
    app.include_router(v2_router(state, guarded))

    @app.get("/metrics", dependencies=guarded, response_class=Response, responses={401: {"model": ErrorResponse}})
    async def prometheus_metrics() -> Response:
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus what it cannot see: ``/predict`` and the /v2 infer request body (read by the route
        itself), and the limits of the loaded model (so 503 while it loads)."""
        if app.openapi_schema is None:
            s = state.require()
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (InferRequest, PredictResponse, ErrorResponse):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}), **{model.__name__: model_schema})
            document_limits(schema, s, max_body)
            security = schema["paths"]["/v2"]["get"].get("security")  # the API key schemes of the guarded routes
            predict = predict_operation(security, s.num_classes, max_upload_mb, state.max_pixels)
            schema["paths"]["/predict"] = {"post": predict}
        return app.openapi_schema

    app.openapi = openapi
    app.include_router(docs_router(app.title, openapi, guarded))
    return app
