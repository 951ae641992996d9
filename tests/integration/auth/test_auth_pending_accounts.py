"""A self-registered account reaches no clinic data until an admin of its clinic approves it.

One svc_auth (real: PostgreSQL, Redis, SMTP) issues the tokens. Every other service of the
contract is served by one gRPC server that runs the services' *real* role tables behind the
shared AuthInterceptor (the check every service runs), with servicers that answer every RPC
with an empty response, so a call that passes the check reaches its servicer. The RPC list
is read from the descriptor image: a new RPC, or a new service, is covered without touching
this file (a service without a rule table fails the first test).

The account registers in clinic-a, which is also the operator clinic: even there, pending
means nothing but GetMe, ChangePassword and Logout.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from auth_harness import ADMIN_EMAIL, CLINIC_A, PASSWORD, AuthUnderTest
from envoy_data_plane.envoy.service.auth.v3 import CheckRequest, CheckResponse

from gen.medmesh.auth.v1 import (
    ApprovalState,
    ApproveUserRequest,
    ChangePasswordRequest,
    GetMeRequest,
    ListUsersRequest,
    LogoutRequest,
    RefreshTokenRequest,
    SetUserRolesRequest,
)
from gen.medmesh.common.v1 import Role
from medmesh.auth import AuthInterceptor, GrpcJwksSource, TokenVerifier
from medmesh.contract import DescriptorImage, Method, snake_case
from medmesh.identity import (
    Identity,
    Public,
    RoleRule,
    RoleRules,
    SignedIn,
    allows,
)
from medmesh.server import GrpcServer
from svc_auth.gateway_rules import rule_for

IMAGE = DescriptorImage()
AUTH = "medmesh.auth.v1.AuthService"
SERVICES = IMAGE.service_names("medmesh.")
# Where each service keeps its role table: module → (attribute, the service it rules, or
# None for a table that is already keyed by service).
RULE_TABLES: dict[str, tuple[str, str | None]] = {
    "svc_auth.service": ("AUTH_RULES", AUTH),
    "svc_ingest.service": ("INGEST_RULES", "medmesh.ingest.v1.IngestService"),
    "svc_infer.service": ("ROLE_RULES", None),
    "svc_report.service": ("REPORT_RULES", "medmesh.report.v1.ReportService"),
}
OPERATOR = CLINIC_A  # the harness's bootstrap clinic


def all_rule_tables() -> dict[str, RoleRules]:
    """Every service's real role table, by full service name (imported lazily: svc_infer's
    import pulls TensorFlow, which only this module's tests need to pay for)."""
    tables: dict[str, RoleRules] = {}
    for module_name, (attribute, service) in RULE_TABLES.items():
        table = getattr(importlib.import_module(module_name), attribute)
        tables.update({service: table} if service else table)
    return tables


def is_own_account_rpc(rule: RoleRule | None) -> bool:
    """PUBLIC and SIGNED_IN RPCs are not clinic RPCs (sign-in, keys, the caller's account)."""
    return isinstance(rule, Public | SignedIn)


class AnswerEverything:
    """A servicer answering every RPC of a service with its empty response."""

    def __init__(self, service: str) -> None:
        self._methods = {snake_case(m.name): m for m in IMAGE.methods(service)}

    def __getattr__(self, name: str) -> Any:
        method = self._methods.get(name)
        if method is None:
            raise AttributeError(name)
        if method.server_streaming:

            async def stream(request: Any, _context: Any) -> Any:
                if method.client_streaming:
                    async for _ in request:
                        pass
                for _ in ():
                    yield method.response_type()

            return stream

        async def unary(request: Any, _context: Any) -> Any:
            if method.client_streaming:
                async for _ in request:
                    pass
            return method.response_type()

        return unary


@dataclass
class Mesh:
    """svc_auth, the other services' check, the account's two tokens and its identity."""

    auth: AuthUnderTest
    services: grpc.aio.Channel
    rules: Mapping[str, RoleRules]
    pending_token: str
    approved_token: str
    approved: Identity


@pytest.fixture(scope="module")
async def mesh(shared_auth: AuthUnderTest) -> AsyncIterator[Mesh]:
    """A self-registered, verified account: its token while pending and, after an admin of
    its clinic approved it, the refreshed token; every non-auth service behind its real
    rules, verifying svc_auth's tokens with svc_auth's published keys."""
    rules = all_rule_tables()
    jwks = GrpcJwksSource(shared_auth.address, image=IMAGE)
    verifier = TokenVerifier(jwks, issuer="medmesh", audience="medmesh")
    others = [s for s in SERVICES if s != AUTH]
    server = GrpcServer(
        IMAGE,
        {service: AnswerEverything(service) for service in others},
        interceptors=[AuthInterceptor(verifier, rules, operator_clinic=OPERATOR)],
    )
    address = await server.start()
    address_, registered = await shared_auth.register_and_verify(CLINIC_A)
    pending = await shared_auth.login(address_)
    assert pending.user.approval_state == ApprovalState.PENDING
    admin = await shared_auth.login(ADMIN_EMAIL)
    await shared_auth.stub.approve_user(
        ApproveUserRequest(name=registered.user.name),
        metadata=(("authorization", f"Bearer {admin.access_token}"),),
    )
    refreshed = await shared_auth.stub.refresh_token(
        RefreshTokenRequest(refresh_token=pending.refresh_token)
    )
    approved = await verifier.verify(refreshed.access_token)
    async with grpc.aio.insecure_channel(address) as channel:
        yield Mesh(
            shared_auth, channel, rules, pending.access_token, refreshed.access_token, approved
        )
    await server.stop(0)
    await jwks.close()


async def call(channel: grpc.aio.Channel, method: Method, token: str) -> grpc.StatusCode:
    """Call `method` with an empty request (one message on a client stream); its status."""
    metadata = (("authorization", f"Bearer {token}"),)
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    multicallable = kind(
        method.path, request_serializer=bytes, response_deserializer=method.response_type.FromString
    )
    request = method.request_type()
    argument = iter([request]) if method.client_streaming else request
    try:
        answer = multicallable(argument, metadata=metadata, timeout=10)
        if method.server_streaming:
            async for _ in answer:
                pass
        else:
            await answer
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def gateway_status(auth: AuthUnderTest, method: Method, token: str) -> int:
    """The HTTP status svc_auth's ext_authz Check gives a gRPC request for `method`."""
    check = auth.channel.unary_unary(
        "/envoy.service.auth.v3.Authorization/Check",
        request_serializer=bytes,
        response_deserializer=CheckResponse.FromString,
    )
    request = CheckRequest.from_dict(
        {
            "attributes": {
                "source": {"address": {"socketAddress": {"address": "10.9.9.9", "portValue": 1}}},
                "request": {
                    "http": {
                        "method": "POST",
                        "path": method.path,
                        "headers": {"authorization": f"Bearer {token}"},
                    }
                },
            }
        }
    )
    response = await check(request)
    return 200 if response.ok_response is not None else response.denied_response.status.code.value


CONTRACT_RPCS = [method for service in SERVICES for method in IMAGE.methods(service)]


async def test_every_service_of_the_contract_has_a_rule_table(mesh: Mesh) -> None:
    assert set(SERVICES) <= set(mesh.rules)


@pytest.mark.parametrize(
    "method", CONTRACT_RPCS, ids=lambda m: f"{m.service.split('.')[-1]}.{m.name}"
)
async def test_a_pending_account_is_denied_every_clinic_rpc_until_approved(
    mesh: Mesh, method: Method
) -> None:
    rule = mesh.rules.get(method.service, {}).get(method.name)
    if is_own_account_rpc(rule):
        pytest.skip("not a clinic RPC: public, or about the caller's own account")
    channel = mesh.auth.channel if method.service == AUTH else mesh.services
    # Pending: refused by the service's own check and by the gateway.
    assert await call(channel, method, mesh.pending_token) == grpc.StatusCode.PERMISSION_DENIED
    assert await gateway_status(mesh.auth, method, mesh.pending_token) == 403
    # Approved (same account, refreshed token): exactly what its role allows.
    code = await call(channel, method, mesh.approved_token)
    if allows(rule, mesh.approved, OPERATOR):
        assert code != grpc.StatusCode.PERMISSION_DENIED
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED
    gateway_rule = rule_for(f"{method.service}/{method.name}")
    expected = 200 if allows(gateway_rule, mesh.approved, OPERATOR) else 403
    assert await gateway_status(mesh.auth, method, mesh.approved_token) == expected


async def test_a_pending_account_may_sign_in_read_itself_change_its_password_and_log_out(
    shared_auth: AuthUnderTest,
) -> None:
    address, _ = await shared_auth.register_and_verify(CLINIC_A)
    login = await shared_auth.login(address)
    metadata = (("authorization", f"Bearer {login.access_token}"),)
    me = await shared_auth.stub.get_me(GetMeRequest(), metadata=metadata)
    assert me.user.approval_state == ApprovalState.PENDING
    await shared_auth.stub.change_password(
        ChangePasswordRequest(current_password=PASSWORD, new_password="a pending passphrase"),
        metadata=metadata,
    )
    again = await shared_auth.login(address, "a pending passphrase")
    await shared_auth.stub.logout(LogoutRequest(refresh_token=again.refresh_token))


async def test_admins_find_pending_accounts_and_approval_is_audited(
    shared_auth: AuthUnderTest,
) -> None:
    _, registered = await shared_auth.register_and_verify(CLINIC_A)
    admin = await shared_auth.login(ADMIN_EMAIL)
    metadata = (("authorization", f"Bearer {admin.access_token}"),)
    pending = await shared_auth.stub.list_users(
        ListUsersRequest(page_size=500, approval_state=ApprovalState.PENDING), metadata=metadata
    )
    names = {user.name for user in pending.users}
    assert registered.user.name in names
    assert {user.approval_state for user in pending.users} == {ApprovalState.PENDING}
    # Another clinic's admin cannot approve it (it does not exist for them).
    other = await shared_auth.login("admin@clinic-b.example")
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await shared_auth.stub.approve_user(
            ApproveUserRequest(name=registered.user.name),
            metadata=(("authorization", f"Bearer {other.access_token}"),),
        )
    assert foreign.value.code() == grpc.StatusCode.NOT_FOUND
    for _ in range(2):  # idempotent; one audit row
        approved = await shared_auth.stub.approve_user(
            ApproveUserRequest(name=registered.user.name), metadata=metadata
        )
        assert approved.user.approval_state == ApprovalState.APPROVED
    after = await shared_auth.stub.list_users(
        ListUsersRequest(page_size=500, approval_state=ApprovalState.PENDING), metadata=metadata
    )
    assert registered.user.name not in {user.name for user in after.users}
    rows = await asyncio.to_thread(
        shared_auth.query,
        "SELECT clinic_id, actor_user_id FROM audit.events WHERE action = 'auth.user.approve' "
        "AND resource = %s",
        registered.user.name,
    )
    assert rows == [(CLINIC_A, admin.user.user_id)]


async def test_a_pending_clinician_gets_no_report_mails_until_approved(
    shared_auth: AuthUnderTest,
) -> None:
    address, registered = await shared_auth.register_and_verify(CLINIC_A)
    admin = await shared_auth.login(ADMIN_EMAIL)
    metadata = (("authorization", f"Bearer {admin.access_token}"),)
    await shared_auth.stub.set_user_roles(
        SetUserRolesRequest(name=registered.user.name, roles=[Role.CLINICIAN]), metadata=metadata
    )
    recipients = "SELECT email FROM auth.report_recipients WHERE clinic_id = %s AND email = %s"
    assert await asyncio.to_thread(shared_auth.query, recipients, CLINIC_A, address) == []
    await shared_auth.stub.approve_user(
        ApproveUserRequest(name=registered.user.name), metadata=metadata
    )
    assert await asyncio.to_thread(shared_auth.query, recipients, CLINIC_A, address) == [(address,)]
