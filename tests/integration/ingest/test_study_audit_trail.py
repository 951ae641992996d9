"""A study's audit trail (ListStudyAuditEvents) and the presigned download of a stored file
(GetFileDownloadUrl): what the trail shows and hides, the role table, pagination, and that
every read of another clinic's study is NOT_FOUND and leaves an `access.denied` row under the
*caller's* clinic, never under the owner's."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from gen.medmesh.common.v1 import FileKind, Role
from gen.medmesh.ingest.v1 import (
    CreateUploadUrlRequest,
    GetFileDownloadUrlRequest,
    GetFileRequest,
    GetStudyRequest,
    ListStudyAuditEventsRequest,
    ListStudyAuditEventsResponse,
    Study,
    StudyFile,
    WatchStudyRequest,
)

from .conftest import Ingest
from .samples import png, sha256

OWNER = "clinic-a"
OTHER = "clinic-b"


async def _rpc_error(awaitable: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await awaitable
    return failure.value


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


async def _study_with_png(ingest: Ingest) -> tuple[Study, StudyFile, bytes]:
    study = await ingest.create_study()
    data = png(seed=7)
    uploaded = await ingest.upload(study, data, FileKind.IMAGE_PNG)
    return study, uploaded.file, data


async def _trail(
    ingest: Ingest, study: Study, *, roles: tuple[str, ...] = ("clinician",), **request: Any
) -> ListStudyAuditEventsResponse:
    return await ingest.stub.list_study_audit_events(
        ListStudyAuditEventsRequest(parent=study.name, **request),
        metadata=ingest.auth(roles=roles),
    )


def _audit_rows(ingest: Ingest, where: str, *params: Any) -> list[tuple[Any, ...]]:
    return ingest.rows(
        "SELECT clinic_id, actor_user_id, actor_roles, action, resource, study_id, detail"
        f" FROM audit.events WHERE {where} ORDER BY id",
        *params,
    )


async def test_the_trail_shows_who_created_uploaded_and_read_the_study_oldest_first(
    ingest: Ingest,
) -> None:
    study, file, data = await _study_with_png(ingest)
    await ingest.stub.get_study(GetStudyRequest(name=study.name), metadata=ingest.auth())
    await ingest.stub.get_file(GetFileRequest(name=file.name), metadata=ingest.auth())

    first = await _trail(ingest, study)
    second = await _trail(ingest, study, roles=("admin",))

    assert [e.action for e in first.audit_events] == [
        "study.create",
        "study.file.upload",
        "study.read",
        "study.file.read",
    ]
    upload = first.audit_events[1]
    assert upload.actor == "users/u-1"
    assert upload.actor_roles == [Role.CLINICIAN]
    assert upload.resource == study.name
    assert upload.detail["file_id"] == file.file_id
    assert upload.detail["sha256"] == sha256(data)
    assert upload.name == f"{study.name}/auditEvents/{upload.audit_event_id}"
    ids = [int(e.audit_event_id) for e in first.audit_events]
    assert ids == sorted(ids)
    assert first.next_page_token == ""
    # Reading the trail is on the trail.
    assert [e.action for e in second.audit_events][-1] == "study.audit.read"
    assert second.audit_events[-1].detail["returned"] == "4"


async def test_the_trail_shows_allow_listed_detail_only_never_secrets_or_object_keys(
    ingest: Ingest,
) -> None:
    study = await ingest.create_study()
    secret_detail = {
        "bearer_token": "s3cret-token",
        "idempotency_key": "idem-1",
        "archive_key": "clinic-a/reports/r.pdf",
        "client_ip": "203.0.113.9",
        "error": "MIS said: Authorization: Bearer s3cret-token",
        "nested": {"version": 9},
        "version": 3,
        "result_ids": ["r-1", "r-2"],
        "enqueued": True,
    }
    ingest.rows(
        "INSERT INTO audit.events (clinic_id, actor_user_id, actor_roles, action, resource,"
        " study_id, detail) VALUES (%s, 'svc_report', '{service}', 'report.ready', 'reports/r',"
        " %s, %s) RETURNING id",
        OWNER,
        study.study_id,
        json.dumps(secret_detail),
    )

    events = (await _trail(ingest, study)).audit_events

    ready = next(e for e in events if e.action == "report.ready")
    assert ready.detail == {"version": "3", "result_ids": "r-1,r-2", "enqueued": "true"}
    assert ready.actor == "services/svc_report"
    assert ready.actor_roles == [Role.SERVICE]
    assert "s3cret" not in str(events)
    assert "203.0.113.9" not in str(events)


async def test_the_trail_pages_in_order_and_refuses_another_studys_token(ingest: Ingest) -> None:
    study, file, _ = await _study_with_png(ingest)
    for _ in range(3):
        await ingest.stub.get_file(GetFileRequest(name=file.name), metadata=ingest.auth())
    other_study = await ingest.create_study(patient_ref="p-002")

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await _trail(ingest, study, page_size=2, page_token=token)
        seen += [e.audit_event_id for e in page.audit_events]
        pages += 1
        token = page.next_page_token
        if not token:
            break
        # Each page's own read is recorded after it: later pages do include them.
        misuse = await _rpc_error(_trail(ingest, other_study, page_size=2, page_token=token))
        assert misuse.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert len(seen) == len(set(seen)) >= 5  # create, upload, three reads (+ trail reads)
    assert [int(i) for i in seen] == sorted(int(i) for i in seen)
    assert pages >= 3


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [
        (("admin",), True),
        (("clinician",), True),
        (("technician",), False),
        (("viewer",), False),
        (("service",), False),
        ((), False),  # an account with no role yet (not approved): nothing
    ],
)
async def test_the_trail_follows_the_role_table_and_refusals_are_audited(
    ingest: Ingest, roles: tuple[str, ...], allowed: bool
) -> None:
    study = await ingest.create_study()
    call = _trail(ingest, study, roles=roles)
    if allowed:
        assert [e.action for e in (await call).audit_events] == ["study.create"]
        return
    error = await _rpc_error(call)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    rows = _audit_rows(ingest, "action = 'access.denied'")
    assert rows == [
        (
            OWNER,
            "u-1",
            sorted(roles),
            "access.denied",
            study.name,
            None,
            {"rpc": "ListStudyAuditEvents", "code": "PERMISSION_DENIED"},
        )
    ]


async def test_a_file_download_url_returns_the_uploaded_bytes_and_is_audited_once(
    ingest: Ingest,
) -> None:
    study, file, data = await _study_with_png(ingest)

    response = await ingest.stub.get_file_download_url(
        GetFileDownloadUrlRequest(name=file.name),
        metadata=ingest.auth(roles=("viewer",), user="u-viewer"),
    )

    assert await asyncio.to_thread(_http_get, response.url) == data
    assert response.content_type == "image/png"
    assert response.size_bytes == len(data)
    assert "p-001" not in response.url  # no patient data in the URL
    rows = _audit_rows(ingest, "action = 'study.file.download_url'")
    assert rows == [
        (
            OWNER,
            "u-viewer",
            ["viewer"],
            "study.file.download_url",
            study.name,
            study.study_id,
            {"file_id": file.file_id},
        )
    ]


@pytest.mark.parametrize(
    ("roles", "allowed"),
    [
        (("admin",), True),
        (("clinician",), True),
        (("technician",), True),
        (("viewer",), True),
        (("service",), True),
        ((), False),  # an account with no role yet (not approved): nothing
    ],
)
async def test_the_file_download_url_follows_the_role_table_and_refusals_are_audited(
    ingest: Ingest, roles: tuple[str, ...], allowed: bool
) -> None:
    study, file, _ = await _study_with_png(ingest)
    call = ingest.stub.get_file_download_url(
        GetFileDownloadUrlRequest(name=file.name), metadata=ingest.auth(roles=roles, user="u-r")
    )
    if allowed:
        assert (await call).url
        assert [r[3] for r in _audit_rows(ingest, "actor_user_id = 'u-r'")] == [
            "study.file.download_url"
        ]
        return
    error = await _rpc_error(call)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _audit_rows(ingest, "actor_user_id = 'u-r'") == [
        (
            OWNER,
            "u-r",
            [],
            "access.denied",
            file.name,
            None,
            {"rpc": "GetFileDownloadUrl", "code": "PERMISSION_DENIED"},
        )
    ]


async def test_a_file_download_url_of_a_pending_upload_is_a_failed_precondition(
    ingest: Ingest,
) -> None:
    study = await ingest.create_study()
    data = png(seed=3)
    announced = await ingest.stub.create_upload_url(
        CreateUploadUrlRequest(
            parent=study.name,
            kind=FileKind.IMAGE_PNG,
            file_name="scan.png",
            content_type="image/png",
            size_bytes=len(data),
        ),
        metadata=ingest.auth(),
    )

    error = await _rpc_error(
        ingest.stub.get_file_download_url(
            GetFileDownloadUrlRequest(name=announced.file.name), metadata=ingest.auth()
        )
    )

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def _first_watch_message(ingest: Ingest, name: str, metadata: Any) -> Any:
    async for message in ingest.stub.watch_study(WatchStudyRequest(name=name), metadata=metadata):
        return message
    raise AssertionError("the stream ended without a message")


ReadCall = Callable[[Ingest, Study, StudyFile, Any], Awaitable[Any]]
CROSS_CLINIC_READS: dict[str, tuple[ReadCall, Callable[[Study, StudyFile], str]]] = {
    "GetStudy": (
        lambda i, s, f, m: i.stub.get_study(GetStudyRequest(name=s.name), metadata=m),
        lambda s, f: s.name,
    ),
    "GetFile": (
        lambda i, s, f, m: i.stub.get_file(GetFileRequest(name=f.name), metadata=m),
        lambda s, f: f.name,
    ),
    "WatchStudy": (
        lambda i, s, f, m: _first_watch_message(i, s.name, m),
        lambda s, f: s.name,
    ),
    "GetFileDownloadUrl": (
        lambda i, s, f, m: i.stub.get_file_download_url(
            GetFileDownloadUrlRequest(name=f.name), metadata=m
        ),
        lambda s, f: f.name,
    ),
    "ListStudyAuditEvents": (
        lambda i, s, f, m: i.stub.list_study_audit_events(
            ListStudyAuditEventsRequest(parent=s.name), metadata=m
        ),
        lambda s, f: s.name,
    ),
}


@pytest.mark.parametrize("rpc", sorted(CROSS_CLINIC_READS))
async def test_another_clinics_read_is_not_found_and_audited_under_the_callers_clinic(
    ingest: Ingest, rpc: str
) -> None:
    study, file, _ = await _study_with_png(ingest)
    call, resource = CROSS_CLINIC_READS[rpc]
    before = _audit_rows(ingest, "clinic_id = %s", OWNER)

    error = await _rpc_error(call(ingest, study, file, ingest.auth(OTHER, ("admin",), "u-b")))
    missing_study = Study(name=f"studies/{uuid.uuid4()}", study_id="")
    missing_file = StudyFile(name=f"{missing_study.name}/files/{uuid.uuid4()}")
    missing = await _rpc_error(
        call(ingest, missing_study, missing_file, ingest.auth(OTHER, ("admin",), "u-b"))
    )

    assert error.code() == missing.code() == grpc.StatusCode.NOT_FOUND
    for leaked in (OWNER, "p-001", "u-1", file.sha256):
        assert leaked not in (error.details() or "")
    denied = _audit_rows(ingest, "clinic_id = %s", OTHER)
    assert denied[0] == (
        OTHER,
        "u-b",
        ["admin"],
        "access.denied",
        resource(study, file),
        None,
        {"rpc": rpc, "code": "NOT_FOUND"},
    )
    assert [r[3] for r in denied] == ["access.denied", "access.denied"]
    # Nothing was written under the owner's clinic, so the owner's trail is unchanged.
    assert _audit_rows(ingest, "clinic_id = %s", OWNER) == before
