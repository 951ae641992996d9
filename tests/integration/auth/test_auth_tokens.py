"""Tokens under attack, refresh-token reuse, and signing-key rotation, against a running svc_auth.

The attacks that need a correctly signed token with bad claims sign with the service's real
private key, read from the database and decrypted with the test's key-encryption key (which
also proves the key is stored encrypted)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import jwt
import pytest
from auth_harness import ADMIN_EMAIL, CLINIC_A, AuthUnderTest
from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from envoy_data_plane.envoy.service.auth.v3 import CheckRequest, CheckResponse

from gen.medmesh.auth.v1 import (
    DisableUserRequest,
    GetJwksRequest,
    GetMeRequest,
    RefreshTokenRequest,
    RotateSigningKeyRequest,
)
from svc_auth.keys import KeyRing, SigningKey


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def active_key(auth: AuthUnderTest) -> SigningKey:
    ring = KeyRing(
        auth.database,
        MultiFernet([Fernet(auth.kek)]),
        algorithm="EdDSA",
        publish_after_retire=timedelta(0),
        max_age=timedelta(days=1),
    )
    return await ring.active()


def claims_for(identity: dict[str, Any], **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "medmesh",
        "aud": "medmesh",
        "sub": identity["sub"],
        "clinic": identity["clinic"],
        "roles": identity["roles"],
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": str(uuid.uuid4()),
    }
    claims.update(changes)
    return claims


def sign(key: SigningKey, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key.private_key, algorithm="EdDSA", headers={"kid": key.kid})


def alg_none(key: SigningKey, claims: dict[str, Any]) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": key.kid}
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."


def hs256_with_public_key(key: SigningKey, claims: dict[str, Any]) -> str:
    # The classic confusion attack: HMAC keyed with the (public) verification key.
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def unknown_kid(_key: SigningKey, claims: dict[str, Any]) -> str:
    stranger = Ed25519PrivateKey.generate()
    return jwt.encode(claims, stranger, algorithm="EdDSA", headers={"kid": "not-a-known-kid"})


def tampered(key: SigningKey, claims: dict[str, Any]) -> str:
    header, _payload, signature = sign(key, claims).split(".")
    escalated = {**claims, "roles": ["admin"]}
    return f"{header}.{b64(json.dumps(escalated).encode())}.{signature}"


Forge = Callable[[SigningKey, dict[str, Any]], str]
NOW = int(time.time())

ATTACKS: list[tuple[str, Forge, dict[str, Any]]] = [
    ("alg none", alg_none, {}),
    ("HS256 signed with the public key", hs256_with_public_key, {}),
    ("expired", sign, {"iat": NOW - 7200, "nbf": NOW - 7200, "exp": NOW - 3600}),
    ("not yet valid", sign, {"nbf": NOW + 3600}),
    ("wrong iss", sign, {"iss": "https://evil.example"}),
    ("wrong aud", sign, {"aud": "another-system"}),
    ("unknown kid", unknown_kid, {}),
    ("tampered payload", tampered, {}),
]


async def check(auth: AuthUnderTest, path: str, token: str) -> CheckResponse:
    request = CheckRequest.from_dict(
        {
            "attributes": {
                "source": {"address": {"socketAddress": {"address": "10.9.8.7"}}},
                "request": {
                    "http": {
                        "method": "GET",
                        "path": path,
                        "headers": {"authorization": f"Bearer {token}"},
                    }
                },
            }
        }
    )
    call = auth.channel.unary_unary(
        "/envoy.service.auth.v3.Authorization/Check",
        request_serializer=bytes,
        response_deserializer=CheckResponse.FromString,
    )
    return await call(request)


@pytest.mark.parametrize(
    ("attack", "forge", "changes"), ATTACKS, ids=[attack for attack, _, _ in ATTACKS]
)
async def test_a_forged_or_invalid_token_is_unauthenticated_at_the_service_and_the_gateway(
    auth: AuthUnderTest, attack: str, forge: Forge, changes: dict[str, Any]
) -> None:
    token, _ = await auth.token(CLINIC_A, ("clinician",))
    genuine = jwt.decode(token, options={"verify_signature": False})
    key = await active_key(auth)
    # The control: the same construction with the real key and good claims is accepted.
    control = sign(key, claims_for(genuine))
    assert (await auth.stub.get_me(GetMeRequest(), metadata=bearer(control))).user.user_id

    forged = forge(key, claims_for(genuine, **changes))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await auth.stub.get_me(GetMeRequest(), metadata=bearer(forged))
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED, attack
    gateway = await check(auth, "/v1/users/me", forged)
    assert gateway.denied_response is not None
    assert gateway.denied_response.status.code.value == 401


async def test_the_token_of_a_disabled_user_is_unauthenticated(auth: AuthUnderTest) -> None:
    token, login = await auth.token(CLINIC_A, ("technician",))
    assert (await auth.stub.get_me(GetMeRequest(), metadata=bearer(token))).user.user_id
    admin = await auth.login(ADMIN_EMAIL)
    await auth.stub.disable_user(
        DisableUserRequest(name=login.user.name), metadata=bearer(admin.access_token)
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await auth.stub.get_me(GetMeRequest(), metadata=bearer(token))
    assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await check(auth, "/v1/users/me", token)).denied_response.status.code.value == 401
    with pytest.raises(grpc.aio.AioRpcError) as refresh:
        await auth.stub.refresh_token(RefreshTokenRequest(refresh_token=login.refresh_token))
    assert refresh.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_reusing_a_rotated_refresh_token_revokes_the_whole_family(
    auth: AuthUnderTest,
) -> None:
    _, login = await auth.token(CLINIC_A, ("viewer",))
    first = login.refresh_token
    second = (await auth.stub.refresh_token(RefreshTokenRequest(refresh_token=first))).refresh_token
    third = (await auth.stub.refresh_token(RefreshTokenRequest(refresh_token=second))).refresh_token
    other_session = (await auth.login(login.user.email)).refresh_token

    with pytest.raises(grpc.aio.AioRpcError) as reuse:
        await auth.stub.refresh_token(RefreshTokenRequest(refresh_token=first))
    assert reuse.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "already used" in (reuse.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as latest:
        await auth.stub.refresh_token(RefreshTokenRequest(refresh_token=third))
    assert latest.value.code() == grpc.StatusCode.UNAUTHENTICATED

    family = auth.query(
        "SELECT revoke_reason FROM auth.refresh_tokens t JOIN auth.users u USING (user_id) "
        "WHERE u.email = %s ORDER BY issued_at",
        login.user.email,
    )
    assert [reason for (reason,) in family] == ["reuse", "reuse", "reuse", None]
    # Another login of the same user is a different family and keeps working.
    assert (
        await auth.stub.refresh_token(RefreshTokenRequest(refresh_token=other_session))
    ).access_token
    events = auth.query(
        "SELECT count(*) FROM audit.events WHERE action = 'auth.refresh_token.reuse'"
    )
    assert events == [(1,)]


@pytest.mark.parametrize(
    "auth_extra", [{"MEDMESH_AUTH_ACCESS_TTL_S": "2", "MEDMESH_AUTH_LEEWAY_S": "1"}]
)
async def test_key_rotation_keeps_old_tokens_valid_until_they_expire(auth: AuthUnderTest) -> None:
    admin = await auth.login(ADMIN_EMAIL)
    old_token = admin.access_token
    old_kid = jwt.get_unverified_header(old_token)["kid"]

    rotated = await auth.stub.rotate_signing_key(
        RotateSigningKeyRequest(), metadata=bearer(old_token)
    )
    assert rotated.retired_kid == old_kid
    assert rotated.key.kid != old_kid
    jwks = await auth.stub.get_jwks(GetJwksRequest())
    assert [key.kid for key in jwks.keys] == [rotated.key.kid, old_kid]
    assert (await auth.stub.get_me(GetMeRequest(), metadata=bearer(old_token))).user.email
    fresh = await auth.login(ADMIN_EMAIL)
    assert jwt.get_unverified_header(fresh.access_token)["kid"] == rotated.key.kid
    # The retired key lost its private half; only the public one is kept.
    stored = auth.query(
        "SELECT private_key_encrypted IS NULL FROM auth.signing_keys WHERE kid = %s", old_kid
    )
    assert stored == [(True,)]

    # Token lifetime (2 s) + leeway (1 s) later, the old key is gone from the JWKS.
    await asyncio.sleep(3.5)
    jwks = await auth.stub.get_jwks(GetJwksRequest())
    assert [key.kid for key in jwks.keys] == [rotated.key.kid]
    with pytest.raises(grpc.aio.AioRpcError) as expired:
        await auth.stub.get_me(GetMeRequest(), metadata=bearer(old_token))
    assert expired.value.code() == grpc.StatusCode.UNAUTHENTICATED
