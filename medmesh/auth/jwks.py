"""Where a verifier gets public keys: a JWKS document (RFC 7517) from svc_auth or given."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import grpc

from gen.medmesh.auth.v1 import GetJwksRequest, Jwk
from medmesh.client import AsyncStub
from medmesh.contract import DescriptorImage
from medmesh.errors import DependencyUnavailable

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


class GrpcJwksSource:
    """svc_auth's `GetJwks` RPC over gRPC (MEDMESH_AUTH_ADDR)."""

    def __init__(
        self, address: str, *, image: DescriptorImage | None = None, timeout_s: float = 3.0
    ) -> None:
        self._channel = grpc.aio.insecure_channel(address)
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
