"""Access-token verification: signature by a published key, algorithm allow-list, registered
claims, medmesh claims (`clinic`, `roles`), and an optional revocation check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import jwt
import structlog

from medmesh.auth.jwks import JwksSource
from medmesh.errors import Unauthenticated
from medmesh.identity import ALL_ROLES, Identity

# Asymmetric only: a symmetric algorithm would let anyone holding the public key (everyone)
# sign tokens ("HS256 signed with the public key"), and `none` needs no key at all.
ALLOWED_ALGORITHMS: tuple[str, ...] = ("EdDSA", "RS256")
REQUIRED_CLAIMS = ("exp", "iat", "sub", "iss", "aud", "jti", "clinic", "roles")

RevocationCheck = Callable[[Mapping[str, Any]], Awaitable[bool]]

_log = structlog.get_logger("medmesh.auth")


class TokenVerifier:
    """Verifies access tokens against the keys of a `JwksSource`.

    Keys are cached by `kid`. A token naming an unknown `kid` refreshes the document once
    (at most every `min_refresh_gap_s`, so a flood of forged kids cannot hammer svc_auth);
    the cache is also refreshed every `refresh_interval_s` so retired keys stop verifying.
    """

    def __init__(
        self,
        source: JwksSource,
        *,
        issuer: str,
        audience: str,
        algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS,
        leeway_s: float = 5.0,
        refresh_interval_s: float = 300.0,
        min_refresh_gap_s: float = 5.0,
        is_revoked: RevocationCheck | None = None,
    ) -> None:
        unsafe = set(algorithms) - set(ALLOWED_ALGORITHMS)
        if unsafe:
            raise ValueError(f"algorithms not allowed for access tokens: {sorted(unsafe)}")
        self._source = source
        self._issuer = issuer
        self._audience = audience
        self._algorithms = algorithms
        self._leeway_s = leeway_s
        self._refresh_interval_s = refresh_interval_s
        self._min_refresh_gap_s = min_refresh_gap_s
        self._is_revoked = is_revoked
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> Identity:
        """The identity a valid token carries; Unauthenticated (with a short reason) otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed access token") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in self._algorithms:
            raise Unauthenticated("access token algorithm not allowed")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("access token has no key id")
        key = await self._key(kid)
        if key is None or key.algorithm_name != algorithm:
            raise Unauthenticated("access token signed by an unknown key")
        claims = self._decode(token, key, algorithm)
        identity = _identity_from(claims)
        if self._is_revoked is not None and await self._is_revoked(claims):
            raise Unauthenticated("access token revoked")
        return identity

    def _decode(self, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("access token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("access token not yet valid") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"access token rejected: {type(exc).__name__}") from None

    async def _key(self, kid: str) -> jwt.PyJWK | None:
        now = time.monotonic()
        stale = now - self._fetched_at > self._refresh_interval_s
        unknown = kid not in self._keys and now - self._fetched_at > self._min_refresh_gap_s
        if stale or unknown:
            await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at < self._min_refresh_gap_s:
                return  # another task refreshed while this one waited
            document = await self._source.fetch()
            keys: dict[str, jwt.PyJWK] = {}
            for entry in document.get("keys", []):
                try:
                    key = jwt.PyJWK(dict(entry))
                except jwt.PyJWTError:
                    _log.warning("ignoring unusable JWK", kid=entry.get("kid"))
                    continue
                if key.key_id and key.algorithm_name in self._algorithms:
                    keys[key.key_id] = key
            self._keys = keys
            self._fetched_at = time.monotonic()


def _identity_from(claims: Mapping[str, Any]) -> Identity:
    roles, clinic, subject = claims["roles"], claims["clinic"], claims["sub"]
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthenticated("access token roles are malformed")
    if not isinstance(clinic, str) or not clinic or not isinstance(subject, str) or not subject:
        raise Unauthenticated("access token subject or clinic is malformed")
    return Identity(
        user_id=subject,
        clinic_id=clinic,
        roles=frozenset(roles) & ALL_ROLES,
        token_id=str(claims["jti"]),
    )
