"""Jobs in, results out: images, DICOM and notes through JetStream, the workers and the model
server into PostgreSQL, Redis, the processed bucket and events; reading them back by RPC."""

from __future__ import annotations

import io
import uuid

import cv2
import grpc
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from support.infer import (
    CLINIC,
    OTHER_CLINIC,
    InferHarness,
    png_bytes,
    wait_until_consumed,
)

from gen.medmesh.common.v1 import AnalysisKind, FileKind
from gen.medmesh.events.v1 import ResultReady, StudyResultsReady
from gen.medmesh.infer.v1 import (
    GetResultRequest,
    ListResultsRequest,
    Result,
    TrafficArm,
)
from medmesh.objects import PROCESSED_IMAGES
from svc_infer.models.resnet import DEFAULT_IMAGE_LABELS
from svc_infer.preprocess import IMAGE_PREPROCESSING_VERSION
from svc_infer.text import TEXT_PREPROCESSING_VERSION, split_sentences

PNEUMONIA_NOTE = (
    "72-year-old man with three days of fever, productive cough and shortness of breath. "
    "Crackles over the right lower lobe. Chest X-ray shows right lower lobe consolidation "
    "consistent with pneumonia. Started on antibiotics."
)


def dicom_bytes() -> bytes:
    """A 128x128 CT slice stored as 0..2000 with slope 1, intercept -1024 (HU) and a soft-
    tissue window: the left half is air (black), the right half bone (white)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("ct.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = 128, 128
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    pixels = np.zeros((128, 128), dtype=np.uint16)
    pixels[:, 64:] = 2000  # 976 HU: above the window → white; 0 stored = -1024 HU → black
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


async def test_an_uploaded_png_gets_a_result_a_cached_copy_a_processed_image_and_an_event(
    infer: InferHarness,
) -> None:
    job = await infer.publish_job(png_bytes(1), FileKind.IMAGE_PNG)
    row = await infer.wait_for_result(job.file_id)

    assert (row["study_id"], row["clinic_id"], row["job_id"]) == (
        job.study_id,
        CLINIC,
        job.job_id,
    )
    assert row["model_name"] == "resnet50"
    assert row["model_version"] == 2  # the newest served version became stable
    assert row["arm"] == TrafficArm.STABLE
    assert row["preprocessing_version"] == IMAGE_PREPROCESSING_VERSION
    top = row["analysis"]["top_k"]
    assert len(top) == 5
    assert {t["label"] for t in top} <= set(DEFAULT_IMAGE_LABELS)
    assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    assert 0 < sum(t["score"] for t in top) <= 1.0 + 1e-6
    assert row["inference_ms"] > 0
    assert row["total_ms"] >= row["inference_ms"]

    key = f"{infer.settings.subject_root}:infer:result:{row['result_id']}"
    ttl = await infer.redis.ttl(key)
    assert 0 < ttl <= 3600
    cached = Result.FromString(await infer.redis.get(key))
    assert cached.image is not None
    assert [s.label for s in cached.image.top_k] == [t["label"] for t in top]

    processed = await infer.objects.get_bytes(PROCESSED_IMAGES, row["processed_key"])
    picture = cv2.imdecode(np.frombuffer(processed, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (224, 224, 3)

    ready = await infer.messages(infer.topology.result_ready_subject, ResultReady)
    assert [(e.job_id, e.result_id, e.model_version) for e in ready] == [
        (job.job_id, str(row["result_id"]), 2)
    ]
    assert ready[0].model_name == "models/resnet50"
    studies = await infer.messages(
        infer.topology.study_event_subject("results_ready"), StudyResultsReady
    )
    assert [(s.study_id, list(s.result_ids)) for s in studies] == [
        (job.study_id, [str(row["result_id"])])
    ]
    audit = await infer.query(
        "SELECT detail FROM audit.events WHERE action = 'result.store' AND study_id = %s",
        (job.study_id,),
    )
    assert audit[0]["detail"]["model_version"] == 2


async def test_results_are_read_back_by_rpc_and_hidden_from_other_clinics(
    infer: InferHarness,
) -> None:
    job = await infer.publish_job(png_bytes(2), FileKind.IMAGE_PNG)
    row = await infer.wait_for_result(job.file_id)
    name = f"studies/{job.study_id}/results/{row['result_id']}"

    got = await infer.inference.get_result(
        GetResultRequest(name=name), metadata=infer.metadata(roles=("viewer",))
    )
    assert got.result.file == f"studies/{job.study_id}/files/{job.file_id}"
    assert got.result.kind == AnalysisKind.IMAGE_CLASSIFICATION
    listed = await infer.inference.list_results(
        ListResultsRequest(parent=f"studies/{job.study_id}"), metadata=infer.metadata()
    )
    assert [r.result_id for r in listed.results] == [str(row["result_id"])]
    await infer.redis.delete(f"{infer.settings.subject_root}:infer:result:{row['result_id']}")
    again = await infer.inference.get_result(GetResultRequest(name=name), metadata=infer.metadata())
    assert again.result == got.result  # from PostgreSQL this time

    stranger = infer.metadata(clinic_id=OTHER_CLINIC, roles=("admin",))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await infer.inference.get_result(GetResultRequest(name=name), metadata=stranger)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    foreign = await infer.inference.list_results(
        ListResultsRequest(parent=f"studies/{job.study_id}"), metadata=stranger
    )
    assert list(foreign.results) == []


async def test_a_note_gets_findings_urgency_and_a_summary_from_minilm(
    infer: InferHarness,
) -> None:
    job = await infer.publish_job(PNEUMONIA_NOTE.encode(), FileKind.TEXT_NOTE)
    row = await infer.wait_for_result(job.file_id)

    assert (row["model_name"], row["model_version"]) == ("minilm", 1)
    assert row["preprocessing_version"] == TEXT_PREPROCESSING_VERSION
    analysis = row["analysis"]
    assert analysis["findings"][0]["label"] == "pneumonia"
    assert analysis["urgency"]["label"] in {"routine", "urgent", "emergency"}
    summary = split_sentences(analysis["summary"])
    assert 1 <= len(summary) <= 2
    assert all(sentence in PNEUMONIA_NOTE for sentence in summary)
    ttl = await infer.redis.ttl(f"{infer.settings.subject_root}:infer:result:{row['result_id']}")
    assert 0 < ttl <= 3600
    ready = await infer.messages(infer.topology.result_ready_subject, ResultReady)
    assert [e.kind for e in ready] == [AnalysisKind.TEXT_ANALYSIS]


async def test_a_dicom_file_is_rescaled_windowed_and_classified(infer: InferHarness) -> None:
    job = await infer.publish_job(dicom_bytes(), FileKind.IMAGE_DICOM)
    row = await infer.wait_for_result(job.file_id)
    assert row["kind"] == AnalysisKind.IMAGE_CLASSIFICATION
    processed = await infer.objects.get_bytes(PROCESSED_IMAGES, row["processed_key"])
    picture = cv2.imdecode(np.frombuffer(processed, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert picture.shape == (224, 224)
    assert picture[:, :100].max() == 0  # -1024 HU is below the window
    assert picture[:, 124:].min() == 255  # 976 HU is above it


async def test_a_study_is_announced_once_when_its_image_and_note_both_have_results(
    infer: InferHarness,
) -> None:
    study_id = str(uuid.uuid4())
    image = await infer.publish_job(
        png_bytes(3), FileKind.IMAGE_PNG, study_id=study_id, study_file_count=2
    )
    note = await infer.publish_job(
        PNEUMONIA_NOTE.encode(), FileKind.TEXT_NOTE, study_id=study_id, study_file_count=2
    )
    results = {(await infer.wait_for_result(job.file_id))["result_id"] for job in (image, note)}
    studies = await infer.messages(
        infer.topology.study_event_subject("results_ready"), StudyResultsReady, timeout_s=5
    )
    assert len(studies) == 1
    assert studies[0].study_id == study_id
    assert set(studies[0].result_ids) == {str(r) for r in results}


async def test_a_redelivered_job_writes_no_second_result(infer: InferHarness) -> None:
    job = await infer.publish_job(png_bytes(4), FileKind.IMAGE_PNG)
    await infer.wait_for_result(job.file_id)
    # The same job again, as JetStream redelivers it when an ack was lost (a new Msg-Id, so
    # the stream's de-duplication does not hide it from the worker).
    await infer.publish(job, msg_id=f"{job.job_id}-again")
    await wait_until_consumed(infer, infer.topology.infer_image_consumer.durable)

    rows = await infer.query(
        "SELECT result_id FROM infer.results WHERE file_id = %s", (job.file_id,)
    )
    assert len(rows) == 1
    ready = await infer.messages(infer.topology.result_ready_subject, ResultReady, timeout_s=3)
    assert len(ready) == 1


class TestMicroBatching:
    """A long batch window makes the batch deterministic: all four jobs arrive within it."""

    @pytest.fixture
    def infer_extra(self, infer_extra: dict[str, str]) -> dict[str, str]:
        """Batches of four, waiting up to 3 s after the first job."""
        return {
            **infer_extra,
            "MEDMESH_INFER_BATCH_SIZE": "4",
            "MEDMESH_INFER_BATCH_WAIT_MS": "3000",
        }

    async def test_jobs_published_together_are_classified_in_one_predict_call(
        self, infer: InferHarness
    ) -> None:
        jobs = [await infer.publish_job(png_bytes(10 + i), FileKind.IMAGE_PNG) for i in range(4)]
        rows = [await infer.wait_for_result(job.file_id) for job in jobs]
        assert len({row["inference_ms"] for row in rows}) == 1  # one Predict served all four
