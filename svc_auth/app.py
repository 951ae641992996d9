"""Wiring: open svc_auth's dependencies on the exit stack and build its servicers."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import timedelta

import structlog

from medmesh.auth import TokenVerifier
from medmesh.contract import DescriptorImage
from medmesh.db import Database
from medmesh.identity import PUBLIC
from medmesh.resources import open_cache, open_database
from medmesh.runtime import ServiceParts
from medmesh.settings import Settings
from svc_auth.accounts import Accounts
from svc_auth.admin import ClinicAdmin
from svc_auth.bootstrap import ensure_account
from svc_auth.config import AuthConfig
from svc_auth.ext_authz import SERVICE_NAME as EXT_AUTHZ_SERVICE
from svc_auth.ext_authz import AuthorizationServicer, authorization_handler
from svc_auth.gateway import Gateway
from svc_auth.invitations import Invitations
from svc_auth.keys import KeyRing, LocalJwks
from svc_auth.mail import MailSender
from svc_auth.passwords import PasswordHashing
from svc_auth.ratelimit import RateLimiter
from svc_auth.revocation import RevocationList
from svc_auth.routes import RouteTable
from svc_auth.service import AUTH_RULES, AUTH_SERVICE, AuthServicer
from svc_auth.sessions import Sessions, TokenIssuer

_log = structlog.get_logger("svc_auth")


async def setup(settings: Settings, stack: AsyncExitStack) -> ServiceParts:
    """PostgreSQL (users, keys, outbox), Redis (limits, deny-lists), SMTP (outbox worker)."""
    config = AuthConfig.from_settings(settings)
    database = await open_database(settings, stack)
    redis = await open_cache(settings, stack)
    hashing = PasswordHashing(
        time_cost=config.argon2_time_cost,
        memory_kib=config.argon2_memory_kib,
        max_concurrent=config.hash_concurrency,
        max_waiting=config.hash_queue,
    )
    stack.callback(hashing.close)
    ring = KeyRing(
        database,
        config.fernet(),
        algorithm=config.signing_algorithm,
        publish_after_retire=timedelta(seconds=config.access_ttl_s + config.leeway_s),
        max_age=timedelta(seconds=config.key_max_age_s),
    )
    await ring.ensure_active()
    if config.bootstrap is not None:
        await ensure_account(database, hashing, config.bootstrap)

    mail_queued = _start_mail_sender(config, database, stack)
    revocations = RevocationList(
        redis, config.redis_prefix, access_ttl_s=config.access_ttl_s, leeway_s=config.leeway_s
    )
    # svc_auth reads its own key table instead of calling itself; a short refresh gap makes
    # a rotation visible within a second while still bounding database reads.
    verifier = TokenVerifier(
        LocalJwks(ring),
        issuer=config.issuer,
        audience=config.audience,
        leeway_s=config.leeway_s,
        min_refresh_gap_s=1.0,
        is_revoked=revocations.is_revoked,
    )
    limiter = RateLimiter(redis, config.redis_prefix)
    issuer = TokenIssuer(
        ring, issuer=config.issuer, audience=config.audience, lifetime_s=config.access_ttl_s
    )
    sessions = Sessions(database, issuer, revocations, refresh_ttl_s=config.refresh_ttl_s)
    accounts = Accounts(database, hashing, sessions, limiter, config, mail_queued=mail_queued)
    admin = ClinicAdmin(database, revocations, ring, operator_clinic=config.operator_clinic)
    gateway = Gateway(
        verifier,
        limiter,
        RouteTable(DescriptorImage()),
        rate_per_ip=config.rate_per_ip,
        rate_per_user=config.rate_per_user,
        operator_clinic=config.operator_clinic,
    )
    invitations = Invitations(database, hashing, limiter, config, mail_queued=mail_queued)
    servicer = AuthServicer(
        accounts, sessions, admin, ring, invitations, trusted_proxies=config.trusted_proxies
    )
    return ServiceParts(
        servicers={AUTH_SERVICE: servicer},
        role_rules={AUTH_SERVICE: AUTH_RULES, EXT_AUTHZ_SERVICE: {"Check": PUBLIC}},
        verifier=verifier,
        extra_handlers=[authorization_handler(AuthorizationServicer(gateway))],
        extra_service_names=[EXT_AUTHZ_SERVICE],
    )


def _start_mail_sender(
    config: AuthConfig, database: Database, stack: AsyncExitStack
) -> Callable[[], None]:
    """Run the outbox worker for the service's lifetime; returns its wake-up call."""
    if not config.smtp_url:
        _log.warning("MEDMESH_SMTP_URL is unset: account mails stay queued in auth.mail_outbox")
        return lambda: None
    sender = MailSender(database, config.smtp_endpoint(), config.mail_from)
    sender.start()
    stack.push_async_callback(sender.stop)
    return sender.wake
