"""The decode guard in the running worker: an image whose decoding would exceed the batch
budget goes to the dead letters on its first attempt with the reason, while the image next
to it in the batch is classified as usual."""

from __future__ import annotations

from support.crafted_files import png_with_idat
from support.infer import CLINIC, InferHarness, png_bytes

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.events.v1 import DeadLetterEnvelope, InferenceFailed


async def test_an_image_over_the_decode_budget_is_dead_lettered_at_once_with_its_reason(
    infer: InferHarness,
) -> None:
    # 20000 x 20000 16-bit RGBA: 3.2 GB decoded, from a file of a few dozen bytes.
    bomb = await infer.publish_job(
        png_with_idat(20000, 20000, b"x", bit_depth=16, color_type=6), FileKind.IMAGE_PNG
    )
    fine = await infer.publish_job(png_bytes(3), FileKind.IMAGE_PNG)

    letters = await infer.wait_for_rows(
        "SELECT * FROM infer.dead_letters WHERE clinic_id = %s", (CLINIC,), timeout_s=120
    )
    (letter,) = letters
    assert letter["attempts"] == 1
    assert "MEDMESH_INFER_BATCH_DECODE_BUDGET_BYTES" in letter["error"]
    assert "20000x20000, 4 channels of 2 bytes" in letter["error"]
    envelopes = await infer.messages(
        infer.topology.dlq_subject(infer.topology.infer_image_subject), DeadLetterEnvelope
    )
    assert [e.attempts for e in envelopes] == [1]
    failed = await infer.messages(infer.topology.result_failed_subject, InferenceFailed)
    assert [(f.job_id, f.attempts) for f in failed] == [(bomb.job_id, 1)]

    row = await infer.wait_for_result(fine.file_id)
    assert row["file_id"] == fine.file_id
    assert await infer.query(
        "SELECT 1 FROM infer.results WHERE file_id = %s", (bomb.file_id,)
    ) == []
