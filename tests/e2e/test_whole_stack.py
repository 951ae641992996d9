"""The product end to end, as `medmesh up` runs it on a fresh machine: a clinic admin logs in
through the edge, uploads an image over gRPC and a note over REST, the models analyse both,
a report is generated, archived and announced by e-mail, and the PDF downloads."""

from __future__ import annotations

import asyncio
import email
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cv2
import grpc
import httpx
import numpy as np
import pytest
from pypdf import PdfReader
from support.stack import Stack, running_stack

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.ingest.v1 import ListStudiesRequest, UploadFileMetadata, UploadFileRequest
from medmesh.client import AsyncStub
from medmesh.contract import DescriptorImage

PATIENT = "P-e2e-0001"
NOTE = "Productive cough, fever of 39 C and crackles over the right lower lobe; suspect pneumonia."


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_base_dir: Path) -> Iterator[Stack]:
    """The whole product, started by `medmesh up` in a fresh data directory."""
    with running_stack(tmp_path_factory.mktemp("e2e"), model_base_dir) as running:
        yield running


@pytest.fixture
async def edge(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the edge, logged in as the demo clinic's admin."""
    admin_password = (stack.data_dir / "secrets" / "admin-password").read_text().strip()
    async with httpx.AsyncClient(base_url=stack.status["edge"], timeout=30) as client:
        login = await client.post(
            "/v1/auth:login",
            json={"email": "admin@demo-clinic.example", "password": admin_password},
        )
        assert login.status_code == 200, login.text
        client.headers["authorization"] = f"Bearer {login.json()['accessToken']}"
        yield client


def _png() -> bytes:
    gradient = np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (96, 1))
    ok, encoded = cv2.imencode(".png", gradient)
    assert ok
    return encoded.tobytes()


async def _upload_png(stack: Stack, token: str, study: str, data: bytes) -> dict[str, Any]:
    async def requests() -> AsyncIterator[UploadFileRequest]:
        yield UploadFileRequest(
            metadata=UploadFileMetadata(
                parent=study,
                kind=FileKind.IMAGE_PNG,
                file_name="chest.png",
                content_type="image/png",
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
        yield UploadFileRequest(chunk=data)

    async with grpc.aio.insecure_channel(stack.status["ingest"]) as channel:
        ingest = AsyncStub(channel, "medmesh.ingest.v1.IngestService", DescriptorImage())
        response = await ingest.upload_file(
            requests(), metadata=[("authorization", f"Bearer {token}")], timeout=60
        )
    return response.to_dict()


async def _report_covering(edge: httpx.AsyncClient, study: str, results: int) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        listed = await edge.get("/v1/reports", params={"study": study})
        assert listed.status_code == 200, listed.text
        ready = [
            r
            for r in listed.json().get("reports", [])
            if r["status"] == "REPORT_STATUS_READY" and len(r.get("resultIds", [])) == results
        ]
        if ready:
            return ready[0]
        await asyncio.sleep(0.5)
    raise AssertionError(f"no ready report with {results} results for {study}")


async def test_an_image_and_a_note_become_results_a_report_a_pdf_and_a_mail(
    stack: Stack, edge: httpx.AsyncClient
) -> None:
    created = await edge.post("/v1/studies", json={"patientRef": PATIENT, "description": "e2e"})
    assert created.status_code == 200, created.text
    study = created.json()["study"]["name"]
    token = edge.headers["authorization"].removeprefix("Bearer ")

    uploaded = await _upload_png(stack, token, study, _png())
    assert uploaded["file"]["kind"] == "FILE_KIND_IMAGE_PNG"
    note = await edge.post(f"/v1/{study}/files:createTextNote", json={"text": NOTE})
    assert note.status_code == 200, note.text

    report = await _report_covering(edge, study, results=2)

    results = (await edge.get(f"/v1/{study}/results")).json()["results"]
    by_model = {r["modelName"]: r for r in results}
    assert set(by_model) == {"models/resnet50", "models/minilm"}
    assert len(by_model["models/resnet50"]["image"]["topK"]) >= 1
    assert by_model["models/minilm"]["text"]["findings"][0]["label"] == "pneumonia"

    url = (await edge.get(f"/v1/{report['name']}:downloadUrl")).json()["url"]
    async with httpx.AsyncClient(timeout=30) as plain:
        pdf = (await plain.get(url)).content
    assert hashlib.sha256(pdf).hexdigest() == report["sha256"]
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert "pneumonia" in text
    assert "resnet50" in text
    assert "minilm" in text

    watched = await edge.get(f"/v1/{study}:watch")
    statuses = [json.loads(line)["status"] for line in watched.text.splitlines() if line]
    assert statuses[-1] == "STUDY_STATUS_REPORT_READY"

    mails = [
        email.message_from_bytes(p.read_bytes()) for p in (stack.data_dir / "mail").glob("*.eml")
    ]
    subjects = [m["Subject"] for m in mails if "report" in (m["Subject"] or "").lower()]
    assert subjects, "no report-ready mail reached the SMTP sink"
    assert all(PATIENT not in subject for subject in subjects)


@asynccontextmanager
async def _other_clinic_admin(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The admin of clinic-b, created like an operator would (svc_auth's bootstrap CLI)."""
    password = "another-clinic-Secret-42"
    env = {
        **os.environ,
        "MEDMESH_POSTGRES_URL": stack.printed_value("postgres"),
        "MEDMESH_AUTH_BOOTSTRAP_PASSWORD": password,
    }
    command = [
        sys.executable,
        "-m",
        "svc_auth.bootstrap",
        "--clinic",
        "clinic-b",
        "--email",
        "admin@clinic-b.example",
        "--role",
        "admin",
    ]
    await asyncio.to_thread(
        subprocess.run, command, env=env, check=True, capture_output=True, timeout=60
    )
    async with httpx.AsyncClient(base_url=stack.status["edge"], timeout=30) as client:
        login = await client.post(
            "/v1/auth:login", json={"email": "admin@clinic-b.example", "password": password}
        )
        assert login.status_code == 200, login.text
        client.headers["authorization"] = f"Bearer {login.json()['accessToken']}"
        yield client


async def test_another_clinics_admin_finds_nothing_of_a_finished_study(
    stack: Stack, edge: httpx.AsyncClient
) -> None:
    created = await edge.post("/v1/studies", json={"patientRef": "P-private"})
    study = created.json()["study"]["name"]
    note = await edge.post(f"/v1/{study}/files:createTextNote", json={"text": NOTE})
    assert note.status_code == 200, note.text
    report = await _report_covering(edge, study, results=1)

    async with _other_clinic_admin(stack) as stranger:
        for path in (f"/v1/{study}", f"/v1/{report['name']}", f"/v1/{report['name']}:downloadUrl"):
            response = await stranger.get(path)
            assert response.status_code == 404, path
            assert "P-private" not in response.text
        # Results and reports are listed by study: another clinic's study lists as empty,
        # exactly like a study that does not exist.
        results = await stranger.get(f"/v1/{study}/results")
        assert results.json().get("results", []) == []
        reports = await stranger.get("/v1/reports", params={"study": study})
        assert reports.json().get("reports", []) == []
        assert (await stranger.get("/v1/studies")).json().get("studies", []) == []
    async with httpx.AsyncClient(base_url=stack.status["edge"], timeout=30) as anonymous:
        assert (await anonymous.get(f"/v1/{study}")).status_code == 401


async def test_after_logout_the_access_token_is_refused_by_the_other_services_at_once(
    stack: Stack,
) -> None:
    admin_password = (stack.data_dir / "secrets" / "admin-password").read_text().strip()
    async with httpx.AsyncClient(base_url=stack.status["edge"], timeout=30) as client:
        login = (
            await client.post(
                "/v1/auth:login",
                json={"email": "admin@demo-clinic.example", "password": admin_password},
            )
        ).json()
        bearer = [("authorization", f"Bearer {login['accessToken']}")]
        async with grpc.aio.insecure_channel(stack.status["ingest"]) as channel:
            ingest = AsyncStub(channel, "medmesh.ingest.v1.IngestService", DescriptorImage())
            await ingest.list_studies(ListStudiesRequest(), metadata=bearer, timeout=10)

            logout = await client.post(
                "/v1/auth:logout",
                json={"refreshToken": login["refreshToken"]},
                headers={"authorization": f"Bearer {login['accessToken']}"},
            )
            assert logout.status_code == 200, logout.text

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ingest.list_studies(ListStudiesRequest(), metadata=bearer, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == "access token revoked"
