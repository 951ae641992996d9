"""The edge's configuration, read once from the environment (like `medmesh.settings`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medmesh.edge.webapp import DEFAULT_DIST_DIR, origin_of
from medmesh.settings import SERVICES, SettingsError


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "")
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class EdgeSettings:
    """Field docs name the variable that sets each one."""

    upstreams: Mapping[str, str] = field(default_factory=dict)
    """MEDMESH_AUTH_ADDR, MEDMESH_INGEST_ADDR, MEDMESH_INFER_ADDR, MEDMESH_REPORT_ADDR: each
    service's gRPC host:port (`https://host:port` for TLS). A service left unset answers 503
    at the edge."""
    addr: str = "127.0.0.1:0"
    """MEDMESH_EDGE_ADDR: host:port the edge listens on (HTTP/1.1); port 0 picks a free one."""
    authz_addr: str = ""
    """MEDMESH_EDGE_AUTHZ_ADDR: the ext_authz Check service; default svc_auth's address."""
    upstream_ca_file: str = ""
    """MEDMESH_EDGE_UPSTREAM_CA_FILE: PEM CA for upstreams given as `https://host:port` (TLS,
    certificate and host name verified); `host:port` upstreams stay plaintext."""
    cors_origins: tuple[str, ...] = ()
    """MEDMESH_EDGE_CORS_ORIGINS: comma-separated origins allowed from browsers, or `*`."""
    upstream_timeout_s: float = 30.0
    """MEDMESH_EDGE_UPSTREAM_TIMEOUT_S: deadline of unary calls without their own grpc-timeout."""
    authz_timeout_s: float = 2.0
    """MEDMESH_EDGE_AUTHZ_TIMEOUT_S: deadline of one Check call (then 503, failing closed)."""
    max_body_bytes: int = 4 * 1024 * 1024
    """MEDMESH_EDGE_MAX_BODY_BYTES: larger request bodies are refused (413)."""
    metrics_addr: str = "127.0.0.1:0"
    """MEDMESH_METRICS_ADDR: the Prometheus `/metrics` endpoint; empty disables it."""
    ready_file: Path | None = None
    """MEDMESH_READY_FILE: where the edge writes `{"http": "http://host:port", ...}` once up."""
    log_level: str = "info"
    """MEDMESH_LOG_LEVEL."""
    otlp_endpoint: str = ""
    """MEDMESH_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_ENDPOINT)."""
    grace_period_s: float = 10.0
    """MEDMESH_GRACE_PERIOD_S: how long SIGTERM waits for open requests (streams included)."""
    web_dir: Path | None = DEFAULT_DIST_DIR
    """MEDMESH_EDGE_WEB_DIR: the built web app (default web/dist); `off` serves no app."""
    object_origins: tuple[str, ...] = ()
    """MEDMESH_EDGE_OBJECT_ORIGINS: comma-separated origins of the object store that the
    browser reaches with presigned URLs (the app's CSP allows them); default: the origin of
    MEDMESH_S3_URL (credentials dropped)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> EdgeSettings:
        """Read the edge's settings from `environ` (normally `os.environ`), once."""
        upstreams = {
            name: environ[f"MEDMESH_{name.upper()}_ADDR"]
            for name in SERVICES
            if environ.get(f"MEDMESH_{name.upper()}_ADDR")
        }
        authz = environ.get("MEDMESH_EDGE_AUTHZ_ADDR") or upstreams.get("auth", "")
        if not authz:
            raise SettingsError(
                "the edge needs MEDMESH_AUTH_ADDR (or MEDMESH_EDGE_AUTHZ_ADDR) for ext_authz; "
                "set it, or start the stack with `medmesh up`"
            )
        ready = environ.get("MEDMESH_READY_FILE", "")
        origins = environ.get("MEDMESH_EDGE_CORS_ORIGINS", "")
        web_dir = environ.get("MEDMESH_EDGE_WEB_DIR", "")
        objects = environ.get("MEDMESH_EDGE_OBJECT_ORIGINS", "") or origin_of(
            environ.get("MEDMESH_S3_URL", "")
        )
        return cls(
            upstreams=upstreams,
            addr=environ.get("MEDMESH_EDGE_ADDR", cls.addr),
            authz_addr=authz,
            upstream_ca_file=environ.get("MEDMESH_EDGE_UPSTREAM_CA_FILE", ""),
            cors_origins=tuple(o.strip() for o in origins.split(",") if o.strip()),
            upstream_timeout_s=_number(
                environ, "MEDMESH_EDGE_UPSTREAM_TIMEOUT_S", cls.upstream_timeout_s
            ),
            authz_timeout_s=_number(environ, "MEDMESH_EDGE_AUTHZ_TIMEOUT_S", cls.authz_timeout_s),
            max_body_bytes=int(_number(environ, "MEDMESH_EDGE_MAX_BODY_BYTES", cls.max_body_bytes)),
            metrics_addr=environ.get("MEDMESH_METRICS_ADDR", cls.metrics_addr),
            ready_file=Path(ready) if ready else None,
            log_level=environ.get("MEDMESH_LOG_LEVEL", cls.log_level).lower(),
            otlp_endpoint=environ.get(
                "MEDMESH_OTLP_ENDPOINT", environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
            ),
            grace_period_s=_number(environ, "MEDMESH_GRACE_PERIOD_S", cls.grace_period_s),
            web_dir=None if web_dir == "off" else Path(web_dir) if web_dir else cls.web_dir,
            object_origins=tuple(o.strip() for o in objects.split(",") if o.strip()),
        )
