"""The serve command's options, defined once: ``edgekd serve`` and ``python -m edgekd.serve`` (the Docker image's
entry point, for torch-free installs) are both this function."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from edgekd.contracts.manifest import PRECISIONS
from edgekd.runtimes import artifact_runtimes
from edgekd.settings import SERVE, given_options, with_recipe

API_KEY_ENV = "EDGEKD_API_KEY"

# How an artifact is chosen and run, shared with `edgekd predict` so that it picks what the server would.
RuntimeOpt = typer.Option(
    None,
    help=f"{' or '.join(artifact_runtimes())} (default: ONNX Runtime when the export has it for the chosen precision).")
PrecisionOpt = typer.Option(
    None, help=f"{', '.join(PRECISIONS)} (fp16: an OpenVINO export with --fp16); default: int8 when exported.")
ThreadsOpt = typer.Option(None, help="Inference threads (default: the runtime's).")


def serve(
    ctx: typer.Context,
    export_dir: Path = typer.Argument(..., help="Export dir from `edgekd export`."),
    runtime: Optional[str] = RuntimeOpt,
    precision: Optional[str] = PrecisionOpt,
    host: str = typer.Option(SERVE.host, help="Bind address; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(SERVE.port, envvar="EDGEKD_PORT", help="TCP port."),
    max_batch: int = typer.Option(SERVE.max_batch, help="Largest dynamic micro-batch."),
    batch_timeout_ms: float = typer.Option(
        SERVE.batch_timeout_ms,
        help="Extra wait for a micro-batch to fill; 0 batches what queued during the previous call (best on CPU)."),
    api_key: Optional[str] = typer.Option(
        None, envvar=API_KEY_ENV, help="Require this key (Authorization: Bearer KEY or X-API-Key)."),
    max_upload_mb: float = typer.Option(SERVE.max_upload_mb, help="Largest accepted upload in MB (413 above)."),
    max_pixels: int = typer.Option(
        SERVE.max_pixels, help="Largest accepted image in pixels, the decompression-bomb guard (413 above)."),
    queue_size: int = typer.Option(
        SERVE.queue_size, help="Requests waiting for the model before new ones get 503 + Retry-After."),
    threads: Optional[int] = ThreadsOpt,
    header_timeout: float = typer.Option(
        SERVE.header_timeout,
        help="Seconds a client may take to send a request line and headers (408 and closed after)."),
    body_timeout: float = typer.Option(
        SERVE.body_timeout,
        help="Seconds a client may take to send a request body once its headers are in (408 after)."),
    max_header_kb: int = typer.Option(SERVE.max_header_kb, help="Largest request line plus headers in KB (431 above)."),
    log_level: str = typer.Option(SERVE.log_level, help="critical, error, warning, info or debug."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request."),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="YAML recipe whose serve: section sets these options; flags override it."),
) -> None:
    """Serve an exported model over HTTP: POST /predict, KServe v2 endpoints, /metrics. No torch needed."""
    from edgekd.serve.server import run_server

    if api_key is None and API_KEY_ENV in os.environ:  # click reads an empty variable as unset: that is no key
        api_key = os.environ[API_KEY_ENV]  # at all, and an empty secret must not start a server without auth
    settings = {"host": host, "port": port, "max_batch": max_batch, "batch_timeout_ms": batch_timeout_ms,
                "max_upload_mb": max_upload_mb, "max_pixels": max_pixels, "queue_size": queue_size,
                "header_timeout": header_timeout, "body_timeout": body_timeout, "max_header_kb": max_header_kb,
                "log_level": log_level, "access_log": access_log}
    run_server(export_dir, runtime=runtime, precision=precision, api_key=api_key, threads=threads,
               **with_recipe(settings, config, "serve", given_options(ctx)))
