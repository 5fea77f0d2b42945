"""HTTP/1.1 connections that must send a request's headers within `header_timeout` seconds. uvicorn's
protocols have idle keep-alive and concurrency limits but no header timeout, so a client sending its
headers a byte a second would hold a connection forever. The httptools protocol (uvicorn's fastest,
installed with corral) is used where it imports, h11's otherwise."""
import functools
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed
    HttpToolsProtocol = None

logger = logging.getLogger(__name__)


def http_protocol(header_timeout: float):
    """uvicorn's `http` setting: a protocol class that enforces `header_timeout`."""
    protocol = HeaderTimeoutH11Protocol if HttpToolsProtocol is None else HeaderTimeoutHttpToolsProtocol
    return functools.partial(protocol, header_timeout=header_timeout)


class HeaderTimer:
    """Closes a connection whose next request's headers are not complete `header_timeout` seconds after
    it opened or after that request's first byte. Mixed in before a uvicorn protocol, which says when a
    request's head begins and ends."""

    def __init__(self, *args, header_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._header_timer = None

    def connection_made(self, transport):
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc):
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self):
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_timed_out)

    def _cancel_header_timer(self):
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self):
        self._header_timer = None
        if not self.transport.is_closing():
            logger.info("closing a connection from %s: no complete request headers within %.0f s",
                        "%s:%s" % self.client if self.client else "?", self.header_timeout)
            self.transport.close()


class HeaderTimeoutH11Protocol(HeaderTimer, H11Protocol):
    def data_received(self, data: bytes):
        if self.conn.their_state == h11.IDLE:  # the bytes of a new request's head
            self._start_header_timer()
        super().data_received(data)
        if self.conn.their_state != h11.IDLE:
            self._cancel_header_timer()


if HttpToolsProtocol is not None:
    class HeaderTimeoutHttpToolsProtocol(HeaderTimer, HttpToolsProtocol):
        def on_message_begin(self):  # the parser met a request's first byte
            self._start_header_timer()
            super().on_message_begin()

        def on_headers_complete(self):
            self._cancel_header_timer()
            super().on_headers_complete()
