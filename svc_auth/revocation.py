"""Access tokens that must stop working before they expire, kept in Redis.

Access tokens are verified offline, so revoking one needs a deny-list that every verification
consults: the token's `jti` (logout) and the user's id (disabled). Entries live exactly as long
as an access token can, after which expiry does the job and the entry vanishes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from medmesh.cache import TRANSIENT_ERRORS
from medmesh.errors import DependencyUnavailable


class RevocationList:
    """`<prefix>revoked:jti:<jti>` and `<prefix>revoked:user:<user_id>` keys."""

    def __init__(self, redis: Redis, prefix: str, *, access_ttl_s: int, leeway_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._max_ttl_s = access_ttl_s + leeway_s

    async def revoke_token(self, jti: str) -> None:
        """Deny the access token `jti` for as long as any access token can live."""
        await self._set(f"{self._prefix}revoked:jti:{jti}", self._max_ttl_s)

    async def revoke_user(self, user_id: str) -> None:
        """Deny every access token already issued to `user_id` (the user was disabled)."""
        await self._set(f"{self._prefix}revoked:user:{user_id}", self._max_ttl_s)

    async def is_revoked(self, claims: Mapping[str, Any]) -> bool:
        """The verifier's revocation hook: one Redis round trip for both deny-lists."""
        keys = (
            f"{self._prefix}revoked:jti:{claims.get('jti', '')}",
            f"{self._prefix}revoked:user:{claims.get('sub', '')}",
        )
        try:
            return bool(await self._redis.exists(*keys))
        except TRANSIENT_ERRORS as exc:
            raise DependencyUnavailable("redis", str(exc)) from exc

    async def _set(self, key: str, ttl_s: int) -> None:
        try:
            await self._redis.set(key, b"1", ex=ttl_s)
        except TRANSIENT_ERRORS as exc:
            raise DependencyUnavailable("redis", str(exc)) from exc
