"""svc_report's own settings (MIS delivery, job retries, rendering, mail), from
`MEDMESH_REPORT_*` variables, read once at start-up from `Settings.extra`; tests build
`ReportConfig(...)` directly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
    """MEDMESH_REPORT_MIS_TIMEOUT_S: connect + read deadline of one POST to the MIS."""
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

    def __post_init__(self) -> None:
        if self.mis_attempts < 1 or self.table_rows < 1 or self.thumbnail_px < 16:
            raise SettingsError("MIS attempts, table rows and thumbnail size must be positive")
        if not self.retry_backoff_s or any(d < 0 for d in self.retry_backoff_s):
            raise SettingsError("MEDMESH_REPORT_RETRY_BACKOFF_S needs non-negative delays")
        if not 10 <= self.download_url_ttl_s <= 3600:
            raise SettingsError("MEDMESH_REPORT_DOWNLOAD_URL_TTL_S must be within 10..3600")

    @classmethod
    def from_extra(cls, extra: Mapping[str, str]) -> ReportConfig:
        """Parse `Settings.extra` (the MEDMESH_REPORT_* variables); unset ones keep defaults."""
        return config_from_env(cls, extra, "MEDMESH_REPORT_")
