"""The bad-input corpus: every malformed upload is refused with INVALID_ARGUMENT and a field
violation, and afterwards the bucket, the tables and the S3 server's multipart uploads hold
nothing new. The service runs against an S3 server of this module's own, so its unfinished
multipart uploads can be inspected."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from support.crafted_files import (
    deflated_dicom_with_garbage,
    jpeg_frame_only,
    png_raw_size,
    png_with_idat,
)
from support.crafted_files import dicom as dicom_with_geometry

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.ingest.v1 import (
    CreateTextNoteRequest,
    UploadFileMetadata,
    UploadFileRequest,
)
from medmesh.launcher import S3Server

from .conftest import CONTENT_TYPES, Ingest, StartIngest
from .samples import (
    UNSUPPORTED_SYNTAX,
    dicom,
    jpeg,
    png,
    png_header_only,
    sha256,
    with_bad_crc,
)

MIB = 1024 * 1024
Messages = list[UploadFileRequest]


@pytest.fixture(scope="module")
def private_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3 server (localbucket) for this module, whose data folder the tests can read."""
    server = S3Server(tmp_path_factory.mktemp("ingest-s3"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def ingest(start_ingest: StartIngest, private_s3: S3Server) -> AsyncIterator[Ingest]:
    """svc_ingest writing to the module's own S3 server."""
    async with start_ingest(s3=private_s3.url, s3_data_dir=private_s3.storage) as service:
        yield service


def meta(parent: str, kind: FileKind, data: bytes, **overrides: object) -> UploadFileRequest:
    """The metadata message for `data` declared as `kind`."""
    fields: dict[str, object] = {
        "parent": parent,
        "kind": kind,
        "file_name": "upload.bin",
        "content_type": CONTENT_TYPES.get(kind, "application/octet-stream"),
        "size_bytes": len(data),
        **overrides,
    }
    return UploadFileRequest(metadata=UploadFileMetadata(**fields))


def chunks(data: bytes, size: int = 64 * 1024) -> Messages:
    """`data` as chunk messages."""
    return [UploadFileRequest(chunk=data[i : i + size]) for i in range(0, len(data), size)]


def upload(kind: FileKind, data: bytes, **overrides: object) -> Callable[[str], Messages]:
    """A well-formed stream of `data` declared as `kind` (with metadata overrides)."""
    return lambda parent: [meta(parent, kind, data, **overrides), *chunks(data)]


PNG = png(64, 48)
JPEG = jpeg(64, 48)
DICOM = dicom()
LARGE_PNG = png(1800, 1600, seed=5, level=0)  # > 5 MiB: the failure comes after a part is sent

CORPUS: list[tuple[str, Callable[[str], Messages], str]] = [
    ("empty stream", lambda p: [], "metadata"),
    (
        "chunk before metadata",
        lambda p: [*chunks(PNG), meta(p, FileKind.IMAGE_PNG, PNG)],
        "metadata",
    ),
    (
        "metadata twice",
        lambda p: [
            meta(p, FileKind.IMAGE_PNG, PNG),
            meta(p, FileKind.IMAGE_PNG, PNG),
            *chunks(PNG),
        ],
        "metadata",
    ),
    ("zero bytes", lambda p: [meta(p, FileKind.IMAGE_PNG, b"")], "metadata.size_bytes"),
    (
        "declared bytes never sent",
        lambda p: [meta(p, FileKind.IMAGE_PNG, PNG)],
        "metadata.size_bytes",
    ),
    ("truncated png", upload(FileKind.IMAGE_PNG, PNG[: len(PNG) // 2]), "chunk"),
    ("png with a corrupt chunk crc", upload(FileKind.IMAGE_PNG, with_bad_crc(PNG)), "chunk"),
    ("png with trailing garbage", upload(FileKind.IMAGE_PNG, PNG + b"garbage"), "chunk"),
    ("png declared as jpeg", upload(FileKind.IMAGE_JPEG, PNG), "metadata.kind"),
    ("jpeg declared as png", upload(FileKind.IMAGE_PNG, JPEG), "metadata.kind"),
    ("dicom declared as png", upload(FileKind.IMAGE_PNG, DICOM), "metadata.kind"),
    ("text declared as png", upload(FileKind.IMAGE_PNG, b"just some text, no image" * 10), "chunk"),
    ("truncated jpeg", upload(FileKind.IMAGE_JPEG, JPEG[:-100]), "chunk"),
    (
        "20000x20000 png header bomb",
        upload(FileKind.IMAGE_PNG, png_header_only(20000, 20000)),
        "chunk",
    ),
    ("png over the pixel limit", upload(FileKind.IMAGE_PNG, png_header_only(3000, 2000)), "chunk"),
    (
        "stream longer than declared",
        lambda p: [meta(p, FileKind.IMAGE_PNG, PNG), *chunks(PNG + b"\x00" * 100)],
        "metadata.size_bytes",
    ),
    (
        "stream shorter than declared",
        lambda p: [meta(p, FileKind.IMAGE_PNG, PNG, size_bytes=len(PNG) + 10), *chunks(PNG)],
        "metadata.size_bytes",
    ),
    ("wrong sha256", upload(FileKind.IMAGE_PNG, PNG, sha256="0" * 64), "metadata.sha256"),
    ("malformed sha256", upload(FileKind.IMAGE_PNG, PNG, sha256="XYZ"), "metadata.sha256"),
    (
        "large png with wrong sha256 after most of it reached S3",
        upload(FileKind.IMAGE_PNG, LARGE_PNG, sha256=sha256(PNG)),
        "metadata.sha256",
    ),
    ("dicom without preamble", upload(FileKind.IMAGE_DICOM, DICOM[132:]), "chunk"),
    (
        "dicom with unsupported transfer syntax",
        upload(FileKind.IMAGE_DICOM, dicom(transfer_syntax=UNSUPPORTED_SYNTAX)),
        "chunk",
    ),
    ("dicom without rows", upload(FileKind.IMAGE_DICOM, dicom(Rows=True)), "chunk"),
    ("non-utf-8 text", upload(FileKind.TEXT_NOTE, "caf\xe9".encode("latin-1") * 50), "chunk"),
    (
        "text ending inside a character",
        upload(FileKind.TEXT_NOTE, "naïve note".encode() + "é".encode()[:1] + b" " * 200),
        "chunk",
    ),
    ("oversize text", upload(FileKind.TEXT_NOTE, b"a" * (64 * 1024 + 1)), "metadata.size_bytes"),
    ("unspecified kind", upload(FileKind.UNSPECIFIED, PNG), "metadata.kind"),
    (
        "content type of another kind",
        upload(FileKind.IMAGE_PNG, PNG, content_type="image/jpeg"),
        "metadata.content_type",
    ),
    (
        "image above the size limit",
        lambda p: [meta(p, FileKind.IMAGE_PNG, PNG, size_bytes=33 * MIB)],
        "metadata.size_bytes",
    ),
    (
        "chunk over 1 MiB",
        lambda p: [
            meta(p, FileKind.IMAGE_PNG, LARGE_PNG),
            UploadFileRequest(chunk=LARGE_PNG[: 2 * MIB]),
        ],
        "chunk",
    ),
    (
        "file name with a path",
        upload(FileKind.IMAGE_PNG, PNG, file_name="../etc/passwd"),
        "metadata.file_name",
    ),
    # Decode bombs under the 4M-pixel limit but over the 12 MiB decoded-bytes limit.
    (
        "16-bit RGBA png decoding to 13.5 MB",
        upload(FileKind.IMAGE_PNG, png_with_idat(1300, 1300, b"x", bit_depth=16, color_type=6)),
        "chunk",
    ),
    (
        "CMYK jpeg decoding to 13 MB",
        upload(FileKind.IMAGE_JPEG, jpeg_frame_only(1800, 1800, components=4)),
        "chunk",
    ),
    (
        "dicom of 40 RGB 16-bit frames decoding to 15.7 MB",
        upload(
            FileKind.IMAGE_DICOM,
            dicom_with_geometry(rows=256, columns=256, samples=3, frames=40, pixel_bytes=64),
        ),
        "chunk",
    ),
    (
        "png whose IDAT is far larger than 8x8 pixels need",
        upload(FileKind.IMAGE_PNG, png_with_idat(8, 8, PNG * 4)),
        "chunk",
    ),
    (
        "png whose zlib stream inflates far beyond its dimensions",
        upload(FileKind.IMAGE_PNG, png_with_idat(64, 64, zlib.compress(bytes(32 * MIB), 9))),
        "chunk",
    ),
    (
        "png whose image data is shorter than its dimensions",
        upload(
            FileKind.IMAGE_PNG, png_with_idat(64, 64, zlib.compress(bytes(png_raw_size(64, 60))))
        ),
        "chunk",
    ),
    (
        "dicom with a deflated transfer syntax and a garbage body",
        upload(FileKind.IMAGE_DICOM, deflated_dicom_with_garbage()),
        "chunk",
    ),
    (
        "file name with CR LF (header injection)",
        upload(FileKind.IMAGE_PNG, PNG, file_name="scan.png\r\nX-Injected: yes"),
        "metadata.file_name",
    ),
    (
        "file name with a right-to-left override",
        upload(FileKind.IMAGE_PNG, PNG, file_name="scan\u202egnp.exe"),
        "metadata.file_name",
    ),
    (
        "file name with NUL",
        upload(FileKind.IMAGE_PNG, PNG, file_name="a\x00.png"),
        "metadata.file_name",
    ),
    (
        "note with a NUL byte",
        upload(FileKind.TEXT_NOTE, b"history: none\x00 allergies: none"),
        "chunk",
    ),
    ("note of only white space", upload(FileKind.TEXT_NOTE, b" \t\r\n" * 20), "chunk"),
    (
        "malformed parent",
        lambda p: [meta("studies/not-a-uuid", FileKind.IMAGE_PNG, PNG), *chunks(PNG)],
        "metadata.parent",
    ),
]


async def field_violations(call: grpc.aio.Call) -> list[str]:
    """The fields named by the call's google.rpc.BadRequest detail."""
    status = await rpc_status.aio.from_call(call)
    assert status is not None, "no google.rpc.Status details"
    fields = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields += [v.field for v in bad_request.field_violations]
    return fields


@pytest.mark.parametrize(("case", "messages", "field"), CORPUS, ids=[case for case, _, _ in CORPUS])
async def test_bad_upload_is_rejected_with_a_field_violation_and_nothing_is_stored(
    ingest: Ingest, case: str, messages: Callable[[str], Messages], field: str
) -> None:
    study = await ingest.create_study()

    async def stream() -> AsyncIterator[UploadFileRequest]:
        for message in messages(study.name):
            yield message

    call = ingest.stub.upload_file(stream(), metadata=ingest.auth())
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.value.details()
    assert field in await field_violations(call), failure.value.details()

    assert ingest.count("studies") == 1
    assert ingest.count("medical_data") == 0
    assert ingest.count("outbox") == 0
    assert ingest.object_keys() == []
    assert ingest.incomplete_uploads() == []


async def test_the_module_can_see_incomplete_multipart_uploads(
    ingest: Ingest, private_s3: S3Server
) -> None:
    # Guards the corpus above: an upload left open must show up in incomplete_uploads().
    bucket = ingest.objects.bucket("medical-images-raw")
    upload_id = ingest.objects.client._create_multipart_upload(bucket, "probe", {})
    assert ingest.incomplete_uploads() == [upload_id]
    ingest.objects.client._abort_multipart_upload(bucket, "probe", upload_id)
    assert ingest.incomplete_uploads() == []


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("", "text"),
        ("   \n", "text"),
        ("x" * (64 * 1024 + 1), "text"),
        ("history: none\x00allergies: none", "text"),
        ("\u200b\u200b\ufeff", "text"),
        ("\x1b[2J\x1b[Hcleared screen", "text"),
    ],
    ids=["empty", "blank", "oversize", "nul", "zero-width only", "terminal escapes"],
)
async def test_bad_text_note_is_rejected_and_nothing_is_stored(
    ingest: Ingest, text: str, field: str
) -> None:
    study = await ingest.create_study()
    call = ingest.stub.create_text_note(
        CreateTextNoteRequest(parent=study.name, text=text), metadata=ingest.auth()
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in await field_violations(call)
    assert ingest.count("medical_data") == 0
    assert ingest.object_keys() == []


async def test_a_file_over_the_streaming_limit_is_sent_to_the_presigned_path(
    ingest: Ingest,
) -> None:
    study = await ingest.create_study()
    messages = [meta(study.name, FileKind.IMAGE_DICOM, b"", size_bytes=30 * MIB)]
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await ingest.send(messages)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "CreateUploadUrl" in (failure.value.details() or "")
    assert ingest.count("medical_data") == 0
