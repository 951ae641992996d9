"""svc_auth's own settings, read once from the MEDMESH_AUTH_* variables of `Settings.extra`.

Every knob has a production-safe default except the key-encryption key, which has none:
without MEDMESH_AUTH_KEY_ENCRYPTION_KEY svc_auth refuses to start (`medmesh up` generates one
per data directory).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from cryptography.fernet import MultiFernet

from medmesh.keyring import (
    key_encryption_cipher,
    parse_key_encryption_keys,
    require_key_encryption_keys,
)
from medmesh.mail import SmtpEndpoint
from medmesh.settings import Settings, SettingsError

_log = structlog.get_logger("svc_auth.config")


@dataclass(frozen=True)
class Rate:
    """`count` requests per `period_s` seconds, with bursts of up to `count`."""

    count: int
    period_s: float

    @classmethod
    def parse(cls, name: str, raw: str) -> Rate:
        """`"120/60"` → 120 requests per 60 seconds."""
        count, sep, period = raw.partition("/")
        try:
            rate = cls(int(count), float(period))
        except ValueError:
            rate = cls(0, 0)
        if not sep or rate.count < 1 or rate.period_s <= 0:
            raise SettingsError(f"{name}={raw!r} must look like COUNT/SECONDS, e.g. 120/60")
        return rate


_RATE_PER_USER = Rate(300, 60)
_RATE_PER_IP = Rate(600, 60)
_LOGIN_FAILURES_PER_ACCOUNT = Rate(5, 300)
_LOGIN_FAILURES_PER_IP = Rate(20, 300)
_MAIL_REQUESTS_PER_IP = Rate(10, 3600)
_MAIL_REQUESTS_PER_ADDRESS = Rate(3, 3600)
_TOKEN_ATTEMPTS_PER_IP = Rate(20, 600)
_TOKEN_ATTEMPTS_PER_ACCOUNT = Rate(5, 600)


@dataclass(frozen=True)
class BootstrapAccount:
    """An account ensured at start-up: the first admin of a clinic (created with it)."""

    clinic_id: str
    email: str
    password: str
    roles: tuple[str, ...] = ("admin",)


@dataclass(frozen=True)
class AuthConfig:
    """Everything svc_auth needs beyond the common settings."""

    issuer: str = "medmesh"
    audience: str = "medmesh"
    signing_algorithm: str = "EdDSA"
    """MEDMESH_AUTH_SIGNING_ALG: `EdDSA` (Ed25519, default) or `RS256` (RSA 2048)."""
    key_encryption_keys: tuple[str, ...] = ()
    """MEDMESH_AUTH_KEY_ENCRYPTION_KEY: Fernet keys, comma-separated; the first encrypts.
    Required: no default (from_settings refuses to build a config without one)."""
    access_ttl_s: int = 900
    """MEDMESH_AUTH_ACCESS_TTL_S: access token lifetime."""
    refresh_ttl_s: int = 14 * 24 * 3600
    """MEDMESH_AUTH_REFRESH_TTL_S: refresh token lifetime (each rotation starts a new one)."""
    verify_ttl_s: int = 48 * 3600
    """MEDMESH_AUTH_VERIFY_TTL_S: how long an e-mail verification link works."""
    reset_ttl_s: int = 3600
    """MEDMESH_AUTH_RESET_TTL_S: how long a password reset link works."""
    invite_ttl_s: int = 7 * 24 * 3600
    """MEDMESH_AUTH_INVITE_TTL_S: how long an invitation link works."""
    key_max_age_s: int = 30 * 24 * 3600
    """MEDMESH_AUTH_KEY_MAX_AGE_S: start-up rotates an active signing key older than this."""
    leeway_s: int = 5
    """MEDMESH_AUTH_LEEWAY_S: clock skew tolerated on exp/nbf; retired keys stay published
    this much longer too."""
    smtp_url: str = ""
    """MEDMESH_SMTP_URL: `smtp://host:port` (or `smtp://user:pass@host:port`); empty: no mail."""
    smtp_ca_file: str = ""
    """MEDMESH_SMTP_CA_FILE: PEM bundle for the SMTP server's certificate (system CAs if empty)."""
    smtp_allow_plain_login: bool = False
    """MEDMESH_SMTP_ALLOW_PLAIN_LOGIN: allow a password over SMTP without TLS (default no)."""
    mail_from: str = "medmesh <no-reply@medmesh.local>"
    """MEDMESH_AUTH_MAIL_FROM: the From header of account mails."""
    public_url: str = "http://localhost:8080"
    """MEDMESH_AUTH_PUBLIC_URL: base of the links in mails (the web app)."""
    rate_per_user: Rate = _RATE_PER_USER
    """MEDMESH_AUTH_RATE_LIMIT_USER: gateway requests per user."""
    rate_per_ip: Rate = _RATE_PER_IP
    """MEDMESH_AUTH_RATE_LIMIT_IP: gateway requests per client IP."""
    login_failures_per_account: Rate = _LOGIN_FAILURES_PER_ACCOUNT
    """MEDMESH_AUTH_LOGIN_LIMIT_ACCOUNT: failed logins per e-mail address (each attempt is
    counted before the password is hashed; a successful one clears the count)."""
    login_failures_per_ip: Rate = _LOGIN_FAILURES_PER_IP
    """MEDMESH_AUTH_LOGIN_LIMIT_IP: failed logins per client IP (each attempt is counted
    before the password is hashed; a successful one is given back)."""
    mail_requests_per_ip: Rate = _MAIL_REQUESTS_PER_IP
    """MEDMESH_AUTH_MAIL_LIMIT_IP: Register / RequestPasswordReset / InviteUser calls per
    client IP."""
    mail_requests_per_address: Rate = _MAIL_REQUESTS_PER_ADDRESS
    """MEDMESH_AUTH_MAIL_LIMIT_ADDRESS: mails (reset, verification, invitation) per e-mail
    address."""
    token_attempts_per_ip: Rate = _TOKEN_ATTEMPTS_PER_IP
    """MEDMESH_AUTH_TOKEN_LIMIT_IP: VerifyEmail / ResetPassword / AcceptInvitation calls
    per client IP, valid token or not (checked before any lookup or hashing)."""
    token_attempts_per_account: Rate = _TOKEN_ATTEMPTS_PER_ACCOUNT
    """MEDMESH_AUTH_TOKEN_LIMIT_ACCOUNT: ResetPassword / AcceptInvitation calls with a valid
    token per account (each may hash a password)."""
    hash_concurrency: int = 0
    """MEDMESH_AUTH_HASH_CONCURRENCY: argon2 hashes run at once (0: half the usable CPUs,
    a container's CPU limit respected)."""
    hash_queue: int = 16
    """MEDMESH_AUTH_HASH_QUEUE: hashes that may wait for a slot; more are refused at once
    with RESOURCE_EXHAUSTED."""
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """MEDMESH_AUTH_TRUSTED_PROXIES: CIDRs whose `x-forwarded-for` names the real client."""
    operator_clinic: str = ""
    """MEDMESH_OPERATOR_CLINIC_ID (or the older MEDMESH_AUTH_OPERATOR_CLINIC): the clinic
    whose admins may rotate signing keys and change the model registry (default: the
    bootstrap clinic)."""
    bootstrap: BootstrapAccount | None = None
    """MEDMESH_AUTH_BOOTSTRAP_CLINIC / _ADMIN_EMAIL / _ADMIN_PASSWORD."""
    redis_prefix: str = "medmesh:auth:"
    """Namespace of every Redis key (`<MEDMESH_SUBJECT_ROOT>:auth:`)."""
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 64 * 1024
    """MEDMESH_AUTH_ARGON2_MEMORY_KIB: argon2id memory per hash (RFC 9106: 64 MiB)."""
    gateway_public_paths: tuple[str, ...] = field(default=("/healthz", "/readyz"))

    def fernet(self) -> MultiFernet:
        """The cipher for private keys: encrypts with the first key, decrypts with any."""
        return key_encryption_cipher(_v("KEY_ENCRYPTION_KEY"), self.key_encryption_keys)

    def smtp_endpoint(self) -> SmtpEndpoint:
        """Where account mails go; PlainLoginRefused for a password over plain SMTP."""
        return SmtpEndpoint.parse(
            self.smtp_url, ca_file=self.smtp_ca_file, allow_plain_login=self.smtp_allow_plain_login
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthConfig:
        """Read MEDMESH_AUTH_* from `settings.extra`; SettingsError names a bad variable."""
        env = settings.extra
        keys = parse_key_encryption_keys(
            _v("KEY_ENCRYPTION_KEY"), env.get(_v("KEY_ENCRYPTION_KEY"), "")
        )
        require_key_encryption_keys(_v("KEY_ENCRYPTION_KEY"), keys)
        algorithm = env.get(_v("SIGNING_ALG"), cls.signing_algorithm)
        if algorithm not in {"EdDSA", "RS256"}:
            raise SettingsError(f"{_v('SIGNING_ALG')}={algorithm!r}: use EdDSA or RS256")
        bootstrap = _bootstrap(env)
        return cls(
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            signing_algorithm=algorithm,
            key_encryption_keys=keys,
            access_ttl_s=_int(env, "ACCESS_TTL_S", cls.access_ttl_s),
            refresh_ttl_s=_int(env, "REFRESH_TTL_S", cls.refresh_ttl_s),
            verify_ttl_s=_int(env, "VERIFY_TTL_S", cls.verify_ttl_s),
            reset_ttl_s=_int(env, "RESET_TTL_S", cls.reset_ttl_s),
            invite_ttl_s=_int(env, "INVITE_TTL_S", cls.invite_ttl_s),
            key_max_age_s=_int(env, "KEY_MAX_AGE_S", cls.key_max_age_s),
            leeway_s=_int(env, "LEEWAY_S", cls.leeway_s),
            smtp_url=settings.smtp_url,
            smtp_ca_file=settings.smtp_ca_file,
            smtp_allow_plain_login=settings.smtp_allow_plain_login,
            mail_from=env.get(_v("MAIL_FROM"), cls.mail_from),
            public_url=env.get(_v("PUBLIC_URL"), cls.public_url).rstrip("/"),
            rate_per_user=_rate(env, "RATE_LIMIT_USER", cls.rate_per_user),
            rate_per_ip=_rate(env, "RATE_LIMIT_IP", cls.rate_per_ip),
            login_failures_per_account=_rate(
                env, "LOGIN_LIMIT_ACCOUNT", cls.login_failures_per_account
            ),
            login_failures_per_ip=_rate(env, "LOGIN_LIMIT_IP", cls.login_failures_per_ip),
            mail_requests_per_ip=_rate(env, "MAIL_LIMIT_IP", cls.mail_requests_per_ip),
            mail_requests_per_address=_rate(
                env, "MAIL_LIMIT_ADDRESS", cls.mail_requests_per_address
            ),
            token_attempts_per_ip=_rate(env, "TOKEN_LIMIT_IP", cls.token_attempts_per_ip),
            token_attempts_per_account=_rate(
                env, "TOKEN_LIMIT_ACCOUNT", cls.token_attempts_per_account
            ),
            hash_concurrency=_int(env, "HASH_CONCURRENCY", cls.hash_concurrency),
            hash_queue=_int(env, "HASH_QUEUE", cls.hash_queue),
            trusted_proxies=_networks(env.get(_v("TRUSTED_PROXIES"), "")),
            operator_clinic=settings.operator_clinic_id
            or env.get(_v("OPERATOR_CLINIC"), bootstrap.clinic_id if bootstrap else ""),
            bootstrap=bootstrap,
            redis_prefix=f"{settings.subject_root}:auth:",
            argon2_memory_kib=_int(env, "ARGON2_MEMORY_KIB", cls.argon2_memory_kib),
        )


def _v(name: str) -> str:
    return f"MEDMESH_AUTH_{name}"


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(_v(name), "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise SettingsError(f"{_v(name)}={raw!r} must be a positive integer")
    return value


def _rate(env: Mapping[str, str], name: str, default: Rate) -> Rate:
    raw = env.get(_v(name), "")
    return Rate.parse(_v(name), raw) if raw else default


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    try:
        return tuple(ipaddress.ip_network(part.strip()) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise SettingsError(f"{_v('TRUSTED_PROXIES')}: {exc}") from None


def _bootstrap(env: Mapping[str, str]) -> BootstrapAccount | None:
    names = ("BOOTSTRAP_CLINIC", "BOOTSTRAP_ADMIN_EMAIL", "BOOTSTRAP_ADMIN_PASSWORD")
    values = [env.get(_v(name), "") for name in names]
    if not any(values):
        return None
    if not all(values):
        raise SettingsError(f"set all of {', '.join(_v(n) for n in names)}, or none")
    return BootstrapAccount(clinic_id=values[0], email=values[1], password=values[2])
