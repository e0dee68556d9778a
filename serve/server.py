"""Run the app under uvicorn: one worker (the batcher needs every request in one process), logs readiness."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

from edgekd.errors import EdgeKDError
from edgekd.settings import SERVE

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def run_server(
    export_dir: str | Path,
    host: str = SERVE.host,
    port: int = SERVE.port,
    *,
    log_level: str = SERVE.log_level,
    access_log: bool = False,
    header_timeout: float = SERVE.header_timeout,
    body_timeout: float = SERVE.body_timeout,
    max_header_kb: int = SERVE.max_header_kb,
    **app_options: Any,
) -> None:
    """Serve ``export_dir`` on ``host:port`` until interrupted; options go to ``create_app``, the connection limits
    to the HTTP protocol (``edgekd.serve.protocol``)."""
    import uvicorn

    from edgekd.serve.app import create_app
    from edgekd.serve.protocol import guarded_protocol

    if log_level not in LOG_LEVELS:
        raise EdgeKDError(f"unknown log level {log_level!r}; choose one of {', '.join(LOG_LEVELS)}")
    if not 0 <= port <= 65535:
        raise EdgeKDError(f"port must be between 1 and 65535 (0: any free port); got {port}")
    protocol = guarded_protocol(header_timeout, body_timeout, max_header_kb)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    app = create_app(export_dir, **app_options)
    check_can_listen(host, port)
    app.state.serve.load()  # before uvicorn: an unservable export is one line here, not a lifespan traceback
    config = uvicorn.Config(app, host=host, port=port, workers=1, lifespan="on", log_level=log_level,
                            access_log=access_log, http=protocol)
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when its startup fails; the reason is in its log, the summary is ours
        pass
    if not server.started:
        reason = app.state.serve.error or "see the log above"
        raise EdgeKDError(f"the server did not start: {reason}")


def check_can_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once, as uvicorn will, so that a port in use or a bad address is a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as e:
        raise EdgeKDError(f"cannot listen on {host}:{port}: {e.strerror or e}; pass another --port or --host") from None
