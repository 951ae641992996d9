"""The operations files, checked offline against the code: Prometheus scrape config and rules
(PromQL parsed, every metric one the code exports; promtool's own checks and rule unit tests
where Debian's `prometheus` package is installed), Alertmanager wired to Prometheus (amtool's
check where Debian's `prometheus-alertmanager` is installed) and a runbook per alert, Grafana
provisioning and dashboards, Filebeat's mapping of the JSON log lines the services really
write, TF Serving's config, Envoy's stats scrape."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import re
import shutil
import subprocess
import sys
from typing import Any

import grpc
import promql_parser
import pytest
import structlog
import yaml
from opentelemetry.sdk.trace import TracerProvider
from support.deploy_files import REPO, compose_services, load

from medmesh.contract import DescriptorImage
from medmesh.settings import SERVICES

PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
ALERTMANAGER = REPO / "deploy" / "alertmanager"
RUNBOOKS = REPO / "docs" / "runbooks"
DASHBOARD_FILES = [
    "system-overview.json",
    "api-performance.json",
    "ml-performance.json",
    "infrastructure-health.json",
]
# Series the infrastructure exports itself, not our code (the dashboards and rules may read
# them): Envoy's /stats/prometheus (names as Envoy's stats docs give them, `envoy_` + the stat
# with dots as underscores) and NVIDIA dcgm-exporter's GPU utilisation.
INFRASTRUCTURE_METRICS = {
    "envoy_http_downstream_rq_xx",
    "envoy_cluster_upstream_rq_xx",
    "envoy_cluster_membership_healthy",
    "DCGM_FI_DEV_GPU_UTIL",
}


_METRIC = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary)(?:MetricFamily)?\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\""
)


def exported_metrics() -> set[str]:
    """Every series name the code exports: prometheus_client constructors (metrics and custom
    collectors' metric families) found in medmesh/ and svc_*/ (with the suffixes each type
    adds), the process collector, and `up`."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    names = {"up"}
    for path in [*REPO.glob("medmesh/**/*.py"), *REPO.glob("svc_*/**/*.py")]:
        for kind, name in _METRIC.findall(path.read_text()):
            if kind == "Counter":
                base = name.removesuffix("_total")
                names |= {f"{base}_total", f"{base}_created"}
            elif kind == "Gauge":
                names.add(name)
            else:
                names |= {name, *(f"{name}_{s}" for s in ("bucket", "sum", "count", "created"))}
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    names |= {sample.name for family in registry.collect() for sample in family.samples}
    # The custom collectors (read at scrape time) name their families in tables: ask them.
    from medmesh.jetstream_metrics import JetStreamCollector
    from medmesh.pool_metrics import PoolCollector

    for collector in (PoolCollector(), JetStreamCollector()):
        for family in collector.collect():
            suffixes = {"counter": ("_total", "_created")}.get(family.type, ("",))
            names |= {family.name + suffix for suffix in suffixes}
    return names


def rules() -> list[dict[str, Any]]:
    """Every rule in deploy/prometheus/rules.yml."""
    return [rule for group in load(PROMETHEUS / "rules.yml")["groups"] for rule in group["rules"]]


def recorded_series() -> set[str]:
    """The series the recording rules add."""
    return {rule["record"] for rule in rules() if "record" in rule}


def promql_selectors(expr: str) -> list[promql_parser.VectorSelector]:
    """Every vector selector of a PromQL expression (promql-parser raises on bad syntax)."""
    found: list[promql_parser.VectorSelector] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    return {s.name for s in promql_selectors(expr) if s.name}


def grafana_to_promql(expr: str) -> str:
    """A Grafana query as Prometheus receives it: `$__rate_interval` → 5m, `$var` → `.*`."""
    return re.sub(r"\$\{?\w+\}?", ".*", re.sub(r"\$__\w+", "5m", expr))


def dashboards() -> dict[str, dict[str, Any]]:
    """The provisioned dashboards, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(GRAFANA.glob("dashboards/*.json"))}


def test_metric_grep_finds_the_metrics_every_service_exports() -> None:
    names = exported_metrics()
    assert {
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "medmesh_infer_dead_letters_total",
        "process_cpu_seconds_total",
        "medmesh_db_pool_waiting",
        "medmesh_db_pool_requests_total",
        "medmesh_db_query_seconds_bucket",
        "medmesh_jetstream_consumer_pending",
        "medmesh_jetstream_consumer_delivered_total",
    } <= names
    assert "grpc_server_handled_total_total" not in names


def test_promql_checks_reject_a_typo_and_bad_syntax() -> None:
    assert promql_metric_names("rate(grpc_server_handeld_total[5m])") - exported_metrics()
    with pytest.raises(ValueError, match=r"."):
        promql_parser.parse("sum by (service rate(up[5m])")


# --- Prometheus -------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("alert") or r["record"])
def test_every_rule_parses_and_names_only_metrics_the_code_exports(rule: dict[str, Any]) -> None:
    names = promql_metric_names(rule["expr"])
    assert names
    assert names - exported_metrics() - recorded_series() - INFRASTRUCTURE_METRICS == set()
    if "alert" in rule:
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert {"summary", "description"} <= rule["annotations"].keys()


def test_the_alerts_operators_need_exist() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert {
        "MedmeshServiceDown",
        "MedmeshHighErrorRatio",
        "MedmeshHighLatencyP99",
        "MedmeshDeadLettersGrowing",
        "MedmeshJetStreamConsumerLag",
    } <= alerts


def _label_regexes(label: str) -> list[str]:
    expressions = [r["expr"] for r in rules()]
    expressions += [
        grafana_to_promql(t["expr"])
        for d in dashboards().values()
        for p in d["panels"]
        for t in p["targets"]
    ]
    return [
        m.value
        for expr in expressions
        for s in promql_selectors(expr)
        for m in s.matchers.matchers
        if m.name == label and m.op in (promql_parser.MatchOp.Re, promql_parser.MatchOp.NotRe)
    ]


def test_grpc_code_matchers_name_real_status_codes() -> None:
    codes = {code.name for code in grpc.StatusCode}
    found = _label_regexes("grpc_code")
    assert found
    for regex in found:
        assert set(regex.split("|")) <= codes


def test_streaming_exclusions_name_exactly_the_streaming_rpcs_of_the_contract() -> None:
    image = DescriptorImage()
    streaming = {
        m.name
        for service in image.service_names("medmesh.")
        for m in image.methods(service)
        if m.client_streaming or m.server_streaming
    }
    found = _label_regexes("grpc_method")
    assert found
    for regex in found:
        assert set(regex.split("|")) == streaming


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus)")
def test_promtool_accepts_the_config_and_the_rules_and_their_unit_tests_pass() -> None:
    for command in (
        ["check", "config", "--syntax-only", "prometheus.yml"],
        ["check", "rules", "rules.yml"],
        ["test", "rules", "rules.test.yml"],
    ):
        result = subprocess.run(
            ["promtool", *command],
            cwd=PROMETHEUS,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_every_service_on_the_port_it_serves_metrics() -> None:
    config = load(PROMETHEUS / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "medmesh")
    targets = {t: c["labels"]["service"] for c in job["static_configs"] for t in c["targets"]}
    services = compose_services()
    expected = {
        f"svc-{name}:{services[f'svc-{name}']['environment']['MEDMESH_METRICS_ADDR'].split(':')[1]}"
        for name in SERVICES
    }
    assert targets.keys() == expected
    assert set(targets.values()) == set(SERVICES)
    mount = next(
        v for v in services["prometheus"]["volumes"] if v.startswith("./deploy/prometheus")
    )
    container_dir = mount.split(":")[1]
    assert config["rule_files"] == [f"{container_dir}/rules.yml"]


def test_kubernetes_scrape_config_keeps_the_four_service_pods_on_their_metrics_port() -> None:
    job = next(j for j in load(PROMETHEUS / "prometheus-k8s.yml")["scrape_configs"])
    keep = next(r for r in job["relabel_configs"] if "app_kubernetes_io_component" in str(r))
    pods = {}
    for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "Deployment":
                pods[doc["metadata"]["name"]] = doc["spec"]["template"]
    kept = set()
    for name, pod in pods.items():
        # Prometheus exposes a pod label as __meta_kubernetes_pod_label_<name, sanitised>.
        meta = {
            "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key): value
            for key, value in pod["metadata"]["labels"].items()
        }
        value = ";".join(meta.get(label, "") for label in keep["source_labels"])
        if re.fullmatch(keep["regex"], value):  # Prometheus anchors relabel regexes
            kept.add(name)
            ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
            assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    assert kept == {f"svc-{name}" for name in SERVICES}


def alerts() -> list[dict[str, Any]]:
    """The alerting rules."""
    return [rule for rule in rules() if "alert" in rule]


@pytest.mark.parametrize("alert", alerts(), ids=lambda r: r["alert"])
def test_every_alert_links_a_runbook_that_exists_and_names_it(alert: dict[str, Any]) -> None:
    url = alert["annotations"]["runbook_url"]
    assert url == f"docs/runbooks/{alert['alert']}.md"
    text = (REPO / url).read_text()
    assert text.startswith(f"# {alert['alert']}\n")
    assert f"Severity: **{alert['labels']['severity']}**" in text
    for section in ("## What it means", "## Impact", "## Diagnose", "## Fix"):
        assert section in text, section


def test_every_runbook_belongs_to_an_alert() -> None:
    assert {p.stem for p in RUNBOOKS.glob("*.md")} == {a["alert"] for a in alerts()}


def test_prometheus_sends_alerts_to_the_compose_alertmanager_which_routes_them_to_a_receiver() -> (
    None
):
    config = load(PROMETHEUS / "prometheus.yml")
    [manager] = config["alerting"]["alertmanagers"]
    [target] = [t for c in manager["static_configs"] for t in c["targets"]]
    host, port = target.split(":")
    services = compose_services()
    alertmanager = services[host]
    assert alertmanager["image"].startswith("prom/alertmanager:v")  # pinned, never latest
    assert any(p.endswith(f":{port}") for p in alertmanager["ports"])
    mount = next(v for v in alertmanager["volumes"] if v.startswith("./deploy/alertmanager"))
    container_dir = mount.split(":")[1]
    config_flag = next(a for a in alertmanager["command"] if a.startswith("--config.file="))
    assert config_flag == f"--config.file={container_dir}/alertmanager.yml"

    routing = load(ALERTMANAGER / "alertmanager.yml")
    receivers = {r["name"]: r for r in routing["receivers"]}
    used = {routing["route"]["receiver"]} | {r["receiver"] for r in routing["route"]["routes"]}
    assert used <= receivers.keys()
    for name in used:
        assert receivers[name]["email_configs"], name
    smtp_host = routing["global"]["smtp_smarthost"].split(":")[0]
    assert smtp_host in services
    assert smtp_host in alertmanager["depends_on"]
    severities = {a["labels"]["severity"] for a in alerts()}
    critical = [r for r in routing["route"]["routes"] if 'severity="critical"' in r["matchers"]]
    assert critical
    assert severities == {"critical", "warning"}


@pytest.mark.skipif(
    shutil.which("amtool") is None, reason="amtool (Debian: prometheus-alertmanager)"
)
def test_amtool_accepts_the_alertmanager_config() -> None:
    result = subprocess.run(
        ["amtool", "check-config", "alertmanager.yml"],
        cwd=ALERTMANAGER,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_envoys_stats_listener() -> None:
    job = next(
        j for j in load(PROMETHEUS / "prometheus.yml")["scrape_configs"] if j["job_name"] == "envoy"
    )
    [target] = [t for c in job["static_configs"] for t in c["targets"]]
    host, port = target.split(":")
    assert host in compose_services()
    envoy = load(REPO / "envoy" / "envoy.yaml")
    [stats] = [x for x in envoy["static_resources"]["listeners"] if x["name"] == "stats"]
    assert stats["address"]["socket_address"]["port_value"] == int(port)
    hcm = stats["filter_chains"][0]["filters"][0]["typed_config"]
    [route] = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert route["match"]["path"] == job["metrics_path"]


# --- Grafana ----------------------------------------------------------------------------------


def test_grafana_provisioning_points_at_the_mounted_dashboards_and_datasources() -> None:
    grafana = compose_services()["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    provider = load(GRAFANA / "provisioning" / "dashboards" / "medmesh.yml")["providers"][0]
    assert provider["options"]["path"] == mounts["./deploy/grafana/dashboards"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    sources = load(GRAFANA / "provisioning" / "datasources" / "medmesh.yml")["datasources"]
    prometheus = next(s for s in sources if s["type"] == "prometheus")
    assert prometheus["url"] == "http://prometheus:9090"


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_each_dashboard_queries_only_metrics_the_code_exports(name: str) -> None:
    dashboard = dashboards()[name]
    sources = load(GRAFANA / "provisioning" / "datasources" / "medmesh.yml")["datasources"]
    uids = {s["uid"] for s in sources}
    known = exported_metrics() | recorded_series() | INFRASTRUCTURE_METRICS
    targets = [t for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(targets) >= 8
    for target in targets:
        assert target["datasource"]["uid"] in uids
        names = promql_metric_names(grafana_to_promql(target["expr"]))
        assert names
        assert names - known == set(), target["expr"]
    for variable in dashboard["templating"]["list"]:
        metric = re.fullmatch(r"label_values\((\w+)[{,].*", variable["query"]["query"])
        assert metric is not None
        assert metric.group(1) in known


def test_dashboard_uids_are_unique_and_the_json_is_what_the_generator_writes() -> None:
    assert len({d["uid"] for d in dashboards().values()}) == len(dashboards()) == 4
    assert set(dashboards()) == set(DASHBOARD_FILES)
    spec = importlib.util.spec_from_file_location("dashboards", GRAFANA / "dashboards.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    for name, build in generator.DASHBOARDS.items():
        assert (GRAFANA / "dashboards" / name).read_text() == generator.render(build), name


# --- Filebeat ---------------------------------------------------------------------------------


def real_log_lines() -> list[dict[str, Any]]:
    """JSON lines exactly as a medmesh service writes them (telemetry's configuration), one
    from structlog and one from a library's stdlib logger, inside a span so the trace ids are
    there; the global logging setup is restored after."""
    from medmesh.telemetry import configure_logging

    saved_structlog = structlog.get_config()
    saved_context = structlog.contextvars.get_contextvars()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer, saved_stdout = io.StringIO(), sys.stdout
    try:
        sys.stdout = buffer
        configure_logging("ingest", "info")
        with TracerProvider().get_tracer("test").start_as_current_span("upload"):
            structlog.get_logger("svc_ingest").info("study.created", study_id="s-1")
            logging.getLogger("nats.aio.client").warning("disconnected")
    finally:
        sys.stdout = saved_stdout
        structlog.configure(**saved_structlog)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(**saved_context)
        root.handlers[:], root.level = saved_handlers, saved_level
    return [json.loads(line) for line in buffer.getvalue().splitlines()[-2:]]


def test_filebeat_decodes_the_json_lines_and_maps_every_common_field_to_ecs() -> None:
    config = load(REPO / "deploy" / "filebeat" / "filebeat.yml")
    assert [k for k in config if k.startswith("output.")] == ["output.elasticsearch"]
    parsers = config["filebeat.inputs"][0]["parsers"]
    target = next(p["ndjson"]["target"] for p in parsers if "ndjson" in p)
    processors = config["processors"]
    renamed = {
        field["from"]
        for p in processors
        if "rename" in p
        for field in p["rename"]["fields"]
    }  # fmt: skip
    timestamp = next(p["timestamp"] for p in processors if "timestamp" in p)
    native, stdlib = real_log_lines()
    assert stdlib["logger"] == "nats.aio.client"
    for line in (native, stdlib):
        extra = {"study_id"}  # the event's own fields stay under the target
        common = {f"{target}.{key}" for key in line.keys() - extra}
        assert {f"{target}.trace_id", f"{target}.service"} <= common
        assert common - renamed == {timestamp["field"]}
        assert line["service"] == "ingest"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])


# --- TF Serving -------------------------------------------------------------------------------


def test_tf_serving_config_serves_the_models_svc_infer_asks_for_from_the_mounted_volume() -> None:
    from svc_infer.config import InferConfig
    from svc_infer.model_server.config import read_config_file, validate

    models = validate(read_config_file(REPO / "deploy" / "tfserving" / "models.config"))
    infer = InferConfig()
    assert {m.name for m in models} == {infer.image_model, infer.text_model}
    tfserving = compose_services()["tfserving"]
    mount = next(v for v in tfserving["volumes"] if v.startswith("models:")).split(":")[1]
    assert all(m.base_path == f"{mount}/{m.name}" for m in models)

    # tensorflow-serving-api ships no monitoring_config_pb2: read its two fields directly.
    monitoring = (REPO / "deploy" / "tfserving" / "monitoring.config").read_text()
    prometheus = re.search(
        r'prometheus_config\s*{\s*enable:\s*(\w+)\s*path:\s*"([^"]+)"', monitoring
    )
    scrape = load(PROMETHEUS / "prometheus.yml")["scrape_configs"]
    job = next(j for j in scrape if j["job_name"] == "tfserving")
    assert prometheus is not None
    assert prometheus.group(1) == "true"
    assert job["metrics_path"] == prometheus.group(2)
