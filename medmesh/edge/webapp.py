"""The browser app (web/, built by Vite into web/dist) served by the edge, as Envoy's static
route does in production: its assets, and index.html for every screen's address (the app
routes in the browser), with a strict Content-Security-Policy and the other security headers.

The app's screens live under a few top-level sections (`APP_SECTIONS`); everything else
(`/v1/...`, `/.well-known/...`, `/healthz`) stays the API's. A test checks that every path
in web/src/app/routes.tsx falls in a section, so a new screen cannot be left unserved.

Only GET and HEAD are answered here, and before ext_authz: the app's files are public (the
app signs in with gRPC-Web calls that are authorized like any other). Assets have content-
hashed names and are cached for a year; index.html is revalidated on every load.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from medmesh.edge.asgi import Send, send_response

DEFAULT_DIST_DIR = Path(__file__).resolve().parent.parent.parent / "web" / "dist"
# First path segments of the app's screens (web/src/app/routes.tsx); "/" is the app too.
APP_SECTIONS: frozenset[str] = frozenset(
    {
        "sign-in",
        "verify-email",
        "reset-password",
        "accept-invitation",
        "studies",
        "reports",
        "admin",
        "account",
    }
)
ASSETS_PREFIX = "/assets/"
_INDEX = "index.html"
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
    ".json": "application/json",
}


def origin_of(url: str) -> str:
    """`scheme://host:port` of a URL, without credentials or path; "" when it has no host."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def content_security_policy(object_origins: Iterable[str] = ()) -> str:
    """The app's CSP: only its own scripts (no inline, no eval), styles, fonts; images from
    itself, blob:/data: (previews) and the object store; connections to itself (gRPC-Web)
    and the object store (presigned PUTs and GETs); never framed, no plugins, no <base>."""
    extra = " ".join(sorted({o for o in object_origins if o}))
    objects = f" {extra}" if extra else ""
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' blob: data:{objects}",
            f"connect-src 'self'{objects}",
            "font-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def security_headers(object_origins: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Headers every response of the app carries."""
    return [
        ("content-security-policy", content_security_policy(object_origins)),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
    ]


@dataclass(frozen=True)
class StaticFile:
    """One file of the built app, read once at start-up."""

    body: bytes
    content_type: str
    cache_control: str


class WebApp:
    """The built app in memory (a few hundred KiB), answered by path."""

    def __init__(
        self, dist_dir: Path = DEFAULT_DIST_DIR, object_origins: Iterable[str] = ()
    ) -> None:
        self.dist_dir = dist_dir
        self.headers = security_headers(object_origins)
        self.files: Mapping[str, StaticFile] = _load(dist_dir)

    @property
    def built(self) -> bool:
        """Whether web/dist held an index.html when the edge started."""
        return f"/{_INDEX}" in self.files

    @staticmethod
    def claims(method: str, path: str) -> bool:
        """Whether this GET/HEAD is the app's (a screen's address or an asset), not the API's."""
        if method not in ("GET", "HEAD"):
            return False
        if path == "/" or path.startswith(ASSETS_PREFIX) or path == "/favicon.ico":
            return True
        return path.split("/", 2)[1] in APP_SECTIONS

    async def respond(self, method: str, path: str, send: Send) -> int:
        """Answer a claimed request; returns the HTTP status sent."""
        if not self.built:
            body = (
                b"The web app is not built: run `npm ci && npm run build` in web/ "
                b"(`medmesh up` does it).\n"
            )
            await self._send(send, method, 503, "text/plain; charset=utf-8", "no-store", body)
            return 503
        if path.startswith(ASSETS_PREFIX) or path == "/favicon.ico":
            found = self.files.get(path)
            if found is None:
                text = "text/plain; charset=utf-8"
                await self._send(send, method, 404, text, "no-store", b"not found\n")
                return 404
            await self._send(send, method, 200, found.content_type, found.cache_control, found.body)
            return 200
        index = self.files[f"/{_INDEX}"]
        await self._send(send, method, 200, index.content_type, index.cache_control, index.body)
        return 200

    async def _send(
        self, send: Send, method: str, status: int, content_type: str, cache: str, body: bytes
    ) -> None:
        headers = [("content-type", content_type), ("cache-control", cache), *self.headers]
        if method == "HEAD":
            await send_response(send, status, headers)
            return
        await send_response(send, status, headers, body)


def _load(dist_dir: Path) -> dict[str, StaticFile]:
    files: dict[str, StaticFile] = {}
    if not dist_dir.is_dir():
        return files
    for path in sorted(dist_dir.rglob("*")):
        if not path.is_file():
            continue
        relative = "/" + path.relative_to(dist_dir).as_posix()
        suffix = path.suffix.lower()
        guessed = mimetypes.guess_type(path.name)[0]
        content_type = _TYPES.get(suffix) or guessed or "application/octet-stream"
        immutable = relative.startswith(ASSETS_PREFIX)
        cache = "public, max-age=31536000, immutable" if immutable else "no-cache"
        files[relative] = StaticFile(path.read_bytes(), content_type, cache)
    return files
