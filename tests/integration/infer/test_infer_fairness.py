"""Fair scheduling in the running service: one clinic's flood of notes does not make another
clinic's notes wait behind it (jobs go through svc_infer's workers, MiniLM on the model server
and PostgreSQL; the order is read from the result rows' commit times, not timed)."""

from __future__ import annotations

import asyncio

from support.infer import CLINIC, OTHER_CLINIC, InferHarness

from gen.medmesh.common.v1 import FileKind

FLOOD = 40
FEW = 2
NOTE = b"Fever and productive cough for three days; crackles at the right base."


async def test_another_clinics_notes_are_analysed_before_half_of_an_earlier_flood(
    infer: InferHarness,
) -> None:
    flood = await asyncio.gather(
        *(infer.publish_job(NOTE, FileKind.TEXT_NOTE, clinic_id=CLINIC) for _ in range(FLOOD))
    )
    few = [
        await infer.publish_job(NOTE, FileKind.TEXT_NOTE, clinic_id=OTHER_CLINIC)
        for _ in range(FEW)
    ]
    rows = await infer.wait_for_rows(
        "SELECT clinic_id, file_id, create_time FROM infer.results",
        count=FLOOD + FEW,
        timeout_s=300,
    )

    assert {r["file_id"] for r in rows} == {j.file_id for j in [*flood, *few]}
    last_few = max(r["create_time"] for r in rows if r["clinic_id"] == OTHER_CLINIC)
    flood_before = [r for r in rows if r["clinic_id"] == CLINIC and r["create_time"] < last_few]
    assert len(flood_before) < FLOOD // 2
