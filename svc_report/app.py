"""Wiring: open svc_report's dependencies on the exit stack, start its background tasks
(outbox relay, the three consumers) and build its servicer.

Close order is the reverse of this order: consumers stop first (the batch in hand finishes
and acks), then the relay, the MIS client and the pools.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

import structlog

from gen.medmesh.events.v1 import DeliveryJob, ReportJob, StudyResultsReady
from medmesh.audit import DeniedAccessRecorder
from medmesh.db import Database
from medmesh.keyring import SecretBox, require_key_encryption_keys
from medmesh.mail import SmtpEndpoint
from medmesh.outbox import Outbox, OutboxRelay
from medmesh.resources import open_cache, open_database, open_jetstream, open_object_store
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings
from svc_report import delivery_store
from svc_report.builder import ReportBuilder
from svc_report.config import ReportConfig
from svc_report.consumers import ConsumerLoop, results_ready_consumer
from svc_report.delivery import ReportDeliveries
from svc_report.egress import EgressPolicy
from svc_report.mis import MisClient
from svc_report.notify import ReportNotifier
from svc_report.replays import ReplayReopener
from svc_report.report_requests import ReportRequests
from svc_report.reports import ReportReader
from svc_report.results import ResultSource
from svc_report.service import (
    REPORT_SERVICE,
    ROLE_RULES,
    ReportDependencies,
    ReportServicer,
)
from svc_report.targets import DeliveryTargets

log = structlog.get_logger(__name__)

SCHEMA = "report"
KEK_VARIABLE = "MEDMESH_REPORT_KEY_ENCRYPTION_KEY"


async def _mis_token_box(config: ReportConfig, database: Database) -> SecretBox:
    """The cipher of the MIS bearer tokens; tokens still in plain text get sealed now."""
    secrets = SecretBox(config.key_encryption_key, variable=KEK_VARIABLE)
    async with database.transaction() as conn:
        sealed = await delivery_store.seal_plaintext_tokens(conn, secrets.seal)
    if sealed:
        log.info("report.mis_tokens_sealed", count=sealed)
    return secrets


async def setup(settings: Settings, stack: AsyncExitStack) -> ServiceParts:
    """PostgreSQL (reports; read models of ingest/infer/auth through the read pool), Redis
    (svc_infer's result cache), S3 (processed images in, archive out), JetStream (events and
    jobs in, events, jobs and dead letters out), SMTP, the clinics' MIS endpoints."""
    config = ReportConfig.from_extra(settings.extra)
    # No default KEK: refuse before opening anything (SettingsError names the variable).
    require_key_encryption_keys(KEK_VARIABLE, config.key_encryption_key)
    database = await open_database(settings, stack)
    redis = await open_cache(settings, stack)
    objects = await open_object_store(settings, stack)
    jetstream = await open_jetstream(settings, stack)
    topology = jetstream.topology
    outbox = Outbox(SCHEMA)
    policy = EgressPolicy.from_cidrs(config.mis_allow_networks)
    mis = MisClient(config, policy)
    stack.push_async_callback(mis.close)
    secrets = await _mis_token_box(config, database)
    await OutboxRelay.start(outbox, database, jetstream.js, stack, listen_url=settings.postgres_url)

    if not settings.smtp_url:
        log.warning("MEDMESH_SMTP_URL is unset: no 'report ready' mails are sent")
    notifier = ReportNotifier(
        database,
        SmtpEndpoint.from_settings(settings) if settings.smtp_url else None,
        sender=config.mail_from,
        subject=config.mail_subject,
        public_url=config.public_url,
    )
    results = ResultSource(database, redis, namespace=settings.subject_root)
    requests = ReportRequests(database, outbox, topology)
    builder = ReportBuilder(
        database=database,
        objects=objects,
        results=results,
        outbox=outbox,
        topology=topology,
        notifier=notifier,
        config=config,
    )
    deliveries = ReportDeliveries(
        database=database,
        objects=objects,
        outbox=outbox,
        topology=topology,
        mis=mis,
        results=results,
        secrets=secrets,
    )
    backoff = config.retry_backoff_s
    reopen = ReplayReopener(database)
    for loop in (
        ConsumerLoop(
            results_ready_consumer(topology),
            jetstream,
            requests.on_results_ready,
            job_type=StudyResultsReady,
            retry_backoff_s=backoff,
        ),
        ConsumerLoop(
            topology.report_consumer,
            jetstream,
            builder.on_job,
            job_type=ReportJob,
            retry_backoff_s=backoff,
            on_replay=reopen.report,
        ),
        ConsumerLoop(
            topology.deliver_consumer,
            jetstream,
            deliveries.on_job,
            job_type=DeliveryJob,
            retry_backoff_s=backoff,
            on_replay=reopen.delivery,
            # One delivery per slot: a slow MIS holds its own slot, not other clinics'.
            batch=1,
            concurrency=config.mis_concurrency,
        ),
    ):
        await loop.start(stack)

    dependencies = ReportDependencies(
        requests=requests,
        reader=ReportReader(database, objects, url_ttl_s=config.download_url_ttl_s),
        deliveries=deliveries,
        targets=DeliveryTargets(database, policy=policy, secrets=secrets),
    )
    return ServiceParts(
        servicers={REPORT_SERVICE: ReportServicer(dependencies)},
        role_rules=ROLE_RULES,
        on_denied=DeniedAccessRecorder(database),
    )
