"""uvicorn's httptools protocol with the limits a server facing slow or hostile clients needs.

uvicorn bounds neither the size of a request's headers (httptools buffers whatever arrives) nor the time a
client may take to send them or its body: a client that sends half a request and stalls holds its connection
and buffers for as long as it likes, and enough of them exhaust the server (slowloris). Each connection here
gets a deadline for its request line and headers and another for its body; a request that misses one is
answered 408 and the connection closed, and headers over the size limit are answered 431. Other connections
are not affected: every timer belongs to its own connection.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edgekd.errors import EdgeKDError
from edgekd.settings import SERVE


def _reply_and_close(transport: asyncio.BaseTransport, status: bytes, message: str) -> None:
    body = message.encode()
    transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: "
                    + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)
    transport.close()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a header-size limit and per-connection header and body deadlines."""

    header_timeout_s = SERVE.header_timeout
    body_timeout_s = SERVE.body_timeout
    max_header_bytes = SERVE.max_header_kb * 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_bytes = 0  # what arrived while the current request's headers were incomplete
        self._header_size = 0  # the parsed request line and headers
        self._awaiting_headers = True  # until the first request's headers are complete
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None
        self._arm(self.header_timeout_s, "the request line and headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._awaiting_headers and not self.transport.is_closing():  # headers still streaming in
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse_headers()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers, self._header_bytes, self._header_size = True, 0, 0
        if self._deadline is None:  # a keep-alive connection's next request
            self._arm(self.header_timeout_s, "the request line and headers")

    def on_url(self, url: bytes) -> None:
        self._header_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        if self._header_size > self.max_header_bytes:  # headers that arrived whole in one read
            self._refuse_headers()
            return
        self._arm(self.body_timeout_s, "the request body")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if not self._refused:
            super().on_message_complete()

    def _refuse_headers(self) -> None:
        """431, and nothing more is read or dispatched on this connection."""
        self._refused = True
        self._disarm()
        _reply_and_close(self.transport, b"431 Request Header Fields Too Large",
                         f"the request line and headers exceed {self.max_header_bytes // 1024} KB")

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow, seconds, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, seconds: float, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # the app already answered (or is answering): nothing more can be said here
            return
        if self.cycle is not None:
            self.cycle.disconnected = True  # the app, if it waits for the body, sees the client gone
            self.cycle.message_event.set()
        _reply_and_close(self.transport, b"408 Request Timeout", f"{what} did not arrive within {seconds:g} s")


def guarded_protocol(header_timeout_s: float, body_timeout_s: float, max_header_kb: int) -> type[Any]:
    """The protocol class for uvicorn's ``http`` setting, with these limits."""
    if not (0 < header_timeout_s < float("inf") and 0 < body_timeout_s < float("inf") and max_header_kb >= 1):
        raise EdgeKDError("header and body timeouts must be > 0 seconds and the header limit >= 1 KB")
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {
        "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s,
        "max_header_bytes": max_header_kb * 1024})
