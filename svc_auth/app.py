"""Wiring: open svc_auth's dependencies on the exit stack and build its servicers."""

from __future__ import annotations

from contextlib import AsyncExitStack

from medmesh.auth import StaticJwks, TokenVerifier
from medmesh.resources import open_cache, open_database
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings
from svc_auth.service import AuthServicer

AUTH_SERVICE = "medmesh.auth.v1.AuthService"


async def setup(settings: Settings, stack: AsyncExitStack) -> ServiceParts:
    """PostgreSQL (users, keys) and Redis (sessions, rate limits)."""
    database = await open_database(settings, stack)
    redis = await open_cache(settings, stack)
    # Until signing keys exist (svc_auth issue), svc_auth verifies against an empty key set:
    # every token is rejected, which is the safe direction.
    no_keys_yet = TokenVerifier(
        StaticJwks({"keys": []}), issuer=settings.jwt_issuer, audience=settings.jwt_audience
    )
    return ServiceParts(
        servicers={AUTH_SERVICE: AuthServicer(database, redis)}, verifier=no_keys_yet
    )
