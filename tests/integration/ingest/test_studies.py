"""Reading, listing, deleting and watching studies: clinic isolation, roles, pagination,
deletion of objects, and WatchStudy driven by the events other services publish."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import pytest

from gen.medmesh.common.v1 import FileKind, StudyStatus
from gen.medmesh.events.v1 import InferenceFailed, ReportReady, ResultReady
from gen.medmesh.ingest.v1 import (
    CreateStudyRequest,
    CreateTextNoteRequest,
    DeleteStudyRequest,
    GetFileRequest,
    GetStudyRequest,
    ListStudiesRequest,
    WatchStudyRequest,
    WatchStudyResponse,
)
from medmesh.jetstream import publish_message

from .conftest import Ingest
from .samples import png

OTHER = "clinic-b"


async def _rpc_error(awaitable: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await awaitable
    return failure.value


async def _first_watch_message(ingest: Ingest, name: str, clinic: str) -> WatchStudyResponse:
    async for message in ingest.stub.watch_study(
        WatchStudyRequest(name=name), metadata=ingest.auth(clinic)
    ):
        return message
    raise AssertionError("the stream ended without a message")


@pytest.mark.parametrize("rpc", ["get", "get_file", "watch", "delete", "upload", "note"])
async def test_another_clinics_user_gets_not_found_for_every_study_rpc(
    ingest: Ingest, rpc: str
) -> None:
    study = await ingest.create_study()
    stored = await ingest.upload(study, png(), FileKind.IMAGE_PNG)
    other = ingest.auth(OTHER, roles=["admin"])
    calls = {
        "get": lambda: ingest.stub.get_study(GetStudyRequest(name=study.name), metadata=other),
        "get_file": lambda: ingest.stub.get_file(
            GetFileRequest(name=stored.file.name), metadata=other
        ),
        "watch": lambda: _first_watch_message(ingest, study.name, OTHER),
        "delete": lambda: ingest.stub.delete_study(
            DeleteStudyRequest(name=study.name), metadata=other
        ),
        "upload": lambda: ingest.upload(study, png(seed=1), FileKind.IMAGE_PNG, clinic=OTHER),
        "note": lambda: ingest.stub.create_text_note(
            CreateTextNoteRequest(parent=study.name, text="note"), metadata=other
        ),
    }
    error = await _rpc_error(calls[rpc]())
    missing = await _rpc_error(
        ingest.stub.get_study(GetStudyRequest(name=f"studies/{uuid.uuid4()}"), metadata=other)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # Nothing about the study leaks: only the name the caller sent comes back.
    assert "clinic-a" not in (error.details() or "")
    assert "p-001" not in (error.details() or "")
    # Indistinguishable from a study that never existed.
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert ingest.count("studies") == 1
    assert ingest.count("medical_data") == 1


async def test_another_clinic_lists_none_of_the_studies(ingest: Ingest) -> None:
    await ingest.create_study()
    mine = await ingest.stub.list_studies(ListStudiesRequest(), metadata=ingest.auth())
    theirs = await ingest.stub.list_studies(ListStudiesRequest(), metadata=ingest.auth(OTHER))
    assert len(mine.studies) == 1
    assert theirs.studies == []


async def test_viewers_read_but_change_nothing(ingest: Ingest) -> None:
    study = await ingest.create_study()
    viewer = ingest.auth(roles=["viewer"])
    got = await ingest.stub.get_study(GetStudyRequest(name=study.name), metadata=viewer)
    assert got.study.study_id == study.study_id
    for call in (
        ingest.stub.create_study(CreateStudyRequest(patient_ref="p"), metadata=viewer),
        ingest.stub.delete_study(DeleteStudyRequest(name=study.name), metadata=viewer),
        ingest.stub.create_text_note(
            CreateTextNoteRequest(parent=study.name, text="x"), metadata=viewer
        ),
    ):
        assert (await _rpc_error(call)).code() == grpc.StatusCode.PERMISSION_DENIED


async def test_list_pages_are_stable_newest_first_and_bound_to_their_filters(
    ingest: Ingest,
) -> None:
    created = [await ingest.create_study(patient_ref=f"p-{i % 2}") for i in range(7)]
    seen: list[str] = []
    token = ""
    while True:
        page = await ingest.stub.list_studies(
            ListStudiesRequest(page_size=3, page_token=token), metadata=ingest.auth()
        )
        seen += [s.study_id for s in page.studies]
        token = page.next_page_token
        if not token:
            break
    assert seen == [s.study_id for s in reversed(created)]
    only_p1 = await ingest.stub.list_studies(
        ListStudiesRequest(patient_ref="p-1", page_size=2), metadata=ingest.auth()
    )
    assert {s.patient_ref for s in only_p1.studies} == {"p-1"}
    error = await _rpc_error(
        ingest.stub.list_studies(
            ListStudiesRequest(page_token=only_p1.next_page_token), metadata=ingest.auth()
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    garbage = await _rpc_error(
        ingest.stub.list_studies(ListStudiesRequest(page_token="%%%"), metadata=ingest.auth())
    )
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_delete_removes_rows_and_unshared_objects_and_keeps_the_audit_record(
    ingest: Ingest,
) -> None:
    kept, doomed = await ingest.create_study(), await ingest.create_study()
    shared = png(seed=21)
    await ingest.upload(kept, shared, FileKind.IMAGE_PNG)
    await ingest.upload(doomed, shared, FileKind.IMAGE_PNG)
    await ingest.upload(doomed, png(seed=22), FileKind.IMAGE_PNG)
    assert len(ingest.object_keys()) == 2

    async def deletable() -> bool:  # not while its jobs are queued
        got = await ingest.stub.get_study(GetStudyRequest(name=doomed.name), metadata=ingest.auth())
        return got.study.status == StudyStatus.QUEUED

    await ingest.eventually(deletable)
    busy = await _rpc_error(
        ingest.stub.delete_study(DeleteStudyRequest(name=doomed.name), metadata=ingest.auth())
    )
    assert busy.code() == grpc.StatusCode.FAILED_PRECONDITION
    ingest.rows("UPDATE ingest.studies SET status = %s RETURNING 1", int(StudyStatus.RESULT_READY))

    await ingest.stub.delete_study(DeleteStudyRequest(name=doomed.name), metadata=ingest.auth())
    assert ingest.count("studies") == 1
    assert ingest.count("medical_data") == 1
    assert len(ingest.object_keys()) == 1  # the object the kept study shares survives
    gone = await _rpc_error(
        ingest.stub.get_study(GetStudyRequest(name=doomed.name), metadata=ingest.auth())
    )
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    actions = ingest.rows(
        "SELECT action FROM audit.events WHERE study_id = %s ORDER BY id", doomed.study_id
    )
    assert ("study.delete",) in actions


class Events:
    """Publishes what svc_infer and svc_report would publish."""

    def __init__(self, ingest: Ingest, js: Any) -> None:
        self.ingest = ingest
        self.js = js
        self.topology = ingest.topology

    async def result_ready(self, study_id: str, file_id: str) -> None:
        await publish_message(
            self.js,
            self.topology.result_ready_subject,
            ResultReady(
                event_id=str(uuid.uuid4()),
                job_id=str(uuid.uuid4()),
                clinic_id="clinic-a",
                study_id=study_id,
                file_id=file_id,
                result_id=f"result-{file_id}",
                model_name="models/resnet50",
                model_version=1,
            ),
        )

    async def failed(self, study_id: str, file_id: str) -> None:
        await publish_message(
            self.js,
            self.topology.result_failed_subject,
            InferenceFailed(
                event_id=str(uuid.uuid4()),
                clinic_id="clinic-a",
                study_id=study_id,
                file_id=file_id,
                error="model server unreachable",
                attempts=3,
            ),
        )

    async def report_ready(self, study_id: str) -> None:
        await publish_message(
            self.js,
            self.topology.report_ready_subject,
            ReportReady(
                event_id=str(uuid.uuid4()), clinic_id="clinic-a", study_id=study_id, version=1
            ),
        )


@pytest.fixture
async def events(ingest: Ingest) -> AsyncIterator[Events]:
    """A publisher of other services' events on the test's streams."""
    nc = await nats.connect(ingest.settings.nats_url)
    yield Events(ingest, nc.jetstream())
    await nc.close()


async def _queued_study(ingest: Ingest) -> tuple[Any, list[str]]:
    study = await ingest.create_study()
    image = await ingest.upload(study, png(seed=31), FileKind.IMAGE_PNG)
    note = await ingest.stub.create_text_note(
        CreateTextNoteRequest(parent=study.name, text="Cough for two weeks."),
        metadata=ingest.auth(),
    )

    async def queued() -> bool:
        got = await ingest.stub.get_study(GetStudyRequest(name=study.name), metadata=ingest.auth())
        return got.study.status == StudyStatus.QUEUED and all(
            f.status == 3 for f in got.study.files
        )

    await ingest.eventually(queued)
    return study, [image.file.file_id, note.file.file_id]


async def _watch(ingest: Ingest, name: str, into: list[WatchStudyResponse]) -> None:
    async for message in ingest.stub.watch_study(
        WatchStudyRequest(name=name), metadata=ingest.auth(roles=["viewer"])
    ):
        into.append(message)


async def test_watch_study_streams_each_transition_in_order_and_ends_at_report_ready(
    ingest: Ingest, events: Events
) -> None:
    study, (image_id, note_id) = await _queued_study(ingest)
    received: list[WatchStudyResponse] = []
    watcher = asyncio.create_task(_watch(ingest, study.name, received))
    await ingest.eventually(lambda: len(received) >= 1)

    await events.result_ready(study.study_id, image_id)
    await ingest.eventually(lambda: len(received) >= 2)
    await events.result_ready(study.study_id, note_id)
    await ingest.eventually(lambda: len(received) >= 3)
    await events.report_ready(study.study_id)
    await asyncio.wait_for(watcher, timeout=15)  # ends by itself at REPORT_READY

    assert [m.status for m in received] == [
        StudyStatus.QUEUED,
        StudyStatus.ANALYSING,
        StudyStatus.RESULT_READY,
        StudyStatus.REPORT_READY,
    ]
    assert [m.previous_status for m in received] == [
        StudyStatus.UNSPECIFIED,
        StudyStatus.QUEUED,
        StudyStatus.ANALYSING,
        StudyStatus.RESULT_READY,
    ]
    assert [m.file.file_id if m.file else "" for m in received[1:3]] == [image_id, note_id]
    # StudyResultsReady is svc_infer's to announce; ingest only tracks the status.
    assert not [
        subject
        for subject, _, _ in await ingest.stream_messages(ingest.topology.events_stream)
        if subject == ingest.topology.study_event_subject("results_ready")
    ]


async def test_watch_study_ends_with_the_reason_when_analysis_fails(
    ingest: Ingest, events: Events
) -> None:
    study, (image_id, _) = await _queued_study(ingest)
    received: list[WatchStudyResponse] = []
    watcher = asyncio.create_task(_watch(ingest, study.name, received))
    await ingest.eventually(lambda: len(received) >= 1)
    await events.failed(study.study_id, image_id)
    await asyncio.wait_for(watcher, timeout=15)
    assert [m.status for m in received] == [StudyStatus.QUEUED, StudyStatus.FAILED]
    assert "model server unreachable" in received[-1].reason
    got = await ingest.stub.get_study(GetStudyRequest(name=study.name), metadata=ingest.auth())
    assert got.study.status == StudyStatus.FAILED
    assert "model server unreachable" in got.study.failure_reason


async def test_a_watch_of_a_finished_study_sends_its_state_and_ends(
    ingest: Ingest, events: Events
) -> None:
    study = await ingest.create_study()
    await events.report_ready(study.study_id)

    async def reported() -> bool:
        got = await ingest.stub.get_study(GetStudyRequest(name=study.name), metadata=ingest.auth())
        return got.study.status == StudyStatus.REPORT_READY

    await ingest.eventually(reported)
    received: list[WatchStudyResponse] = []
    await asyncio.wait_for(_watch(ingest, study.name, received), timeout=10)
    assert [m.status for m in received] == [StudyStatus.REPORT_READY]
