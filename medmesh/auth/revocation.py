"""The deny-list of access tokens that must stop working before they expire, in Redis.

svc_auth writes it (logout: the token's `jti`; DisableUser: the user id), every service reads
it on each verification, so a revoked token stops at every service at once rather than at
its expiry. Entries live as long as an access token can, then expire by themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from medmesh.cache import TRANSIENT_ERRORS
from medmesh.errors import DependencyUnavailable


def revocation_prefix(subject_root: str) -> str:
    """The key prefix shared by writer and readers: `<MEDMESH_SUBJECT_ROOT>:auth:`."""
    return f"{subject_root}:auth:"


def revoked_token_key(prefix: str, jti: str) -> str:
    """The key that denies one access token."""
    return f"{prefix}revoked:jti:{jti}"


def revoked_user_key(prefix: str, user_id: str) -> str:
    """The key that denies every access token of a (disabled) user."""
    return f"{prefix}revoked:user:{user_id}"


class RevocationCheck:
    """`TokenVerifier(is_revoked=RevocationCheck(redis, prefix))`: one round trip per token."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def __call__(self, claims: Mapping[str, Any]) -> bool:
        """True when the token's `jti` or its user is on the deny-list."""
        keys = (
            revoked_token_key(self._prefix, str(claims.get("jti", ""))),
            revoked_user_key(self._prefix, str(claims.get("sub", ""))),
        )
        try:
            return bool(await self._redis.exists(*keys))
        except TRANSIENT_ERRORS as exc:
            raise DependencyUnavailable("redis", str(exc)) from exc
