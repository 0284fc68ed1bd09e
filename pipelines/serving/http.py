"""uvicorn's httptools protocol with a deadline on a request's headers.

uvicorn times out idle keep-alive connections, but not a connection that opens and sends its
headers slowly, or never: each such connection counts against ``limit_concurrency``, so a few
hundred of them (slowloris) made every other client's request a 503. Here the headers of every
request must arrive within ``MLOPS_SERVING_HEADER_TIMEOUT_SECONDS`` (10) of the connection opening,
or of the first byte after the previous answer on a kept-alive connection; past it the connection is closed.
The body has its own deadline in the app (``MLOPS_SERVING_BODY_TIMEOUT_SECONDS``), and a request
answered before its body was read (a missing token, a full server) has its connection closed.
"""

from __future__ import annotations

import asyncio
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_ENV = "MLOPS_SERVING_HEADER_TIMEOUT_SECONDS"
DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0


def header_timeout_seconds() -> float:
    """The deadline from the environment (``ServingSettings.from_env`` has checked the value)."""
    return float(os.environ.get(HEADER_TIMEOUT_ENV) or DEFAULT_HEADER_TIMEOUT_SECONDS)


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that closes a connection whose request headers do not arrive in time."""

    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.timeout_keep_alive_task is not None and self._header_deadline is None:
            # Bytes on an idle kept-alive connection cancel uvicorn's keep-alive timer; the parser
            # skips line breaks before a request line, so a bare CRLF began no request and no
            # deadline ran at all. Any byte between requests starts the header clock instead.
            self._arm()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_deadline is None:  # the next request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        unread = cycle is not None and cycle.response_complete and cycle.more_body
        if unread and not self.transport.is_closing():
            # Answered before its body was read (401, 403, 413, 503, 408): the rest of the body
            # would be parsed as the next request, and one byte of it cancelled the keep-alive
            # timer for good (an unauthenticated client held a connection slot for ever).
            self.transport.close()
            return
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(header_timeout_seconds(), self._headers_too_late)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_late(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()
