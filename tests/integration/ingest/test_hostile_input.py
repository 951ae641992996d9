"""Hostile input through the real gRPC paths: a crafted DICOM on the presigned path, file
names with control or bidirectional characters on every RPC that takes one, names that must
never reach an HTTP header, and Cyrillic names and notes that must come back exactly."""

from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request

import grpc
import pytest
from support.crafted_files import deflated_dicom_with_garbage

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.ingest.v1 import (
    CompleteUploadRequest,
    CreateTextNoteRequest,
    CreateUploadUrlRequest,
    FileStatus,
    GetFileDownloadUrlRequest,
    GetFileRequest,
)
from medmesh.objects import RAW_IMAGES

from .conftest import Ingest
from .samples import png, sha256
from .test_bad_input import field_violations


def http_put(url: str, data: bytes) -> int:
    """PUT `data` to a presigned URL, as a browser would."""
    request = urllib.request.Request(url, data=data, method="PUT")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return int(reply.status)


def http_get_headers(url: str) -> str:
    """GET a presigned URL as a browser would; its response headers, one per line."""
    with urllib.request.urlopen(url, timeout=10) as reply:
        reply.read()
        return "\n".join(f"{k}: {v}" for k, v in reply.headers.items())


def assert_no_name(name: str, text: str) -> None:
    """Neither `name` nor its start, raw or percent-encoded, nor a disposition is in `text`."""
    for candidate in (text, urllib.parse.unquote(text)):
        for fragment in (name, name[:8], urllib.parse.quote(name), "disposition", "filename"):
            assert fragment.lower() not in candidate.lower(), (fragment, text)


def announce(parent: str, data: bytes, kind: FileKind, file_name: str) -> CreateUploadUrlRequest:
    """A CreateUploadUrl request for `data`."""
    content_type = {FileKind.IMAGE_PNG: "image/png", FileKind.IMAGE_DICOM: "application/dicom"}
    return CreateUploadUrlRequest(
        parent=parent,
        kind=kind,
        file_name=file_name,
        content_type=content_type[kind],
        size_bytes=len(data),
        sha256=sha256(data),
    )


async def test_a_crafted_deflated_dicom_on_the_presigned_path_is_invalid_argument_not_internal(
    ingest: Ingest,
) -> None:
    study = await ingest.create_study()
    data = deflated_dicom_with_garbage()
    announced = await ingest.stub.create_upload_url(
        announce(study.name, data, FileKind.IMAGE_DICOM, "crafted.dcm"), metadata=ingest.auth()
    )
    assert await asyncio.to_thread(http_put, announced.url, data) == 200
    call = ingest.stub.complete_upload(
        CompleteUploadRequest(name=announced.file.name), metadata=ingest.auth()
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value.details()
    assert "transfer syntax 1.2.840.10008.1.2.1.99" in (failure.value.details() or "")
    assert await field_violations(call) == ["name"]
    assert ingest.rows("SELECT status FROM ingest.medical_data") == [(FileStatus.REJECTED,)]
    assert ingest.count("outbox") == 0


BAD_NAMES = [
    "scan.png\r\nX-Injected: yes",
    "scan\n.png",
    "a\x00.png",
    "esc\x1b[31m.png",
    "nel\x85.png",
    "line\u2028break.png",
    "invoice\u202egnp.exe",
    "iso\u2066late.png",
    "../up.png",
    "back\\slash.png",
    "..",
    "   ",
]
NAME_IDS = [repr(n)[:32] for n in BAD_NAMES]


@pytest.mark.parametrize("name", BAD_NAMES, ids=NAME_IDS)
async def test_a_bad_file_name_is_refused_by_create_upload_url_and_nothing_is_stored(
    ingest: Ingest, name: str
) -> None:
    study = await ingest.create_study()
    data = png(20, 20)
    call = ingest.stub.create_upload_url(
        announce(study.name, data, FileKind.IMAGE_PNG, name), metadata=ingest.auth()
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await field_violations(call) == ["file_name"]
    assert ingest.count("medical_data") == 0


@pytest.mark.parametrize("name", BAD_NAMES, ids=NAME_IDS)
async def test_a_bad_file_name_is_refused_by_create_text_note_and_nothing_is_stored(
    ingest: Ingest, name: str
) -> None:
    study = await ingest.create_study()
    call = ingest.stub.create_text_note(
        CreateTextNoteRequest(parent=study.name, text="a fine note", file_name=name),
        metadata=ingest.auth(),
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await field_violations(call) == ["file_name"]
    assert ingest.count("medical_data") == 0
    assert ingest.object_keys() == []


# Russian on purpose: letters that look Latin are the point (RUF001).
CYRILLIC_NAME = "Рентген грудной клетки (копия) «2026».png"
CYRILLIC_NOTE = "Пациент жалуется на боль в груди.\nТемпература 37,8 °C; кашель.\n"  # noqa: RUF001


async def test_cyrillic_file_names_and_notes_round_trip_exactly(ingest: Ingest) -> None:
    study = await ingest.create_study()
    uploaded = await ingest.upload(study, png(30, 20), FileKind.IMAGE_PNG, file_name=CYRILLIC_NAME)
    note = await ingest.stub.create_text_note(
        CreateTextNoteRequest(parent=study.name, text=CYRILLIC_NOTE, file_name="заметка.txt"),
        metadata=ingest.auth(),
    )
    assert uploaded.file.file_name == CYRILLIC_NAME
    assert note.file.file_name == "заметка.txt"
    again = await ingest.stub.get_file(
        GetFileRequest(name=uploaded.file.name), metadata=ingest.auth()
    )
    assert again.file.file_name == CYRILLIC_NAME
    names = {row[0] for row in ingest.rows("SELECT file_name FROM ingest.medical_data")}
    assert names == {CYRILLIC_NAME, "заметка.txt"}
    (key,) = ingest.rows(
        "SELECT object_key FROM ingest.medical_data WHERE file_id = %s", note.file.file_id
    )[0]
    assert (await ingest.objects.get_bytes(RAW_IMAGES, key)).decode() == CYRILLIC_NOTE


# Valid names that would break a header or a markup if they were copied into one raw.
HEADER_HOSTILE_NAME = 'x"; filename*=UTF-8\'\'evil.exe; a=<b>&.png'


@pytest.mark.parametrize("name", [CYRILLIC_NAME, HEADER_HOSTILE_NAME], ids=["cyrillic", "quotes"])
async def test_no_file_name_reaches_a_presigned_url_or_the_headers_of_the_object(
    ingest: Ingest, name: str
) -> None:
    study = await ingest.create_study()
    data = png(40, 30, seed=4)
    announced = await ingest.stub.create_upload_url(
        announce(study.name, data, FileKind.IMAGE_PNG, name), metadata=ingest.auth()
    )
    assert_no_name(name, announced.url)
    assert dict(announced.required_headers) == {}
    assert await asyncio.to_thread(http_put, announced.url, data) == 200
    done = await ingest.stub.complete_upload(
        CompleteUploadRequest(name=announced.file.name), metadata=ingest.auth()
    )
    assert done.file.file_name == name
    (key,) = ingest.rows("SELECT object_key FROM ingest.medical_data")[0]
    assert name not in key
    stat = await asyncio.to_thread(
        ingest.objects.client.stat_object, ingest.objects.bucket(RAW_IMAGES), key
    )
    assert_no_name(name, " ".join(f"{k}: {v}" for k, v in (stat.metadata or {}).items()))
    download = await ingest.stub.get_file_download_url(
        GetFileDownloadUrlRequest(name=done.file.name), metadata=ingest.auth()
    )
    assert_no_name(name, download.url)
    assert_no_name(name, await asyncio.to_thread(http_get_headers, download.url))
