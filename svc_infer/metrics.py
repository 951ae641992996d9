"""svc_infer's Prometheus metrics, labelled with the model name and version so that the arms
of a traffic split can be compared side by side (latency, scores, failures per version)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

INFERENCE_SECONDS = Histogram(
    "medmesh_infer_inference_seconds",
    "Duration of one batched Predict call to the model server.",
    ["model", "version"],
    buckets=_SECONDS,
)
JOB_SECONDS = Histogram(
    "medmesh_infer_job_seconds",
    "Time from a job's enqueue to its stored result.",
    ["model", "version", "arm"],
    buckets=_SECONDS,
)
PREPROCESS_SECONDS = Histogram(
    "medmesh_infer_preprocess_seconds",
    "Time to decode and preprocess one file.",
    ["kind"],
    buckets=_SECONDS,
)
BATCH_SIZE = Histogram(
    "medmesh_infer_batch_size",
    "Jobs per Predict call (micro-batch size).",
    ["model", "version"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
)
QUEUE_WAIT_SECONDS = Histogram(
    "medmesh_infer_queue_wait_seconds",
    "Queue lag: time from a job's enqueue to the start of its processing.",
    ["consumer"],
    buckets=_SECONDS,
)
QUEUE_PENDING = Gauge(
    "medmesh_infer_queue_pending",
    "Jobs waiting in the stream for this consumer, as of the last fetched message.",
    ["consumer"],
)
RESULTS = Counter(
    "medmesh_infer_results_total",
    "Results stored, by model version and traffic arm.",
    ["model", "version", "arm"],
)
JOB_FAILURES = Counter(
    "medmesh_infer_job_failures_total",
    "Failed job attempts (retried or dead-lettered).",
    ["consumer"],
)
DEAD_LETTERS = Counter(
    "medmesh_infer_dead_letters_total",
    "Jobs moved to the dead-letter stream after their last attempt.",
    ["consumer"],
)
