"""The AuthService servicer: proto ↔ domain and nothing else, and its role-rules table."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from gen.medmesh.auth.v1 import (
    AcceptInvitationRequest,
    AcceptInvitationResponse,
    ApprovalState,
    ApproveUserRequest,
    ApproveUserResponse,
    ChangePasswordRequest,
    ChangePasswordResponse,
    DisableUserRequest,
    DisableUserResponse,
    GetJwksRequest,
    GetJwksResponse,
    GetMeRequest,
    GetMeResponse,
    Invitation,
    InviteUserRequest,
    InviteUserResponse,
    Jwk,
    ListUsersRequest,
    ListUsersResponse,
    LoginRequest,
    LoginResponse,
    LogoutRequest,
    LogoutResponse,
    RefreshTokenRequest,
    RefreshTokenResponse,
    RegisterRequest,
    RegisterResponse,
    RequestPasswordResetRequest,
    RequestPasswordResetResponse,
    ResetPasswordRequest,
    ResetPasswordResponse,
    RotateSigningKeyRequest,
    RotateSigningKeyResponse,
    SetUserRolesRequest,
    SetUserRolesResponse,
    User,
    VerifyEmailRequest,
    VerifyEmailResponse,
)
from gen.medmesh.common.v1 import Role
from medmesh.errors import InvalidArgument
from medmesh.identity import (
    ADMIN,
    ADMINS,
    CLINICIAN,
    PUBLIC,
    SERVICE,
    SIGNED_IN,
    TECHNICIAN,
    VIEWER,
    RoleRules,
    current_identity,
    optional_identity,
)
from svc_auth.accounts import Accounts
from svc_auth.admin import ClinicAdmin
from svc_auth.invitations import Invitations
from svc_auth.keys import KeyRing
from svc_auth.sessions import Sessions, TokenPair

AUTH_SERVICE = "medmesh.auth.v1.AuthService"

AUTH_RULES: RoleRules = {
    "Register": PUBLIC,
    "VerifyEmail": PUBLIC,
    "Login": PUBLIC,
    "RefreshToken": PUBLIC,
    "Logout": PUBLIC,
    "RequestPasswordReset": PUBLIC,
    "ResetPassword": PUBLIC,
    "GetJwks": PUBLIC,
    "AcceptInvitation": PUBLIC,
    # The caller's own account: also for a self-registered user awaiting approval, whose
    # tokens carry no roles and so pass no other rule (clinic data stays out of reach).
    "GetMe": SIGNED_IN,
    "ChangePassword": SIGNED_IN,
    "ListUsers": ADMINS,
    "InviteUser": ADMINS,
    "ApproveUser": ADMINS,
    "SetUserRoles": ADMINS,
    "DisableUser": ADMINS,
    "RotateSigningKey": ADMINS,  # and the operator clinic only (svc_auth.admin)
}

ROLE_NAMES: Mapping[Role, str] = {
    Role.ADMIN: ADMIN,
    Role.CLINICIAN: CLINICIAN,
    Role.TECHNICIAN: TECHNICIAN,
    Role.VIEWER: VIEWER,
    Role.SERVICE: SERVICE,
}
ROLES_BY_NAME: Mapping[str, Role] = {name: role for role, name in ROLE_NAMES.items()}
APPROVAL_STATES: Mapping[str, ApprovalState] = {
    "pending": ApprovalState.PENDING,
    "approved": ApprovalState.APPROVED,
}


def user_message(row: Mapping[str, Any]) -> User:
    """A users row as the contract's User."""
    return User(
        name=f"users/{row['user_id']}",
        user_id=str(row["user_id"]),
        email=row["email"],
        display_name=row["display_name"],
        clinic_id=row["clinic_id"],
        roles=[ROLES_BY_NAME[name] for name in row["roles"]],
        email_verified=row["email_verified"],
        disabled=row["disabled"],
        create_time=row["created_at"],
        update_time=row["updated_at"],
        approval_state=APPROVAL_STATES[row["approval_state"]],
    )


def invitation_message(row: Mapping[str, Any]) -> Invitation:
    """An invitations row as the contract's Invitation."""
    return Invitation(
        name=f"invitations/{row['invitation_id']}",
        invitation_id=str(row["invitation_id"]),
        email=row["email"],
        display_name=row["display_name"],
        clinic_id=row["clinic_id"],
        roles=[ROLES_BY_NAME[name] for name in row["roles"]],
        create_time=row["created_at"],
        expire_time=row["expires_at"],
    )


def approval_filter(state: ApprovalState) -> str | None:
    """ListUsers' filter: a stored state name, or None for APPROVAL_STATE_UNSPECIFIED."""
    names = {value: name for name, value in APPROVAL_STATES.items()}
    try:
        return names.get(ApprovalState(state))
    except ValueError:
        raise InvalidArgument.for_field("approval_state", "is not a known state") from None


def jwk_message(jwk: Mapping[str, Any]) -> Jwk:
    """A JWK dict as the contract's Jwk (members it does not have stay empty)."""
    return Jwk(**{name: str(jwk.get(name, "")) for name in Jwk.__dataclass_fields__})


def role_names(roles: Sequence[Role]) -> list[str]:
    """Contract roles → role names; INVALID_ARGUMENT for ROLE_UNSPECIFIED or unknown values."""
    try:
        return [ROLE_NAMES[Role(role)] for role in roles]
    except (KeyError, ValueError):
        raise InvalidArgument.for_field("roles", "must not contain ROLE_UNSPECIFIED") from None


def client_ip(context: Any, trusted_proxies: Sequence[Any]) -> str:
    """The caller's IP: the peer, or the last untrusted `x-forwarded-for` hop behind a
    trusted proxy (only proxies we run may speak for the client)."""
    peer = context.peer() or ""
    host = peer.split(":", 1)[1].rsplit(":", 1)[0].strip("[]") if ":" in peer else peer
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if not any(address in network for network in trusted_proxies):
        return str(address)
    forwarded = dict(context.invocation_metadata() or ()).get("x-forwarded-for", "")
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        try:
            hop_address = ipaddress.ip_address(hop)
        except ValueError:
            break
        if not any(hop_address in network for network in trusted_proxies):
            return str(hop_address)
    return str(address)


def _pair_fields(pair: TokenPair) -> dict[str, Any]:
    return {
        "access_token": pair.access.token,
        "refresh_token": pair.refresh_token,
        "token_type": "Bearer",
        "expires_in": pair.access.lifetime_s,
        "expire_time": pair.access.expires_at,
        "refresh_expire_time": pair.refresh_expires_at,
    }


class AuthServicer:
    """medmesh.auth.v1.AuthService."""

    def __init__(
        self,
        accounts: Accounts,
        sessions: Sessions,
        admin: ClinicAdmin,
        ring: KeyRing,
        invitations: Invitations,
        *,
        trusted_proxies: Sequence[Any] = (),
    ) -> None:
        self._invitations = invitations
        self._accounts = accounts
        self._sessions = sessions
        self._admin = admin
        self._ring = ring
        self._trusted_proxies = trusted_proxies

    async def register(self, request: RegisterRequest, context: Any) -> RegisterResponse:
        """Register."""
        user = await self._accounts.register(
            email=request.email,
            password=request.password,
            display_name=request.display_name,
            clinic_id=request.clinic_id,
            client_ip=client_ip(context, self._trusted_proxies),
        )
        return RegisterResponse(user=user_message(user))

    async def verify_email(self, request: VerifyEmailRequest, context: Any) -> VerifyEmailResponse:
        """VerifyEmail."""
        user = await self._accounts.verify_email(
            request.token, client_ip=client_ip(context, self._trusted_proxies)
        )
        return VerifyEmailResponse(user=user_message(user))

    async def login(self, request: LoginRequest, context: Any) -> LoginResponse:
        """Login."""
        result = await self._accounts.login(
            email=request.email,
            password=request.password,
            client_ip=client_ip(context, self._trusted_proxies),
        )
        return LoginResponse(**_pair_fields(result.tokens), user=user_message(result.user))

    async def refresh_token(
        self, request: RefreshTokenRequest, _context: Any
    ) -> RefreshTokenResponse:
        """RefreshToken."""
        if not request.refresh_token:
            raise InvalidArgument.for_field("refresh_token", "is required")
        return RefreshTokenResponse(
            **_pair_fields(await self._sessions.refresh(request.refresh_token))
        )

    async def logout(self, request: LogoutRequest, _context: Any) -> LogoutResponse:
        """Logout."""
        if not request.refresh_token:
            raise InvalidArgument.for_field("refresh_token", "is required")
        await self._sessions.logout(request.refresh_token, optional_identity())
        return LogoutResponse()

    async def get_me(self, _request: GetMeRequest, _context: Any) -> GetMeResponse:
        """GetMe."""
        return GetMeResponse(user=user_message(await self._accounts.get_me(current_identity())))

    async def change_password(
        self, request: ChangePasswordRequest, _context: Any
    ) -> ChangePasswordResponse:
        """ChangePassword."""
        await self._accounts.change_password(
            current_identity(), request.current_password, request.new_password
        )
        return ChangePasswordResponse()

    async def request_password_reset(
        self, request: RequestPasswordResetRequest, context: Any
    ) -> RequestPasswordResetResponse:
        """RequestPasswordReset."""
        await self._accounts.request_password_reset(
            email=request.email, client_ip=client_ip(context, self._trusted_proxies)
        )
        return RequestPasswordResetResponse()

    async def reset_password(
        self, request: ResetPasswordRequest, context: Any
    ) -> ResetPasswordResponse:
        """ResetPassword."""
        await self._accounts.reset_password(
            token=request.token,
            new_password=request.new_password,
            client_ip=client_ip(context, self._trusted_proxies),
        )
        return ResetPasswordResponse()

    async def invite_user(self, request: InviteUserRequest, context: Any) -> InviteUserResponse:
        """InviteUser."""
        invitation = await self._invitations.create(
            current_identity(),
            email=request.email,
            display_name=request.display_name,
            roles=role_names(request.roles),
            client_ip=client_ip(context, self._trusted_proxies),
        )
        return InviteUserResponse(invitation=invitation_message(invitation))

    async def accept_invitation(
        self, request: AcceptInvitationRequest, context: Any
    ) -> AcceptInvitationResponse:
        """AcceptInvitation."""
        user = await self._invitations.accept(
            token=request.token,
            password=request.password,
            display_name=request.display_name,
            client_ip=client_ip(context, self._trusted_proxies),
        )
        return AcceptInvitationResponse(user=user_message(user))

    async def approve_user(self, request: ApproveUserRequest, _context: Any) -> ApproveUserResponse:
        """ApproveUser."""
        user = await self._admin.approve(current_identity(), request.name)
        return ApproveUserResponse(user=user_message(user))

    async def list_users(self, request: ListUsersRequest, _context: Any) -> ListUsersResponse:
        """ListUsers."""
        page = await self._admin.list_users(
            current_identity(),
            request.page_size,
            request.page_token,
            approval_filter(request.approval_state),
        )
        return ListUsersResponse(
            users=[user_message(row) for row in page.users],
            next_page_token=page.next_page_token,
        )

    async def set_user_roles(
        self, request: SetUserRolesRequest, _context: Any
    ) -> SetUserRolesResponse:
        """SetUserRoles."""
        user = await self._admin.set_roles(
            current_identity(), request.name, role_names(request.roles)
        )
        return SetUserRolesResponse(user=user_message(user))

    async def disable_user(self, request: DisableUserRequest, _context: Any) -> DisableUserResponse:
        """DisableUser."""
        user = await self._admin.disable(current_identity(), request.name)
        return DisableUserResponse(user=user_message(user))

    async def get_jwks(self, _request: GetJwksRequest, _context: Any) -> GetJwksResponse:
        """GetJwks."""
        return GetJwksResponse(keys=[jwk_message(jwk) for jwk in await self._ring.jwks()])

    async def rotate_signing_key(
        self, _request: RotateSigningKeyRequest, _context: Any
    ) -> RotateSigningKeyResponse:
        """RotateSigningKey."""
        jwk, retired = await self._admin.rotate_signing_key(current_identity())
        return RotateSigningKeyResponse(key=jwk_message(jwk), retired_kid=retired)
