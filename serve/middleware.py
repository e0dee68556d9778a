"""What every request passes through: the body-size cap and the metrics (``RequestGuard``), the API key
(``APIKeyCheck``) and the one JSON error body (``install_error_handlers``)."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from edgekd.serve.metrics import Metrics

log = logging.getLogger("edgekd.serve")

MAX_REPORTED_ERRORS = 10  # validation errors listed in one 422
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that hung up before the answer


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
    """The route's path template; plain Starlette routes (``/predict``) have none in scope but a fixed path."""
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
            401, "missing or wrong API key; send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
            headers={"WWW-Authenticate": "Bearer"},
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


def error_body(request: Request, detail: Any, message: str) -> dict[str, Any]:
    """``{"detail": ...}`` (FastAPI's); on /v2 routes also the Open Inference Protocol's ``{"error": "message"}``."""
    path = request.url.path
    return {"detail": detail, "error": message} if path == "/v2" or path.startswith("/v2/") else {"detail": detail}


def install_error_handlers(app: FastAPI) -> None:
    """Every error as JSON in one shape; a client that hung up is counted 499; nothing leaks a traceback."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 without echoing the offending input back (it can be megabytes) and with at most ten errors."""
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                  for e in exc.errors()[:MAX_REPORTED_ERRORS]]
        summary = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return JSONResponse(error_body(request, errors, summary), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """FastAPI's ``{"detail": ...}`` answer, with the protocol's ``error`` string beside it on /v2 routes."""
        return JSONResponse(error_body(request, exc.detail, str(exc.detail)), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_went_away(request: Request, exc: ClientDisconnect) -> Response:
        """The client closed the connection mid-request: nobody reads the answer; count it as 499, as nginx does."""
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)
