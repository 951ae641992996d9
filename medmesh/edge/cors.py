"""CORS for the browser app: preflights answered at the edge, allowed origins echoed, and the
gRPC-Web status headers exposed so that a browser client can read them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS = (
    "authorization, content-type, x-grpc-web, x-user-agent, grpc-timeout, x-request-id, "
    "traceparent, tracestate"
)
EXPOSE_HEADERS = (
    "grpc-status, grpc-message, grpc-status-details-bin, retry-after, www-authenticate, "
    "x-request-id"
)
MAX_AGE_S = "86400"


@dataclass(frozen=True)
class CorsPolicy:
    """Origins allowed to call the edge from a browser (`*` allows any; empty allows none).

    No credentials (cookies) are allowed: the browser app sends a bearer token.
    """

    origins: frozenset[str] = frozenset()

    @classmethod
    def of(cls, origins: Iterable[str]) -> CorsPolicy:
        """A policy from a list of origins (`https://app.example.org`) or `*`."""
        return cls(frozenset(o.strip().rstrip("/") for o in origins if o.strip()))

    def allows(self, origin: str) -> bool:
        """True when a browser page from `origin` may read the edge's responses."""
        return bool(origin) and ("*" in self.origins or origin in self.origins)

    @staticmethod
    def is_preflight(method: str, origin: str, request_method: str) -> bool:
        """An OPTIONS request a browser sends before the real one."""
        return method == "OPTIONS" and bool(origin) and bool(request_method)

    def preflight_headers(self, origin: str) -> list[tuple[str, str]]:
        """The answer to an allowed preflight."""
        return [
            ("access-control-allow-origin", origin),
            ("access-control-allow-methods", ALLOW_METHODS),
            ("access-control-allow-headers", ALLOW_HEADERS),
            ("access-control-max-age", MAX_AGE_S),
            ("vary", "Origin"),
        ]

    def response_headers(self, origin: str) -> list[tuple[str, str]]:
        """What an actual response to an allowed origin carries."""
        if not self.allows(origin):
            return []
        return [
            ("access-control-allow-origin", origin),
            ("access-control-expose-headers", EXPOSE_HEADERS),
            ("vary", "Origin"),
        ]
