"""A minimal HTTP/1.1 client over one kept-alive connection, for load generation.

General clients such as httpx spend more than a millisecond of CPU per request on
pooling, header models and URL handling. At 32 connections on a 2-core machine, httpx
took most of a core away from the server being measured. This client sends a request already encoded
except for its first line and headers, reads the status, the headers it needs
(Content-Length, Transfer-Encoding, Connection) and the body, and nothing else.
"""

from __future__ import annotations

import asyncio


class ResponseError(ConnectionError):
    """The server closed the connection or sent a response this client cannot read."""


class KeepAliveConnection:
    """One HTTP/1.1 connection to ``host:port`` that sends one request at a time.

    The connection opens on the first request, and again after the server closes it or
    after an error. Requests are never pipelined.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
        """Send POST ``path`` with ``body`` and return the status code and the response body.

        Any failure, a cancellation (such as a timeout) included, closes the connection,
        so that a late response is never read as the reply to the next request.
        """
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("ascii")
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            self._writer.write(head + body)
            return await self._read_response()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            self._abort()
            raise ResponseError(f"{type(error).__name__}: {error}") from error
        except BaseException:
            self._abort()
            raise

    async def _read_response(self) -> tuple[int, bytes]:
        assert self._reader is not None
        status, header_lines = await self._read_head()
        while 100 <= status < 200:  # interim responses such as 100 Continue precede the real one
            status, header_lines = await self._read_head()
        length, chunked, close = None, False, False
        for line in header_lines:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if status in (204, 304):
            body = b""
        elif chunked:
            body = await self._read_chunks()
        elif length is not None:
            body = await self._reader.readexactly(length)
        else:
            body = await self._reader.read()  # delimited by the server closing the connection
            close = True
        if close:
            await self.close()
        return status, body

    async def _read_head(self) -> tuple[int, list[bytes]]:
        """Read a status line and headers; return the status code and the header lines."""
        assert self._reader is not None
        header_block = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = header_block[:-4].split(b"\r\n")
        if not status_line.startswith(b"HTTP/1.1 "):
            raise ValueError(f"unexpected status line {status_line[:40]!r}")
        return int(status_line[9:12]), header_lines

    async def _read_chunks(self) -> bytes:
        assert self._reader is not None
        parts = []
        while True:
            size_line = await self._reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while await self._reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, up to a blank line
                    pass
                return b"".join(parts)
            parts.append((await self._reader.readexactly(size + 2))[:-2])

    def _abort(self) -> None:
        """Drop the socket at once, without waiting for the peer."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.transport.abort()

    async def close(self) -> None:
        """Close the socket; the next request opens a new one."""
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
