"""Per-clinic quotas (issue 11, item 15): files per study, pending presigned uploads per
clinic, bytes stored per clinic. Over a quota: RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure
naming it, and nothing stored. Concurrent calls never overshoot."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gen.medmesh.common.v1 import FileKind, StudyStatus
from gen.medmesh.ingest.v1 import (
    CreateTextNoteRequest,
    CreateUploadUrlRequest,
    DeleteStudyRequest,
    Study,
)
from svc_ingest.config import IngestConfig

from .conftest import Ingest
from .samples import png, sha256


def image(n: int) -> bytes:
    """The n-th of a family of uncompressed PNGs: same size, different bytes."""
    return png(64, 64, seed=n, level=0)


SIZE = len(image(0))


@pytest.fixture
def ingest_config(ingest_config: IngestConfig) -> IngestConfig:
    """The shared test limits with small quotas: 3 files a study, 2 pending uploads, and
    room for two and a half images per clinic."""
    return replace(
        ingest_config, max_files_per_study=3, max_pending_uploads=2, max_stored_bytes=SIZE * 5 // 2
    )


async def quota_subjects(error: grpc.aio.AioRpcError) -> list[str]:
    """The subjects of the error's google.rpc.QuotaFailure detail."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status details"
    subjects = []
    for detail in status.details:
        failure = error_details_pb2.QuotaFailure()
        if detail.Unpack(failure):
            subjects += [v.subject for v in failure.violations]
    return subjects


async def concurrently(calls: list[Awaitable[Any]]) -> list[Any]:
    """Run the calls at once; each result or gRPC error in call order."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    unexpected = [
        r for r in results if isinstance(r, BaseException) and not isinstance(r, grpc.RpcError)
    ]
    assert not unexpected, unexpected
    return results


async def assert_exhausted(results: list[Any], subject: str, *, expected: int) -> None:
    """`expected` of the results are RESOURCE_EXHAUSTED naming `subject`; the rest succeeded."""
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refused) == expected, [r.details() for r in refused]
    for failure in refused:
        assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, failure.details()
        assert await quota_subjects(failure) == [subject]


def announce(ingest: Ingest, study: Study, n: int, clinic: str = "clinic-a") -> Awaitable[Any]:
    """CreateUploadUrl for an image of SIZE bytes."""
    return ingest.stub.create_upload_url(
        CreateUploadUrlRequest(
            parent=study.name,
            kind=FileKind.IMAGE_PNG,
            file_name=f"scan-{n}.png",
            content_type="image/png",
            size_bytes=SIZE,
        ),
        metadata=ingest.auth(clinic),
    )


def note(ingest: Ingest, study: Study, n: int) -> Awaitable[Any]:
    """CreateTextNote with the n-th text."""
    return ingest.stub.create_text_note(
        CreateTextNoteRequest(parent=study.name, text=f"note {n}"), metadata=ingest.auth()
    )


async def test_concurrent_notes_in_one_study_stop_at_its_file_quota(ingest: Ingest) -> None:
    study = await ingest.create_study()
    results = await concurrently([note(ingest, study, n) for n in range(8)])
    await assert_exhausted(results, f"studies/{study.study_id}/files", expected=5)
    assert ingest.count("medical_data") == 3
    assert len(ingest.object_keys()) == 3


async def test_a_pending_upload_counts_towards_the_study_file_quota(ingest: Ingest) -> None:
    study = await ingest.create_study()
    await announce(ingest, study, 1)
    await note(ingest, study, 1)
    await note(ingest, study, 2)
    results = await concurrently(
        [
            note(ingest, study, 3),
            announce(ingest, study, 2),
            ingest.upload(study, image(3), FileKind.IMAGE_PNG),
        ]
    )
    await assert_exhausted(results, f"studies/{study.study_id}/files", expected=3)
    assert ingest.count("medical_data") == 3
    assert len(ingest.object_keys()) == 2  # the notes; nothing was PUT for the announcement


async def test_concurrent_announcements_stop_at_the_clinics_pending_upload_quota(
    ingest: Ingest,
) -> None:
    studies = [await ingest.create_study(patient_ref=f"p-{n}") for n in range(6)]
    results = await concurrently([announce(ingest, s, n) for n, s in enumerate(studies)])
    await assert_exhausted(results, "clinics/clinic-a/pendingUploads", expected=4)
    assert ingest.rows("SELECT count(*) FROM ingest.medical_data WHERE status = 1") == [(2,)]
    # Another clinic has its own quota.
    other = await ingest.create_study(clinic="clinic-b")
    await announce(ingest, other, 1, clinic="clinic-b")


async def test_concurrent_uploads_stop_at_the_clinics_stored_bytes_and_store_nothing_more(
    ingest: Ingest,
) -> None:
    studies = [await ingest.create_study(patient_ref=f"p-{n}") for n in range(6)]
    results = await concurrently(
        [ingest.upload(s, image(n), FileKind.IMAGE_PNG) for n, s in enumerate(studies)]
    )
    await assert_exhausted(results, "clinics/clinic-a/storedBytes", expected=4)
    assert ingest.count("medical_data") == 2
    assert len(ingest.object_keys()) == 2
    assert ingest.incomplete_uploads() == []

    def usage() -> list[tuple[Any, ...]]:
        return ingest.rows(
            "SELECT stored_bytes FROM ingest.clinic_usage WHERE clinic_id = %s", "clinic-a"
        )

    assert usage() == [(2 * SIZE,)]

    # Bytes the clinic already stores cost nothing again (one shared object; declaring the
    # SHA-256 gets them past the check made before streaming)...
    kept = [n for n, r in enumerate(results) if not isinstance(r, grpc.RpcError)]
    refused_study = next(s for n, s in enumerate(studies) if n not in kept)
    known = image(kept[0])
    again = await ingest.upload(refused_study, known, FileKind.IMAGE_PNG, sha256=sha256(known))
    assert not again.deduplicated
    assert len(ingest.object_keys()) == 2
    assert usage() == [(2 * SIZE,)]
    # ...a presigned upload of new bytes is refused before a URL is issued...
    with pytest.raises(grpc.aio.AioRpcError) as early:
        await announce(ingest, refused_study, 9)
    assert await quota_subjects(early.value) == ["clinics/clinic-a/storedBytes"]

    # ...and deleting a study frees what only it held (once its analysis is done: here set
    # directly, as if svc_infer had answered, once its job is on the queue).
    def queued() -> bool:
        status = ingest.rows(
            "SELECT status FROM ingest.studies WHERE study_id = %s", studies[kept[1]].study_id
        )
        return status == [(int(StudyStatus.QUEUED),)]

    await ingest.eventually(queued)
    ingest.rows(
        "UPDATE ingest.studies SET status = %s WHERE study_id = %s RETURNING study_id",
        int(StudyStatus.RESULT_READY),
        studies[kept[1]].study_id,
    )
    await ingest.stub.delete_study(
        DeleteStudyRequest(name=studies[kept[1]].name), metadata=ingest.auth()
    )
    assert usage() == [(SIZE,)]
    await ingest.upload(refused_study, image(50), FileKind.IMAGE_PNG)
    # Another clinic has its own quota.
    other = await ingest.create_study(clinic="clinic-b")
    await ingest.upload(other, image(60), FileKind.IMAGE_PNG, clinic="clinic-b")
