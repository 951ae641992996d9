"""Writes the Grafana dashboards in deploy/grafana/dashboards/ (the committed JSON is its output).

    python deploy/grafana/dashboards.py           # rewrite the JSON files
    python deploy/grafana/dashboards.py --check   # exit 1 when a committed file is stale

Dashboards are written as data here rather than edited as JSON by hand: four dashboards share
their datasource, variables and panel shapes, and tests/unit/test_deploy.py checks that every
query names a metric the code exports. Metric names: medmesh/interceptors.py (grpc_server_*),
svc_infer/metrics.py (medmesh_infer_*), medmesh/edge/app.py (edge_*), medmesh/pool_metrics.py
(medmesh_db_pool_*), medmesh/telemetry.py (medmesh_db_query_seconds, medmesh_redis_command_seconds),
medmesh/jetstream_metrics.py (medmesh_jetstream_*), deploy/prometheus/rules.yml (recorded
series), prometheus_client's process collector (process_*), and the infrastructure's own:
Envoy's /stats/prometheus (envoy_*), dcgm-exporter (DCGM_*, GPU hosts only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
SERVICE = 'job="medmesh", service=~"$service"'
STREAMING = 'grpc_method!~"WatchStudy|UploadFile|DownloadReport"'

Panel = dict[str, Any]


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def timeseries(title: str, unit: str, *queries: tuple[str, str], desc: str = "") -> Panel:
    """A time-series panel; `queries` are (PromQL, legend) pairs."""
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]}
        },
        "targets": [_target(q, legend, chr(65 + i)) for i, (q, legend) in enumerate(queries)],
    }


def stat(
    title: str, unit: str, expr: str, legend: str, *, thresholds: list[Any], desc: str = ""
) -> Panel:
    """A single-value panel coloured by `thresholds` ([[value|None, colour], ...])."""
    steps = [{"value": value, "color": colour} for value, colour in thresholds]
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {
            "colorMode": "background",
            "graphMode": "none",
            "reduceOptions": {"calcs": ["lastNotNull"]},
        },
        "targets": [_target(expr, legend, "A")],
    }


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard(
    uid: str, title: str, panels: list[Panel], variables: list[dict[str, Any]]
) -> dict[str, Any]:
    """Lay `panels` out two per row (half width each) and wrap them in a dashboard."""
    laid_out = [
        {**panel, "id": i + 1, "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8}}
        for i, panel in enumerate(panels)
    ]
    return {
        "uid": uid,
        "title": title,
        "tags": ["medmesh"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [
            {"title": "medmesh", "type": "dashboards", "tags": ["medmesh"], "asDropdown": True}
        ],
        "panels": laid_out,
    }


def rate(metric: str, selector: str = "", window: str = "$__rate_interval") -> str:
    """`rate(metric{selector}[window])`; Grafana picks `$__rate_interval` from the scrape step."""
    matchers = f"{{{selector}}}" if selector else ""
    return f"rate({metric}{matchers}[{window}])"


def sum_by(labels: str, expr: str) -> str:
    """`sum by (labels) (expr)`."""
    return f"sum by ({labels}) ({expr})"


def quantile(q: float, labels: str, histogram: str, selector: str = "") -> str:
    """The q-quantile of a histogram's rate, kept apart by `labels`."""
    by = f"{labels}, le" if labels else "le"
    return f"histogram_quantile({q}, {sum_by(by, rate(histogram + '_bucket', selector))})"


def mean(labels: str, histogram: str, selector: str = "") -> str:
    """Mean of a histogram's observations over the window: rate(sum) / rate(count)."""
    total = sum_by(labels, rate(histogram + "_sum", selector))
    return f"{total} / {sum_by(labels, rate(histogram + '_count', selector))}"


def system_overview() -> dict[str, Any]:
    """Is every process up, how busy, how many faults, how much CPU and memory."""
    unary = f"{SERVICE}, {STREAMING}"
    panels = [
        stat(
            "Services up",
            "none",
            'sum(up{job="medmesh"})',
            "up",
            thresholds=[[None, "red"], [4, "green"]],
            desc="Scrape targets of the four services that answer.",
        ),
        stat(
            "Server-fault ratio (all services)",
            "percentunit",
            "sum(service:grpc_server_faults:rate5m) / sum(service:grpc_server_handled:rate5m)",
            "faults",
            thresholds=[[None, "green"], [0.01, "orange"], [0.05, "red"]],
        ),
        timeseries(
            "RPCs per second by service",
            "reqps",
            (sum_by("service", rate("grpc_server_handled_total", SERVICE)), "{{service}}"),
        ),
        timeseries(
            "Server-fault ratio by service",
            "percentunit",
            ('service:grpc_server_faults:ratio_rate5m{service=~"$service"}', "{{service}}"),
            desc="UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS, DEADLINE_EXCEEDED, UNIMPLEMENTED "
            "over all RPCs.",
        ),
        timeseries(
            "p99 latency by service (unary)",
            "s",
            (quantile(0.99, "service", "grpc_server_handling_seconds", unary), "{{service}}"),
        ),
        timeseries(
            "In-flight RPCs by service",
            "short",
            (
                f"{sum_by('service', f'grpc_server_started_total{{{SERVICE}}}')}"
                f" - {sum_by('service', f'grpc_server_handled_total{{{SERVICE}}}')}",
                "{{service}}",
            ),
            desc="Started minus handled: long-lived streams (WatchStudy) count here.",
        ),
        timeseries(
            "CPU (cores) by service",
            "short",
            (sum_by("service", rate("process_cpu_seconds_total", SERVICE)), "{{service}}"),
        ),
        timeseries(
            "Resident memory by service",
            "bytes",
            (sum_by("service", f"process_resident_memory_bytes{{{SERVICE}}}"), "{{service}}"),
        ),
        timeseries(
            "Open file descriptors by instance",
            "short",
            (f"process_open_fds{{{SERVICE}}}", "{{instance}}"),
        ),
        timeseries(
            "Dead letters (15 min)",
            "short",
            (sum_by("consumer", "increase(medmesh_infer_dead_letters_total[15m])"), "{{consumer}}"),
        ),
        timeseries(
            "Edge requests by status",
            "reqps",
            (sum_by("status", rate("edge_requests_total")), "{{status}}"),
            desc="The embedded edge (compose --profile edge); empty when Envoy is the gateway.",
        ),
        timeseries(
            "Edge ext_authz outcomes",
            "reqps",
            (sum_by("outcome", rate("edge_authz_checks_total")), "{{outcome}}"),
        ),
    ]
    variables = [_variable("service", "service", 'label_values(up{job="medmesh"}, service)')]
    return dashboard("medmesh-overview", "medmesh / System overview", panels, variables)


def api_performance() -> dict[str, Any]:
    """Per RPC: rate, status codes, latency percentiles."""
    method = f'{SERVICE}, grpc_service=~"$grpc_service"'
    unary = f"{method}, {STREAMING}"
    recorded = f'service=~"$service", grpc_service=~"$grpc_service", {STREAMING}'
    latency = "grpc_server_handling_seconds"
    panels = [
        timeseries(
            "RPCs per second by method",
            "reqps",
            (
                sum_by("grpc_service, grpc_method", rate("grpc_server_handled_total", method)),
                "{{grpc_service}}/{{grpc_method}}",
            ),
        ),
        timeseries(
            "Status codes",
            "reqps",
            (sum_by("grpc_code", rate("grpc_server_handled_total", method)), "{{grpc_code}}"),
        ),
        timeseries(
            "Non-OK RPCs by method and code",
            "reqps",
            (
                sum_by(
                    "grpc_method, grpc_code",
                    rate("grpc_server_handled_total", f'{method}, grpc_code!="OK"'),
                ),
                "{{grpc_method}} {{grpc_code}}",
            ),
        ),
        timeseries(
            "p99 by method (recorded, unary)",
            "s",
            (f"method:grpc_server_handling_seconds:p99_5m{{{recorded}}}", "{{grpc_method}}"),
        ),
        timeseries(
            "Latency percentiles (unary)",
            "s",
            (quantile(0.50, "", latency, unary), "p50"),
            (quantile(0.95, "", latency, unary), "p95"),
            (quantile(0.99, "", latency, unary), "p99"),
        ),
        timeseries(
            "Mean latency by method",
            "s",
            (mean("grpc_method", latency, method), "{{grpc_method}}"),
        ),
        timeseries(
            "Edge latency by route (p95)",
            "s",
            (quantile(0.95, "route", "edge_request_duration_seconds"), "{{route}}"),
        ),
        timeseries(
            "Edge requests by protocol",
            "reqps",
            (sum_by("protocol", rate("edge_requests_total")), "{{protocol}}"),
        ),
    ]
    variables = [
        _variable("service", "service", 'label_values(up{job="medmesh"}, service)'),
        _variable(
            "grpc_service",
            "gRPC service",
            'label_values(grpc_server_handled_total{job="medmesh", service=~"$service"}, '
            "grpc_service)",
        ),
    ]
    return dashboard("medmesh-api", "medmesh / API performance", panels, variables)


def ml_performance() -> dict[str, Any]:
    """Model latency and throughput per version and traffic arm, the job queue, failures."""
    model = 'model=~"$model"'
    version = "{{model}} v{{version}}"
    panels = [
        timeseries(
            "Predict p99 by model version",
            "s",
            (f"model:medmesh_infer_inference_seconds:p99_5m{{{model}}}", version),
        ),
        timeseries(
            "Predict p50 by model version",
            "s",
            (quantile(0.50, "model, version", "medmesh_infer_inference_seconds", model), version),
        ),
        timeseries(
            "Results per second by arm",
            "ops",
            (
                sum_by("model, version, arm", rate("medmesh_infer_results_total", model)),
                version + " {{arm}}",
            ),
            desc="Stable vs canary traffic split as it really happened.",
        ),
        timeseries(
            "Job latency (enqueue to stored result) p95 by arm",
            "s",
            (
                quantile(0.95, "model, version, arm", "medmesh_infer_job_seconds", model),
                version + " {{arm}}",
            ),
        ),
        timeseries(
            "Mean batch size",
            "short",
            (mean("model, version", "medmesh_infer_batch_size", model), version),
            desc="Jobs per Predict call: near 1 under light load, up to "
            "MEDMESH_INFER_BATCH_SIZE under load.",
        ),
        timeseries(
            "Preprocessing p95 by kind",
            "s",
            (quantile(0.95, "kind", "medmesh_infer_preprocess_seconds"), "{{kind}}"),
        ),
        timeseries(
            "Queue: jobs pending (JetStream consumer lag)",
            "short",
            ("max by (consumer) (medmesh_infer_queue_pending)", "{{consumer}}"),
        ),
        timeseries(
            "Queue wait p95",
            "s",
            ("consumer:medmesh_infer_queue_wait_seconds:p95_5m", "{{consumer}}"),
        ),
        timeseries(
            "Failed job attempts",
            "ops",
            (sum_by("consumer", rate("medmesh_infer_job_failures_total")), "{{consumer}}"),
        ),
        timeseries(
            "Dead letters (15 min)",
            "short",
            (sum_by("consumer", "increase(medmesh_infer_dead_letters_total[15m])"), "{{consumer}}"),
        ),
    ]
    variables = [
        _variable("model", "model", "label_values(medmesh_infer_inference_seconds_count, model)")
    ]
    return dashboard("medmesh-ml", "medmesh / ML performance", panels, variables)


def infrastructure_health() -> dict[str, Any]:
    """What the services stand on: PostgreSQL pools and query time, Redis command time, the
    JetStream queues (depth, rates, redeliveries), NATS reachability, Envoy, the GPUs."""
    pool = 'pool=~"$pool"'
    panels = [
        timeseries(
            "PostgreSQL pool: connections in use / max",
            "short",
            (
                sum_by("pool", f"medmesh_db_pool_connections{{{pool}}}")
                + " - "
                + sum_by("pool", f"medmesh_db_pool_idle{{{pool}}}"),
                "{{pool}} in use",
            ),
            (sum_by("pool", f"medmesh_db_pool_max{{{pool}}}"), "{{pool}} max"),
            desc="psycopg_pool's get_stats() per pool (medmesh/pool_metrics.py).",
        ),
        timeseries(
            "PostgreSQL pool: waiting for a connection",
            "s",
            (sum_by("pool", f"medmesh_db_pool_waiting{{{pool}}}"), "{{pool}} waiting now"),
            (
                sum_by("pool", rate("medmesh_db_pool_wait_seconds_total", pool))
                + " / "
                + sum_by("pool", rate("medmesh_db_pool_requests_total", pool)),
                "{{pool}} mean wait",
            ),
            desc="Requests queued for a connection; a rising mean wait means the pool is too"
            " small or queries hold connections too long.",
        ),
        timeseries(
            "PostgreSQL pool: timeouts and lost connections",
            "ops",
            (sum_by("pool", rate("medmesh_db_pool_timeouts_total", pool)), "{{pool}} timeouts"),
            (
                sum_by("pool", rate("medmesh_db_pool_connections_lost_total", pool)),
                "{{pool}} lost",
            ),
            (
                sum_by("pool", rate("medmesh_db_pool_connection_errors_total", pool)),
                "{{pool}} connect errors",
            ),
        ),
        timeseries(
            "PostgreSQL query time p95 by statement",
            "s",
            (quantile(0.95, "operation", "medmesh_db_query_seconds"), "{{operation}}"),
            desc="From the psycopg client spans. In pipeline mode a statement is timed until"
            " it is queued, not until its result arrives.",
        ),
        timeseries(
            "PostgreSQL statements per second",
            "ops",
            (sum_by("service", rate("medmesh_db_query_seconds_count")), "{{service}}"),
        ),
        timeseries(
            "Redis command time p95",
            "s",
            (quantile(0.95, "command", "medmesh_redis_command_seconds"), "{{command}}"),
            (sum_by("service", rate("medmesh_redis_command_seconds_count")), "{{service}} ops/s"),
            desc="From the redis-py client spans (sessions, rate limits, result cache).",
        ),
        timeseries(
            "Queue depth (JetStream pending) per consumer",
            "short",
            (
                "max by (stream, group) (medmesh_jetstream_consumer_pending)",
                "{{stream}} {{group}}",
            ),
            desc="Messages not yet delivered, clinic lanes summed into their job consumer"
            " (max over the services that poll it).",
        ),
        timeseries(
            "In progress and redelivered",
            "short",
            (
                "max by (stream, group) (medmesh_jetstream_consumer_ack_pending)",
                "{{group}} unacked",
            ),
            (
                "max by (stream, group) (medmesh_jetstream_consumer_redelivered)",
                "{{group}} redelivered",
            ),
        ),
        timeseries(
            "Message rates",
            "ops",
            (
                "max by (stream) (" + rate("medmesh_jetstream_stream_published_total") + ")",
                "{{stream}} published",
            ),
            (
                "max by (group) (" + rate("medmesh_jetstream_consumer_delivered_total") + ")",
                "{{group}} delivered",
            ),
            (
                "max by (group) (" + rate("medmesh_jetstream_consumer_acked_total") + ")",
                "{{group}} acked",
            ),
        ),
        timeseries(
            "Streams: stored messages and bytes",
            "short",
            ("max by (stream) (medmesh_jetstream_stream_messages)", "{{stream}} messages"),
            ("max by (stream) (medmesh_jetstream_stream_bytes)", "{{stream}} bytes"),
        ),
        stat(
            "NATS: consumers reporting",
            "none",
            "count(medmesh_jetstream_consumer_pending)",
            "consumers",
            thresholds=[[None, "red"], [1, "green"]],
            desc="Durable consumers whose info the services could read from JetStream in the"
            " last poll; 0 or no data while services run means NATS is unreachable.",
        ),
        timeseries(
            "Envoy: downstream requests by status class",
            "reqps",
            (
                sum_by("envoy_response_code_class", rate("envoy_http_downstream_rq_xx")),
                "{{envoy_response_code_class}}xx",
            ),
            desc="Envoy's /stats/prometheus (the `stats` listener, :9902).",
        ),
        timeseries(
            "Envoy: upstream 5xx and healthy hosts per cluster",
            "short",
            (
                sum_by(
                    "envoy_cluster_name",
                    rate("envoy_cluster_upstream_rq_xx", 'envoy_response_code_class="5"'),
                ),
                "{{envoy_cluster_name}} 5xx/s",
            ),
            (
                sum_by("envoy_cluster_name", "envoy_cluster_membership_healthy"),
                "{{envoy_cluster_name}} healthy",
            ),
        ),
        timeseries(
            "GPU utilisation (dcgm-exporter; GPU hosts only)",
            "percent",
            ("avg by (gpu, Hostname) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}} GPU {{gpu}}"),
            desc="NVIDIA's dcgm-exporter on the TF Serving nodes; TF Serving's own metrics"
            " count requests and latency, not GPU use. No data without a GPU.",
        ),
    ]
    variables = [_variable("pool", "pool", "label_values(medmesh_db_pool_max, pool)")]
    return dashboard("medmesh-infra", "medmesh / Infrastructure health", panels, variables)


DASHBOARDS = {
    "system-overview.json": system_overview,
    "api-performance.json": api_performance,
    "ml-performance.json": ml_performance,
    "infrastructure-health.json": infrastructure_health,
}


def render(build: Any) -> str:
    """The JSON text of one dashboard, stable across runs (sorted keys, trailing newline)."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards, or with --check report the stale ones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = OUT_DIR / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT_DIR.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        sys.stderr.write(f"stale: {', '.join(stale)}; run python deploy/grafana/dashboards.py\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
