"""The deny-list svc_auth writes is honoured by every service's verifier."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from support.tokens import TokenFactory

from medmesh.auth import RevocationCheck, StaticJwks, TokenVerifier, revocation_prefix
from medmesh.auth.revocation import revoked_token_key, revoked_user_key
from medmesh.cache import open_redis
from medmesh.errors import Unauthenticated


@pytest.fixture
async def redis(redis_url: str) -> Redis:
    """A Redis client for the test."""
    client = await open_redis(redis_url)
    yield client
    await client.aclose()


@pytest.mark.parametrize("revoke", ["token", "user"])
async def test_a_revoked_token_or_user_is_unauthenticated_at_any_verifier(
    redis: Redis, tokens: TokenFactory, name_prefix: str, revoke: str
) -> None:
    prefix = revocation_prefix(name_prefix)
    verifier = TokenVerifier(
        StaticJwks(tokens.jwks),
        issuer=tokens.issuer,
        audience=tokens.audience,
        is_revoked=RevocationCheck(redis, prefix),
    )
    token = tokens.mint(user_id="u-revoked")
    kept = tokens.mint(user_id="u-kept")
    identity = await verifier.verify(token)
    key = (
        revoked_token_key(prefix, identity.token_id)
        if revoke == "token"
        else revoked_user_key(prefix, identity.user_id)
    )
    await redis.set(key, b"1", ex=60)

    with pytest.raises(Unauthenticated, match="revoked"):
        await verifier.verify(token)
    assert (await verifier.verify(kept)).user_id == "u-kept"
