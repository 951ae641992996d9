"""svc_infer's own settings: the model server, micro-batching, retries, caching, from
`MEDMESH_INFER_*` variables.

Read once at start-up from `Settings.extra`; tests build `InferConfig(...)` directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from medmesh.settings import SettingsError, config_from_env


@dataclass(frozen=True)
class InferConfig:
    """Tuning of svc_infer. Each field names its MEDMESH_INFER_* variable."""

    tf_serving_addr: str = ""
    """MEDMESH_INFER_TF_SERVING_ADDR: host:port of TF Serving's gRPC API (or the project's
    model server). Unset: the RPCs serve, but no worker consumes jobs (logged at start-up)."""
    image_model: str = "resnet50"
    """MEDMESH_INFER_IMAGE_MODEL: registry name of the model that classifies images."""
    text_model: str = "minilm"
    """MEDMESH_INFER_TEXT_MODEL: registry name of the model that analyses notes."""
    batch_size: int = 8
    """MEDMESH_INFER_BATCH_SIZE: most jobs in one micro-batch (one Predict call)."""
    batch_wait_ms: float = 20.0
    """MEDMESH_INFER_BATCH_WAIT_MS: how long a batch waits for more jobs after its first."""
    concurrency: int = 2
    """MEDMESH_INFER_CONCURRENCY: micro-batches in flight per consumer (overlaps download and
    preprocessing of one batch with the model server's work on another)."""
    retry_backoff_s: tuple[float, ...] = (30.0, 120.0)
    """MEDMESH_INFER_RETRY_BACKOFF_S: comma-separated delays before the 2nd, 3rd... attempt
    of a job that failed (a nak with delay; the last delay repeats). How many attempts a job
    gets is MEDMESH_JOB_MAX_ATTEMPTS (4 in total, the same for every consumer)."""
    predict_timeout_s: float = 30.0
    """MEDMESH_INFER_PREDICT_TIMEOUT_S: deadline of one Predict call."""
    top_k: int = 5
    """MEDMESH_INFER_TOP_K: labels kept per image result."""
    result_ttl_s: int = 3600
    """MEDMESH_INFER_RESULT_TTL_S: lifetime of a cached result in Redis."""
    batch_decode_budget_bytes: int = 2 * 1024**3
    """MEDMESH_INFER_BATCH_DECODE_BUDGET_BYTES: the most memory one micro-batch's images may
    hold while they are downloaded and decoded (estimated from each header before decoding);
    images that do not fit together decode one after another, and an image that alone needs
    more is dead-lettered at once. A worker holds at most `concurrency` times this."""
    lane_refresh_s: float = 2.0
    """MEDMESH_INFER_LANE_REFRESH_S: how often a worker re-reads the clinic lanes of its jobs
    and their counts (medmesh.lanes; new jobs also announce themselves at once)."""
    header_bytes: int = 1024**2
    """MEDMESH_INFER_HEADER_BYTES: how much of each image is read first to find its header
    (keep it at least MEDMESH_INGEST_HEADER_WINDOW_BYTES)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.concurrency < 1:
            raise SettingsError("batch size and concurrency must be at least 1")
        if not self.retry_backoff_s or any(d < 0 for d in self.retry_backoff_s):
            raise SettingsError("MEDMESH_INFER_RETRY_BACKOFF_S needs non-negative delays")
        if self.batch_decode_budget_bytes < 64 * 1024**2 or self.header_bytes < 1024:
            raise SettingsError(
                "MEDMESH_INFER_BATCH_DECODE_BUDGET_BYTES must be at least 64 MiB and"
                " MEDMESH_INFER_HEADER_BYTES at least 1 KiB"
            )
        if self.lane_refresh_s <= 0:
            raise SettingsError("MEDMESH_INFER_LANE_REFRESH_S must be positive")
        if not 0 < self.result_ttl_s <= 3600:
            raise SettingsError("MEDMESH_INFER_RESULT_TTL_S must be within 1..3600")

    @classmethod
    def from_extra(cls, extra: Mapping[str, str]) -> InferConfig:
        """Parse `Settings.extra` (the MEDMESH_INFER_* variables); unset ones keep defaults."""
        return config_from_env(cls, extra, "MEDMESH_INFER_")
