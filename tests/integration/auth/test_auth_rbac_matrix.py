"""The RBAC matrix of AuthService: every RPC x every role x a target in the caller's own
clinic or in another clinic → the status the caller gets. One svc_auth serves the module;
every case creates its own caller and target, so cases do not depend on each other.

"Own" and "other" name where the resource the RPC acts on lives. For RPCs without a target
user (GetMe, ChangePassword, GetJwks, RotateSigningKey, InviteUser) "other" means the caller
belongs to clinic-b instead of clinic-a, the operator clinic that owns the signing keys.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from auth_harness import CLINIC_A, CLINIC_B, PASSWORD, AuthUnderTest

from gen.medmesh.auth.v1 import (
    AcceptInvitationRequest,
    ApprovalState,
    ApproveUserRequest,
    ChangePasswordRequest,
    DisableUserRequest,
    GetJwksRequest,
    GetMeRequest,
    InviteUserRequest,
    ListUsersRequest,
    LoginRequest,
    LogoutRequest,
    RefreshTokenRequest,
    RegisterRequest,
    RequestPasswordResetRequest,
    ResetPasswordRequest,
    RotateSigningKeyRequest,
    SetUserRolesRequest,
    VerifyEmailRequest,
)
from gen.medmesh.common.v1 import Role
from medmesh.contract import DescriptorImage
from medmesh.identity import ADMIN, ALL_ROLES
from svc_auth.service import AUTH_RULES

OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PUBLIC_RPCS = {
    "Register",
    "VerifyEmail",
    "Login",
    "RefreshToken",
    "Logout",
    "RequestPasswordReset",
    "ResetPassword",
    "GetJwks",
    "AcceptInvitation",
}
SELF_RPCS = {"GetMe", "ChangePassword"}
TARGETLESS = {"GetMe", "ChangePassword", "GetJwks", "RotateSigningKey", "InviteUser"}


def expected(rpc: str, role: str, scope: str) -> grpc.StatusCode:
    """The matrix, stated as rules."""
    if rpc in PUBLIC_RPCS or rpc in SELF_RPCS:
        return OK
    if role != ADMIN:
        return DENIED
    if rpc == "RotateSigningKey":
        return OK if scope == "own" else DENIED  # only the operator clinic's admins
    if rpc in {"SetUserRoles", "DisableUser", "ApproveUser"}:
        return OK if scope == "own" else NOT_FOUND  # another clinic's user does not exist
    return OK  # ListUsers: allowed, and shows the own clinic only (checked in the call)


@dataclass
class Case:
    """One cell: the caller's token and clinic, and the clinic of the target."""

    auth: AuthUnderTest
    token: str
    caller_clinic: str
    target_clinic: str
    scope: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),)

    async def target(self) -> tuple[str, str]:
        """A verified viewer in the target clinic: (e-mail, user name)."""
        address = await self.auth.create_user(self.target_clinic, ("viewer",))
        login = await self.auth.login(address)
        return address, login.user.name


async def register(case: Case) -> None:
    address = f"n{secrets.token_hex(5)}@{case.target_clinic}.example"
    request = RegisterRequest(
        email=address, password=PASSWORD, display_name="N", clinic_id=case.target_clinic
    )
    await case.auth.stub.register(request, metadata=case.metadata)


async def verify_email(case: Case) -> None:
    address = f"v{secrets.token_hex(5)}@{case.target_clinic}.example"
    await case.auth.stub.register(
        RegisterRequest(
            email=address, password=PASSWORD, display_name="V", clinic_id=case.target_clinic
        )
    )
    token = await case.auth.mailbox.token_for(address)
    await case.auth.stub.verify_email(VerifyEmailRequest(token=token), metadata=case.metadata)


async def login(case: Case) -> None:
    address = await case.auth.create_user(case.target_clinic, ("viewer",))
    await case.auth.stub.login(
        LoginRequest(email=address, password=PASSWORD), metadata=case.metadata
    )


async def refresh_token(case: Case) -> None:
    address, _ = await case.target()
    session = await case.auth.login(address)
    request = RefreshTokenRequest(refresh_token=session.refresh_token)
    await case.auth.stub.refresh_token(request, metadata=case.metadata)


async def logout(case: Case) -> None:
    address, _ = await case.target()
    session = await case.auth.login(address)
    request = LogoutRequest(refresh_token=session.refresh_token)
    await case.auth.stub.logout(request, metadata=case.metadata)


async def request_password_reset(case: Case) -> None:
    address, _ = await case.target()
    request = RequestPasswordResetRequest(email=address)
    await case.auth.stub.request_password_reset(request, metadata=case.metadata)


async def reset_password(case: Case) -> None:
    address, _ = await case.target()
    await case.auth.stub.request_password_reset(RequestPasswordResetRequest(email=address))
    token = await case.auth.mailbox.token_for(address)
    request = ResetPasswordRequest(token=token, new_password="a completely new passphrase")
    await case.auth.stub.reset_password(request, metadata=case.metadata)


async def get_jwks(case: Case) -> None:
    assert (await case.auth.stub.get_jwks(GetJwksRequest(), metadata=case.metadata)).keys


async def get_me(case: Case) -> None:
    me = await case.auth.stub.get_me(GetMeRequest(), metadata=case.metadata)
    assert me.user.clinic_id == case.caller_clinic


async def change_password(case: Case) -> None:
    request = ChangePasswordRequest(current_password=PASSWORD, new_password="my next passphrase!")
    await case.auth.stub.change_password(request, metadata=case.metadata)


async def list_users(case: Case) -> None:
    _, target = await case.target()
    page = await case.auth.stub.list_users(ListUsersRequest(page_size=500), metadata=case.metadata)
    assert {user.clinic_id for user in page.users} == {case.caller_clinic}
    assert (target in {user.name for user in page.users}) == (case.scope == "own")


async def set_user_roles(case: Case) -> None:
    _, target = await case.target()
    request = SetUserRolesRequest(name=target, roles=[Role.CLINICIAN])
    changed = await case.auth.stub.set_user_roles(request, metadata=case.metadata)
    assert changed.user.roles == [Role.CLINICIAN]


async def disable_user(case: Case) -> None:
    _, target = await case.target()
    request = DisableUserRequest(name=target)
    assert (await case.auth.stub.disable_user(request, metadata=case.metadata)).user.disabled


async def rotate_signing_key(case: Case) -> None:
    rotated = await case.auth.stub.rotate_signing_key(
        RotateSigningKeyRequest(), metadata=case.metadata
    )
    assert rotated.key.kid


async def invite_user(case: Case) -> None:
    request = InviteUserRequest(
        email=f"i{secrets.token_hex(5)}@{case.caller_clinic}.example",
        display_name="Invited",
        roles=[Role.TECHNICIAN],
    )
    invited = await case.auth.stub.invite_user(request, metadata=case.metadata)
    assert invited.invitation.clinic_id == case.caller_clinic


async def accept_invitation(case: Case) -> None:
    admin = await case.auth.login(f"admin@{case.target_clinic}.example")
    address = f"a{secrets.token_hex(5)}@{case.target_clinic}.example"
    await case.auth.stub.invite_user(
        InviteUserRequest(email=address, display_name="A", roles=[Role.VIEWER]),
        metadata=(("authorization", f"Bearer {admin.access_token}"),),
    )
    token = await case.auth.mailbox.token_for(address)
    request = AcceptInvitationRequest(token=token, password=PASSWORD)
    accepted = await case.auth.stub.accept_invitation(request, metadata=case.metadata)
    assert accepted.user.clinic_id == case.target_clinic


async def approve_user(case: Case) -> None:
    _, registered = await case.auth.register_and_verify(case.target_clinic)
    request = ApproveUserRequest(name=registered.user.name)
    approved = await case.auth.stub.approve_user(request, metadata=case.metadata)
    assert approved.user.approval_state == ApprovalState.APPROVED


CALLS: dict[str, Callable[[Case], Awaitable[None]]] = {
    "Register": register,
    "VerifyEmail": verify_email,
    "Login": login,
    "RefreshToken": refresh_token,
    "Logout": logout,
    "RequestPasswordReset": request_password_reset,
    "ResetPassword": reset_password,
    "GetJwks": get_jwks,
    "GetMe": get_me,
    "ChangePassword": change_password,
    "ListUsers": list_users,
    "SetUserRoles": set_user_roles,
    "DisableUser": disable_user,
    "RotateSigningKey": rotate_signing_key,
    "InviteUser": invite_user,
    "AcceptInvitation": accept_invitation,
    "ApproveUser": approve_user,
}


def test_the_matrix_covers_every_rpc_of_the_contract_and_of_the_rule_table() -> None:
    rpcs = {m.name for m in DescriptorImage().methods("medmesh.auth.v1.AuthService")}
    assert set(CALLS) == rpcs == set(AUTH_RULES)


@pytest.mark.parametrize("scope", ["own", "other"])
@pytest.mark.parametrize("role", sorted(ALL_ROLES))
@pytest.mark.parametrize("rpc", list(CALLS))
async def test_rbac_matrix(shared_auth: AuthUnderTest, rpc: str, role: str, scope: str) -> None:
    other = scope == "other"
    caller_clinic = CLINIC_B if other and rpc in TARGETLESS else CLINIC_A
    target_clinic = CLINIC_B if other and rpc not in TARGETLESS else caller_clinic
    token, _ = await shared_auth.token(caller_clinic, (role,))
    case = Case(shared_auth, token, caller_clinic, target_clinic, scope)
    try:
        await CALLS[rpc](case)
        code = OK
    except grpc.aio.AioRpcError as error:
        code = error.code()
    assert code == expected(rpc, role, scope)
