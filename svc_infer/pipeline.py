"""One micro-batch of jobs for one model version: download, preprocess, ONE batched Predict,
post-process, and a result draft per job.

A job whose file cannot be downloaded or preprocessed fails alone; the others still go to the
model server together. A failed Predict fails the whole group (the worker retries each job).
CPU-bound steps (OpenCV, tokenization) run in worker threads: OpenCV and the tokenizers
library release the GIL, so one batch's preprocessing overlaps another batch's Predict.

Image memory is budgeted per batch (`DecodeBudget`, MEDMESH_INFER_BATCH_DECODE_BUDGET_BYTES):
each image's header is read first (one ranged GET of `header_bytes`, which is the whole file
when it is small), its decoding peak estimated (preprocess.decode_cost_bytes), and the image
is downloaded and decoded only while that much of the budget is free; the batch's images
decode side by side as long as they fit, one after the other when they do not. An image
whose estimate alone exceeds the budget (a decode bomb that predates ingest's bound or came
in another way) fails for good (`DecodeRefused`): the worker dead-letters it at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
from nats.aio.msg import Msg

from gen.medmesh.common.v1 import AnalysisKind
from gen.medmesh.events.v1 import InferenceJob
from gen.medmesh.infer.v1 import TrafficArm
from medmesh.errors import NotFound
from medmesh.objects import LOGICAL_BUCKETS, PROCESSED_IMAGES, RAW_IMAGES, ObjectStore
from svc_infer import metrics
from svc_infer.budget import DecodeBudget
from svc_infer.catalog import ModelCatalog, image_spec, text_attention_input
from svc_infer.language import detect_note_language
from svc_infer.models.text import encode
from svc_infer.postprocess import analyse_text, classify_image
from svc_infer.preprocess import (
    IMAGE_PREPROCESSING_VERSION,
    ImageSpec,
    PreparedImage,
    PreprocessingError,
    decode_cost_bytes,
    encode_png,
    prepare_image,
    probe_image,
)
from svc_infer.registry import Model, ModelVersion
from svc_infer.results import ResultDraft, Timings, image_analysis, text_analysis
from svc_infer.text import TEXT_PREPROCESSING_VERSION, decode_note, split_sentences
from svc_infer.tfserving import ModelRef, TFServingClient


class JobFailed(Exception):
    """This job cannot be processed now (its file is missing, corrupt, or unreadable)."""

    permanent = False
    """True when no retry can help: the worker dead-letters the job at once."""


class DecodeRefused(JobFailed):
    """Decoding the job's image would take more memory than a whole batch may hold."""

    permanent = True


@dataclass
class Delivery:
    """A job message being processed, with the version its study is assigned to."""

    msg: Msg
    job: InferenceJob
    attempt: int
    started: float
    """time.time() when the worker took the job."""
    version: int = 0
    arm: TrafficArm = TrafficArm.UNSPECIFIED
    trace_headers: dict[str, str] = field(default_factory=dict)
    """W3C headers of this job's `process` span: the events written for its result carry them,
    so the study's trace goes on past a batch (medmesh.telemetry)."""


@dataclass
class Outcome:
    """What became of one delivery: a draft, or the error of this attempt."""

    delivery: Delivery
    draft: ResultDraft | None = None
    error: str = ""
    permanent: bool = False
    """The error is final (no retry can fix it): dead-letter the job now."""


def queue_ms(delivery: Delivery) -> float:
    """Milliseconds from the job's enqueue to the start of its processing."""
    enqueued = delivery.job.enqueue_time
    if enqueued is None:
        return 0.0
    return max(0.0, (delivery.started - enqueued.timestamp()) * 1000.0)


def _total_ms(delivery: Delivery) -> float:
    enqueued = delivery.job.enqueue_time
    start = enqueued.timestamp() if enqueued is not None else delivery.started
    return max(0.0, (datetime.now(UTC).timestamp() - start) * 1000.0)


def describe(exc: BaseException) -> str:
    """A one-line error for logs, dead letters and InferenceFailed events."""
    return f"{type(exc).__name__}: {exc}"[:1000]


def _bucket(job: InferenceJob) -> str:
    return job.bucket if job.bucket in LOGICAL_BUCKETS else RAW_IMAGES


def _check_sha256(job: InferenceJob, data: bytes) -> bytes:
    if job.sha256 and hashlib.sha256(data).hexdigest() != job.sha256.lower():
        raise JobFailed(f"{job.object_key} does not match the job's sha256")
    return data


async def load_file(objects: ObjectStore, job: InferenceJob) -> bytes:
    """The job's stored file, checked against its SHA-256 when the job carries one."""
    bucket = _bucket(job)
    try:
        data = await objects.get_bytes(bucket, job.object_key)
    except NotFound as exc:
        raise JobFailed(f"{job.object_key} is not in {bucket}") from exc
    return _check_sha256(job, data)


async def load_head(objects: ObjectStore, job: InferenceJob, length: int) -> tuple[bytes, int]:
    """The first `length` bytes of the job's file and its size (the whole file, checked
    against the job's SHA-256, when it is no longer than `length`)."""
    bucket = _bucket(job)
    try:
        head, size = await objects.read_head(bucket, job.object_key, length)
    except NotFound as exc:
        raise JobFailed(f"{job.object_key} is not in {bucket}") from exc
    if len(head) >= size:
        _check_sha256(job, head)
    return head, size


def _draft(
    delivery: Delivery,
    model: Model,
    version: ModelVersion,
    kind: AnalysisKind,
    analysis: dict[str, object],
    *,
    preprocessing_version: str,
    preprocess_ms: float,
    inference_ms: float,
    processed_key: str = "",
) -> ResultDraft:
    job = delivery.job
    return ResultDraft(
        job_id=job.job_id,
        clinic_id=job.clinic_id,
        study_id=job.study_id,
        file_id=job.file_id,
        kind=kind,
        model_name=model.name,
        model_version=version.version,
        preprocessing_version=preprocessing_version,
        arm=delivery.arm,
        analysis=analysis,
        processed_key=processed_key,
        timings=Timings(
            queue_ms=queue_ms(delivery),
            preprocess_ms=preprocess_ms,
            inference_ms=inference_ms,
            total_ms=_total_ms(delivery),
        ),
    )


_Prepared = tuple[PreparedImage, bytes, float, str]
"""A preprocessed job: the model input, the processed PNG, preprocessing ms, its key."""


def _timed_prepare(
    data: bytes, job: InferenceJob, spec: ImageSpec
) -> tuple[PreparedImage, bytes, float]:
    started = time.perf_counter()
    prepared = prepare_image(data, job.kind, spec)
    png = encode_png(prepared.rgb8)
    return prepared, png, (time.perf_counter() - started) * 1000.0


class ImagePipeline:
    """Images → ResNet-50 (or any registered image classifier) → top-k labels."""

    kind = AnalysisKind.IMAGE_CLASSIFICATION

    def __init__(
        self,
        objects: ObjectStore,
        client: TFServingClient,
        *,
        top_k: int,
        timeout_s: float,
        decode_budget_bytes: int = 2 * 1024**3,
        header_bytes: int = 1024**2,
    ) -> None:
        self._objects = objects
        self._client = client
        self._top_k = top_k
        self._timeout_s = timeout_s
        self._decode_budget_bytes = decode_budget_bytes
        self._header_bytes = header_bytes
        self.last_budget: DecodeBudget | None = None
        """The budget of the latest batch (tests read its peak)."""

    async def _admit(self, delivery: Delivery) -> tuple[bytes, int, int]:
        """Read the image's header: (head, file size, decoding peak); refuse it for good
        when that peak exceeds what a whole batch may hold."""
        job = delivery.job
        head, size = await load_head(self._objects, job, self._header_bytes)
        try:
            geometry = probe_image(head, job.kind)
        except PreprocessingError as exc:
            raise JobFailed(describe(exc)) from exc
        cost = decode_cost_bytes(geometry, size)
        if cost > self._decode_budget_bytes:
            raise DecodeRefused(
                f"decoding {job.object_key} ({geometry.describe()}, {size} bytes stored) would"
                f" need about {cost} bytes, more than the batch decode budget of"
                f" {self._decode_budget_bytes} (MEDMESH_INFER_BATCH_DECODE_BUDGET_BYTES)"
            )
        return head, size, cost

    async def _prepare(
        self, delivery: Delivery, model: Model, spec: ImageSpec, budget: DecodeBudget
    ) -> tuple[PreparedImage, bytes, float, str]:
        job = delivery.job
        head, size, cost = await self._admit(delivery)
        async with budget.hold(cost):
            data = head if len(head) >= size else await load_file(self._objects, job)
            del head
            try:
                prepared, png, elapsed_ms = await asyncio.to_thread(
                    _timed_prepare, data, job, spec
                )
            except ValueError as exc:  # PreprocessingError and bad specs
                raise JobFailed(describe(exc)) from exc
            finally:
                del data
        metrics.PREPROCESS_SECONDS.labels("image").observe(elapsed_ms / 1000.0)
        key = f"{job.clinic_id}/{job.study_id}/{job.file_id}/{model.name}-v{delivery.version}.png"
        return prepared, png, elapsed_ms, key

    async def _store_processed(self, ready: Sequence[tuple[Delivery, _Prepared]]) -> list[str]:
        """Upload the processed pictures; the error of each upload that failed, else ""."""
        stored = await asyncio.gather(
            *(
                self._objects.put_bytes(PROCESSED_IMAGES, key, png, content_type="image/png")
                for _, (_, png, _, key) in ready
            ),
            return_exceptions=True,
        )
        errors = []
        for item in stored:
            if isinstance(item, BaseException) and not isinstance(item, Exception):
                raise item
            errors.append(describe(item) if isinstance(item, Exception) else "")
        return errors

    async def run(
        self, model: Model, version: int, deliveries: Sequence[Delivery]
    ) -> list[Outcome]:
        """Process deliveries that share one model version. The processed pictures are
        uploaded while the model server works on the batch, not before: the upload is off
        the batch's critical path, and a job whose upload fails fails alone, as before."""
        registered = model.version(version)
        spec = image_spec(registered.input_spec)
        budget = self.last_budget = DecodeBudget(self._decode_budget_bytes)
        prepared = await asyncio.gather(
            *(self._prepare(d, model, spec, budget) for d in deliveries), return_exceptions=True
        )
        outcomes: list[Outcome] = []
        ready: list[tuple[Delivery, _Prepared]] = []
        for delivery, item in zip(deliveries, prepared, strict=True):
            if isinstance(item, BaseException):
                if not isinstance(item, Exception):
                    raise item
                permanent = isinstance(item, JobFailed) and item.permanent
                outcomes.append(Outcome(delivery, error=describe(item), permanent=permanent))
            else:
                ready.append((delivery, item))
        if not ready:
            return outcomes
        uploads = asyncio.create_task(self._store_processed(ready))
        batch = np.stack([item[0].tensor for _, item in ready])
        ref = ModelRef(model.name, version, registered.input_spec.signature_name)
        output_name = registered.input_spec.output_name
        started = time.perf_counter()
        try:
            outputs, _ = await self._client.predict(
                ref,
                {registered.input_spec.input_name: batch},
                output_filter=[output_name],
                timeout_s=self._timeout_s,
            )
        finally:
            elapsed = time.perf_counter() - started
            upload_errors = await uploads
        metrics.INFERENCE_SECONDS.labels(model.name, str(version)).observe(elapsed)
        metrics.BATCH_SIZE.labels(model.name, str(version)).observe(len(ready))
        scores = outputs[output_name]
        for index, (delivery, (_, _, preprocess_ms, key)) in enumerate(ready):
            if upload_errors[index]:
                outcomes.append(Outcome(delivery, error=upload_errors[index]))
                continue
            top = classify_image(scores[index], registered.labels, self._top_k)
            draft = _draft(
                delivery,
                model,
                registered,
                self.kind,
                image_analysis(top),
                preprocessing_version=registered.preprocessing_version
                or IMAGE_PREPROCESSING_VERSION,
                preprocess_ms=preprocess_ms,
                inference_ms=elapsed * 1000.0,
                processed_key=key,
            )
            outcomes.append(Outcome(delivery, draft))
        return outcomes


class TextPipeline:
    """Notes → MiniLM embeddings of the note and its sentences → zero-shot analysis."""

    kind = AnalysisKind.TEXT_ANALYSIS

    def __init__(
        self,
        objects: ObjectStore,
        client: TFServingClient,
        catalog: ModelCatalog,
        *,
        timeout_s: float,
    ) -> None:
        self._objects = objects
        self._client = client
        self._catalog = catalog
        self._timeout_s = timeout_s

    async def _prepare(self, delivery: Delivery) -> tuple[list[str], float]:
        data = await load_file(self._objects, delivery.job)
        started = time.perf_counter()
        try:
            text = decode_note(data)
        except ValueError as exc:
            raise JobFailed(describe(exc)) from exc
        rows = [text, *split_sentences(text)]
        return rows, (time.perf_counter() - started) * 1000.0

    async def run(
        self, model: Model, version: int, deliveries: Sequence[Delivery]
    ) -> list[Outcome]:
        """Process deliveries that share one model version."""
        registered = model.version(version)
        assets = await self._catalog.text_assets(model.name, version)
        prepared = await asyncio.gather(
            *(self._prepare(d) for d in deliveries), return_exceptions=True
        )
        outcomes: list[Outcome] = []
        ready: list[tuple[Delivery, list[str], float]] = []
        for delivery, item in zip(deliveries, prepared, strict=True):
            if isinstance(item, BaseException):
                if not isinstance(item, Exception):
                    raise item
                outcomes.append(Outcome(delivery, error=describe(item)))
            else:
                ready.append((delivery, item[0], item[1]))
        if not ready:
            return outcomes
        rows = [row for _, note_rows, _ in ready for row in note_rows]
        started = time.perf_counter()
        ids, mask = await asyncio.to_thread(encode, assets.tokenizer, rows)
        tokenize_ms = (time.perf_counter() - started) * 1000.0 / len(ready)
        dtype = registered.input_spec.dtype or "int32"
        spec = registered.input_spec
        started = time.perf_counter()
        outputs, _ = await self._client.predict(
            ModelRef(model.name, version, spec.signature_name),
            {spec.input_name: ids.astype(dtype), text_attention_input(): mask.astype(dtype)},
            output_filter=[spec.output_name],
            timeout_s=self._timeout_s,
        )
        elapsed = time.perf_counter() - started
        metrics.INFERENCE_SECONDS.labels(model.name, str(version)).observe(elapsed)
        metrics.BATCH_SIZE.labels(model.name, str(version)).observe(len(ready))
        embeddings = outputs[spec.output_name]
        offset = 0
        for delivery, note_rows, preprocess_ms in ready:
            note, sentences = embeddings[offset], embeddings[offset + 1 : offset + len(note_rows)]
            offset += len(note_rows)
            analysis = analyse_text(note, note_rows[1:], sentences, assets.findings, assets.urgency)
            language = await asyncio.to_thread(
                detect_note_language, note_rows[0], assets.languages
            )
            analysis = replace(
                analysis,
                language=language.language,
                model_languages=language.model_languages,
                outside_model_languages=language.outside_model_languages,
            )
            metrics.PREPROCESS_SECONDS.labels("text").observe((preprocess_ms + tokenize_ms) / 1e3)
            draft = _draft(
                delivery,
                model,
                registered,
                self.kind,
                text_analysis(analysis),
                preprocessing_version=registered.preprocessing_version
                or TEXT_PREPROCESSING_VERSION,
                preprocess_ms=preprocess_ms + tokenize_ms,
                inference_ms=elapsed * 1000.0,
            )
            outcomes.append(Outcome(delivery, draft))
        return outcomes
