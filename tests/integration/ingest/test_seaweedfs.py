"""svc_ingest on SeaweedFS (the S3 server compose.yaml runs), credentials checked: the
presigned flow (CreateUploadUrl → HTTP PUT → CompleteUpload → download URL), a presigned
upload with other bytes refused, and UploadFile through both writers (one streaming PUT,
multipart above `streaming_put_max_bytes`). The rest of the ingest suite runs on the
session's S3 server (localbucket)."""

from __future__ import annotations

import asyncio
import hashlib
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import grpc
import pytest
from support.seaweedfs import SeaweedFSServer, started_seaweedfs

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.ingest.v1 import (
    CompleteUploadRequest,
    CreateUploadUrlRequest,
    CreateUploadUrlResponse,
    FileStatus,
    GetFileDownloadUrlRequest,
    Study,
)
from medmesh.objects import RAW_IMAGES
from svc_ingest.config import MIB, IngestConfig

from .conftest import Ingest, StartIngest
from .samples import png, sha256


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFSServer]:
    """SeaweedFS for this module's tests."""
    with started_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def ingest_config(ingest_config: IngestConfig) -> IngestConfig:
    """The shared test limits; files over 6 MiB go multipart, smaller ones as one PUT."""
    return replace(ingest_config, streaming_put_max_bytes=6 * MIB)


@pytest.fixture
async def ingest(start_ingest: StartIngest, seaweedfs: SeaweedFSServer) -> AsyncIterator[Ingest]:
    """svc_ingest with SeaweedFS as its S3 server."""
    async with start_ingest(s3=seaweedfs.url) as service:
        yield service


def http_put(url: str, data: bytes) -> int:
    """PUT `data` to a presigned URL, as a browser would."""
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


async def test_a_presigned_upload_is_completed_stored_and_downloadable(ingest: Ingest) -> None:
    study = await ingest.create_study()
    data = png(120, 90, seed=41)
    announced = await announce(ingest, study, data)
    assert await asyncio.to_thread(http_put, announced.url, data) == 200
    done = await ingest.stub.complete_upload(
        CompleteUploadRequest(name=announced.file.name), metadata=ingest.auth()
    )
    assert done.file.status == FileStatus.STORED
    assert done.file.sha256 == sha256(data)
    ((key,),) = ingest.rows(
        "SELECT object_key FROM ingest.medical_data WHERE file_id = %s", done.file.file_id
    )
    assert await ingest.objects.get_bytes(RAW_IMAGES, key) == data
    download = await ingest.stub.get_file_download_url(
        GetFileDownloadUrlRequest(name=done.file.name), metadata=ingest.auth()
    )
    assert await asyncio.to_thread(http_get, download.url) == data
    # The staging object is swept or removed; what stays is the accepted copy.
    await ingest.eventually(lambda: ingest.object_keys() == [key])


async def test_a_presigned_upload_with_other_bytes_is_rejected_and_removed(ingest: Ingest) -> None:
    study = await ingest.create_study()
    data = png(50, 50, seed=42)
    announced = await announce(ingest, study, data)
    assert await asyncio.to_thread(http_put, announced.url, data[:-1] + b"\x00") == 200
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await ingest.stub.complete_upload(
            CompleteUploadRequest(name=announced.file.name), metadata=ingest.auth()
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ingest.object_keys() == []
    assert ingest.rows("SELECT status FROM ingest.medical_data") == [(FileStatus.REJECTED,)]


@pytest.mark.parametrize(
    ("width", "height", "writer"),
    [(300, 200, "one streaming PUT"), (2000, 1800, "multipart")],
)
async def test_an_upload_over_grpc_arrives_intact_through_either_writer(
    ingest: Ingest, width: int, height: int, writer: str
) -> None:
    study = await ingest.create_study()
    data = png(width, height, seed=43, level=0)
    assert (len(data) > ingest.config.streaming_put_max_bytes) == (writer == "multipart")
    response = await ingest.upload(study, data, FileKind.IMAGE_PNG, chunk_size=MIB)
    assert response.file.sha256 == sha256(data)
    (key,) = ingest.object_keys()
    stored = await ingest.objects.get_bytes(RAW_IMAGES, key)
    assert hashlib.sha256(stored).hexdigest() == sha256(data)
    listing = ingest.objects.client._list_multipart_uploads(ingest.objects.bucket(RAW_IMAGES))
    assert listing.uploads == []
