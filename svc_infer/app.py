"""Wiring: open svc_infer's dependencies on the exit stack, start its background tasks
(outbox relay, dead-letter indexer, the two job consumers) and build its servicers.

Close order is the reverse of this order: consumers stop first (in-flight batches finish and
ack), then the indexer and the relay, then the model-server channel and the pools.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc
import structlog

from gen.medmesh.common.v1 import AnalysisKind
from medmesh.audit import DeniedAccessRecorder
from medmesh.audit_writer import AuditWriter
from medmesh.db import Database
from medmesh.objects import RAW_IMAGES, ObjectStore
from medmesh.outbox import Outbox, OutboxRelay
from medmesh.resources import (
    JetStream,
    open_cache,
    open_database,
    open_jetstream,
    open_object_store,
)
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings
from svc_infer.cache import ResultCache
from svc_infer.catalog import ModelCatalog
from svc_infer.config import InferConfig
from svc_infer.deadletters import DeadLetterIndexer, DeadLetters
from svc_infer.pipeline import ImagePipeline, TextPipeline
from svc_infer.reads import ResultReader
from svc_infer.routing import Registry
from svc_infer.service import (
    INFERENCE_SERVICE,
    REGISTRY_SERVICE,
    ROLE_RULES,
    InferDependencies,
    InferenceServicer,
    ModelRegistryServicer,
)
from svc_infer.tfserving import TFServingClient, channel_options
from svc_infer.workers import JobConsumer
from svc_infer.writer import ResultWriter

log = structlog.get_logger(__name__)

SCHEMA = "infer"


@dataclass(frozen=True)
class Workers:
    """The running consumers (tests and the benchmark look at them)."""

    image: JobConsumer
    text: JobConsumer


async def start_workers(
    stack: AsyncExitStack,
    *,
    config: InferConfig,
    database: Database,
    objects: ObjectStore,
    jetstream: JetStream,
    registry: Registry,
    client: TFServingClient,
    catalog: ModelCatalog,
    writer: ResultWriter,
) -> Workers:
    """Start the image and text consumers; they stop when `stack` closes."""
    topology = jetstream.topology
    image = JobConsumer(
        spec=topology.infer_image_consumer,
        kind=AnalysisKind.IMAGE_CLASSIFICATION,
        model_name=config.image_model,
        jetstream=jetstream,
        database=database,
        registry=registry,
        pipeline=ImagePipeline(
            objects,
            client,
            top_k=config.top_k,
            timeout_s=config.predict_timeout_s,
            decode_budget_bytes=config.batch_decode_budget_bytes,
            header_bytes=config.header_bytes,
        ),
        writer=writer,
        config=config,
        raw_bucket=objects.bucket(RAW_IMAGES),
    )
    text = JobConsumer(
        spec=topology.infer_text_consumer,
        kind=AnalysisKind.TEXT_ANALYSIS,
        model_name=config.text_model,
        jetstream=jetstream,
        database=database,
        registry=registry,
        pipeline=TextPipeline(objects, client, catalog, timeout_s=config.predict_timeout_s),
        writer=writer,
        config=config,
        raw_bucket=objects.bucket(RAW_IMAGES),
    )
    await image.start(stack)
    await text.start(stack)
    return Workers(image, text)


async def setup(settings: Settings, stack: AsyncExitStack) -> ServiceParts:
    """PostgreSQL (results, registry, outbox), Redis (result cache), S3 (raw and processed
    images, models), JetStream (jobs in, events and dead letters out), the model server."""
    config = InferConfig.from_extra(settings.extra)
    database = await open_database(settings, stack)
    redis = await open_cache(settings, stack)
    objects = await open_object_store(settings, stack)
    jetstream = await open_jetstream(settings, stack)
    outbox = Outbox(SCHEMA)
    cache = ResultCache(redis, namespace=settings.subject_root, ttl_s=config.result_ttl_s)
    client: TFServingClient | None = None
    catalog: ModelCatalog | None = None
    if config.tf_serving_addr:
        channel = grpc.aio.insecure_channel(config.tf_serving_addr, options=channel_options())
        stack.push_async_callback(channel.close)
        client = TFServingClient(channel, timeout_s=config.predict_timeout_s)
        catalog = ModelCatalog(client)
    registry = Registry(database, objects, client=client, catalog=catalog)
    await OutboxRelay.start(outbox, database, jetstream.js, stack, listen_url=settings.postgres_url)
    await DeadLetterIndexer(jetstream, database, outbox).start(stack)
    if client is not None and catalog is not None:
        await start_workers(
            stack,
            config=config,
            database=database,
            objects=objects,
            jetstream=jetstream,
            registry=registry,
            client=client,
            catalog=catalog,
            writer=ResultWriter(database, outbox, jetstream.topology, cache),
        )
    else:
        log.warning(
            "no model server configured: MEDMESH_INFER_TF_SERVING_ADDR is unset, "
            "jobs wait in the queue until a worker with a model server starts"
        )
    # Read audits in batches off the read's path; closed (everything queued written) after
    # the gRPC server has drained and before the database pool closes.
    audit = AuditWriter(database)
    audit.start()
    stack.push_async_callback(audit.close)
    dependencies = InferDependencies(
        results=ResultReader(database, cache, objects, audit),
        dead_letters=DeadLetters(database, jetstream),
        registry=registry,
    )
    return ServiceParts(
        servicers={
            INFERENCE_SERVICE: InferenceServicer(dependencies),
            REGISTRY_SERVICE: ModelRegistryServicer(dependencies),
        },
        role_rules=ROLE_RULES,
        on_denied=DeniedAccessRecorder(database),
    )
