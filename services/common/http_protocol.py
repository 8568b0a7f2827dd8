"""uvicorn's httptools protocol with a bound on the request head (431 above it).

httptools (what ``uvicorn[standard]`` runs) has no limit on the request line or the headers:
it glues every fragment of a header value onto the last with ``bytes +=``, so an 8 MB header
was answered 200 and a 62 MB one kept a worker busy copying for minutes, never answered. h11
has a bound (``--h11-max-incomplete-event-size``), but uvicorn answers it with a bare 400 and
h11 parses every request in Python, which is slower on the proxy's hot path (see
docs/configuration.md for the measurements).

This subclass keeps httptools and feeds the parser at most ``STT_MAX_HEADER_BYTES`` of a
request's head (request line plus header fields): the byte that would cross the limit is never
handed to the parser, so no more than the limit is ever buffered for a head. A head over the
limit, or with more than ``STT_MAX_HEADER_FIELDS`` fields, is answered at once with
``431 Request Header Fields Too Large`` and the usual JSON error body (the app never runs: there
is no complete request to give it), and the connection is closed.

Every service runs with it: ``uvicorn --http services.common.http_protocol:BoundedHttpToolsProtocol``
(``services/local_stack.py``, the images' ``CMD``; the chart runs the images' ``CMD``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from core.errors import error_body
from services.common.metrics import HTTP_HEADER_REJECTIONS

# 16 KiB, as Node.js's default --max-http-header-size: several times what a browser with a few
# cookies sends (~1-4 KiB) and above nginx's 8 KiB per header line, while the buffering it
# allows per connection stays small. Nothing of the platform needs more: the proxy forwards no
# caller header to the backends, and bearer tokens are a few hundred bytes.
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
# Browsers send 10-20 fields; 100 is Go's and Apache's LimitRequestFields default.
DEFAULT_MAX_HEADER_FIELDS = 100
# After the 431 the connection reads (and drops) what the client is still sending for this
# long before closing: closing a socket with unread data makes the kernel send RST, and a
# client still writing its head would then lose the 431 instead of reading it.
LINGER_S = 2.0


def configure_head_limits(max_header_bytes: int, max_header_fields: int) -> None:
    """Set the bounds every connection of this process applies (``STT_MAX_HEADER_BYTES``,
    ``STT_MAX_HEADER_FIELDS``, from the service's settings model).

    uvicorn builds the protocol itself, with no way to hand it arguments, so the service's app
    (``services.common.app.create_app``) sets them on the class when it is built: uvicorn imports
    the app before it opens the listening socket, so every connection sees them."""
    BoundedHttpToolsProtocol.max_header_bytes = max_header_bytes
    BoundedHttpToolsProtocol.max_header_fields = max_header_fields


class _HeadRefusedError(Exception):
    """Raised from a parser callback to stop parsing a head that has too many fields."""


def _service_name(config: Config) -> str:
    """``base`` for ``services.base.app:app``: the ``service`` label of the metric."""
    app = config.app if isinstance(config.app, str) else ""
    parts = app.split(":", 1)[0].split(".")
    return parts[1] if len(parts) >= 3 and parts[0] == "services" else "unknown"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses a request head over the byte or field limit with 431.

    Only the head is counted: bodies have their own limit (``STT_MAX_UPLOAD_BYTES``) in the
    app. Counting happens before bytes reach the parser, in ``data_received``; the head is
    known to be complete when ``on_headers_complete`` has run. With pipelined requests the
    bytes of a following head that arrive in the same read as the end of the previous request
    are not counted, so a head can exceed the limit by at most one read (64-256 KiB), once.
    """

    # The defaults until the app sets its settings' values (configure_head_limits).
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_header_fields: int = DEFAULT_MAX_HEADER_FIELDS

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._service = _service_name(config)
        self._in_head = True  # the next bytes belong to a request head
        self._head_bytes = 0
        self._head_fields = 0
        self._heads_completed = 0
        self._refused: str | None = None  # why the head was refused, once it was

    # Parser callbacks (httptools calls them while ``feed_data`` runs).
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_fields = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        if self._head_fields > self.max_header_fields:
            self._refused = "fields"
            raise _HeadRefusedError
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_completed += 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    # Transport side.
    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._refused is not None:  # lingering after a 431: drop what still arrives
            return
        while data:
            if not self._in_head:
                self._feed(data)
                return
            budget = self.max_header_bytes - self._head_bytes
            if budget <= 0:
                self._refuse("bytes")
                return
            part, data = data[:budget], data[budget:]
            self._head_bytes += len(part)
            heads_before = self._heads_completed
            if not self._feed(part):
                return
            if data and self._heads_completed == heads_before:
                # ``budget`` more bytes did not finish the head, and more are waiting.
                self._refuse("bytes")
                return

    def _feed(self, data: bytes) -> bool:
        """Feed the parser as uvicorn does; False when the connection is done with HTTP
        (refused, a parse error answered with 400, or upgraded to a WebSocket)."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refused is not None:
                self._refuse(self._refused)
                return False
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return not self.transport.is_closing()

    def _refuse(self, reason: str) -> None:
        """Answer 431 with the JSON error, stop reading the request, close after a linger."""
        self._refused = reason
        HTTP_HEADER_REJECTIONS.labels(self._service, reason).inc()
        if reason == "fields":
            message = f"the request has more than {self.max_header_fields} header fields; send fewer"
        else:
            message = f"the request line and headers exceed {self.max_header_bytes} bytes; send smaller headers"
        self.logger.warning("refused a request head with 431: %s", message)
        body = json.dumps(error_body("headers_too_large", message)).encode()
        head = [STATUS_LINE[431]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # a request already running for this connection
        try:
            self.transport.write_eof()  # FIN after the 431; reading goes on until the linger ends
        except (NotImplementedError, AttributeError, RuntimeError, OSError):  # TLS: no half-close
            self.transport.close()
            return
        self.loop.call_later(LINGER_S, self.transport.close)

    def eof_received(self) -> None:
        if self._refused is not None:  # the client stopped sending: no need to linger further
            self.transport.close()
        return None
