"""Presigned uploads after CompleteUpload and when abandoned (issue 11, item 9): the old URL
cannot change what was accepted, and uploads never completed expire with their objects."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.request
import uuid
from dataclasses import replace

import grpc
import pytest

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.ingest.v1 import (
    CompleteUploadRequest,
    CreateUploadUrlRequest,
    CreateUploadUrlResponse,
    DeleteStudyRequest,
    FileStatus,
    GetFileDownloadUrlRequest,
    Study,
)
from medmesh.objects import RAW_IMAGES
from svc_ingest.config import IngestConfig

from .conftest import Ingest
from .samples import png, sha256


@pytest.fixture
def ingest_config(ingest_config: IngestConfig) -> IngestConfig:
    """The shared test limits, with a sweeper that looks every 0.3 s."""
    return replace(ingest_config, sweep_interval_s=0.3)


def http_put(url: str, data: bytes) -> int:
    """PUT `data` to a presigned URL, as a browser or integration would."""
    request = urllib.request.Request(url, data=data, method="PUT")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return int(reply.status)


def http_get(url: str) -> bytes:
    """GET a presigned URL."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        return bytes(reply.read())


async def announce(ingest: Ingest, study: Study, data: bytes) -> CreateUploadUrlResponse:
    """CreateUploadUrl for a PNG of `data`."""
    return await ingest.stub.create_upload_url(
        CreateUploadUrlRequest(
            parent=study.name,
            kind=FileKind.IMAGE_PNG,
            file_name="scan.png",
            content_type="image/png",
            size_bytes=len(data),
            sha256=sha256(data),
        ),
        metadata=ingest.auth(),
    )


async def test_a_put_through_the_old_url_after_completion_changes_nothing_anyone_reads(
    ingest: Ingest,
) -> None:
    study = await ingest.create_study()
    accepted = png(120, 90, seed=21)
    announced = await announce(ingest, study, accepted)
    assert await asyncio.to_thread(http_put, announced.url, accepted) == 200
    done = await ingest.stub.complete_upload(
        CompleteUploadRequest(name=announced.file.name), metadata=ingest.auth()
    )
    assert done.file.status == FileStatus.STORED

    # The URL is still valid (S3 cannot revoke it): the attacker's PUT succeeds...
    forged = png(120, 90, seed=22)
    assert await asyncio.to_thread(http_put, announced.url, forged) == 200

    # ...but the object the file points at (what the worker's job and every download read)
    # is a copy under a key no URL was issued for, and still holds the accepted bytes.
    ((key,),) = ingest.rows(
        "SELECT object_key FROM ingest.medical_data WHERE file_id = %s", done.file.file_id
    )
    assert await ingest.objects.get_bytes(RAW_IMAGES, key) == accepted
    assert key not in announced.url
    (job,) = await ingest.eventually(ingest.jobs)
    assert job.object_key == key
    assert job.sha256 == sha256(accepted)
    download = await ingest.stub.get_file_download_url(
        GetFileDownloadUrlRequest(name=done.file.name), metadata=ingest.auth()
    )
    assert hashlib.sha256(await asyncio.to_thread(http_get, download.url)).hexdigest() == (
        sha256(accepted)
    )

    # The forged object sat in the staging area, which the sweeper empties.
    await ingest.eventually(lambda: ingest.object_keys() == [key])
    again = await ingest.stub.complete_upload(
        CompleteUploadRequest(name=announced.file.name), metadata=ingest.auth()
    )
    assert again.file.sha256 == sha256(accepted)


async def test_an_abandoned_upload_expires_with_its_object_and_a_fresh_one_is_kept(
    ingest: Ingest,
) -> None:
    study = await ingest.create_study()
    old_bytes, fresh_bytes = png(40, 40, seed=31), png(40, 40, seed=32)
    old = await announce(ingest, study, old_bytes)
    fresh = await announce(ingest, study, fresh_bytes)
    assert await asyncio.to_thread(http_put, old.url, old_bytes) == 200
    assert await asyncio.to_thread(http_put, fresh.url, fresh_bytes) == 200
    assert len(ingest.object_keys()) == 2
    # The old one was announced longer ago than the configured age.
    age = ingest.config.pending_upload_max_age_s + 60
    ingest.rows(
        "UPDATE ingest.medical_data SET create_time = create_time - make_interval(secs => %s)"
        " WHERE file_id = %s RETURNING file_id",
        age,
        old.file.file_id,
    )

    def old_is_gone() -> bool:
        rows = ingest.rows("SELECT file_id::text FROM ingest.medical_data")
        return rows == [(fresh.file.file_id,)] and len(ingest.object_keys()) == 1

    await ingest.eventually(old_is_gone)
    ((fresh_key,),) = ingest.rows("SELECT object_key FROM ingest.medical_data")
    assert ingest.object_keys() == [fresh_key]
    assert await ingest.objects.get_bytes(RAW_IMAGES, fresh_key) == fresh_bytes
    expired = ingest.rows(
        "SELECT actor_user_id, detail->>'file_id' FROM audit.events"
        " WHERE action = 'study.file.expire'"
    )
    assert expired == [("services/svc_ingest", old.file.file_id)]

    # The expired file is gone for its client; the fresh one still completes.
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await ingest.stub.complete_upload(
            CompleteUploadRequest(name=old.file.name), metadata=ingest.auth()
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    done = await ingest.stub.complete_upload(
        CompleteUploadRequest(name=fresh.file.name), metadata=ingest.auth()
    )
    assert done.file.status == FileStatus.STORED
    await ingest.eventually(lambda: len(ingest.object_keys()) == 1)
    ((accepted_key,),) = ingest.rows("SELECT object_key FROM ingest.medical_data")
    assert ingest.object_keys() == [accepted_key]


async def test_a_put_after_the_study_was_deleted_leaves_no_object(ingest: Ingest) -> None:
    study = await ingest.create_study()
    data = png(30, 30, seed=41)
    announced = await announce(ingest, study, data)
    await ingest.stub.delete_study(DeleteStudyRequest(name=study.name), metadata=ingest.auth())
    assert await asyncio.to_thread(http_put, announced.url, data) == 200
    await ingest.eventually(lambda: ingest.object_keys() == [])
    assert ingest.count("medical_data") == 0


async def test_concurrent_completions_accept_one_copy_and_leave_no_other_object(
    ingest: Ingest,
) -> None:
    study = await ingest.create_study()
    data = png(200, 150, seed=51)
    announced = await announce(ingest, study, data)
    assert await asyncio.to_thread(http_put, announced.url, data) == 200
    request = CompleteUploadRequest(name=announced.file.name)
    results = await asyncio.gather(
        *(ingest.stub.complete_upload(request, metadata=ingest.auth()) for _ in range(4)),
        return_exceptions=True,
    )
    done = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(done) + len(refused) == 4
    assert done, [r.details() for r in refused]
    # A call that overlapped a running completion is told to retry; none half-stored a file.
    assert {r.code() for r in refused} <= {grpc.StatusCode.FAILED_PRECONDITION}
    assert {d.file.sha256 for d in done} == {sha256(data)}
    ((key, status, lease),) = ingest.rows(
        "SELECT object_key, status, completion_key FROM ingest.medical_data"
    )
    assert (status, lease) == (FileStatus.STORED, None)
    await ingest.eventually(lambda: ingest.object_keys() == [key])
    assert len(await ingest.eventually(ingest.jobs)) == 1


async def test_the_copy_of_a_completion_that_died_is_removed_by_the_next_one(
    ingest: Ingest,
) -> None:
    study = await ingest.create_study()
    data = png(60, 60, seed=61)
    announced = await announce(ingest, study, data)
    assert await asyncio.to_thread(http_put, announced.url, data) == 200
    # A replica claimed the file, copied it and died: its lease ran out long ago.
    dead_copy = f"clinic-a/{study.study_id}/{uuid.uuid4()}"
    await ingest.objects.put_bytes(RAW_IMAGES, dead_copy, data)
    lease = ingest.config.complete_lease_s + 60
    ingest.rows(
        "UPDATE ingest.medical_data SET completion_key = %s,"
        " completion_started = now() - make_interval(secs => %s) WHERE file_id = %s"
        " RETURNING file_id",
        dead_copy,
        lease,
        announced.file.file_id,
    )
    done = await ingest.stub.complete_upload(
        CompleteUploadRequest(name=announced.file.name), metadata=ingest.auth()
    )
    assert done.file.status == FileStatus.STORED
    ((key,),) = ingest.rows("SELECT object_key FROM ingest.medical_data")
    assert key != dead_copy
    await ingest.eventually(lambda: ingest.object_keys() == [key])
