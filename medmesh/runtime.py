"""The lifecycle of a service process, written once for all four services.

`main()` of a service is one call to `run_service(...)`; the service supplies a `setup` that
opens what it needs on an `AsyncExitStack` (pools, consumers, background tasks) and returns its
servicers. Order on start: telemetry → migrations → setup → gRPC server → SERVING → ready file.
On SIGTERM/SIGINT: NOT_SERVING → refuse new RPCs → in-flight RPCs get the grace period → the
exit stack closes what setup opened, in reverse (workers before the pools they use).
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog

from medmesh.auth import (
    AuthInterceptor,
    GrpcJwksSource,
    RevocationCheck,
    TokenVerifier,
    revocation_prefix,
)
from medmesh.auth.interceptor import DenialHook
from medmesh.contract import DescriptorImage
from medmesh.dbroles import grant_service_privileges, role_of
from medmesh.identity import RoleRules
from medmesh.migrations import apply_migrations
from medmesh.resources import open_cache
from medmesh.server import GrpcServer
from medmesh.settings import Settings, SettingsError
from medmesh.telemetry import (
    configure_logging,
    configure_tracing,
    instrument_libraries,
    start_metrics_endpoint,
)

_log = structlog.get_logger("medmesh.runtime")


@dataclass(frozen=True)
class Migrations:
    """A schema and the folder of plain-SQL migrations that build it."""

    schema: str
    directory: Path


@dataclass
class ServiceParts:
    """What a service's setup hands to the runtime.

    `servicers` by full service name; `role_rules` by full service name (an RPC without a
    rule is denied to everyone); `verifier` only when the service verifies tokens some other
    way than with svc_auth's JWKS over gRPC (svc_auth itself, tests). Extra handlers serve
    services outside the contract (Envoy's ext_authz Check), named for health/reflection.
    """

    servicers: Mapping[str, object]
    role_rules: Mapping[str, RoleRules] = field(default_factory=dict)
    verifier: TokenVerifier | None = None
    extra_handlers: Sequence[grpc.GenericRpcHandler] = field(default_factory=tuple)
    extra_service_names: Sequence[str] = field(default_factory=tuple)
    on_denied: DenialHook | None = None
    """Records a call refused by the role rules (`medmesh.audit.DeniedAccessRecorder`)."""


Setup = Callable[[Settings, AsyncExitStack], Awaitable[ServiceParts]]


def termination_event() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT (no process-killing default handlers)."""
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, event.set)
    return event


def _write_ready_file(path: Path, addresses: Mapping[str, str]) -> None:
    # Written atomically: a supervisor polling for the file never reads half of it.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**addresses, "pid": os.getpid()}))
    tmp.replace(path)


async def apply_service_migrations(settings: Settings, migrations: Sequence[Migrations]) -> None:
    """Bring each schema up to date before serving (idempotent; yoyo locks concurrent runs).

    With MEDMESH_POSTGRES_MIGRATION_URL they run as the migration role, which then grants the
    service's own role (the user of its postgres_url) its privileges (medmesh/dbroles.py).
    Without it they run as postgres_url's role: a no-op check when nothing is pending."""
    if not migrations:
        return
    settings.require("postgres_url")
    migration_url = settings.postgres_migration_url or settings.postgres_url
    for item in migrations:
        applied = await asyncio.to_thread(
            apply_migrations,
            migration_url,
            schema=item.schema,
            migrations_dir=item.directory,
        )
        _log.info("migrations applied", schema=item.schema, applied=applied)
    role = role_of(settings.postgres_url)
    if settings.postgres_migration_url and role and role != role_of(migration_url):
        await asyncio.to_thread(
            grant_service_privileges,
            migration_url,
            service=settings.service,
            role=role,
            roles=settings.database_roles,
        )
        _log.info("database privileges granted", role=role)


async def serve(
    settings: Settings,
    setup: Setup,
    *,
    migrations: Sequence[Migrations] = (),
    image: DescriptorImage | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run one service until `stop` is set (default: SIGTERM/SIGINT), then shut down cleanly."""
    # Patches grpc.aio.server / channels and psycopg's connect: must precede their creation.
    instrument_libraries()
    stop = stop or termination_event()
    await apply_service_migrations(settings, migrations)
    async with AsyncExitStack() as stack:
        metrics = start_metrics_endpoint(settings.metrics_addr)
        if metrics:
            stack.callback(metrics.close)
        parts = await setup(settings, stack)
        image = image or DescriptorImage()
        verifier = parts.verifier or await _jwks_verifier(settings, image, stack)
        server = GrpcServer(
            image,
            parts.servicers,
            address=settings.grpc_addr,
            tls_cert_file=settings.grpc_tls_cert_file,
            tls_key_file=settings.grpc_tls_key_file,
            extra_handlers=parts.extra_handlers,
            extra_service_names=parts.extra_service_names,
            interceptors=[
                AuthInterceptor(
                    verifier,
                    parts.role_rules,
                    parts.on_denied,
                    operator_clinic=settings.operator_clinic_id,
                )
            ],
        )
        address = await server.start()
        if settings.ready_file:
            _write_ready_file(
                settings.ready_file,
                {"grpc": address, "metrics": metrics.address if metrics else ""},
            )
        await stop.wait()
        await server.stop(settings.grace_period_s)


async def _jwks_verifier(
    settings: Settings, image: DescriptorImage, stack: AsyncExitStack
) -> TokenVerifier:
    """Verify tokens with the keys svc_auth publishes (fetched lazily, cached, refreshed), and
    honour svc_auth's deny-list (logout, disabled users) when Redis is configured."""
    settings.require("auth_addr")
    source = GrpcJwksSource(
        settings.auth_addr,
        image=image,
        ca_file=settings.jwks_ca_file,
        allow_plaintext=settings.jwks_allow_plaintext,
    )
    stack.push_async_callback(source.close)
    is_revoked = None
    if settings.redis_url:
        redis = await open_cache(settings, stack)
        is_revoked = RevocationCheck(redis, revocation_prefix(settings.subject_root))
    return TokenVerifier(
        source, issuer=settings.jwt_issuer, audience=settings.jwt_audience, is_revoked=is_revoked
    )


def run_service(service: str, setup: Setup, *, migrations: Sequence[Migrations] = ()) -> None:
    """Entry point of `python -m svc_<service>`: settings from the environment, then `serve`.

    faulthandler first: a crash in native code (a segfault inside grpc's cygrpc, say) then
    leaves every thread's Python traceback on stderr, which `medmesh up` sends to the log."""
    faulthandler.enable(file=sys.stderr, all_threads=True)
    settings = Settings.from_env(os.environ, service=service)
    configure_logging(service, settings.log_level)
    configure_tracing(service, settings.otlp_endpoint)
    try:
        asyncio.run(serve(settings, setup, migrations=migrations))
    except SettingsError as exc:  # a missing or bad variable: say which, without a traceback
        raise SystemExit(f"svc_{service} cannot start: {exc}") from None
