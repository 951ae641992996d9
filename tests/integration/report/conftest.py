"""svc_report under test: the real service in-process (its consumers included) against the
session's PostgreSQL, Redis, NATS JetStream and S3, a real SMTP server (aiosmtpd) and a real
https MIS, with this test's own database, prefix and names. Every service's migrations run in
the test database, so the read models (views) svc_report reads exist as in production."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest
from report_harness import Mailbox, ReportHarness
from report_mis import REPORT_KEK, MisReceiver, TlsFiles, make_tls_files, running_mis
from support.serving import clients, served
from support.tokens import TokenFactory

from medmesh.client import AsyncStub
from medmesh.contract import DescriptorImage
from medmesh.jetstream import Topology
from medmesh.mailsink import FreePortController
from medmesh.migrate import AUDIT, service_migrations
from medmesh.runtime import Migrations, ServiceParts
from medmesh.settings import SERVICES, Settings
from svc_report import app
from svc_report.service import REPORT_SERVICE


def all_migrations() -> list[Migrations]:
    """audit, then every service's schema (their read-model views included)."""
    return [AUDIT] + [m for s in SERVICES for m in service_migrations(s) if m != AUDIT]


@pytest.fixture(scope="session")
def smtp() -> Iterator[tuple[FreePortController, Mailbox]]:
    """A real SMTP server on a free port for the session, and its mailbox."""
    mailbox = Mailbox()
    controller = FreePortController(mailbox, hostname="127.0.0.1", port=0)
    controller.start()
    yield controller, mailbox
    controller.stop()


@pytest.fixture
def mailbox(smtp: tuple[FreePortController, Mailbox]) -> Mailbox:
    """The session mailbox (tests use unique addresses)."""
    return smtp[1]


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and a 127.0.0.1 certificate for the MIS."""
    return make_tls_files(tmp_path_factory.mktemp("mis-tls"))


@pytest.fixture
def mis(tls_files: TlsFiles) -> Iterator[MisReceiver]:
    """A fresh https FHIR MIS on a free port."""
    with running_mis(tls_files) as receiver:
        yield receiver


@pytest.fixture
def report_extra(tls_files: TlsFiles) -> dict[str, str]:
    """MEDMESH_REPORT_* settings of the service under test: short retries, the test CA, the
    test MIS's loopback address allowed (the SSRF guard refuses loopback otherwise), a real
    key-encryption key for the MIS tokens."""
    return {
        "MEDMESH_REPORT_MIS_CA_FILE": str(tls_files.ca_file),
        "MEDMESH_REPORT_MIS_ALLOW_NETWORKS": "127.0.0.1/32",
        "MEDMESH_REPORT_KEY_ENCRYPTION_KEY": REPORT_KEK,
        "MEDMESH_REPORT_MIS_ATTEMPTS": "4",
        "MEDMESH_REPORT_MIS_BACKOFF_INITIAL_S": "0.05",
        "MEDMESH_REPORT_MIS_BACKOFF_MAX_S": "0.2",
        "MEDMESH_REPORT_MIS_TIMEOUT_S": "5",
        "MEDMESH_REPORT_RETRY_BACKOFF_S": "0.2,0.4",
        "MEDMESH_REPORT_PUBLIC_URL": "https://app.medmesh.test",
    }


@pytest.fixture
async def reports(
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    nats_url: str,
    s3_url: str,
    name_prefix: str,
    tokens: TokenFactory,
    smtp: tuple[FreePortController, Mailbox],
    report_extra: Mapping[str, str],
) -> AsyncIterator[ReportHarness]:
    """svc_report serving on a free port with its consumers, and handles for the test."""
    ready_file = tmp_path / "ready.json"
    settings = Settings(
        service="report",
        postgres_url=database_url,
        redis_url=redis_url,
        nats_url=nats_url,
        s3_url=s3_url,
        s3_bucket_prefix=f"{name_prefix}-",
        subject_root=name_prefix,
        stream_prefix=name_prefix.upper(),
        smtp_url=smtp[0].url,
        ready_file=ready_file,
        grace_period_s=1,
        extra=dict(report_extra),
    )

    async def setup(s: Settings, stack: AsyncExitStack) -> ServiceParts:
        parts = await app.setup(s, stack)
        parts.verifier = tokens.verifier()
        return parts

    async with (
        served(settings, setup, migrations=all_migrations()) as ready,
        clients(settings, "report-test") as used,
        grpc.aio.insecure_channel(ready["grpc"]) as channel,
    ):
        yield ReportHarness(
            report=AsyncStub(channel, REPORT_SERVICE, DescriptorImage()),
            js=used.js,
            topology=Topology(subject_root=name_prefix, stream_prefix=name_prefix.upper()),
            objects=used.objects,
            redis=used.redis,
            database_url=database_url,
            tokens=tokens,
            prefix=name_prefix,
        )
