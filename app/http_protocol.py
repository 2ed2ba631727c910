"""The HTTP/1.1 protocol uvicorn runs: httptools with a limit on the size of request heads.

httptools parses in C and serves more requests per core than the pure-Python h11, but
unlike h11 it buffers a request line and headers of any size. The protocol here stops
reading a request whose head grows past ``MAX_HEAD_BYTES`` and responds with 431.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from app.errors import HeadersTooLarge

logger = logging.getLogger(__name__)

# Request line and headers together. h11, for comparison, stops at 16 KiB of an unfinished head.
MAX_HEAD_BYTES = 64 * 1024
# Seconds a connection keeps reading, and dropping, the rest of a rejected request.
LINGER_S = 2.0
# While a head is read the parser gets at most this many bytes at a time, so a head is
# counted to within this many bytes whatever the size of the reads.
FEED_BYTES = 16 * 1024

try:
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is not installed
    HttpToolsProtocol = None


def http_protocol(choice: str) -> str | type[asyncio.Protocol]:
    """Return what uvicorn's ``http`` option takes for the ``http`` setting (auto, httptools or h11).

    ``auto`` picks the bounded httptools protocol when httptools is installed, else h11.
    """
    if choice == "h11" or (choice == "auto" and HttpToolsProtocol is None):
        return "h11"
    if HttpToolsProtocol is None:
        raise RuntimeError("http is set to httptools, but httptools is not installed; pip install httptools")
    return BoundedHttpToolsProtocol


if HttpToolsProtocol is not None:

    class _StoppableParser:
        """An httptools parser whose ``feed_data`` returns quietly when the protocol stopped it on purpose.

        uvicorn logs every parser error as an invalid request before it calls
        ``send_400_response``, but a head or trailers over the limit are not invalid.
        """

        def __init__(self, parser: Any, protocol: BoundedHttpToolsProtocol) -> None:
            self._parser = parser
            self._protocol = protocol

        def feed_data(self, data: bytes) -> None:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserCallbackError:
                if self._protocol.stopped_parser is None:
                    raise

        def __getattr__(self, name: str) -> Any:
            return getattr(self._parser, name)

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol that responds with 431 once a request's head passes ``MAX_HEAD_BYTES``.

        A head is counted from the end of the previous request (or the connection's start)
        to the end of its headers, so the limit holds for each kept-alive or pipelined
        request. Bytes are counted as they arrive and the parser gets at most ``FEED_BYTES``
        of a head at a time, so at most that much past the limit is parsed. Requests
        pipelined before the rejected head get their responses first. After the 431 the
        connection reads and drops what the client still sends for ``LINGER_S`` seconds
        before closing, so that the client reads the response rather than a reset.

        Trailers of a chunked body are counted the same way, apart from the head. Over the
        limit they close the connection, because the request is already with the app.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.parser = _StoppableParser(self.parser, self)
            self.stopped_parser: str | None = None  # "head" or "trailers" once a limit stopped the parser
            self._reading_head = True
            self._head_began_in_read = False
            self._head_bytes = 0  # since the head began, counted per read
            self._parsed_bytes = 0  # of the head or the trailers, counted from the parser's callbacks
            # True from a chunk-size line to its data, and after the last one through the trailers.
            self._in_chunk_head = False

        def data_received(self, data: bytes) -> None:
            if self.stopped_parser == "head":
                return  # drop what arrives after the rejected head
            start = 0
            while start < len(data):
                end = start + FEED_BYTES if self._reading_head or self._in_chunk_head else len(data)
                self._feed(data[start:end])
                start = end
                if self.stopped_parser or self.transport.is_closing() or self.transport.get_protocol() is not self:
                    break

        def _feed(self, data: bytes) -> None:
            self._head_began_in_read = False
            super().data_received(data)
            if self.stopped_parser is not None:
                self._act_on_limit()
            elif (self._reading_head or self._in_chunk_head) and not self.transport.is_closing():
                self._count_read(len(data))

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._reading_head = True
            self._head_bytes = 0
            self._parsed_bytes = 0

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._count_parsed(len(url))

        def on_header(self, name: bytes, value: bytes) -> None:
            super().on_header(name, value)
            self._count_parsed(len(name) + len(value) + 4)  # ": " and CRLF

        def on_headers_complete(self) -> None:
            self._reading_head = False
            self._parsed_bytes = 0  # trailers of a chunked body, if any, are counted on their own
            super().on_headers_complete()

        def on_chunk_header(self) -> None:
            self._in_chunk_head = True
            self._head_began_in_read = True

        def on_body(self, body: bytes) -> None:
            self._in_chunk_head = False
            super().on_body(body)

        def on_chunk_complete(self) -> None:
            self._in_chunk_head = False

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_chunk_head = False
            self._reading_head = True
            self._head_began_in_read = True
            self._head_bytes = 0
            self._parsed_bytes = 0

        def on_response_complete(self) -> None:
            if self.stopped_parser != "head":
                super().on_response_complete()
                return
            # The rejected head followed requests whose responses were still to be written.
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return  # that response closed the connection, so no 431 can follow it
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._send_rejection()

        def _count_read(self, size: int) -> None:
            """Count a read that ended inside a head or inside trailers, and act once they pass the limit.

            Inside trailers, only a trailer line that has not ended yet can pass the limit here.
            """
            if self._head_began_in_read:
                # The read also held the end of the previous request, so only what the parser saw counts.
                self._head_bytes = self._parsed_bytes
            else:
                self._head_bytes += size
            if self._head_bytes > MAX_HEAD_BYTES:
                self.stopped_parser = "head" if self._reading_head else "trailers"
                self._act_on_limit()

        def _count_parsed(self, size: int) -> None:
            """Add ``size`` parsed bytes of the head or trailers, and stop the parser once they pass the limit."""
            self._parsed_bytes += size
            if self._parsed_bytes > MAX_HEAD_BYTES:
                self.stopped_parser = "head" if self._reading_head else "trailers"
                # httptools re-raises this as HttpParserCallbackError, which _StoppableParser drops.
                raise HeadersTooLarge(f"request {self.stopped_parser} too large")

        def _act_on_limit(self) -> None:
            """Reject a head over the limit with 431, or close a connection whose trailers are over it."""
            if self.stopped_parser == "head":
                self._reject_head()
                return
            client = self._client_name()
            logger.info("closed connection from %s: trailers of a chunked body exceed %d bytes", client, MAX_HEAD_BYTES)
            self.transport.close()  # the app gets a disconnect rather than waiting for the rest of the body

        def _client_name(self) -> str:
            return "%s:%d" % self.client if self.client else "unknown client"

        def _reject_head(self) -> None:
            """Send the 431 now, or after the responses still to be written, then close."""
            self._reading_head = False
            if self.cycle is None or self.cycle.response_complete:
                self._send_rejection()
            else:
                # Responses go out in order, so the 431 waits for the others. Input is read and
                # dropped meanwhile, so a response that closes the connection ends without a reset.
                self.flow.resume_reading()

        def _send_rejection(self) -> None:
            error = HeadersTooLarge(
                f"request line and headers exceed {MAX_HEAD_BYTES} bytes, the most this service reads; "
                "send large values in the body"
            )
            logger.info("rejected request from %s: %s", self._client_name(), error.message)
            body = json.dumps({"error": {"type": error.error_type, "message": error.message}}).encode("utf-8")
            head = (
                f"HTTP/1.1 {error.status} Request Header Fields Too Large\r\n"
                "content-type: application/json\r\n"
                f"content-length: {len(body)}\r\n"
                "connection: close\r\n\r\n"
            )
            self.transport.write(head.encode("ascii") + body)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.flow.resume_reading()
            self.loop.call_later(LINGER_S, self.transport.close)
