"""Settings: every knob of a medmesh process, read once from the environment at start-up.

Nothing else in the code base reads `os.environ`; constructors receive what they need from a
`Settings` object, so tests build one explicitly and production reads it in `main()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

SERVICES: tuple[str, ...] = ("auth", "ingest", "infer", "report")

T = TypeVar("T")


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


def _database_roles(environ: Mapping[str, str]) -> dict[str, str]:
    """Service → the PostgreSQL role it connects as (see Settings.database_roles)."""
    roles = {}
    for service in SERVICES:
        url = environ.get(f"MEDMESH_{service.upper()}_POSTGRES_URL", "")
        try:
            user = conninfo_to_dict(url).get("user") if url else None
        except psycopg.ProgrammingError:  # a malformed URL fails where it is used, not here
            user = None
        roles[service] = str(user or f"medmesh_{service}")
    return roles


def _bool(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "").strip().lower()
    if raw in {"", "0", "false", "no"}:
        return False
    if raw in {"1", "true", "yes"}:
        return True
    raise SettingsError(f"{name}={raw!r} must be true or false")


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    """The configuration of one process. Field docs name the variable that sets each one."""

    service: str
    """Which service this process runs: `auth`, `ingest`, `infer`, `report` (`medmesh`: tools)."""
    grpc_addr: str = "127.0.0.1:0"
    """MEDMESH_GRPC_ADDR: host:port the gRPC server binds; port 0 picks a free one."""
    grpc_tls_cert_file: str = ""
    """MEDMESH_GRPC_TLS_CERT_FILE: PEM certificate (chain) the gRPC server presents; with
    MEDMESH_GRPC_TLS_KEY_FILE it serves TLS only. Empty: plaintext (loopback, a mesh)."""
    grpc_tls_key_file: str = ""
    """MEDMESH_GRPC_TLS_KEY_FILE: the PEM private key of MEDMESH_GRPC_TLS_CERT_FILE."""
    metrics_addr: str = "127.0.0.1:0"
    """MEDMESH_METRICS_ADDR: host:port of the Prometheus `/metrics` endpoint; empty disables it."""
    ready_file: Path | None = None
    """MEDMESH_READY_FILE: where the process writes its bound addresses (JSON) once SERVING."""
    postgres_url: str = ""
    """MEDMESH_<SERVICE>_POSTGRES_URL (e.g. MEDMESH_INFER_POSTGRES_URL), else
    MEDMESH_POSTGRES_URL: the primary PostgreSQL, as this service's own role (`medmesh_<svc>`:
    its schema's rows only, medmesh/dbroles.py)."""
    postgres_read_url: str = ""
    """MEDMESH_<SERVICE>_POSTGRES_READ_URL, else MEDMESH_POSTGRES_READ_URL: a read replica;
    reads go to the primary when unset."""
    postgres_migration_url: str = ""
    """MEDMESH_POSTGRES_MIGRATION_URL: the primary as the migration role, which owns the
    schemas; start-up migrations and grants run with it. Unset: start-up migrates with
    postgres_url when that role may (one role for everything: tests, a quick trial), and a
    service role on an up-to-date schema just checks its history."""
    database_roles: Mapping[str, str] = field(default_factory=dict)
    """The role of each service, for grants: the user of MEDMESH_<SVC>_POSTGRES_URL when set,
    else `medmesh_<svc>`."""
    redis_url: str = ""
    """MEDMESH_REDIS_URL: `redis://[:PASSWORD@]host:port/db`, or `rediss://` for TLS."""
    redis_ca_file: str = ""
    """MEDMESH_REDIS_CA_FILE: PEM bundle the Redis server's certificate must chain to (its
    name must match the URL's host); needs a `rediss://` URL. Empty: the system's CAs."""
    nats_url: str = ""
    """MEDMESH_NATS_URL: a NATS server with JetStream enabled, `nats://[USER:PASSWORD@]host:port`,
    or `tls://` to insist on TLS."""
    nats_ca_file: str = ""
    """MEDMESH_NATS_CA_FILE: PEM bundle the NATS server's certificate must chain to (its name
    must match the URL's host); needs a `tls://` URL. Empty: the system's CAs."""
    nats_creds_file: str = ""
    """MEDMESH_NATS_CREDS_FILE: a NATS `.creds` file (user JWT + NKey seed) for decentralised
    auth, instead of a user and password in the URL."""
    s3_url: str = ""
    """MEDMESH_S3_URL: `http(s)://ACCESS_KEY:SECRET_KEY@host:port` of an S3-compatible API."""
    s3_bucket_prefix: str = ""
    """MEDMESH_S3_BUCKET_PREFIX: prepended to every bucket name (one account, many stacks)."""
    subject_root: str = "medmesh"
    """MEDMESH_SUBJECT_ROOT: first token of every JetStream subject (isolates stacks/tests)."""
    stream_prefix: str = "MEDMESH"
    """MEDMESH_STREAM_PREFIX: prefix of every JetStream stream name."""
    job_max_attempts: int = 4
    """MEDMESH_JOB_MAX_ATTEMPTS: attempts a failing job gets, in total, before it goes to the
    dead-letter stream (4 = tried once, retried three times). The same for every consumer."""
    job_ack_wait_s: float = 30.0
    """MEDMESH_JOB_ACK_WAIT_S: how long a job may go without an ack or an in-progress
    heartbeat (sent every third of it while a batch is worked on) before it is redelivered."""
    auth_addr: str = ""
    """MEDMESH_AUTH_ADDR: svc_auth's gRPC address; services fetch its JWKS to verify tokens.
    `https://host:port` (or `grpcs://`) for TLS; a plaintext `host:port` is refused unless it
    is loopback or MEDMESH_JWKS_ALLOW_PLAINTEXT is true."""
    jwks_ca_file: str = ""
    """MEDMESH_JWKS_CA_FILE: PEM bundle svc_auth's certificate must chain to when the JWKS is
    fetched over TLS (the host name is checked too). Empty: the system's CAs."""
    jwks_allow_plaintext: bool = False
    """MEDMESH_JWKS_ALLOW_PLAINTEXT: `true` allows fetching the JWKS without TLS from a
    non-loopback MEDMESH_AUTH_ADDR (a network you trust, e.g. a mesh that encrypts for you)."""
    jwt_issuer: str = "medmesh"
    """MEDMESH_JWT_ISSUER: the `iss` claim access tokens must carry."""
    jwt_audience: str = "medmesh"
    """MEDMESH_JWT_AUDIENCE: the `aud` claim access tokens must carry."""
    smtp_url: str = ""
    """MEDMESH_SMTP_URL: `smtp://host:port` (`smtp+starttls://`, `smtps://`; user:pass@ allowed)."""
    smtp_ca_file: str = ""
    """MEDMESH_SMTP_CA_FILE: PEM bundle the SMTP server's certificate must chain to (STARTTLS
    and SMTPS; the host name is checked too). Empty: the system's CAs."""
    smtp_allow_plain_login: bool = False
    """MEDMESH_SMTP_ALLOW_PLAIN_LOGIN: `true` lets a `smtp://user:pass@` URL log in without
    TLS (the password crosses the network in clear). Default: such a URL is refused."""
    otlp_endpoint: str = ""
    """MEDMESH_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT): OTLP/gRPC collector, e.g. Jaeger."""
    log_level: str = "info"
    """MEDMESH_LOG_LEVEL: debug, info, warning or error."""
    grace_period_s: float = 10.0
    """MEDMESH_GRACE_PERIOD_S: how long SIGTERM waits for in-flight RPCs before cancelling."""
    operator_clinic_id: str = ""
    """MEDMESH_OPERATOR_CLINIC_ID: the clinic that runs the platform; only its admins (and
    service clients) change what serves every clinic (the model registry). Empty: nobody may."""
    extra: Mapping[str, str] = field(default_factory=dict)
    """Service-specific MEDMESH_<SERVICE>_* variables, for the service's own settings class."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, service: str) -> Settings:
        """Read the process settings from `environ` (normally `os.environ`), once."""
        ready = environ.get("MEDMESH_READY_FILE", "")
        prefix = f"MEDMESH_{service.upper()}_"
        return cls(
            service=service,
            grpc_addr=environ.get("MEDMESH_GRPC_ADDR", cls.grpc_addr),
            grpc_tls_cert_file=environ.get("MEDMESH_GRPC_TLS_CERT_FILE", ""),
            grpc_tls_key_file=environ.get("MEDMESH_GRPC_TLS_KEY_FILE", ""),
            metrics_addr=environ.get("MEDMESH_METRICS_ADDR", cls.metrics_addr),
            ready_file=Path(ready) if ready else None,
            postgres_url=environ.get(f"{prefix}POSTGRES_URL")
            or environ.get("MEDMESH_POSTGRES_URL", ""),
            postgres_read_url=environ.get(f"{prefix}POSTGRES_READ_URL")
            or environ.get("MEDMESH_POSTGRES_READ_URL", ""),
            postgres_migration_url=environ.get("MEDMESH_POSTGRES_MIGRATION_URL", ""),
            database_roles=_database_roles(environ),
            redis_url=environ.get("MEDMESH_REDIS_URL", ""),
            redis_ca_file=environ.get("MEDMESH_REDIS_CA_FILE", ""),
            nats_url=environ.get("MEDMESH_NATS_URL", ""),
            nats_ca_file=environ.get("MEDMESH_NATS_CA_FILE", ""),
            nats_creds_file=environ.get("MEDMESH_NATS_CREDS_FILE", ""),
            s3_url=environ.get("MEDMESH_S3_URL", ""),
            s3_bucket_prefix=environ.get("MEDMESH_S3_BUCKET_PREFIX", ""),
            subject_root=environ.get("MEDMESH_SUBJECT_ROOT", cls.subject_root),
            stream_prefix=environ.get("MEDMESH_STREAM_PREFIX", cls.stream_prefix),
            job_max_attempts=_int(environ, "MEDMESH_JOB_MAX_ATTEMPTS", cls.job_max_attempts, 1),
            job_ack_wait_s=_float(environ, "MEDMESH_JOB_ACK_WAIT_S", cls.job_ack_wait_s),
            auth_addr=environ.get("MEDMESH_AUTH_ADDR", ""),
            jwks_ca_file=environ.get("MEDMESH_JWKS_CA_FILE", ""),
            jwks_allow_plaintext=_bool(environ, "MEDMESH_JWKS_ALLOW_PLAINTEXT"),
            jwt_issuer=environ.get("MEDMESH_JWT_ISSUER", cls.jwt_issuer),
            jwt_audience=environ.get("MEDMESH_JWT_AUDIENCE", cls.jwt_audience),
            smtp_url=environ.get("MEDMESH_SMTP_URL", ""),
            smtp_ca_file=environ.get("MEDMESH_SMTP_CA_FILE", ""),
            smtp_allow_plain_login=_bool(environ, "MEDMESH_SMTP_ALLOW_PLAIN_LOGIN"),
            otlp_endpoint=environ.get(
                "MEDMESH_OTLP_ENDPOINT", environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
            ),
            log_level=environ.get("MEDMESH_LOG_LEVEL", cls.log_level).lower(),
            grace_period_s=_float(environ, "MEDMESH_GRACE_PERIOD_S", cls.grace_period_s),
            operator_clinic_id=environ.get("MEDMESH_OPERATOR_CLINIC_ID", ""),
            extra={k: v for k, v in environ.items() if k.startswith(prefix)},
        )

    def __post_init__(self) -> None:
        # A CA file with a plaintext scheme would silently send credentials in clear (nats-py
        # only upgrades when the server asks): refuse the combination at start-up.
        for ca_file, url, variable, scheme in (
            (self.redis_ca_file, self.redis_url, "MEDMESH_REDIS_URL", "rediss://"),
            (self.nats_ca_file, self.nats_url, "MEDMESH_NATS_URL", "tls://"),
        ):
            if ca_file and url and not url.startswith(scheme):
                raise SettingsError(
                    f"{variable} must start with {scheme} when a CA file is set for it"
                )
        if bool(self.grpc_tls_cert_file) != bool(self.grpc_tls_key_file):
            raise SettingsError(
                "MEDMESH_GRPC_TLS_CERT_FILE and MEDMESH_GRPC_TLS_KEY_FILE go together"
            )

    def require(self, *names: str) -> None:
        """Fail at start-up, naming the variable, when a URL this service needs is unset."""
        known = {f.name for f in fields(self)}
        missing = [n for n in names if n in known and not getattr(self, n)]
        if missing:
            variables = ", ".join(f"MEDMESH_{n.upper()}" for n in missing)
            raise SettingsError(
                f"{self.service} needs {variables}; set it, or start the stack with `medmesh up`"
            )


def _parse_field(annotation: str, raw: str) -> object:
    """One variable's text as the type its dataclass field declares (string annotations)."""
    if annotation == "str":
        return raw
    if annotation == "bool":
        if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
            raise ValueError(raw)
        return raw.lower() in {"1", "true", "yes"}
    if annotation in {"int", "float"}:
        return int(raw) if annotation == "int" else float(raw)
    if annotation.startswith("tuple["):
        item = annotation.removeprefix("tuple[").split(",")[0].strip()
        return tuple(_parse_field(item, part.strip()) for part in raw.split(",") if part.strip())
    raise TypeError(f"no parser for a setting of type {annotation}")


def config_from_env(cls: type[T], environ: Mapping[str, str], prefix: str) -> T:
    """A service's frozen config dataclass from `<prefix><FIELD>` variables.

    Each field is read from `prefix + field.upper()` (e.g. MEDMESH_INFER_BATCH_SIZE) and parsed
    by its annotation (`str`, `int`, `float`, `bool`, `tuple[float, ...]`, `tuple[str, ...]`:
    comma-separated); unset or empty variables keep the field's default. A value that does not
    parse raises SettingsError naming the variable, so a typo fails the start, not a request.
    """
    values: dict[str, object] = {}
    for item in fields(cls):  # type: ignore[arg-type]
        name = f"{prefix}{item.name.upper()}"
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        try:
            values[item.name] = _parse_field(str(item.type), raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a valid {item.type}") from None
    return cls(**values)
