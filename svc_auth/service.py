"""The AuthService servicer: proto ↔ domain and nothing else.

RPCs it does not define yet answer UNIMPLEMENTED through the bootstrap; they arrive with the
svc_auth issue (accounts, JWT/JWKS, RBAC, ext_authz Check).
"""

from __future__ import annotations

from redis.asyncio import Redis

from medmesh.db import Database


class AuthServicer:
    """medmesh.auth.v1.AuthService."""

    def __init__(self, database: Database, redis: Redis) -> None:
        self._database = database
        self._redis = redis
