"""Where a report's results come from: svc_infer's Redis cache first (its key format is a
contract), else the `infer.report_results` read model; clinic-scoped either way."""

from __future__ import annotations

import uuid

from report_harness import OTHER_CLINIC, ReportHarness

from gen.medmesh.common.v1 import AnalysisKind, LabelScore
from gen.medmesh.infer.v1 import ImageClassification, Result
from medmesh.db import Database
from svc_report.model import AnalysisResult
from svc_report.results import ResultSource


async def test_results_come_from_the_cache_when_cached_and_from_the_read_model_otherwise(
    reports: ReportHarness,
) -> None:
    study = await reports.seed_study(cache_note=True)
    cached_only = reports.note_result(
        str(uuid.uuid4()), study.study_id, study.note_file_id, study.clinic_id
    )
    await reports.cache_result(cached_only)  # in Redis, not (yet) in PostgreSQL

    async with Database(reports.database_url) as database:
        source = ResultSource(database, reports.redis, namespace=reports.prefix)
        loaded = await source.load(
            study.clinic_id, [study.image_result_id, study.note_result_id, cached_only.result_id]
        )

    by_id = {r.result_id: r for r in loaded}
    assert [r.result_id for r in loaded] == [
        study.image_result_id,
        study.note_result_id,
        cached_only.result_id,
    ]
    assert by_id[study.image_result_id].source == "postgres"
    assert by_id[study.note_result_id].source == "redis"
    assert by_id[cached_only.result_id].source == "redis"
    image = by_id[study.image_result_id]
    assert image.kind == AnalysisKind.IMAGE_CLASSIFICATION
    assert (image.model_name, image.model_version, image.preprocessing_version) == (
        "resnet50",
        3,
        "img-pre-2",
    )
    assert image.processed_key.endswith("resnet50-v3.png")
    note = by_id[study.note_result_id]
    assert (note.model_name, note.model_version, note.preprocessing_version) == (
        "minilm",
        2,
        "txt-pre-7",
    )
    assert [s.label for s in note.findings] == ["pneumonia", "fever"]
    assert note.urgency is not None
    assert note.urgency.label == "urgent"


async def test_cached_image_results_get_their_processed_key_from_the_read_model(
    reports: ReportHarness,
) -> None:
    study = await reports.seed_study()
    rows = await reports.execute(
        "SELECT processed_key FROM infer.report_results WHERE result_id = %s",
        (study.image_result_id,),
    )
    async with Database(reports.database_url) as database:
        source = ResultSource(database, reports.redis, namespace=reports.prefix)
        from_db = (await source.load(study.clinic_id, [study.image_result_id]))[0]
        await reports.redis.set(
            f"{reports.prefix}:infer:result:{study.image_result_id}",
            bytes(_as_proto(from_db)),
            ex=60,
        )
        cached = (await source.load(study.clinic_id, [study.image_result_id]))[0]

    assert cached.source == "redis"
    assert cached.processed_key == rows[0]["processed_key"] != ""


async def test_another_clinics_results_are_invisible_in_the_cache_and_the_read_model(
    reports: ReportHarness,
) -> None:
    study = await reports.seed_study()

    async with Database(reports.database_url) as database:
        source = ResultSource(database, reports.redis, namespace=reports.prefix)
        loaded = await source.load(OTHER_CLINIC, study.result_ids)

    assert loaded == []


def _as_proto(result: AnalysisResult) -> Result:
    """An image result as svc_infer would cache it."""
    return Result(
        result_id=result.result_id,
        study=f"studies/{result.study_id}",
        file=f"studies/{result.study_id}/files/{result.file_id}",
        kind=result.kind,
        model_name=f"models/{result.model_name}",
        model_version=result.model_version,
        preprocessing_version=result.preprocessing_version,
        image=ImageClassification(
            top_k=[LabelScore(label=s.label, score=s.score) for s in result.top_k]
        ),
        create_time=result.create_time,
        clinic_id=result.clinic_id,
    )
