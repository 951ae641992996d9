"""Where a verifier gets public keys: a JWKS document (RFC 7517) from svc_auth or given.

Whoever can answer the JWKS request can mint tokens every service accepts, so the keys travel
over TLS with the server's certificate verified (`https://host:port` or `grpcs://host:port`:
the system's CAs, or MEDMESH_JWKS_CA_FILE). A plaintext address (`host:port`, `http://`) is
accepted only on loopback (`medmesh up`, tests) or with MEDMESH_JWKS_ALLOW_PLAINTEXT=true.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import grpc

from gen.medmesh.auth.v1 import GetJwksRequest, Jwk
from medmesh.client import AsyncStub
from medmesh.contract import DescriptorImage
from medmesh.errors import DependencyUnavailable
from medmesh.settings import SettingsError

JwksDocument = Mapping[str, Any]

_JWK_FIELDS = ("kty", "kid", "alg", "use", "n", "e", "crv", "x")


def jwk_to_dict(key: Jwk) -> dict[str, str]:
    """A contract `Jwk` as the JSON object PyJWT reads (empty members left out)."""
    return {name: value for name in _JWK_FIELDS if (value := getattr(key, name))}


class JwksSource(Protocol):
    """Anything that can produce the current JWKS document."""

    async def fetch(self) -> JwksDocument:
        """The current document: `{"keys": [...]}`."""
        ...


class StaticJwks:
    """A fixed document: tests, or a deployment that distributes keys out of band."""

    def __init__(self, document: JwksDocument) -> None:
        self.document = document

    async def fetch(self) -> JwksDocument:
        """The document given at construction (replace `.document` to rotate)."""
        return self.document


_TLS_SCHEMES = {"https", "grpcs"}
_PLAIN_SCHEMES = {"", "http", "grpc"}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def jwks_channel(
    address: str, *, ca_file: str = "", allow_plaintext: bool = False
) -> tuple[str, grpc.aio.Channel]:
    """`(host:port, channel)` for svc_auth at `address`: TLS for `https://`/`grpcs://`
    (chain and host name verified against `ca_file` or the system's CAs); plaintext for
    `host:port`/`http://` only on loopback or when `allow_plaintext`. SettingsError otherwise
    (MEDMESH_AUTH_ADDR is named)."""
    parts = urlsplit(address if "//" in address else f"//{address}")
    scheme = parts.scheme.lower()
    if scheme not in _TLS_SCHEMES | _PLAIN_SCHEMES or not parts.hostname or not parts.port:
        raise SettingsError(
            f"MEDMESH_AUTH_ADDR={address!r}: use https://host:port (TLS) or host:port"
        )
    target = parts.netloc
    if scheme in _TLS_SCHEMES:
        roots = Path(ca_file).read_bytes() if ca_file else None
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        return target, grpc.aio.secure_channel(target, credentials)
    if not (allow_plaintext or _is_loopback(parts.hostname)):
        raise SettingsError(
            f"MEDMESH_AUTH_ADDR={address!r} would fetch the token-signing keys without TLS "
            "from another host (whoever answers could mint tokens): use https://host:port "
            "(MEDMESH_JWKS_CA_FILE for a private CA), or set MEDMESH_JWKS_ALLOW_PLAINTEXT=true "
            "on a network you trust"
        )
    return target, grpc.aio.insecure_channel(target)


class GrpcJwksSource:
    """svc_auth's `GetJwks` RPC over gRPC (MEDMESH_AUTH_ADDR), over TLS unless loopback or
    explicitly allowed (`jwks_channel`)."""

    def __init__(
        self,
        address: str,
        *,
        image: DescriptorImage | None = None,
        timeout_s: float = 3.0,
        ca_file: str = "",
        allow_plaintext: bool = False,
    ) -> None:
        address, self._channel = jwks_channel(
            address, ca_file=ca_file, allow_plaintext=allow_plaintext
        )
        self._stub = AsyncStub(
            self._channel, "medmesh.auth.v1.AuthService", image or DescriptorImage()
        )
        self._timeout_s = timeout_s
        self.address = address

    async def fetch(self) -> JwksDocument:
        """Ask svc_auth; UNAVAILABLE (DependencyUnavailable) when it cannot be reached."""
        try:
            response = await self._stub.get_jwks(GetJwksRequest(), timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise DependencyUnavailable("auth", f"GetJwks: {exc.code().name}") from exc
        return {"keys": [jwk_to_dict(key) for key in response.keys]}

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()
