"""Fair scheduling in the running service: one clinic's flood of notes does not make another
clinic's notes wait behind it (jobs go through svc_infer's workers, MiniLM on the model server
and PostgreSQL; the order is read from the result rows' commit times, not timed)."""

from __future__ import annotations

import asyncio
import uuid

from support.infer import CLINIC, CONTENT_TYPES, OTHER_CLINIC, InferHarness

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import InferenceJob
from medmesh.objects import RAW_IMAGES

# Well over what a worker holds before B's jobs exist (batch 8 x 2 in flight, then one round
# split between the lanes), so "B before half of A" measures the lanes, not the batch size.
FLOOD = 80
FEW = 2
NOTE_TYPE = CONTENT_TYPES[FileKind.TEXT_NOTE]
NOTE = b"Fever and productive cough for three days; crackles at the right base."


async def test_another_clinics_notes_are_analysed_before_half_of_an_earlier_flood(
    infer: InferHarness,
) -> None:
    # The objects first, then the jobs back to back: publishing a job is a JetStream publish
    # (about a millisecond), so A's whole flood is queued before B's jobs are, whatever the
    # machine's load (uploading while publishing let the workers keep pace with the flood).
    ids = [(clinic, str(uuid.uuid4()), str(uuid.uuid4())) for clinic in [CLINIC] * FLOOD]
    ids += [(OTHER_CLINIC, str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(FEW)]
    await asyncio.gather(
        *(
            infer.objects.put_bytes(RAW_IMAGES, f"{c}/{s}/{f}", NOTE, content_type=NOTE_TYPE)
            for c, s, f in ids
        )
    )

    async def publish(clinic: str, study: str, file: str) -> InferenceJob:
        return await infer.publish_job(
            NOTE, FileKind.TEXT_NOTE, clinic_id=clinic, study_id=study, file_id=file, upload=False
        )

    flood = await asyncio.gather(*(publish(*i) for i in ids[:FLOOD]))
    few = [await publish(*i) for i in ids[FLOOD:]]
    rows = await infer.wait_for_rows(
        "SELECT clinic_id, file_id, create_time FROM infer.results",
        count=FLOOD + FEW,
        timeout_s=300,
    )

    assert {r["file_id"] for r in rows} == {j.file_id for j in [*flood, *few]}
    last_few = max(r["create_time"] for r in rows if r["clinic_id"] == OTHER_CLINIC)
    flood_before = [r for r in rows if r["clinic_id"] == CLINIC and r["create_time"] < last_few]
    assert len(flood_before) < FLOOD // 2
