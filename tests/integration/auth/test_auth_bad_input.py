"""The bad-input corpus: each malformed request is INVALID_ARGUMENT (or ALREADY_EXISTS) with
the offending fields named in google.rpc.BadRequest, and nothing is half-written."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from auth_harness import ADMIN_EMAIL, CLINIC_A, PASSWORD, AuthUnderTest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gen.medmesh.auth.v1 import (
    ListUsersRequest,
    RegisterRequest,
    RequestPasswordResetRequest,
    ResetPasswordRequest,
    SetUserRolesRequest,
)
from gen.medmesh.common.v1 import Role

GOOD = {
    "email": "new.person@clinic-a.example",
    "password": PASSWORD,
    "display_name": "New Person",
    "clinic_id": CLINIC_A,
}

REGISTER_CORPUS: list[tuple[str, dict[str, Any], set[str]]] = [
    ("malformed e-mail", {"email": "not-an-address"}, {"email"}),
    ("e-mail without domain dot", {"email": "someone@localhost"}, {"email"}),
    ("e-mail with spaces", {"email": "some one@clinic-a.example"}, {"email"}),
    ("empty e-mail", {"email": ""}, {"email"}),
    ("oversized e-mail", {"email": "a" * 250 + "@clinic-a.example"}, {"email"}),
    ("short password", {"password": "short1!"}, {"password"}),
    ("common password", {"password": "password1234"}, {"password"}),
    ("repetitive password", {"password": "abababababababab"}, {"password"}),
    ("password containing the address", {"password": "new.person-secret!"}, {"password"}),
    ("oversized password", {"password": "x1!" * 100}, {"password"}),
    ("empty display name", {"display_name": "   "}, {"display_name"}),
    ("oversized display name", {"display_name": "N" * 101}, {"display_name"}),
    ("control characters in name", {"display_name": "Bad\x00Name"}, {"display_name"}),
    ("malformed clinic id", {"clinic_id": "Clinic A!"}, {"clinic_id"}),
    ("unknown clinic", {"clinic_id": "clinic-zzz"}, {"clinic_id"}),
    (
        "several bad fields at once",
        {"email": "nope", "password": "short", "display_name": ""},
        {"email", "password", "display_name"},
    ),
]


def violations(error: grpc.aio.AioRpcError) -> set[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    fields = set()
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields |= {v.field for v in bad_request.field_violations}
    return fields


def written(auth: AuthUnderTest) -> tuple[Any, ...]:
    # The outbox row commits with the e-mail token, so the token count stands for both (the
    # outbox itself drains asynchronously and cannot be compared).
    return (
        auth.query("SELECT count(*) FROM auth.users")[0][0],
        auth.query("SELECT count(*) FROM auth.user_roles")[0][0],
        auth.query("SELECT count(*) FROM auth.email_tokens")[0][0],
        auth.query("SELECT count(*) FROM audit.events")[0][0],
    )


@pytest.mark.parametrize(
    ("case", "changes", "fields"), REGISTER_CORPUS, ids=[c for c, _, _ in REGISTER_CORPUS]
)
async def test_bad_registration_is_invalid_argument_naming_the_fields_and_writes_nothing(
    shared_auth: AuthUnderTest, case: str, changes: dict[str, Any], fields: set[str]
) -> None:
    before = written(shared_auth)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await shared_auth.stub.register(RegisterRequest(**{**GOOD, **changes}))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    assert violations(failure.value) == fields
    assert written(shared_auth) == before


async def test_a_duplicate_email_is_already_exists_and_keeps_the_first_account(
    auth: AuthUnderTest,
) -> None:
    first = await auth.stub.register(RegisterRequest(**GOOD))
    before = written(auth)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await auth.stub.register(
            RegisterRequest(**{**GOOD, "email": GOOD["email"].upper(), "display_name": "Dup"})
        )
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert written(auth) == before
    rows = auth.query(
        "SELECT user_id::text, display_name FROM auth.users WHERE email = %s", GOOD["email"]
    )
    assert rows == [(first.user.user_id, "New Person")]


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (SetUserRolesRequest(name="users/not-a-uuid", roles=[Role.VIEWER]), {"name"}),
        (SetUserRolesRequest(name="studies/123", roles=[Role.VIEWER]), {"name"}),
        (SetUserRolesRequest(roles=[Role.VIEWER]), {"name"}),
        (ListUsersRequest(page_token="garbage!"), {"page_token"}),
        (ListUsersRequest(page_size=-1), {"page_size"}),
        (RequestPasswordResetRequest(email="nope"), {"email"}),
        (ResetPasswordRequest(token="", new_password=PASSWORD), {"token"}),
        (ResetPasswordRequest(token="t", new_password="weak"), {"new_password"}),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, set) else ",".join(value),
)
async def test_bad_requests_to_other_rpcs_are_invalid_argument_naming_the_fields(
    shared_auth: AuthUnderTest, request_: Any, fields: set[str]
) -> None:
    admin = await shared_auth.login(ADMIN_EMAIL)
    metadata = (("authorization", f"Bearer {admin.access_token}"),)
    method = {
        SetUserRolesRequest: shared_auth.stub.set_user_roles,
        ListUsersRequest: shared_auth.stub.list_users,
        RequestPasswordResetRequest: shared_auth.stub.request_password_reset,
        ResetPasswordRequest: shared_auth.stub.reset_password,
    }[type(request_)]
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await method(request_, metadata=metadata)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(failure.value) == fields


@pytest.mark.parametrize("roles", [[], [Role.UNSPECIFIED], [Role.VIEWER, Role.UNSPECIFIED]])
async def test_setting_no_roles_or_an_unspecified_role_is_rejected_and_changes_nothing(
    shared_auth: AuthUnderTest, roles: list[Role]
) -> None:
    admin = await shared_auth.login(ADMIN_EMAIL)
    target = await shared_auth.login(await shared_auth.create_user(CLINIC_A, ("technician",)))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await shared_auth.stub.set_user_roles(
            SetUserRolesRequest(name=target.user.name, roles=roles),
            metadata=(("authorization", f"Bearer {admin.access_token}"),),
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(failure.value) == {"roles"}
    stored = shared_auth.query(
        "SELECT role FROM auth.user_roles WHERE user_id = %s::uuid", target.user.user_id
    )
    assert stored == [("technician",)]
