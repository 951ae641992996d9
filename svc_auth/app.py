"""Wiring: open svc_auth's dependencies on the exit stack and build its servicers."""

from __future__ import annotations

from contextlib import AsyncExitStack

from medmesh.resources import open_cache, open_database
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings
from svc_auth.service import AuthServicer

AUTH_SERVICE = "medmesh.auth.v1.AuthService"


async def setup(settings: Settings, stack: AsyncExitStack) -> ServiceParts:
    """PostgreSQL (users, keys) and Redis (sessions, rate limits)."""
    database = await open_database(settings, stack)
    redis = await open_cache(settings, stack)
    return ServiceParts(servicers={AUTH_SERVICE: AuthServicer(database, redis)})
