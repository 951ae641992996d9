"""The SDK's typed flows against real svc_auth + svc_ingest: studies, streamed and presigned
uploads with the client's own SHA-256, Cyrillic notes, Unicode file names, the watch stream
and the generic stub."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import psycopg
import pytest
from conftest import ADMIN_EMAIL, CLINIC, Mesh

from gen.medmesh.auth.v1 import GetMeRequest
from gen.medmesh.common.v1 import FileKind, StudyStatus
from gen.medmesh.ingest.v1 import FileStatus, GetStudyRequest
from medmesh.client import MedmeshClient, UnknownFileKind, describe_file

# Russian on purpose: Cyrillic letters that look Latin are the point (RUF001).
NOTE_RU = "Кашель с мокротой, температура 39 °C, хрипы справа внизу; подозрение на пневмонию."  # noqa: RUF001


def png_bytes(size: int = 96, seed: int = 0) -> bytes:
    """A real PNG (noise, so that it does not compress to nothing)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize(
    ("name", "presigned_above_bytes", "pixels"),
    [
        ("снимок грудной клетки.png", 32 * 1024 * 1024, 96),  # gRPC client stream
        ("scan-large.png", 64 * 1024, 1200),  # presigned PUT + CompleteUpload
    ],
)
async def test_a_file_uploads_with_its_sha256_and_name_by_either_route(
    mesh: Mesh,
    client: MedmeshClient,
    tmp_path: Path,
    name: str,
    presigned_above_bytes: int,
    pixels: int,
) -> None:
    data = png_bytes(pixels)
    path = tmp_path / name
    path.write_bytes(data)
    client.presigned_above_bytes = presigned_above_bytes
    study = await client.create_study("P-sdk-1", description="SDK")
    seen: list[tuple[int, int]] = []

    uploaded = await client.upload_file(study, path, progress=lambda d, t: seen.append((d, t)))

    assert uploaded.deduplicated is False
    assert uploaded.file.file_name == name
    assert uploaded.file.sha256 == hashlib.sha256(data).hexdigest()
    assert uploaded.file.size_bytes == len(data)
    assert uploaded.file.kind == FileKind.IMAGE_PNG
    assert seen[0] == (0, len(data))
    assert seen[-1] == (len(data), len(data))
    stored = await client.get_study(study)
    assert [(f.file_name, f.sha256) for f in stored.files] == [
        (name, hashlib.sha256(data).hexdigest())
    ]
    assert stored.files[0].status != FileStatus.PENDING_UPLOAD


@pytest.mark.parametrize("ingest_env", [{"MEDMESH_INGEST_MAX_STREAM_BYTES": "65536"}])
async def test_a_file_over_the_servers_streaming_limit_goes_through_a_presigned_url(
    client: MedmeshClient, tmp_path: Path, database_url: str
) -> None:
    data = png_bytes(400)
    assert len(data) > 65536
    path = tmp_path / "over-the-limit.png"
    path.write_bytes(data)
    study = await client.create_study("P-sdk-6")

    uploaded = await client.upload_file(study, path)  # the client's own threshold is 32 MiB

    assert uploaded.file.sha256 == hashlib.sha256(data).hexdigest()
    with psycopg.connect(database_url) as conn:
        actions = [
            action
            for (action,) in conn.execute(
                "SELECT action FROM audit.events WHERE study_id = %s ORDER BY id",
                [study.study_id],
            )
        ]
    assert "study.file.announce" in actions  # CreateUploadUrl: the presigned route


async def test_the_same_bytes_uploaded_twice_are_stored_once(
    client: MedmeshClient, tmp_path: Path
) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(seed=7))
    study = await client.create_study("P-sdk-2")
    first = await client.upload_file(study, path)
    second = await client.upload_file(study.name, path)
    assert (first.deduplicated, second.deduplicated) == (False, True)
    assert second.file.name == first.file.name


async def test_a_cyrillic_note_is_stored_as_utf8_text(client: MedmeshClient) -> None:
    study = await client.create_study("P-sdk-3")
    note = await client.create_text_note(study, NOTE_RU, file_name="заметка.txt")
    assert note.file.kind == FileKind.TEXT_NOTE
    assert note.file.file_name == "заметка.txt"
    assert note.file.sha256 == hashlib.sha256(NOTE_RU.encode()).hexdigest()


async def test_a_file_of_no_known_kind_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    path = tmp_path / "notes.docx"
    path.write_bytes(b"PK\x03\x04 not an image")
    with pytest.raises(UnknownFileKind, match=r"notes\.docx"):
        await describe_file(path)


async def test_a_dicom_file_without_extension_is_recognised_by_its_magic(tmp_path: Path) -> None:
    path = tmp_path / "IM0001"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    assert (await describe_file(path)).kind == FileKind.IMAGE_DICOM


async def test_watching_a_study_starts_with_its_current_state(client: MedmeshClient) -> None:
    study = await client.create_study("P-sdk-4")
    events = client.watch_study(study)
    first = await anext(events)
    await events.aclose()
    assert first.study == study.name
    assert first.status == StudyStatus.CREATED


async def test_the_generic_stub_calls_any_rpc_with_the_clients_token(
    client: MedmeshClient,
) -> None:
    me = await client.stub("medmesh.auth.v1.AuthService").get_me(GetMeRequest())
    assert (me.user.email, me.user.clinic_id) == (ADMIN_EMAIL, CLINIC)
    study = await client.create_study("P-sdk-5")
    got = await client.stub("medmesh.ingest.v1.IngestService").get_study(
        GetStudyRequest(name=study.name)
    )
    assert got.study.patient_ref == "P-sdk-5"
