"""svc_report's own settings (MIS delivery, job retries, rendering, mail), from
`MEDMESH_REPORT_*` variables, read once at start-up from `Settings.extra`; tests build
`ReportConfig(...)` directly."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from medmesh.keyring import check_key_encryption_keys
from medmesh.settings import SettingsError, config_from_env


@dataclass(frozen=True)
class ReportConfig:
    """Tuning of svc_report. Each field names its MEDMESH_REPORT_* variable."""

    mis_attempts: int = 4
    """MEDMESH_REPORT_MIS_ATTEMPTS: HTTP attempts per delivery (5xx, timeouts and network
    errors are retried; 4xx never). After the last one the delivery is dead-lettered."""
    mis_backoff_initial_s: float = 1.0
    """MEDMESH_REPORT_MIS_BACKOFF_INITIAL_S: wait before the 2nd attempt; doubles, jittered."""
    mis_backoff_max_s: float = 30.0
    """MEDMESH_REPORT_MIS_BACKOFF_MAX_S: the longest wait between two attempts."""
    mis_timeout_s: float = 15.0
    """MEDMESH_REPORT_MIS_TIMEOUT_S: total deadline of one POST to the MIS (resolve, connect,
    send, the whole answer)."""
    mis_delivery_deadline_s: float = 120.0
    """MEDMESH_REPORT_MIS_DELIVERY_DEADLINE_S: total time of one delivery, every attempt and
    wait included; then it fails (and can be redelivered)."""
    mis_max_response_bytes: int = 64 * 1024
    """MEDMESH_REPORT_MIS_MAX_RESPONSE_BYTES: how much of a MIS answer is read (only the
    resource id is used; the rest is never read)."""
    mis_concurrency: int = 8
    """MEDMESH_REPORT_MIS_CONCURRENCY: deliveries in flight at once per process, each on its
    own, so a slow MIS holds one slot and not the others'."""
    mis_allow_networks: tuple[str, ...] = ()
    """MEDMESH_REPORT_MIS_ALLOW_NETWORKS: comma-separated CIDRs a MIS may be on although they
    are not public (private, loopback, link-local...): a hospital network behind a VPN. Empty:
    public addresses only (svc_report.egress)."""
    key_encryption_key: tuple[str, ...] = ()
    """MEDMESH_REPORT_KEY_ENCRYPTION_KEY: Fernet keys, comma-separated, that encrypt the MIS
    bearer tokens at rest; the first encrypts, any decrypts. Required: svc_report refuses to
    start without it (no default; `medmesh up` generates one per data directory)."""
    mis_ca_file: str = ""
    """MEDMESH_REPORT_MIS_CA_FILE: PEM bundle trusted for MIS https endpoints (a hospital's
    private CA) instead of the system store."""
    retry_backoff_s: tuple[float, ...] = (30.0, 120.0)
    """MEDMESH_REPORT_RETRY_BACKOFF_S: comma-separated delays before the 2nd, 3rd attempt of
    a report or delivery job that failed for another reason (database, S3); the consumer's
    MEDMESH_JOB_MAX_ATTEMPTS (4 in total, every consumer) bounds the attempts."""
    download_url_ttl_s: int = 300
    """MEDMESH_REPORT_DOWNLOAD_URL_TTL_S: lifetime of a GetReportDownloadUrl URL."""
    table_rows: int = 40
    """MEDMESH_REPORT_TABLE_ROWS: findings per table; longer lists are split into several
    tables so PDF layout time stays linear in the number of findings."""
    thumbnail_px: int = 160
    """MEDMESH_REPORT_THUMBNAIL_PX: the longest side of a processed-image thumbnail."""
    mail_from: str = "medmesh <reports@medmesh.local>"
    """MEDMESH_REPORT_MAIL_FROM: the From header of "report ready" mails (any language: a
    non-ASCII display name is encoded per RFC 2047)."""
    mail_subject: str = "medmesh: a diagnostic report is ready"
    """MEDMESH_REPORT_MAIL_SUBJECT: the fixed Subject of "report ready" mails, e.g. in the
    clinic's language (RFC 2047-encoded when not ASCII); never patient data."""
    public_url: str = ""
    """MEDMESH_REPORT_PUBLIC_URL: base of the web app, for the link in mails; empty: no link."""
    max_report_bytes: int = 32 * 1024 * 1024
    """MEDMESH_REPORT_MAX_REPORT_BYTES: largest report, checked on its HTML before the PDF is
    laid out and on the PDF before it is archived. A report over it fails (FAILED with the
    sizes as reason, its job dead-lettered), never retried: the same inputs give the same size."""

    def __post_init__(self) -> None:
        if self.mis_attempts < 1 or self.table_rows < 1 or self.thumbnail_px < 16:
            raise SettingsError("MIS attempts, table rows and thumbnail size must be positive")
        if not self.retry_backoff_s or any(d < 0 for d in self.retry_backoff_s):
            raise SettingsError("MEDMESH_REPORT_RETRY_BACKOFF_S needs non-negative delays")
        if not 10 <= self.download_url_ttl_s <= 3600:
            raise SettingsError("MEDMESH_REPORT_DOWNLOAD_URL_TTL_S must be within 10..3600")
        if min(self.mis_timeout_s, self.mis_delivery_deadline_s) <= 0:
            raise SettingsError("MIS timeouts must be positive")
        if self.max_report_bytes < 64 * 1024:
            raise SettingsError("MEDMESH_REPORT_MAX_REPORT_BYTES must be at least 64 KiB")
        if self.mis_max_response_bytes < 1024 or self.mis_concurrency < 1:
            raise SettingsError("MIS response cap (>= 1024 bytes) and concurrency (>= 1)")
        try:
            for cidr in self.mis_allow_networks:
                ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise SettingsError(f"MEDMESH_REPORT_MIS_ALLOW_NETWORKS: {exc}") from None
        check_key_encryption_keys("MEDMESH_REPORT_KEY_ENCRYPTION_KEY", self.key_encryption_key)

    @classmethod
    def from_extra(cls, extra: Mapping[str, str]) -> ReportConfig:
        """Parse `Settings.extra` (the MEDMESH_REPORT_* variables); unset ones keep defaults."""
        return config_from_env(cls, extra, "MEDMESH_REPORT_")
