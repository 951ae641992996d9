"""deploy/k8s/keda.yaml (issue 13): the JetStream workers scale on queue depth as well as CPU.
Cross-checked with the code: every durable consumer a worker's app.py binds has a trigger on
its stream and name, the Prometheus query reads a metric the code exports, and the CPU-only
fallback (hpa-workers.example.yaml) targets the same Deployments."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from support.deploy_files import K8S, REPO, k8s, k8s_docs, k8s_env, load, validate_k8s
from test_deploy_observability import exported_metrics, promql_selectors

from medmesh.jetstream import ConsumerSpec, Topology
from svc_report.consumers import results_ready_consumer

WORKERS = {"svc-infer": "infer", "svc-report": "report"}


def consumers_bound_by(service: str) -> list[ConsumerSpec]:
    """The durable consumers `svc_<service>/app.py` binds, read from its code."""
    topology = Topology()  # MEDMESH_SUBJECT_ROOT/STREAM_PREFIX unset in config.yaml
    text = (REPO / f"svc_{service}" / "app.py").read_text()
    specs = [getattr(topology, name) for name in re.findall(r"topology\.(\w+_consumer)\b", text)]
    if "results_ready_consumer(" in text:
        specs.append(results_ready_consumer(topology))
    return specs


def _triggers(name: str, kind: str) -> list[dict]:
    return [t for t in k8s("ScaledObject")[name]["spec"]["triggers"] if t["type"] == kind]


def test_the_topology_defaults_are_what_kubernetes_runs() -> None:
    for service in WORKERS.values():
        env = k8s_env(service)
        assert "MEDMESH_STREAM_PREFIX" not in env
        assert "MEDMESH_SUBJECT_ROOT" not in env


@pytest.mark.parametrize(("deployment", "service"), WORKERS.items())
def test_every_consumer_a_worker_binds_has_a_backlog_trigger_on_its_stream_and_name(
    deployment: str, service: str
) -> None:
    bound = {(spec.stream, spec.durable) for spec in consumers_bound_by(service)}
    assert len(bound) >= 2
    triggered = {
        (t["metadata"]["stream"], t["metadata"]["consumer"])
        for t in _triggers(deployment, "nats-jetstream")
    }
    assert triggered == bound
    for trigger in _triggers(deployment, "nats-jetstream"):
        assert int(trigger["metadata"]["lagThreshold"]) > 0
        assert trigger["metadata"]["account"] == "$G"


@pytest.mark.parametrize("deployment", WORKERS)
def test_each_worker_also_scales_on_cpu_of_its_requested_cores(deployment: str) -> None:
    (cpu,) = _triggers(deployment, "cpu")
    assert cpu["metricType"] == "Utilization"
    assert 0 < int(cpu["metadata"]["value"]) <= 100
    container = k8s("Deployment")[deployment]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"]  # utilisation is relative to it


@pytest.mark.parametrize("deployment", WORKERS)
def test_the_nats_monitoring_endpoint_is_the_nats_server_the_services_use(
    deployment: str,
) -> None:
    secret = next(d for f, d in k8s_docs() if f == "secret.example.yaml")
    nats_host = urlsplit(secret["stringData"]["nats-url"]).hostname
    for trigger in _triggers(deployment, "nats-jetstream"):
        host, _, port = trigger["metadata"]["natsServerMonitoringEndpoint"].rpartition(":")
        assert host == nats_host
        assert port == "8222"


def test_the_infer_lane_backlog_query_reads_the_pending_gauge_svc_infer_exports() -> None:
    (trigger,) = _triggers("svc-infer", "prometheus")
    selectors = promql_selectors(trigger["metadata"]["query"])
    assert {s.name for s in selectors} == {"medmesh_infer_queue_pending"}
    assert {s.name for s in selectors} <= exported_metrics()
    metrics = (REPO / "svc_infer" / "metrics.py").read_text()
    gauge = re.search(r'"medmesh_infer_queue_pending",\s*"[^"]*",\s*\[([^\]]*)\]', metrics)
    assert gauge is not None
    assert '"consumer"' in gauge.group(1)  # the label the query de-duplicates replicas by
    assert "by (consumer)" in trigger["metadata"]["query"]
    assert int(trigger["metadata"]["threshold"]) > 0


def test_the_scaled_objects_are_applied_and_the_cpu_only_fallback_targets_the_same_workers() -> (
    None
):
    resources = load(K8S / "kustomization.yaml")["resources"]
    assert "keda.yaml" in resources
    assert "hpa-workers.example.yaml" not in resources
    fallback = [d for f, d in k8s_docs() if f == "hpa-workers.example.yaml"]
    assert {d["spec"]["scaleTargetRef"]["name"] for d in fallback} == set(WORKERS)
    for doc in fallback:
        validate_k8s(doc)
        scaled = k8s("ScaledObject")[doc["metadata"]["name"]]["spec"]
        assert doc["spec"]["minReplicas"] == scaled["minReplicaCount"]
        assert doc["spec"]["maxReplicas"] == scaled["maxReplicaCount"]


def test_the_scaled_object_schema_rejects_a_misspelled_trigger_field() -> None:
    import copy

    import jsonschema

    broken = copy.deepcopy(k8s("ScaledObject")["svc-report"])
    broken["spec"]["triggers"][0]["metdata"] = broken["spec"]["triggers"][0].pop("metadata")
    with pytest.raises(jsonschema.ValidationError):
        validate_k8s(broken)
    broken = copy.deepcopy(k8s("ScaledObject")["svc-report"])
    broken["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 10  # KEDA wants strings
    with pytest.raises(jsonschema.ValidationError):
        validate_k8s(broken)
