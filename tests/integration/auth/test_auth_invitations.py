"""Invitations over real gRPC, PostgreSQL, Redis and SMTP: an admin invites an address with
roles, the mail's link carries a single-use token in its fragment, accepting creates a
verified, approved account with exactly those roles; replaced, used and expired tokens fail;
every step leaves an audit row in the admin's clinic."""

from __future__ import annotations

import asyncio
import secrets

import grpc
import jwt
import pytest
from auth_harness import ADMIN_EMAIL, CLINIC_A, PASSWORD, AuthUnderTest

from gen.medmesh.auth.v1 import (
    AcceptInvitationRequest,
    ApprovalState,
    InviteUserRequest,
)
from gen.medmesh.common.v1 import Role


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def invite(
    auth: AuthUnderTest, address: str, roles: list[Role], admin_email: str = ADMIN_EMAIL
) -> tuple[object, str]:
    """InviteUser as the clinic's admin: (InviteUserResponse, the token from the mail)."""
    admin = await auth.login(admin_email)
    count = len([m for m in auth.mailbox.messages if m["To"] == address]) + 1
    invited = await auth.stub.invite_user(
        InviteUserRequest(email=address, display_name="Dr Invited", roles=roles),
        metadata=bearer(admin.access_token),
    )
    return invited, await auth.mailbox.token_for(address, count=count)


async def test_an_invitation_becomes_a_verified_approved_account_with_the_invited_roles(
    auth: AuthUnderTest,
) -> None:
    address = f"inv{secrets.token_hex(4)}@clinic-a.example"
    invited, token = await invite(auth, address, [Role.CLINICIAN, Role.TECHNICIAN])
    invitation = invited.invitation
    assert invitation.clinic_id == CLINIC_A
    assert invitation.email == address
    assert invitation.roles == [Role.CLINICIAN, Role.TECHNICIAN]
    assert invitation.name == f"invitations/{invitation.invitation_id}"
    assert invitation.expire_time > invitation.create_time

    mail = await auth.mailbox.wait_for(address)
    assert mail["Subject"] == "You are invited to medmesh"
    link = f"http://localhost:8080/accept-invitation#token={token}"
    assert link in mail.get_body(preferencelist=("plain",)).get_content()
    assert f'href="{link}"' in mail.get_body(preferencelist=("html",)).get_content()

    accepted = await auth.stub.accept_invitation(
        AcceptInvitationRequest(token=token, password=PASSWORD, display_name="Dr Accepted")
    )
    user = accepted.user
    assert (user.email, user.display_name, user.clinic_id) == (address, "Dr Accepted", CLINIC_A)
    assert user.roles == [Role.CLINICIAN, Role.TECHNICIAN]
    assert user.email_verified
    assert user.approval_state == ApprovalState.APPROVED

    login = await auth.login(address)
    claims = jwt.decode(login.access_token, options={"verify_signature": False})
    assert claims["roles"] == ["clinician", "technician"]

    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await auth.stub.accept_invitation(
            AcceptInvitationRequest(token=token, password="another fine passphrase")
        )
    assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    rows = await asyncio.to_thread(
        auth.query,
        "SELECT action, clinic_id FROM audit.events "
        "WHERE action LIKE 'auth.invitation.%%' ORDER BY id",
    )
    assert rows == [("auth.invitation.create", CLINIC_A), ("auth.invitation.accept", CLINIC_A)]
    # Only the token's hash is stored.
    stored = await asyncio.to_thread(auth.query, "SELECT token_hash FROM auth.invitations")
    assert token.encode() not in stored[0][0]


async def test_a_newer_invitation_replaces_the_older_token(auth: AuthUnderTest) -> None:
    address = f"re{secrets.token_hex(4)}@clinic-a.example"
    _, first = await invite(auth, address, [Role.VIEWER])
    _, second = await invite(auth, address, [Role.CLINICIAN])
    with pytest.raises(grpc.aio.AioRpcError) as replaced:
        await auth.stub.accept_invitation(AcceptInvitationRequest(token=first, password=PASSWORD))
    assert replaced.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    accepted = await auth.stub.accept_invitation(
        AcceptInvitationRequest(token=second, password=PASSWORD)
    )
    assert accepted.user.roles == [Role.CLINICIAN]
    assert accepted.user.display_name == "Dr Invited"  # empty display_name keeps the invited one


@pytest.mark.parametrize("auth_extra", [{"MEDMESH_AUTH_INVITE_TTL_S": "1"}])
async def test_an_expired_invitation_is_refused(auth: AuthUnderTest) -> None:
    address = f"ex{secrets.token_hex(4)}@clinic-a.example"
    _, token = await invite(auth, address, [Role.VIEWER])
    await asyncio.sleep(1.2)
    with pytest.raises(grpc.aio.AioRpcError) as expired:
        await auth.stub.accept_invitation(AcceptInvitationRequest(token=token, password=PASSWORD))
    assert expired.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (
            InviteUserRequest(
                email="admin@clinic-b.example", display_name="X", roles=[Role.VIEWER]
            ),
            grpc.StatusCode.ALREADY_EXISTS,  # the address has an account
        ),
        (
            InviteUserRequest(email="new@clinic-a.example", display_name="X", roles=[]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            InviteUserRequest(
                email="new@clinic-a.example", display_name="X", roles=[Role.UNSPECIFIED]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            InviteUserRequest(email="not an address", display_name="X", roles=[Role.VIEWER]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            InviteUserRequest(email="new@clinic-a.example", display_name=" ", roles=[Role.VIEWER]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
async def test_a_bad_invitation_is_refused_and_sends_no_mail(
    auth: AuthUnderTest, request_: InviteUserRequest, code: grpc.StatusCode
) -> None:
    admin = await auth.login(ADMIN_EMAIL)
    before = len(auth.mailbox.messages)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await auth.stub.invite_user(request_, metadata=bearer(admin.access_token))
    assert failure.value.code() == code
    assert await asyncio.to_thread(auth.query, "SELECT count(*) FROM auth.invitations") == [(0,)]
    assert len(auth.mailbox.messages) == before
