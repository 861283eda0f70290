"""Requests aiohttp's HTTP parser refuses get the SPEC's JSON error shape, not plain text.

A malformed request line, ``Content-Length`` together with ``Transfer-Encoding``, a header
past 8 KB: aiohttp answers these from :meth:`aiohttp.web_protocol.RequestHandler.handle_error`
before any route or middleware runs, with a ``text/plain`` body. :func:`install` wraps that
method so the answer is ``{"error", "message", "details"}`` as everywhere else (same
status, connection still closed), and logs the refusal at debug level without a traceback:
anyone can send these, and the log is not theirs to fill.
"""

from __future__ import annotations

import ast
import logging
import re
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import HttpVersion11, hdrs, web, web_protocol, web_urldispatcher
from aiohttp.http_exceptions import BadHttpMethod, ContentEncodingError

log = logging.getLogger(__name__)

#: Error codes for the statuses the parser answers with; others use the status phrase.
CODES = {
    400: "bad_request",
    413: "too_large",
    414: "uri_too_long",
    415: "unsupported_encoding",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal",
    501: "not_implemented",
}


def json_error(code: str, message: str) -> bytes:
    """The SPEC's error shape, for answers made before any route or middleware runs."""
    return orjson.dumps({"error": code, "message": message, "details": []})


def error_body(status: int) -> bytes:
    """The JSON error a refused request gets: a fixed message, nothing echoed from the request."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    code = CODES.get(status) or phrase.lower().replace(" ", "_").replace("-", "_")
    if status == 501:
        message = "this server implements no such method (RFC 9110: a method it does not recognise is a 501)"
    elif status == 415:
        message = "the body's Content-Encoding must be one of gzip, deflate, identity"
    else:
        message = "internal error" if status >= 500 else f"{phrase}: the HTTP request could not be parsed"
    return json_error(code, message)


#: RFC 9110's ``token``: what a method is made of.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def unknown_method(exc: BadHttpMethod) -> bool:
    """Whether the parser refused a well-formed method it does not know (``FOO /x HTTP/1.1``: 501),
    rather than a malformed request line (``G\0T``, a leading space, no target: 400).

    aiohttp's C parser raises :class:`BadHttpMethod` for both; its message quotes the request
    line as a bytes literal on its second line. Without one (another parser), as before: 501.
    """
    for line in str(getattr(exc, "message", "") or "").splitlines():
        quoted = line.strip()
        if quoted[:2] in ("b'", 'b"'):
            try:
                request_line = ast.literal_eval(quoted)
            except (ValueError, SyntaxError):
                return False
            method, space, _ = request_line.partition(b" ")
            return bool(space) and _TOKEN.fullmatch(method) is not None
    return True


def install() -> bool:
    """Wrap ``RequestHandler.handle_error`` (once); return whether this call installed it."""
    handler_class: Any = web_protocol.RequestHandler
    if getattr(handler_class.handle_error, "_orderstream", False):
        return False

    def handle_error(
        self: Any, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if isinstance(exc, BadHttpMethod) and unknown_method(exc):
            status = 501  # an unknown method (``FOO``) is not a malformed request (``G\0T``, `` GET``: 400)
        elif isinstance(exc, ContentEncodingError):
            status = 415  # ``br`` or ``zstd``, which aiohttp decodes only with a library not installed
        if status >= 500 and status != 501:
            self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        else:
            log.debug("refused a request from %s the HTTP parser could not read: %s", request.remote, exc)
        if request.writer.output_size > 0:  # as aiohttp: part of an answer is out already
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        response = web.Response(status=status, body=error_body(status), content_type="application/json")
        response.force_close()
        return response

    handle_error._orderstream = True  # type: ignore[attr-defined]
    handler_class.handle_error = handle_error
    return True


def _closing(request: web.Request, response: web.Response) -> web.Response:
    """``response``, then the connection closes at once: the body is never read (not even to drain it)."""
    request.content.feed_eof()
    response.force_close()
    return response


def install_expect(max_body_bytes: int) -> bool:
    """Answer ``Expect`` in the JSON error shape, and a declared body past the limit before it is sent.

    aiohttp's default handler (run before any middleware) says ``100 Continue`` to any
    ``Expect: 100-continue``, so a client announcing a 10 GB body is invited to send it
    and refused only after; and any other expectation is a plain-text ``417``. Routes take
    the default at creation (faust creates them at start, after this runs).
    """
    if getattr(web_urldispatcher._default_expect_handler, "_orderstream", False):
        return False

    async def expect_handler(request: web.Request) -> web.StreamResponse | None:
        expect = request.headers.get(hdrs.EXPECT, "")
        if request.version != HttpVersion11:
            return None
        if expect.lower() != "100-continue":
            body = json_error("expectation_failed", "only Expect: 100-continue is understood")
            response = web.Response(status=417, body=body, content_type="application/json")
            return _closing(request, response)
        if request.content_length is not None and request.content_length > max_body_bytes:
            body = json_error("too_large", f"the body is larger than {max_body_bytes} bytes")
            response = web.Response(status=413, body=body, content_type="application/json")
            return _closing(request, response)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp: the answer has not started yet
        return None

    expect_handler._orderstream = True  # type: ignore[attr-defined]
    web_urldispatcher._default_expect_handler = expect_handler  # type: ignore[assignment]
    return True
