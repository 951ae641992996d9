"""The Kubernetes manifests in deploy/k8s, checked offline: no cluster exists here, so every
object is validated against the Kubernetes schemas shipped in kubernetes-validate (strict:
unknown fields fail), kustomize renders the set when kubectl is installed, and the
NetworkPolicies are evaluated as a connection matrix."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from support.deploy_files import (
    DEGRADED_WITHOUT,
    K8S,
    KUBERNETES_VERSION,
    REPO,
    YAML_LOADER,
    compose_env,
    k8s,
    k8s_docs,
    k8s_env,
    load,
    required_variables,
    validate_k8s,
)

from medmesh.settings import SERVICES


@pytest.mark.parametrize(
    ("file", "doc"),
    [pytest.param(f, d, id=f"{f}:{d['kind']}/{d['metadata']['name']}") for f, d in k8s_docs()],
)
def test_every_kubernetes_manifest_validates_against_the_kubernetes_schema(
    file: str, doc: dict[str, Any]
) -> None:
    validate_k8s(doc)


def test_the_cached_validator_agrees_with_kubernetes_validate() -> None:
    doc = k8s("Deployment")["svc-ingest"]
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION
    validate_k8s(doc)


def test_kubernetes_schema_rejects_a_misspelled_field() -> None:
    broken = copy.deepcopy(k8s("Deployment")["svc-ingest"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    with pytest.raises(jsonschema.ValidationError):
        validate_k8s(broken)


def test_kustomization_lists_every_manifest_and_every_file_it_reads_exists() -> None:
    kustomization = load(K8S / "kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == {m for m in manifests if ".example." not in m}
    for generator in kustomization["configMapGenerator"]:
        for source in generator["files"]:
            assert (K8S / source.split("=")[-1]).is_file(), source
    images = {i["name"] for i in kustomization["images"]}
    used = {
        c["image"]
        for d in (*k8s("Deployment").values(), *k8s("Job").values())
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images <= used


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_kustomize_renders_the_stack_and_every_rendered_object_validates() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.load_all(rendered, Loader=YAML_LOADER) if d]
    assert {d["metadata"].get("namespace", "medmesh") for d in docs} == {"medmesh"}
    assert len(docs) == len([d for f, d in k8s_docs() if ".example." not in f]) + 2
    for doc in docs:
        if doc["kind"] == "ConfigMap":  # the generated ones; the rest are validated above
            validate_k8s(doc)
    envoy_config = next(d for d in docs if d["metadata"]["name"].startswith("medmesh-envoy-"))
    assert envoy_config["data"]["envoy.yaml"] == (REPO / "envoy" / "envoy.yaml").read_text()
    assert "medmesh.binpb" in envoy_config["binaryData"]


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_deployment_is_probed_over_grpc_and_drains_before_it_is_killed(
    service: str,
) -> None:
    pod = k8s("Deployment")[f"svc-{service}"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # The listener is TLS-only (the kubelet's gRPC probe is plaintext): the image's healthcheck
    # asks the standard health service over TLS, verified with the mounted internal CA.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:4] == ["python", "-m", "medmesh.healthcheck", "127.0.0.1:50051"]
        ca_file = command[command.index("--ca-file") + 1]
        assert str(Path(ca_file).parent) in mounts
        assert container[probe]["timeoutSeconds"] > 3  # the check's own timeout is 3 s
    grace = float(k8s_env(service)["MEDMESH_GRACE_PERIOD_S"])
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {p["containerPort"] for p in container["ports"]} == {50051, 9100}
    env = k8s_env(service)
    needed = required_variables(service) | DEGRADED_WITHOUT.get(service, set())
    own = f"MEDMESH_{service.upper()}_"  # per-service database URLs stand for the shared one
    missing = {n for n in needed if not (env.get(own + n.removeprefix("MEDMESH_")) or env.get(n))}
    assert missing == set()
    # Its own database role only: no shared (admin) URL, no migration role in a service pod.
    assert {n for n in env if n.endswith("POSTGRES_URL")} == {f"{own}POSTGRES_URL"}


MIN_REPLICAS = {"svc-auth": 2, "svc-ingest": 2, "svc-infer": 2, "svc-report": 2, "envoy": 3}


@pytest.mark.parametrize(("name", "floor"), MIN_REPLICAS.items())
def test_each_workload_has_an_autoscaler_and_a_disruption_budget(name: str, floor: int) -> None:
    deployment = k8s("Deployment")[name]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    if name in k8s("ScaledObject"):  # the JetStream workers: KEDA owns their HPA (keda.yaml)
        assert name not in k8s("HorizontalPodAutoscaler")
        scaled = k8s("ScaledObject")[name]["spec"]
        assert scaled["scaleTargetRef"] == target
        minimum, maximum = scaled["minReplicaCount"], scaled["maxReplicaCount"]
        assert "cpu" in {t["type"] for t in scaled["triggers"]}
    else:
        hpa = k8s("HorizontalPodAutoscaler")[name]["spec"]
        assert hpa["scaleTargetRef"] == target
        minimum, maximum = hpa["minReplicas"], hpa["maxReplicas"]
        assert {m["resource"]["name"] for m in hpa["metrics"]} == {"cpu"}
    assert minimum >= floor
    assert maximum > minimum
    pdb = k8s("PodDisruptionBudget")[name]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["minAvailable"] < minimum  # else no node could ever be drained


# --- network policy: a small evaluator of the rules, then the matrix --------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"  # the only operator the policies use
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _peer_matches(peer: dict[str, Any], labels: dict[str, str], namespace: str) -> bool:
    if "namespaceSelector" not in peer:  # a bare podSelector means this namespace
        return namespace == "medmesh" and _selects(peer["podSelector"], labels)
    namespace_labels = {"kubernetes.io/metadata.name": namespace}
    return _selects(peer["namespaceSelector"], namespace_labels) and _selects(
        peer.get("podSelector", {}), labels
    )


def _direction_allows(
    kind: str, pod: tuple[dict[str, str], str], peer: tuple[dict[str, str], str], port: int
) -> bool:
    """Ingress (or Egress) of `pod` lets `peer` in (or out to it) on `port`."""
    labels, namespace = pod
    if namespace != "medmesh":
        return True  # no policy of ours governs pods elsewhere
    applying = [
        p["spec"]
        for p in k8s("NetworkPolicy").values()
        if kind in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], labels)
    ]
    peers_key = "from" if kind == "Ingress" else "to"
    return not applying or any(
        (peers_key not in rule or any(_peer_matches(x, *peer) for x in rule[peers_key]))
        and ("ports" not in rule or any(p["port"] == port for p in rule["ports"]))
        for policy in applying
        for rule in policy.get(kind.lower(), [])
    )


def _pod(name: str) -> tuple[dict[str, str], str]:
    outside = {"internet": ({}, "external"), "prometheus": ({"app": "prometheus"}, "monitoring")}
    if name in outside:
        return outside[name]
    workloads = {**k8s("Deployment"), **k8s("Job")}
    return workloads[name]["spec"]["template"]["metadata"]["labels"], "medmesh"


def connection_allowed(source: str, target: str, port: int) -> bool:
    """Would a TCP connection from `source` to `target`:`port` pass both ends' policies?"""
    src, dst = _pod(source), _pod(target)
    return _direction_allows("Egress", src, dst, port) and _direction_allows(
        "Ingress", dst, src, port
    )


@pytest.mark.parametrize(
    ("source", "target", "port", "allowed"),
    [
        ("internet", "envoy", 8080, True),
        ("internet", "svc-ingest", 50051, False),
        ("internet", "svc-auth", 50051, False),
        ("envoy", "svc-auth", 50051, True),
        ("envoy", "svc-ingest", 50051, True),
        ("envoy", "svc-infer", 50051, True),
        ("envoy", "svc-report", 50051, True),
        ("envoy", "tfserving", 8500, False),
        ("svc-ingest", "svc-auth", 50051, True),
        ("svc-report", "svc-auth", 50051, True),
        ("svc-report", "svc-ingest", 50051, False),
        ("svc-auth", "svc-ingest", 50051, False),
        ("svc-infer", "tfserving", 8500, True),
        ("svc-ingest", "tfserving", 8500, False),
        ("prometheus", "svc-infer", 9100, True),
        ("internet", "svc-infer", 9100, False),
        ("medmesh-models-build", "svc-auth", 50051, False),
    ],
)
def test_network_policies_let_only_the_gateway_reach_the_services(
    source: str, target: str, port: int, allowed: bool
) -> None:
    assert connection_allowed(source, target, port) is allowed


# Compose runs a development SMTP sink on 1025; production submits on 587.
_PRODUCTION_PORT = {1025: 587}


@pytest.mark.parametrize("service", SERVICES)
def test_network_policies_let_each_service_reach_the_dependencies_it_is_configured_with(
    service: str,
) -> None:
    env = compose_env(f"svc-{service}")
    needed = required_variables(service) | DEGRADED_WITHOUT.get(service, set())
    ports = set()
    own = f"MEDMESH_{service.upper()}_"  # per-service database URLs come first
    values = [
        env.get(own + name.removeprefix("MEDMESH_")) or env[name]
        for name in needed | {"MEDMESH_OTLP_ENDPOINT"}
    ]
    for value in values:
        match = re.match(r"^[a-z+]+://(?:[^@/]*@)?([a-z0-9.-]+):(\d+)", value)
        if match and not match.group(1).startswith("svc-"):
            ports.add(_PRODUCTION_PORT.get(int(match.group(2)), int(match.group(2))))
    assert ports
    for port in ports:
        assert connection_allowed(f"svc-{service}", "internet", port), port
    assert not connection_allowed(f"svc-{service}", "internet", 22)
