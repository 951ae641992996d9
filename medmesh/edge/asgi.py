"""The little of ASGI the edge needs: the incoming request, and sending a whole response.

The edge is a plain ASGI callable (no framework): it only ever reads one body, streams
responses, and watches for the client going away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(ValueError):
    """The request body is bigger than the edge accepts."""


class Request:
    """One HTTP request: method, raw path, query, lower-case headers, the body on demand."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self._receive = receive
        self.method: str = scope["method"]
        raw = scope.get("raw_path") or scope["path"].encode()
        self.raw_path: str = raw.decode("latin-1").split("?", 1)[0]
        self.query_string: str = scope.get("query_string", b"").decode("latin-1")
        self.headers: list[tuple[str, str]] = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in scope.get("headers", [])
        ]
        self._body_read = False

    def header(self, name: str, default: str = "") -> str:
        """The first value of a header (names are lower-case)."""
        return next((value for key, value in self.headers if key == name), default)

    @property
    def path_with_query(self) -> str:
        """`:path` as the client sent it."""
        return f"{self.raw_path}?{self.query_string}" if self.query_string else self.raw_path

    def query(self) -> list[tuple[str, str]]:
        """Decoded query parameters, in order (`+` is a space, as forms send it)."""
        return parse_qsl(self.query_string, keep_blank_values=True)

    @property
    def client(self) -> tuple[str, int] | None:
        """The peer's address."""
        client = self.scope.get("client")
        return (client[0], int(client[1])) if client else None

    @property
    def server(self) -> tuple[str, int] | None:
        """The address the edge received the request on."""
        server = self.scope.get("server")
        return (server[0], int(server[1] or 0)) if server else None

    async def body(self, limit: int) -> bytes:
        """The whole body; BodyTooLarge past `limit` bytes (the rest is never buffered)."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the request body exceeds {limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        self._body_read = True
        return b"".join(chunks)

    async def wait_disconnect(self) -> None:
        """Return once the client has gone (only meaningful after the body was read)."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            if not self._body_read:  # pragma: no cover - callers read the body first
                await asyncio.sleep(0)


def encode_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """ASGI header list from string pairs."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


async def send_response(
    send: Send, status: int, headers: Iterable[tuple[str, str]], body: bytes = b""
) -> None:
    """A complete, non-streaming response."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": encode_headers([*headers, ("content-length", str(len(body)))]),
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
