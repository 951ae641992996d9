"""Access tokens for tests of services other than svc_auth: a real Ed25519 key, a real JWKS
document and the same verifier the services use, without running svc_auth.

svc_auth's own tests issue tokens through its RPCs; everything else uses this factory.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from medmesh.auth import StaticJwks, TokenVerifier

ISSUER = "medmesh"
AUDIENCE = "medmesh"


class TokenFactory:
    """Mints access tokens signed by its own key, and verifies them with its JWKS."""

    def __init__(self, *, issuer: str = ISSUER, audience: str = AUDIENCE) -> None:
        self.issuer = issuer
        self.audience = audience
        self.private_key = Ed25519PrivateKey.generate()
        self.kid = f"test-{secrets.token_hex(4)}"
        public = OKPAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        self.jwks: dict[str, Any] = {
            "keys": [{**public, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]
        }

    def verifier(self) -> TokenVerifier:
        """The verifier a service under test should use (`ServiceParts.verifier`)."""
        return TokenVerifier(StaticJwks(self.jwks), issuer=self.issuer, audience=self.audience)

    def mint(
        self,
        *,
        user_id: str = "user-1",
        clinic_id: str = "clinic-a",
        roles: Iterable[str] = ("clinician",),
        lifetime_s: int = 900,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed access token; `claims` overrides or adds claims (None values remove)."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id,
            "clinic": clinic_id,
            "roles": list(roles),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime_s,
            "jti": str(uuid.uuid4()),
        }
        for key, value in (claims or {}).items():
            if value is None:
                payload.pop(key, None)
            else:
                payload[key] = value
        return jwt.encode(payload, self.private_key, algorithm="EdDSA", headers={"kid": self.kid})

    @staticmethod
    def metadata(token: str) -> tuple[tuple[str, str], ...]:
        """gRPC call metadata carrying `token`."""
        return (("authorization", f"Bearer {token}"),)

    def metadata_for(self, **mint_args: Any) -> tuple[tuple[str, str], ...]:
        """Mint a token and wrap it as call metadata in one step."""
        return self.metadata(self.mint(**mint_args))
