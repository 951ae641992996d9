"""Uploads that succeed: the bytes land in the bucket, the rows in PostgreSQL, one job per
file on JetStream; duplicates are not stored twice; presigned uploads are validated."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.request

import grpc
import pytest

from gen.medmesh.common.v1 import FileKind, StudyStatus
from gen.medmesh.ingest.v1 import (
    CompleteUploadRequest,
    CreateTextNoteRequest,
    CreateUploadUrlRequest,
    FileStatus,
    GetStudyRequest,
)
from medmesh.objects import RAW_IMAGES

from .conftest import Ingest
from .samples import dicom, jpeg, png, sha256


def http_put(url: str, data: bytes) -> int:
    """PUT `data` to a presigned URL, as a browser or integration would."""
    request = urllib.request.Request(url, data=data, method="PUT")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return int(reply.status)


NOTE = "Patient reports chest pain radiating to the left arm. Ünïcödé is fine."


async def test_png_jpeg_dicom_and_a_note_in_one_study_are_stored_and_enqueued(
    ingest: Ingest,
) -> None:
    study = await ingest.create_study()
    files = {
        FileKind.IMAGE_PNG: png(640, 480),
        FileKind.IMAGE_JPEG: jpeg(320, 200),
        FileKind.IMAGE_DICOM: dicom(rows=64, columns=48),
    }
    stored = {}
    for kind, data in files.items():
        response = await ingest.upload(study, data, kind, sha256=sha256(data), chunk_size=1000)
        assert not response.deduplicated
        assert response.file.sha256 == sha256(data)
        assert response.file.size_bytes == len(data)
        stored[kind] = response.file
    note = await ingest.stub.create_text_note(
        CreateTextNoteRequest(parent=study.name, text=NOTE), metadata=ingest.auth()
    )
    stored[FileKind.TEXT_NOTE] = note.file

    assert (stored[FileKind.IMAGE_PNG].image_width, stored[FileKind.IMAGE_PNG].image_height) == (
        640,
        480,
    )
    assert stored[FileKind.IMAGE_DICOM].image_width == 48
    assert stored[FileKind.IMAGE_DICOM].image_height == 64

    # The bytes in the bucket are the bytes sent.
    rows = ingest.rows(
        "SELECT file_id::text, object_key, sha256, kind FROM ingest.medical_data"
        " WHERE study_id = %s",
        study.study_id,
    )
    assert len(rows) == 4
    for _file_id, key, digest, _kind in rows:
        body = await ingest.objects.get_bytes(RAW_IMAGES, key)
        assert hashlib.sha256(body).hexdigest() == digest
    assert note.file.sha256 == sha256(NOTE.encode())

    # One job per file, on the subject for its kind.
    jobs = await ingest.eventually(lambda: _jobs_if_complete(ingest, 4), timeout_s=20)
    assert sorted(j.file_id for j in jobs) == sorted(f.file_id for f in stored.values())
    text_jobs = await ingest.jobs(ingest.topology.infer_text_subject)
    assert [j.file_id for j in text_jobs] == [note.file.file_id]
    assert sorted(j.study_file_count for j in jobs) == [1, 2, 3, 4]
    for job in jobs:
        assert job.study_id == study.study_id
        assert job.clinic_id == "clinic-a"
        assert job.bucket == ingest.objects.bucket(RAW_IMAGES)

    # Once the jobs are on the queue the study and its files say so.
    async def queued() -> bool:
        got = await ingest.stub.get_study(GetStudyRequest(name=study.name), metadata=ingest.auth())
        return got.study.status == StudyStatus.QUEUED and all(
            f.status == FileStatus.QUEUED for f in got.study.files
        )

    await ingest.eventually(queued)
    audit = ingest.rows(
        "SELECT action FROM audit.events WHERE study_id = %s ORDER BY id", study.study_id
    )
    assert [a for (a,) in audit].count("study.file.upload") == 4


async def _jobs_if_complete(ingest: Ingest, n: int) -> list | None:
    jobs = await ingest.jobs()
    return jobs if len(jobs) >= n else None


async def test_the_same_bytes_twice_in_a_study_return_the_existing_file(ingest: Ingest) -> None:
    study = await ingest.create_study()
    data = png(100, 100, seed=7)
    first = await ingest.upload(study, data, FileKind.IMAGE_PNG)
    second = await ingest.upload(study, data, FileKind.IMAGE_PNG, file_name="again.png")
    assert second.deduplicated
    assert second.file.file_id == first.file.file_id
    assert ingest.count("medical_data") == 1
    assert len(ingest.object_keys()) == 1
    await ingest.eventually(lambda: _jobs_if_complete(ingest, 1))
    assert len(await ingest.jobs()) == 1


async def test_the_same_bytes_in_another_study_of_the_clinic_share_one_object(
    ingest: Ingest,
) -> None:
    first_study = await ingest.create_study(patient_ref="p-1")
    second_study = await ingest.create_study(patient_ref="p-2")
    data = jpeg(80, 60, seed=3)
    first = await ingest.upload(first_study, data, FileKind.IMAGE_JPEG)
    second = await ingest.upload(second_study, data, FileKind.IMAGE_JPEG)
    assert second.file.file_id != first.file.file_id
    assert ingest.count("medical_data") == 2
    assert len(ingest.object_keys()) == 1  # one copy for the clinic


async def test_a_large_file_streams_to_s3_and_arrives_intact(ingest: Ingest) -> None:
    # One streaming PUT (the default writer; multipart is covered in test_streaming_put.py).
    study = await ingest.create_study()
    data = png(2000, 1800, seed=1, level=0)  # ~10.8 MiB: eleven 1 MiB chunks
    assert len(data) > 2 * ingest.config.part_size_bytes
    response = await ingest.upload(study, data, FileKind.IMAGE_PNG, chunk_size=1024 * 1024)
    (key,) = ingest.object_keys()
    assert await ingest.objects.get_bytes(RAW_IMAGES, key) == data
    assert response.file.image_width == 2000
    assert ingest.incomplete_uploads() == []


async def test_a_presigned_upload_is_validated_and_accepted_on_completion(ingest: Ingest) -> None:
    study = await ingest.create_study()
    data = png(120, 90, seed=11)
    announced = await ingest.stub.create_upload_url(
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
    assert announced.file.status == FileStatus.PENDING_UPLOAD
    assert await asyncio.to_thread(http_put, announced.url, data) == 200
    done = await ingest.stub.complete_upload(
        CompleteUploadRequest(name=announced.file.name), metadata=ingest.auth()
    )
    assert done.file.status == FileStatus.STORED
    assert done.file.sha256 == sha256(data)
    again = await ingest.stub.complete_upload(
        CompleteUploadRequest(name=announced.file.name), metadata=ingest.auth()
    )
    assert again.file.file_id == done.file.file_id
    await ingest.eventually(lambda: _jobs_if_complete(ingest, 1))


async def test_a_presigned_upload_with_other_bytes_is_rejected_and_removed(ingest: Ingest) -> None:
    study = await ingest.create_study()
    data = png(50, 50, seed=2)
    announced = await ingest.stub.create_upload_url(
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
    tampered = data[:-1] + b"\x00"
    assert await asyncio.to_thread(http_put, announced.url, tampered) == 200
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await ingest.stub.complete_upload(
            CompleteUploadRequest(name=announced.file.name), metadata=ingest.auth()
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ingest.object_keys() == []
    (status,) = ingest.rows("SELECT status FROM ingest.medical_data")[0]
    assert status == FileStatus.REJECTED
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await ingest.stub.complete_upload(
            CompleteUploadRequest(name=announced.file.name), metadata=ingest.auth()
        )
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
