"""TLS and credentials for the connections to NATS, Redis and other medmesh services.

PostgreSQL needs nothing here: libpq reads `sslmode=verify-full&sslrootcert=/path/ca.crt` (and
the password) from the URL itself. NATS and Redis take their password in the URL too, so a URL
is a secret: `redact_url` is what goes into logs and error details.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

TLS_SCHEMES = frozenset({"https", "grpcs"})


def client_tls_context(ca_file: str = "") -> ssl.SSLContext:
    """A client context that verifies the server's chain and host name, TLS 1.2 or later,
    against `ca_file` (PEM) when given, else the system's trusted CAs."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def redact_url(url: str) -> str:
    """`scheme://host:port` of `url`, without user, password, path or query (safe to log)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def grpc_channel(
    address: str, *, ca_file: str = "", options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """An asyncio gRPC channel to `address`: `https://host:port` (or `grpcs://`) is TLS with
    the server's chain and host name verified against `ca_file` (else the system's CAs);
    `host:port` is plaintext."""
    parts = urlsplit(address if "//" in address else f"//{address}")
    if parts.scheme.lower() not in TLS_SCHEMES:
        return grpc.aio.insecure_channel(parts.netloc or address, options=list(options))
    roots = Path(ca_file).read_bytes() if ca_file else None
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.aio.secure_channel(parts.netloc, credentials, options=list(options))
