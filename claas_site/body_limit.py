"""Request bodies over the size limit are refused with 413 as their headers arrive, before the body is read.

daphne's HTTP server (Twisted) receives a whole request body, spooling it to a temporary file,
before the ASGI application sees the request; a view's check of Content-Length therefore comes
after the bytes have been taken in. This hooks daphne's request object instead: a declared
length over the limit is answered at once and the connection closed, and a body without a
declared length (chunked) is counted as it arrives and cut off at the limit.
"""
from __future__ import annotations

import io
import json
import logging
from typing import Any

from django.conf import settings

from claas_site.errors import error_body

logger = logging.getLogger(__name__)


def max_request_bytes() -> int:
    """The largest body any endpoint accepts: an upload plus its form fields."""
    return settings.MAX_UPLOAD_BYTES + settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def refusal_bytes(length: int | None) -> bytes:
    """The raw 413 response, in the API's error format."""
    limit = max_request_bytes()
    message = (f"The request body has {length} bytes; at most {limit} are allowed." if length is not None
               else f"The request body is larger than the limit of {limit} bytes.")
    body = json.dumps(error_body(message, {"limit_bytes": limit})).encode()
    head = (f"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + body


def _refuse(request: Any, length: int | None) -> None:
    request._claas_refused = True
    request.content = io.BytesIO()  # Twisted rewinds it when the request ends; it stays empty
    request.channel.transport.write(refusal_bytes(length))
    request.channel.loseConnection()
    logger.warning("refused a request body of %s (limit %s bytes)",
                   f"{length} bytes" if length is not None else "unknown length", max_request_bytes())


def daphne_install() -> None:
    """Hook daphne's request class (once per process); other servers are left alone."""
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:  # pragma: no cover - daphne is a dependency
        return
    if getattr(WebRequest, "_claas_body_limit", False):
        return
    got_length, content_chunk, process = WebRequest.gotLength, WebRequest.handleContentChunk, WebRequest.process

    def gotLength(self: Any, length: int | None) -> None:
        self._claas_received = 0
        self._claas_refused = False
        if length is not None and length > max_request_bytes():
            _refuse(self, length)
            return
        got_length(self, length)

    def handleContentChunk(self: Any, data: bytes) -> None:
        if getattr(self, "_claas_refused", False):
            return
        self._claas_received = getattr(self, "_claas_received", 0) + len(data)
        if self._claas_received > max_request_bytes():
            _refuse(self, None)
            return
        content_chunk(self, data)

    def guarded_process(self: Any) -> Any:
        if getattr(self, "_claas_refused", False):
            return None
        return process(self)

    WebRequest.gotLength = gotLength
    WebRequest.handleContentChunk = handleContentChunk
    WebRequest.process = guarded_process
    WebRequest._claas_body_limit = True
