"""The API docs, served whole by this server: Swagger UI at ``/docs``, ReDoc at ``/redoc``, and ``/openapi.json``.

FastAPI's own docs pages load their scripts, styles and fonts from public CDNs, so on an offline device they are
blank. These pages load the same Swagger UI and ReDoc builds from the files the ``fastapi-offline`` package ships
(a dependency of the ``device`` extra), and every route here takes the API key when one is set.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

ASSETS = files("fastapi_offline") / "static"  # the package's own copies of the CDN files
ASSET_NAMES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
ASSET_URL = "/docs/assets"


def docs_router(title: str, openapi: Callable[[], dict[str, Any]], guarded: list[Any]) -> APIRouter:
    """``/openapi.json``, ``/docs``, ``/redoc`` and their assets; ``guarded``: the API key dependency, if any."""
    router = APIRouter(dependencies=guarded, include_in_schema=False)

    @router.get("/openapi.json")
    async def openapi_json() -> JSONResponse:
        return JSONResponse(openapi())

    @router.get("/docs")
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title=f"{title} - Swagger UI", oauth2_redirect_url=None,
            swagger_js_url=f"{root}{ASSET_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSET_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSET_URL}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge from the public validator service
        )

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}/openapi.json", title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{ASSET_URL}/redoc.standalone.js", redoc_favicon_url=f"{root}{ASSET_URL}/favicon.png",
            with_google_fonts=False,
        )

    @router.get(ASSET_URL + "/{name}")
    async def asset(name: str) -> FileResponse:
        if name not in ASSET_NAMES:  # a fixed list: no path from the client reaches the filesystem
            raise HTTPException(404, f"no docs asset {name!r}")
        return FileResponse(str(ASSETS / name))

    return router
