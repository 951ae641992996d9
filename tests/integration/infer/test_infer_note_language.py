"""Notes in any language through the real text pipeline (JetStream → worker → MiniLM on the
model server → PostgreSQL, Redis, GetResult): the model card declares English only, so a
Russian note is analysed but flagged as outside the model's languages, and an English one is
not."""

from __future__ import annotations

import json
from pathlib import Path

from support.infer import InferHarness

from gen.medmesh.common.v1 import FileKind
from gen.medmesh.infer.v1 import GetResultRequest, Result
from svc_infer.models.card import CARD_ASSET, MINILM

RUSSIAN_NOTE = "Кашель, температура 39 °C, хрипы справа — подозрение на пневмонию."
ENGLISH_NOTE = (
    "Three days of fever, productive cough and crackles over the right lower lobe; "
    "suspected pneumonia."
)


def test_the_built_minilm_card_declares_english_as_its_only_language(
    model_base_dir: Path,
) -> None:
    card = json.loads((model_base_dir / MINILM / "1" / "assets" / CARD_ASSET).read_text())

    assert card["languages"] == ["en"]


async def test_a_russian_note_is_analysed_and_flagged_outside_the_models_languages(
    infer: InferHarness,
) -> None:
    job = await infer.publish_job(RUSSIAN_NOTE.encode(), FileKind.TEXT_NOTE)
    row = await infer.wait_for_result(job.file_id)

    analysis = row["analysis"]
    assert (analysis["language"], analysis["model_languages"]) == ("ru", ["en"])
    assert analysis["outside_model_languages"] is True
    assert analysis["findings"]  # still analysed: the flag qualifies the findings
    got = await infer.inference.get_result(
        GetResultRequest(name=f"studies/{job.study_id}/results/{row['result_id']}"),
        metadata=infer.metadata(),
    )
    assert got.result.text is not None
    assert (got.result.text.language, list(got.result.text.model_languages)) == ("ru", ["en"])
    assert got.result.text.outside_model_languages is True
    cached = await infer.redis.get(
        f"{infer.settings.subject_root}:infer:result:{row['result_id']}"
    )
    assert cached is not None
    cached_text = Result.FromString(cached).text
    assert cached_text is not None
    assert cached_text.outside_model_languages is True


async def test_an_english_note_is_not_flagged(infer: InferHarness) -> None:
    job = await infer.publish_job(ENGLISH_NOTE.encode(), FileKind.TEXT_NOTE)
    row = await infer.wait_for_result(job.file_id)

    analysis = row["analysis"]
    assert (analysis["language"], analysis["outside_model_languages"]) == ("en", False)
    assert analysis["findings"][0]["label"] == "pneumonia"
