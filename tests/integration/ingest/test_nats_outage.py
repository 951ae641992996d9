"""A NATS outage delays jobs but never loses or duplicates them: uploads succeed while the
server is down, and once it is back every file's job is on the stream exactly once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gen.medmesh.common.v1 import FileKind, StudyStatus
from gen.medmesh.ingest.v1 import CreateTextNoteRequest, GetStudyRequest
from medmesh.jetstream import MSG_ID_HEADER
from medmesh.launcher import NatsServer

from .conftest import StartIngest
from .samples import dicom, jpeg, png


class RestartableNats(NatsServer):
    """nats-server that comes back on the same port with the same JetStream store."""

    def allocate_ports(self) -> None:
        """Keep the first ports on restarts (clients reconnect to the same URL)."""
        if not self.port:
            super().allocate_ports()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[RestartableNats]:
    """A NATS server of this test's own, so it can stop and start it."""
    server = RestartableNats(tmp_path / "nats-data")
    server.start()
    yield server
    server.stop()


async def test_uploads_during_a_nats_outage_are_enqueued_exactly_once_when_it_returns(
    start_ingest: StartIngest, own_nats: RestartableNats
) -> None:
    async with start_ingest(nats=own_nats.url) as ingest:
        study = await ingest.create_study()
        own_nats.stop()

        uploaded = [
            await ingest.upload(study, png(seed=41), FileKind.IMAGE_PNG),
            await ingest.upload(study, jpeg(seed=42), FileKind.IMAGE_JPEG),
            await ingest.upload(study, dicom(), FileKind.IMAGE_DICOM),
        ]
        note = await ingest.stub.create_text_note(
            CreateTextNoteRequest(parent=study.name, text="Fever since Monday."),
            metadata=ingest.auth(),
        )
        file_ids = sorted([u.file.file_id for u in uploaded] + [note.file.file_id])
        got = await ingest.stub.get_study(GetStudyRequest(name=study.name), metadata=ingest.auth())
        assert got.study.status == StudyStatus.UPLOADED  # stored, jobs waiting in the outbox
        pending = ingest.rows("SELECT count(*) FROM ingest.outbox WHERE published_at IS NULL")
        assert pending[0][0] >= 4

        own_nats.start()

        async def all_jobs() -> list | None:
            try:
                jobs = await ingest.jobs()
            except Exception:  # noqa: BLE001 - the stream may still be recovering
                return None
            return jobs if len(jobs) >= 4 else None

        jobs = await ingest.eventually(all_jobs, timeout_s=30)
        await ingest.eventually(
            lambda: ingest.rows("SELECT count(*) FROM ingest.outbox WHERE published_at IS NULL")[0][
                0
            ]
            == 0,
            timeout_s=15,
        )
        jobs = await ingest.jobs()
        assert sorted(j.file_id for j in jobs) == file_ids  # each file once, none lost
        messages = await ingest.stream_messages(ingest.topology.jobs_stream)
        assert sorted(h[MSG_ID_HEADER] for _, _, h in messages) == sorted(j.job_id for j in jobs)

        async def queued() -> bool:
            got = await ingest.stub.get_study(
                GetStudyRequest(name=study.name), metadata=ingest.auth()
            )
            return got.study.status == StudyStatus.QUEUED

        await ingest.eventually(queued)
