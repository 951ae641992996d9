"""Account flows over real gRPC, PostgreSQL, Redis and SMTP: register → mail → verify → login →
refresh → logout; password reset; no user enumeration; login throttling; audit events."""

from __future__ import annotations

import time
from typing import Any

import grpc
import jwt
import pytest
from auth_harness import ADMIN_EMAIL, CLINIC_A, PASSWORD, AuthUnderTest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gen.medmesh.auth.v1 import (
    ApprovalState,
    ApproveUserRequest,
    ChangePasswordRequest,
    GetJwksRequest,
    GetMeRequest,
    LoginRequest,
    LogoutRequest,
    RefreshTokenRequest,
    RegisterRequest,
    RequestPasswordResetRequest,
    ResetPasswordRequest,
    VerifyEmailRequest,
)
from gen.medmesh.common.v1 import Role


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def decode(auth: AuthUnderTest, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify `token` with the JWKS that GetJwks publishes; (header, claims)."""
    jwks = await auth.stub.get_jwks(GetJwksRequest())
    header = jwt.get_unverified_header(token)
    key = next(k for k in jwks.keys if k.kid == header["kid"])
    public = jwt.PyJWK({"kty": key.kty, "crv": key.crv, "x": key.x, "alg": key.alg})
    claims = jwt.decode(
        token, public.key, algorithms=[key.alg], audience="medmesh", issuer="medmesh"
    )
    return header, claims


def assert_access_claims(
    header: dict[str, Any], claims: dict[str, Any], *, user_id: str, roles: list[str]
) -> None:
    assert header["alg"] == "EdDSA"
    assert header["kid"]
    assert claims["sub"] == user_id
    assert claims["clinic"] == CLINIC_A
    assert claims["roles"] == roles
    assert claims["iss"] == "medmesh"
    assert claims["aud"] == "medmesh"
    assert claims["exp"] - claims["iat"] == 900
    assert claims["nbf"] == claims["iat"]
    assert abs(claims["iat"] - time.time()) < 30
    assert claims["jti"]


async def test_register_mail_verify_login_refresh_logout_with_the_claims_of_every_token(
    auth: AuthUnderTest,
) -> None:
    address = "Dr.Who@Clinic-A.example"
    registered = await auth.stub.register(
        RegisterRequest(email=address, password=PASSWORD, display_name="Dr Who", clinic_id=CLINIC_A)
    )
    user = registered.user
    assert user.email == address.lower()
    assert user.roles == [Role.VIEWER]
    assert not user.email_verified
    assert user.name == f"users/{user.user_id}"

    with pytest.raises(grpc.aio.AioRpcError) as unverified:
        await auth.login(address.lower())
    assert unverified.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    mail = await auth.mailbox.wait_for(address.lower())
    assert mail["Subject"] == "Confirm your e-mail address for medmesh"
    assert mail.get_body(preferencelist=("html",)) is not None
    token = await auth.mailbox.token_for(address.lower())
    # The token travels in the fragment, which browsers never send to a server.
    text = mail.get_body(preferencelist=("plain",)).get_content()
    assert f"http://localhost:8080/verify-email#token={token}" in text
    assert "?token=" not in text
    verified = await auth.stub.verify_email(VerifyEmailRequest(token=token))
    assert verified.user.email_verified
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await auth.stub.verify_email(VerifyEmailRequest(token=token))
    assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    login = await auth.login(address)  # the address is case-insensitive
    assert login.token_type == "Bearer"
    assert login.expires_in == 900
    assert login.user.user_id == user.user_id
    assert login.user.approval_state == ApprovalState.PENDING
    header, claims = await decode(auth, login.access_token)
    # Self-registered: no roles in the token until an admin of the clinic approves.
    assert_access_claims(header, claims, user_id=user.user_id, roles=[])
    assert login.expire_time.timestamp() == claims["exp"]
    me = await auth.stub.get_me(GetMeRequest(), metadata=bearer(login.access_token))
    assert me.user.email == address.lower()

    admin = await auth.login(ADMIN_EMAIL)
    await auth.stub.approve_user(
        ApproveUserRequest(name=user.name), metadata=bearer(admin.access_token)
    )
    refreshed = await auth.stub.refresh_token(
        RefreshTokenRequest(refresh_token=login.refresh_token)
    )
    assert refreshed.refresh_token != login.refresh_token
    header2, claims2 = await decode(auth, refreshed.access_token)
    assert_access_claims(header2, claims2, user_id=user.user_id, roles=["viewer"])
    assert claims2["jti"] != claims["jti"]

    await auth.stub.logout(
        LogoutRequest(refresh_token=refreshed.refresh_token),
        metadata=bearer(refreshed.access_token),
    )
    for refresh_token in (refreshed.refresh_token, login.refresh_token):
        with pytest.raises(grpc.aio.AioRpcError) as after_logout:
            await auth.stub.refresh_token(RefreshTokenRequest(refresh_token=refresh_token))
        assert after_logout.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as revoked_access:
        await auth.stub.get_me(GetMeRequest(), metadata=bearer(refreshed.access_token))
    assert revoked_access.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Logout is idempotent.
    await auth.stub.logout(LogoutRequest(refresh_token=refreshed.refresh_token))
    # The mail left the outbox once the server accepted it.
    assert auth.query("SELECT count(*) FROM auth.mail_outbox") == [(0,)]
    actions = [row[0] for row in auth.query("SELECT action FROM audit.events ORDER BY id")]
    assert actions[-6:] == [
        "auth.user.register",
        "auth.user.verify_email",
        "auth.login",
        "auth.login",  # the admin's
        "auth.user.approve",
        "auth.logout",
    ]


async def test_unknown_email_and_wrong_password_get_the_same_answer(auth: AuthUnderTest) -> None:
    address = await auth.create_user(CLINIC_A, ("clinician",))
    answers = []
    for email, password in ((address, "wrong password 123"), ("nobody@clinic-a.example", PASSWORD)):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await auth.stub.login(LoginRequest(email=email, password=password))
        answers.append((failure.value.code(), failure.value.details()))
    assert answers[0] == answers[1] == (grpc.StatusCode.UNAUTHENTICATED, "wrong e-mail or password")
    failed = auth.query("SELECT resource FROM audit.events WHERE action = 'auth.login_failed'")
    assert len(failed) == 2


@pytest.mark.parametrize("auth_extra", [{"MEDMESH_AUTH_LOGIN_LIMIT_ACCOUNT": "3/60"}])
async def test_repeated_failed_logins_are_throttled_even_with_the_right_password(
    auth: AuthUnderTest,
) -> None:
    address = await auth.create_user(CLINIC_A, ("viewer",))
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await auth.login(address, "wrong password 123")
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as throttled:
        await auth.login(address)
    assert throttled.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(throttled.value)
    assert status is not None
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert 0 < retry.retry_delay.ToNanoseconds() / 1e9 <= 20
    # Another account is not affected.
    other = await auth.create_user(CLINIC_A, ("viewer",))
    assert (await auth.login(other)).access_token


async def test_password_reset_by_mail_replaces_the_password_and_ends_sessions(
    auth: AuthUnderTest,
) -> None:
    address = await auth.create_user(CLINIC_A, ("technician",))
    session = await auth.login(address)
    await auth.stub.request_password_reset(RequestPasswordResetRequest(email=address))
    # An unknown address gets the same empty answer and no mail.
    await auth.stub.request_password_reset(
        RequestPasswordResetRequest(email="ghost@clinic-a.example")
    )
    token = await auth.mailbox.token_for(address)
    mail = await auth.mailbox.wait_for(address)
    assert mail["Subject"] == "Reset your medmesh password"
    link = f"http://localhost:8080/reset-password#token={token}"
    assert link in mail.get_body(preferencelist=("plain",)).get_content()
    assert f'href="{link}"' in mail.get_body(preferencelist=("html",)).get_content()

    new_password = "a brand new passphrase 42"
    await auth.stub.reset_password(ResetPasswordRequest(token=token, new_password=new_password))
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await auth.stub.reset_password(ResetPasswordRequest(token=token, new_password=new_password))
    assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as old_session:
        await auth.stub.refresh_token(RefreshTokenRequest(refresh_token=session.refresh_token))
    assert old_session.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as old_password:
        await auth.login(address)
    assert old_password.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await auth.login(address, new_password)).access_token
    assert not [m for m in auth.mailbox.messages if m["To"] == "ghost@clinic-a.example"]


async def test_change_password_needs_the_current_one_and_revokes_refresh_tokens(
    auth: AuthUnderTest,
) -> None:
    address = await auth.create_user(CLINIC_A, ("clinician",))
    session = await auth.login(address)
    metadata = bearer(session.access_token)
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await auth.stub.change_password(
            ChangePasswordRequest(
                current_password="not it at all!", new_password="another fine passphrase"
            ),
            metadata=metadata,
        )
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await auth.stub.change_password(
        ChangePasswordRequest(current_password=PASSWORD, new_password="another fine passphrase"),
        metadata=metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as revoked:
        await auth.stub.refresh_token(RefreshTokenRequest(refresh_token=session.refresh_token))
    assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await auth.login(address, "another fine passphrase")).access_token
