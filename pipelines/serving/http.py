"""uvicorn's httptools protocol with deadlines on a request's headers and on reading its answers.

uvicorn times out idle keep-alive connections, but not a connection that opens and sends its
headers slowly, or never: each such connection counts against ``limit_concurrency``, so a few
hundred of them (slowloris) made every other client's request a 503. Here the headers of every
request must arrive within ``MLOPS_SERVING_HEADER_TIMEOUT_SECONDS`` (10) of the connection opening,
or of the first byte after the previous answer on a kept-alive connection; past it the connection is closed.
The body has its own deadline in the app (``MLOPS_SERVING_BODY_TIMEOUT_SECONDS``), and a request
answered before its body was read (a missing token, a full server) has its connection closed.

A client must also read its answers: once the transport's buffer is over its high-water mark,
uvicorn waits for it to drain with no deadline, and no other timer runs on such a connection (no
answer completes, every request arrived whole), so pipelined requests whose answers were never
read held a slot each for ever. A buffer that has not drained within
``MLOPS_SERVING_SEND_TIMEOUT_SECONDS`` (10) drops the connection, as nginx's ``send_timeout`` does.
Answers owed under that mark never pause writing; then the keep-alive timer's close() waited for
the buffer instead, and the slot is freed only when the connection is lost. So a connection still
there ``MLOPS_SERVING_SEND_TIMEOUT_SECONDS`` after it was closed is reset too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from typing import TYPE_CHECKING

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application

HEADER_TIMEOUT_ENV = "MLOPS_SERVING_HEADER_TIMEOUT_SECONDS"
DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0
# Pipelined requests queued on one connection: uvicorn read on as long as answers completed, so one
# client without a token queued hundreds of thousands of parsed requests (memory). Browsers do not
# pipeline; clients that do send a few at a time. Beyond this the connection is reset.
MAX_PIPELINED = 64
SEND_TIMEOUT_ENV = "MLOPS_SERVING_SEND_TIMEOUT_SECONDS"
DEFAULT_SEND_TIMEOUT_SECONDS = 10.0


def header_timeout_seconds() -> float:
    """The deadline from the environment (``ServingSettings.from_env`` has checked the value)."""
    return float(os.environ.get(HEADER_TIMEOUT_ENV) or DEFAULT_HEADER_TIMEOUT_SECONDS)


def send_timeout_seconds() -> float:
    """How long answers may wait unread (``ServingSettings.from_env`` has checked the value)."""
    return float(os.environ.get(SEND_TIMEOUT_ENV) or DEFAULT_SEND_TIMEOUT_SECONDS)


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    """Cancel ``timer`` if set (the caller then sets its attribute to None)."""
    if timer is not None:
        timer.cancel()


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that drops a connection whose request headers do not arrive in time,
    or whose answers are not read in time."""

    _header_deadline: asyncio.TimerHandle | None = None
    _send_deadline: asyncio.TimerHandle | None = None
    _close_deadline: asyncio.TimerHandle | None = None
    _lost = False
    # the request being answered; with pipelining, self.cycle is the last one read
    _running: RequestResponseCycle | None = None

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
        if len(self.pipeline) > MAX_PIPELINED and not self.transport.is_closing():
            self._reset()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        unread = cycle is not None and cycle.response_complete and cycle.more_body
        if unread and not self.transport.is_closing():
            # Answered before its body was read (401, 403, 413, 503, 408): the rest of the body
            # would be parsed as the next request, and one byte of it cancelled the keep-alive
            # timer for good (an unauthenticated client held a connection slot for ever).
            self._close()
            return
        super().on_response_complete()
        self._watch_close()  # closed by the answer (Connection: close, HTTP/1.0)

    def timeout_keep_alive_handler(self) -> None:
        super().timeout_keep_alive_handler()
        self._watch_close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_deadline is None:
            self._send_deadline = self.loop.call_later(send_timeout_seconds(), self._answers_not_read)

    def resume_writing(self) -> None:
        _cancel(self._send_deadline)
        self._send_deadline = None
        super().resume_writing()

    def _should_upgrade(self) -> bool:
        # The app serves no WebSocket: an upgrade handed the connection to uvicorn's WebSocket
        # protocol, outside every deadline here (its 403 close then waited on unread answers).
        return False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._disarm()
        _cancel(self._send_deadline)
        self._send_deadline = None
        _cancel(self._close_deadline)
        self._close_deadline = None
        running = self._running
        if running is not None and not running.response_complete:
            # uvicorn marks only self.cycle disconnected: the pipelined request being answered
            # would write to the closed transport and log "Exception in ASGI application".
            running.disconnected = True
            running.message_event.set()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(header_timeout_seconds(), self._headers_too_late)

    def _disarm(self) -> None:
        _cancel(self._header_deadline)
        self._header_deadline = None

    def _close(self) -> None:
        self.transport.close()
        self._watch_close()

    def _watch_close(self) -> None:
        """A closed transport that still holds answers waits for them to be read: not for ever."""
        if self._lost:
            return  # uvicorn's keep-alive timer outlives a connection reset by its client
        if self.transport.is_closing() and self._close_deadline is None:
            self._close_deadline = self.loop.call_later(send_timeout_seconds(), self._reset)

    def _answers_not_read(self) -> None:
        self._send_deadline = None
        self._reset()

    def _reset(self) -> None:
        """Drop the connection with a reset. close() would wait for the very buffer nobody reads,
        and even abort() leaves the kernel trying to deliver its queue (megabytes) before a FIN:
        with SO_LINGER 0 the queue is discarded and the peer learns at once."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # already gone
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _headers_too_late(self) -> None:
        self._header_deadline = None
        if self.transport.get_write_buffer_size():
            self._reset()  # answers to earlier requests still unread: close() would wait
        elif not self.transport.is_closing():
            self._close()
