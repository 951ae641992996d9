"""Access tokens that must stop working before they expire, kept in Redis.

Access tokens are verified offline, so revoking one needs a deny-list that every verification
(in every service: `medmesh.auth.RevocationCheck`) consults: the token's `jti` (logout) and
the user's id (disabled). Entries live exactly as long as an access token can, after which
expiry does the job and the entry vanishes.
"""

from __future__ import annotations

from redis.asyncio import Redis

from medmesh.auth.revocation import RevocationCheck, revoked_token_key, revoked_user_key
from medmesh.cache import TRANSIENT_ERRORS
from medmesh.errors import DependencyUnavailable


class RevocationList:
    """The writing side of the deny-list that `medmesh.auth.RevocationCheck` reads."""

    def __init__(self, redis: Redis, prefix: str, *, access_ttl_s: int, leeway_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._max_ttl_s = access_ttl_s + leeway_s
        self.is_revoked = RevocationCheck(redis, prefix)

    async def revoke_token(self, jti: str) -> None:
        """Deny the access token `jti` for as long as any access token can live."""
        await self._set(revoked_token_key(self._prefix, jti), self._max_ttl_s)

    async def revoke_user(self, user_id: str) -> None:
        """Deny every access token already issued to `user_id` (the user was disabled)."""
        await self._set(revoked_user_key(self._prefix, user_id), self._max_ttl_s)

    async def _set(self, key: str, ttl_s: int) -> None:
        try:
            await self._redis.set(key, b"1", ex=ttl_s)
        except TRANSIENT_ERRORS as exc:
            raise DependencyUnavailable("redis", str(exc)) from exc
