"""The FastAPI app: ``POST /predict``, KServe v2 / Open Inference Protocol endpoints, health and metrics.

``create_app`` only records options; the lifespan reads the manifest, opens the artifact (sha256-checked),
warms it up and starts the batcher, so the server accepts traffic only once it can answer at full speed.
Bad input never reaches a 500: each failure maps to 400/401/413/415/422/503 with a JSON ``{"detail": ...}``.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import math
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from PIL import Image
from pydantic import Field, TypeAdapter, ValidationError

from edgekd import __version__
from edgekd.errors import EdgeKDError, one_line
from edgekd.contracts.manifest import PRECISIONS, load_manifest
from edgekd.serve.batching import MicroBatcher, QueueFull
from edgekd.serve.metrics import Metrics
from edgekd.serve.preprocess import DEFAULT_MAX_PIXELS, INLINE_MAX_PIXELS, ImageError, Preprocessor
from edgekd.runtimes import RUNTIMES, Runtime, check_runtime_name, open_artifact, runtime_of, select_artifact
from edgekd.serve.schemas import ErrorResponse, InferRequest, InferResponse, ModelMetadata, PredictResponse

log = logging.getLogger("edgekd.serve")

MB = 1_000_000  # --max-upload-mb in SI megabytes, like every size edgekd prints
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file, on top of --max-upload-mb
MAX_INFER_BATCH = 64  # samples in one /v2 infer request
MAX_REPORTED_ERRORS = 10  # validation errors listed in one 422
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that hung up before the answer
INFER_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}}}
}
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 503)}
TOP_K = TypeAdapter(Annotated[int, Field(ge=1, description="how many classes to return (default: 5, or all if fewer)")])


def _top_k(raw: str | None) -> int | None:
    """``?top_k=`` validated as FastAPI would a query parameter: the same 422 body for a bad value."""
    if raw is None:
        return None
    try:
        return TOP_K.validate_python(raw)
    except ValidationError as e:
        raise RequestValidationError([{**err, "loc": ("query", "top_k")} for err in e.errors(include_input=False)]) from None


def predict_operation(security: list[dict[str, list[str]]] | None) -> dict[str, Any]:
    """The OpenAPI operation of ``POST /predict`` (a plain Starlette route, which FastAPI does not document)."""
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    top_k = TOP_K.json_schema()
    operation = {
        "summary": "Predict",
        "description": "Classify one image sent as multipart field `file`.",
        "operationId": "predict_predict_post",
        "parameters": [{"name": "top_k", "in": "query", "required": False, "description": top_k["description"], "schema": top_k}],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary", "description": "an image (PNG, JPEG, ...)"}},
                    }
                }
            },
        },
        "responses": {
            "200": {"description": "Successful Response", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}}},
            **{str(code): {"description": HTTPStatus(code).phrase, **error} for code in ERRORS},
        },
    }
    if security:
        operation["security"] = security
    return operation


class ServeState:
    """Options given to ``create_app`` and what ``load`` reads from the export dir."""

    def __init__(
        self, export_dir: Path, runtime: str | None, precision: str | None, threads: int | None, max_pixels: int, warmup_batch: int
    ) -> None:
        self.export_dir = export_dir
        self.runtime_name = runtime
        self.precision = precision
        self.threads = threads
        self.max_pixels = max_pixels
        self.warmup_batch = warmup_batch
        self.ready = False
        self.error: str | None = None  # why loading failed, for run_server's one-line message
        self.manifest: dict[str, Any] = {}
        self.artifact = ""
        self.runtime: Runtime | None = None
        self.preprocess: Preprocessor | None = None
        self.load_seconds = 0.0

    @property
    def loaded(self) -> bool:
        return self.runtime is not None

    def load(self) -> None:
        """Manifest -> artifact (sha256-checked) -> runtime, then warm both the model and the image decoders.

        Every way an export can be unservable ends here as one ``EdgeKDError``, so ``run_server`` can load
        before uvicorn starts and report it in one line.
        """
        start = time.perf_counter()
        self.manifest = load_manifest(self.export_dir)
        self.artifact = select_artifact(self.manifest, self.runtime_name, self.precision)
        # spin off (ORT): between batches the cores are the event loop's
        runtime = open_artifact(self.export_dir, self.manifest, self.artifact, runtime=self.runtime_name, verify=True,
                                threads=self.threads, spin=False)
        self.preprocess = Preprocessor.from_manifest(self.manifest, self.max_pixels)
        sample = io.BytesIO()
        Image.new("RGB", (8, 8), (128, 64, 32)).save(sample, "PNG")
        x = self.preprocess(sample.getvalue())[None]
        try:
            for n in sorted({1, self.warmup_batch}):
                for _ in range(2):
                    logits = runtime.run(np.repeat(x, n, axis=0))
        except Exception as e:  # the runtime's own error types: the model and the manifest's input disagree
            raise EdgeKDError(
                f"artifact {self.artifact} cannot run on the input the manifest describes (shape {list(x.shape)}): "
                f"{type(e).__name__}: {one_line(e)}; re-run `edgekd export`"
            ) from None
        if logits.shape != (self.warmup_batch, self.num_classes):
            raise EdgeKDError(
                f"artifact {self.artifact} returns logits of shape {logits.shape}, expected ({self.warmup_batch}, {self.num_classes}); re-run `edgekd export`"
            )
        self.runtime = runtime
        self.load_seconds = time.perf_counter() - start

    @property
    def model_name(self) -> str:
        return str(self.manifest.get("model") or self.export_dir.name)

    @property
    def num_classes(self) -> int:
        return int(self.manifest.get("num_classes") or len(self.manifest["class_names"]))

    @property
    def input_name(self) -> str:
        return str(self.manifest["input"].get("name", "input"))

    @property
    def sample_shape(self) -> list[int]:
        """(C, H, W) of one input sample."""
        assert self.preprocess is not None
        return [3, *self.preprocess.size]

    def label(self, index: int) -> str:
        names = self.manifest["class_names"]
        return str(names[index]) if index < len(names) else str(index)


class RequestGuard:
    """ASGI middleware: counts and times every request, and caps the body size while it is being read.

    The cap is enforced inside ``receive``: a declared ``Content-Length`` over the limit is refused before
    any byte is read, and a chunked body is cut off at the first chunk past the limit. The resulting
    HTTP 413 is raised in the route, so it is counted under that route's name. (FastAPI's own
    ``max_body_size`` answers a declared oversize body with a text/plain 413, outside this API's JSON errors.)
    """

    def __init__(self, app: Any, metrics: Metrics, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        received = 0
        limit = self.max_body
        declared = dict(scope["headers"]).get(b"content-length")

        async def limited_receive() -> dict:
            nonlocal received
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise HTTPException(413, f"request body is {int(declared)} bytes; this server accepts at most {limit}")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body exceeds {limit} bytes")
            return message

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, limited_receive, send_status)
        finally:
            endpoint = _endpoint_label(scope)
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.request_latency.labels(endpoint).observe(time.perf_counter() - start)


def _endpoint_label(scope: dict) -> str:
    """The route's path template; plain Starlette routes (the docs) have none in scope but a fixed path."""
    route = scope.get("route")
    if route is not None:
        return route.path
    if "endpoint" in scope and not scope.get("path_params"):
        return scope["path"]
    return "unmatched"


class APIKeyCheck:
    """Accepts ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, compared in constant time.

    FastAPI routes use ``dependency`` (which also puts both schemes in the OpenAPI document); the plain
    Starlette ``/predict`` route calls ``check`` with its request.
    """

    def __init__(self, api_key: str) -> None:
        self.expected = api_key.encode("utf-8")
        self.bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
        self.header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")

    def verify(self, key: str | None, credentials: HTTPAuthorizationCredentials | None) -> None:
        # headers arrive decoded as latin-1; encoding back gives the bytes the client sent
        for supplied in (key, credentials.credentials if credentials else None):
            if supplied is not None and hmac.compare_digest(supplied.encode("latin-1", "replace"), self.expected):
                return
        raise HTTPException(
            401, "missing or wrong API key; send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'", headers={"WWW-Authenticate": "Bearer"}
        )

    async def check(self, request: Request) -> None:
        self.verify(await self.header(request), await self.bearer(request))

    def dependency(self) -> Any:
        bearer, header = self.bearer, self.header

        # plain defaults, not Annotated: the annotations are strings and ``bearer``/``header`` are closure locals
        async def require_api_key(
            credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
            key: str | None = Depends(header),
        ) -> None:
            self.verify(key, credentials)

        return require_api_key


def _error_body(request: Request, detail: Any, message: str) -> dict[str, Any]:
    """``{"detail": ...}`` (DESIGN §3); on /v2 routes also the Open Inference Protocol's ``{"error": "message"}``."""
    path = request.url.path
    return {"detail": detail, "error": message} if path == "/v2" or path.startswith("/v2/") else {"detail": detail}


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), for the cold-start log line; None elsewhere."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max())
    return z / z.sum()


MAX_BATCH = 1024  # images per model call; far past where batching stops paying on a CPU


def create_app(
    export_dir: str | Path,
    *,
    runtime: str | None = None,
    precision: str | None = None,
    max_batch: int = 8,
    batch_timeout_ms: float = 0.0,
    api_key: str | None = None,
    max_upload_mb: float = 10,
    queue_size: int = 256,
    threads: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode_threads: int | None = None,
) -> FastAPI:
    """A FastAPI app serving the export in ``export_dir`` (loaded when the app starts; see module doc)."""
    check_runtime_name(runtime)
    if precision is not None and precision not in PRECISIONS:
        raise EdgeKDError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if max_batch < 1 or queue_size < 1 or not 0 <= batch_timeout_ms < math.inf or not 0 < max_upload_mb < math.inf or max_pixels < 1:
        raise EdgeKDError("max_batch, queue_size and max_pixels must be >= 1, batch_timeout_ms >= 0 and max_upload_mb > 0 (finite)")
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
    state = ServeState(Path(export_dir), runtime, precision, threads, max_pixels, warmup_batch=max_batch)
    metrics = Metrics()
    batcher = MicroBatcher(lambda batch: state.runtime.run(batch), max_batch=max_batch, batch_timeout_ms=batch_timeout_ms, queue_size=queue_size, metrics=metrics)
    max_file = int(max_upload_mb * MB)
    decode_pool: ThreadPoolExecutor | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal decode_pool
        if not state.loaded:  # run_server loads before uvicorn starts; an app made by create_app alone loads here
            try:
                await asyncio.to_thread(state.load)
            except EdgeKDError as e:
                state.error = str(e)
                log.error("cannot serve %s: %s", state.export_dir, e)
                raise
        # decoding runs beside the event loop; a few threads bound the memory held by images in flight
        decode_pool = ThreadPoolExecutor(max_workers=decode_threads or min(4, os.cpu_count() or 1), thread_name_prefix="edgekd-decode")
        batcher.start()
        state.ready = True
        metrics.ready.set(1)
        entry = state.manifest["artifacts"][state.artifact]
        age = process_age()
        log.info(
            "ready: %s, artifact %s (%s, %s) verified, loaded and warmed up in %.2f s%s",
            state.model_name,
            state.artifact,
            state.runtime_name or runtime_of(entry["format"]),
            entry["precision"],
            state.load_seconds,
            f"; cold start {age:.2f} s after process start" if age is not None else "",
        )
        try:
            yield
        finally:
            state.ready = False
            metrics.ready.set(0)
            await batcher.stop()
            decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="edgekd serve",
        version=__version__,
        description="Image classification with a distilled, quantized model exported by edgekd.",
        lifespan=lifespan,
    )
    app.state.serve = state
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.add_middleware(RequestGuard, metrics=metrics, max_body=max_file + MULTIPART_OVERHEAD)
    key_check = APIKeyCheck(api_key) if api_key else None
    guarded = [Depends(key_check.dependency())] if key_check else []

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 without echoing the offending input back (it can be megabytes) and with at most ten errors."""
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()[:MAX_REPORTED_ERRORS]]
        summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return JSONResponse(_error_body(request, errors, summary), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """FastAPI's ``{"detail": ...}`` answer, with the protocol's ``error`` string beside it on /v2 routes."""
        return JSONResponse(_error_body(request, exc.detail, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_went_away(request: Request, exc: ClientDisconnect) -> Response:
        """The client closed the connection mid-request: nobody reads the answer; count it as 499, as nginx does."""
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    def loaded(name: str | None = None) -> ServeState:
        if not state.ready:
            raise HTTPException(503, "the model is still loading", headers={"Retry-After": "1"})
        if name is not None and name != state.model_name:
            raise HTTPException(404, f"unknown model {name!r}; this server serves {state.model_name!r}")
        return state

    async def infer(batch: np.ndarray) -> np.ndarray:
        try:
            return await batcher.submit(batch)
        except QueueFull as e:
            raise HTTPException(503, f"server busy: {e}; retry shortly", headers={"Retry-After": "1"}) from None

    async def read_image_field(request: Request) -> bytes:
        """The bytes of multipart field ``file``, read under the size cap; 415/422/413 for the wrong shape of request."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "multipart/form-data":
            raise HTTPException(415, f"unsupported request type {content_type or 'none'!r}; send multipart/form-data with the image in field 'file'")
        try:
            form = await request.form(max_files=1, max_fields=16)
        except StarletteHTTPException as e:  # Starlette's 400 for a form over its limits is a wrong request shape here, like a missing field
            if str(e.detail).startswith("Too many"):
                raise HTTPException(422, f"{e.detail} Send one image, in field 'file'.") from None
            raise
        try:
            upload = form.get("file")
            if upload is None:
                raise HTTPException(422, "missing form field 'file': send the image as a file upload in field 'file'")
            if isinstance(upload, str):
                raise HTTPException(422, "form field 'file' is text, not a file: send it as a file upload (a part with a filename)")
            part_type = (upload.content_type or "").split(";")[0].strip().lower()
            if part_type and not part_type.startswith("image/") and part_type != "application/octet-stream":
                raise HTTPException(415, f"unsupported content type {part_type!r} for 'file'; send an image (image/png, image/jpeg, ...)")
            data = await upload.read(max_file + 1)
        finally:
            await form.close()
        if len(data) > max_file:
            raise HTTPException(413, f"the image file is larger than {max_upload_mb:g} MB")
        return data

    async def read_infer_request(request: Request) -> InferRequest:
        """The JSON body, parsed only now: after the API key check, which FastAPI runs after parsing a declared body."""
        try:
            return InferRequest.model_validate_json(await request.body())
        except ValidationError as e:
            raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_input=False)]) from None

    async def predict(request: Request) -> JSONResponse:
        """Classify one image sent as multipart field ``file``; ``?top_k=`` classes come back (default 5)."""
        start = time.perf_counter()
        if key_check:
            await key_check.check(request)
        top_k = _top_k(request.query_params.get("top_k"))
        s = loaded()
        if top_k is None:
            top_k = min(5, s.num_classes)
        elif top_k > s.num_classes:
            raise HTTPException(422, f"top_k must be between 1 and {s.num_classes} (the number of classes); got {top_k}")
        with batcher.incoming():
            data = await read_image_field(request)
            try:
                img = s.preprocess.open(data)  # header only: unreadable or oversized input is refused here
                if img.width * img.height <= INLINE_MAX_PIXELS:
                    x = s.preprocess.array_from(img)
                else:
                    x = await asyncio.get_running_loop().run_in_executor(decode_pool, s.preprocess.array_from, img)
            except ImageError as e:
                raise HTTPException(e.status_code, str(e)) from None
        probs = _softmax((await infer(x[None]))[0])
        order = np.argsort(-probs, kind="stable")[:top_k]
        return JSONResponse(
            {
                "model": s.model_name,
                "predictions": [{"index": int(i), "label": s.label(int(i)), "score": float(probs[i])} for i in order],
                "latency_ms": (time.perf_counter() - start) * 1000.0,
            }
        )

    # A plain Starlette route, not a FastAPI one: FastAPI's per-request dependency and response machinery cost
    # 0.3 ms of event-loop CPU per request, 15 % of the throughput at 16 clients (benchmarks/results/serve.md).
    # Its OpenAPI entry is written in ``openapi`` below.
    app.add_route("/predict", predict, methods=["POST"], include_in_schema=False)

    @app.post(
        "/v2/models/{name}/infer",
        response_model=InferResponse,
        dependencies=guarded,
        openapi_extra=INFER_BODY,
        responses=ERRORS | {404: {"model": ErrorResponse}},
    )
    async def infer_v2(name: str, request: Request) -> dict[str, Any]:
        """Open Inference Protocol: one FP32 tensor of shape [N, 3, H, W] in, logits [N, classes] out."""
        s = loaded(name)
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
        logits = await infer(x)
        return {
            "model_name": s.model_name,
            "model_version": s.artifact,
            "id": body.id,
            "outputs": [{"name": "logits", "shape": list(logits.shape), "datatype": "FP32", "data": logits.ravel().tolist()}],
        }

    @app.get("/v2/models/{name}", response_model=ModelMetadata, dependencies=guarded, responses={404: {"model": ErrorResponse}})
    async def model_metadata(name: str) -> dict[str, Any]:
        s = loaded(name)
        fmt = s.manifest["artifacts"][s.artifact]["format"]
        return {
            "name": s.model_name,
            "versions": [s.artifact],
            "platform": RUNTIMES[s.runtime_name or runtime_of(fmt)].platform,
            "inputs": [{"name": s.input_name, "datatype": "FP32", "shape": [-1, *s.sample_shape]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, s.num_classes]}],
        }

    @app.get("/v2/models/{name}/ready", dependencies=guarded, responses={404: {"model": ErrorResponse}})
    async def model_ready(name: str) -> dict[str, Any]:
        loaded(name)
        return {"name": name, "ready": True}

    @app.get("/v2", dependencies=guarded)
    async def server_metadata() -> dict[str, Any]:
        return {"name": "edgekd", "version": __version__, "extensions": []}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", responses={503: {"model": ErrorResponse}})
    async def ready() -> JSONResponse:
        if state.ready and batcher.running:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "detail": "the model is still loading"}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/metrics", dependencies=guarded, response_class=Response)
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus what it cannot see: ``/predict`` and the /v2 infer request body (read by the route itself)."""
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (InferRequest, PredictResponse, ErrorResponse):
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}), **{model.__name__: model_schema})
            security = schema["paths"]["/v2"]["get"].get("security")  # the API key schemes of the guarded routes
            schema["paths"]["/predict"] = {"post": predict_operation(security)}
        return app.openapi_schema

    app.openapi = openapi
    return app
