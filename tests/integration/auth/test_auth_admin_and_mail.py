"""Clinic administration (roles, disabling, the last admin, audit) and mail delivery retries."""

from __future__ import annotations

import secrets

import grpc
import jwt
import pytest
from auth_harness import ADMIN_EMAIL, CLINIC_A, PASSWORD, AuthUnderTest

from gen.medmesh.auth.v1 import (
    DisableUserRequest,
    RefreshTokenRequest,
    RegisterRequest,
    SetUserRolesRequest,
)
from gen.medmesh.common.v1 import Role


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_role_changes_reach_tokens_on_refresh_and_are_audited(auth: AuthUnderTest) -> None:
    admin = await auth.login(ADMIN_EMAIL)
    _, user = await auth.token(CLINIC_A, ("viewer",))
    changed = await auth.stub.set_user_roles(
        SetUserRolesRequest(name=user.user.name, roles=[Role.TECHNICIAN, Role.CLINICIAN]),
        metadata=bearer(admin.access_token),
    )
    assert changed.user.roles == [Role.CLINICIAN, Role.TECHNICIAN]
    refreshed = await auth.stub.refresh_token(RefreshTokenRequest(refresh_token=user.refresh_token))
    claims = jwt.decode(refreshed.access_token, options={"verify_signature": False})
    assert claims["roles"] == ["clinician", "technician"]
    events = auth.query(
        "SELECT actor_user_id, clinic_id, resource, detail FROM audit.events "
        "WHERE action = 'auth.user.set_roles'"
    )
    assert events == [
        (
            admin.user.user_id,
            CLINIC_A,
            user.user.name,
            {"old_roles": ["viewer"], "new_roles": ["clinician", "technician"]},
        )
    ]


async def test_the_last_enabled_admin_can_be_neither_demoted_nor_disabled(
    auth: AuthUnderTest,
) -> None:
    admin = await auth.login(ADMIN_EMAIL)
    metadata = bearer(admin.access_token)
    for call in (
        auth.stub.set_user_roles(
            SetUserRolesRequest(name=admin.user.name, roles=[Role.VIEWER]), metadata=metadata
        ),
        auth.stub.disable_user(DisableUserRequest(name=admin.user.name), metadata=metadata),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await call
        assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # With a second admin, the first may step down.
    await auth.create_user(CLINIC_A, ("admin",))
    demoted = await auth.stub.set_user_roles(
        SetUserRolesRequest(name=admin.user.name, roles=[Role.VIEWER]), metadata=metadata
    )
    assert demoted.user.roles == [Role.VIEWER]


async def test_disabling_is_idempotent_audited_once_and_blocks_login(auth: AuthUnderTest) -> None:
    admin = await auth.login(ADMIN_EMAIL)
    address = await auth.create_user(CLINIC_A, ("clinician",))
    target = await auth.login(address)
    for _ in range(2):
        disabled = await auth.stub.disable_user(
            DisableUserRequest(name=target.user.name), metadata=bearer(admin.access_token)
        )
        assert disabled.user.disabled
    with pytest.raises(grpc.aio.AioRpcError) as login:
        await auth.login(address)
    assert login.value.code() == grpc.StatusCode.PERMISSION_DENIED
    events = auth.query(
        "SELECT actor_user_id, resource FROM audit.events WHERE action = 'auth.user.disable'"
    )
    assert events == [(admin.user.user_id, target.user.name)]
    logins = auth.query(
        "SELECT count(*) FROM audit.events WHERE action = 'auth.login' AND resource = %s",
        target.user.name,
    )
    assert logins == [(1,)]


async def test_transient_smtp_failures_are_retried_until_the_server_accepts_the_mail(
    auth: AuthUnderTest,
) -> None:
    refused_before = auth.mailbox.refused
    auth.mailbox.refuse_next = 2  # two 451 replies, then 250
    address = f"retry-{secrets.token_hex(4)}@clinic-a.example"
    await auth.stub.register(
        RegisterRequest(email=address, password=PASSWORD, display_name="R", clinic_id=CLINIC_A)
    )
    mail = await auth.mailbox.wait_for(address)
    assert mail["Subject"] == "Confirm your e-mail address for medmesh"
    assert auth.mailbox.refused - refused_before == 2
    assert len([m for m in auth.mailbox.messages if m["To"] == address]) == 1
