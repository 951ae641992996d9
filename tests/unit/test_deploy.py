"""compose.yaml, the Dockerfile and the gateway wiring, checked offline: no Docker engine
exists here, so compose.yaml is validated against the Compose spec and cross-checked with the
code (the variables each service's settings require, the hosts it waits for, the modules its
commands run) and with envoy/envoy.yaml (upstream names, ports, mounted paths)."""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import jsonschema
import pytest
from check_jsonschema.builtin_schemas import get_builtin_schema
from support.deploy_files import (
    DEGRADED_WITHOUT,
    K8S,
    REPO,
    compose,
    compose_env,
    compose_env_script,
    container,
    k8s,
    k8s_env,
    load,
    required_variables,
)

from medmesh.settings import SERVICES, Settings


def test_required_variables_are_read_from_the_code() -> None:
    assert required_variables("ingest") >= {
        "MEDMESH_POSTGRES_URL",
        "MEDMESH_S3_URL",
        "MEDMESH_NATS_URL",
        "MEDMESH_AUTH_ADDR",
    }
    assert "MEDMESH_AUTH_ADDR" not in required_variables("auth")  # it verifies with its own keys


# --- compose ----------------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_spec() -> None:
    jsonschema.Draft202012Validator(get_builtin_schema("vendor.compose-spec")).validate(compose())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "postgres", "healthcheck", "intervall"), "5s"),
        (("services", "svc-auth", "depends_on", "postgres", "condition"), "service_ready"),
        (("services", "svc-ingest", "ports"), "50052"),
    ],
)
def test_compose_schema_rejects_a_broken_file(path: tuple[str, ...], value: str) -> None:
    broken = copy.deepcopy(compose())
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(get_builtin_schema("vendor.compose-spec")).validate(broken)


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_in_compose_has_the_variables_its_settings_require(service: str) -> None:
    env = compose_env(f"svc-{service}")
    needed = required_variables(service) | DEGRADED_WITHOUT.get(service, set())
    assert {name for name in needed if not service_variable(env, service, name)} == set()
    assert env["MEDMESH_GRPC_ADDR"] == "0.0.0.0:50051"
    assert env["MEDMESH_METRICS_ADDR"] == "0.0.0.0:9100"
    assert env["MEDMESH_OTLP_ENDPOINT"] == "http://jaeger:4317"


def _service_config_parsers(service: str, settings: Settings) -> None:
    """Run a service's own settings parser, as its setup does at start-up."""
    if service == "auth":
        from svc_auth.config import AuthConfig

        AuthConfig.from_settings(settings)
    elif service == "ingest":
        from svc_ingest.config import IngestConfig

        IngestConfig.from_extra(settings.extra)
    elif service == "infer":
        from svc_infer.config import InferConfig

        InferConfig.from_extra(settings.extra)


@pytest.mark.parametrize("service", SERVICES)
def test_compose_and_kubernetes_settings_parse_with_the_services_own_parsers(service: str) -> None:
    # Secret values are the operator's (secret.example.yaml holds placeholders): left out,
    # except key-encryption keys, which a service cannot start without: a generated one.
    from_k8s = {
        k: compose_env_script().generate(k) if v.startswith("<secret") else v
        for k, v in k8s_env(service).items()
        if not v.startswith("<secret") or k.endswith("KEY_ENCRYPTION_KEY")
    }
    for env in (compose_env(f"svc-{service}"), from_k8s):
        settings = Settings.from_env(env, service=service)
        assert settings.grpc_addr == "0.0.0.0:50051"
        _service_config_parsers(service, settings)


def test_the_edge_settings_in_compose_parse() -> None:
    from medmesh.edge.settings import EdgeSettings

    edge = EdgeSettings.from_env(compose_env("edge"))
    assert set(edge.upstreams) == set(SERVICES)
    assert edge.addr == "0.0.0.0:8080"


def service_variable(env: dict[str, str], service: str, name: str) -> str:
    """`name`'s value for `service`: its MEDMESH_<SVC>_ form first (per-service database URLs,
    medmesh/settings.py), then the shared one."""
    own = f"MEDMESH_{service.upper()}_{name.removeprefix('MEDMESH_')}"
    return env.get(own) or env.get(name, "")


def _known_variable(name: str, source: str) -> bool:
    if re.search(rf"\b{name}\b", source):
        return True
    per_service = re.fullmatch(r"MEDMESH_(AUTH|INGEST|INFER|REPORT)_(POSTGRES(?:_READ)?_URL)", name)
    if per_service and re.search(rf"MEDMESH_\{{[^}}]*\}}_{per_service.group(2)}\b", source):
        return True  # read as f"MEDMESH_{service.upper()}_POSTGRES_URL" by medmesh/settings.py
    match = re.fullmatch(r"MEDMESH_([A-Z]+)_([A-Z0-9_]+)", name)
    config = REPO / f"svc_{match.group(1).lower()}" / "config.py" if match else None
    if match is None or config is None or not config.exists():
        return False
    text = config.read_text()  # computed names: _v("ACCESS_TTL_S"), or a dataclass field
    rest = match.group(2)
    return f'"{rest}"' in text or re.search(rf"^\s+{rest.lower()}:", text, re.M) is not None


def test_every_medmesh_variable_in_compose_and_kubernetes_is_one_the_code_reads() -> None:
    source = "\n".join(p.read_text() for p in REPO.glob("medmesh/**/*.py"))
    used = {k for s in compose()["services"].values() for k in s.get("environment", {})}
    used |= set(k8s("ConfigMap")["medmesh-config"]["data"])
    used |= {e["name"] for name in SERVICES for e in container(f"svc-{name}").get("env", [])}
    medmesh = {name for name in used if name.startswith("MEDMESH_")}
    assert len(medmesh) > 20
    assert sorted(name for name in medmesh if not _known_variable(name, source)) == []


def test_the_compose_bootstrap_admin_passes_svc_auths_account_rules() -> None:
    from svc_auth.passwords import clinic_id_violation, email_violation, password_violation

    env = compose_env("svc-auth")
    email = env["MEDMESH_AUTH_BOOTSTRAP_ADMIN_EMAIL"]
    problems = [
        clinic_id_violation("clinic", env["MEDMESH_AUTH_BOOTSTRAP_CLINIC"]),
        email_violation("email", email),
        password_violation("password", env["MEDMESH_AUTH_BOOTSTRAP_ADMIN_PASSWORD"], email=email),
    ]
    assert [p for p in problems if p is not None] == []


def _url_hosts(env: dict[str, str]) -> set[str]:
    hosts = set()
    for value in env.values():
        match = re.match(r"^(?:[a-z+]+://)?(?:[^@/]*@)?([a-z0-9.-]+):\d+", value)
        if match:
            hosts.add(match.group(1))
    return hosts


@pytest.mark.parametrize("name", ["svc-auth", "svc-ingest", "svc-infer", "svc-report", "edge"])
def test_each_compose_service_waits_for_every_host_its_variables_name(name: str) -> None:
    services = compose()["services"]
    depends = services[name]["depends_on"]
    hosts = _url_hosts(compose_env(name)) & services.keys()
    assert hosts, "no dependency host found in its variables"
    for host in hosts - {name}:
        healthchecked = "healthcheck" in services[host] or "image" not in services[host]
        expected = "service_healthy" if healthchecked else "service_started"
        assert depends.get(host, {}).get("condition") == expected, host


def test_compose_and_kubernetes_commands_run_modules_the_image_installs() -> None:
    # The `certs` and `db-roles` jobs run scripts mounted from scripts/ (checked below).
    services = compose()["services"].values()
    commands = [s["command"] for s in services if "build" in s and not _runs_a_script(s)]
    commands += [
        c["command"]
        for doc in (*k8s("Deployment").values(), *k8s("Job").values())
        for c in doc["spec"]["template"]["spec"]["containers"]
        if c["image"] in ("medmesh", "medmesh-models")
    ]
    assert len(commands) >= 10
    for command in commands:
        if command[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(command[2]) is not None, command
        else:
            assert command[0] == "medmesh", command  # the console script of pyproject.toml


def test_the_dockerfile_installs_every_package_as_a_non_root_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    pyproject = (REPO / "pyproject.toml").read_text()
    packages = re.search(r"include = \[([^\]]*)\]", pyproject).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {package} ./{package}" in dockerfile
        assert f"!{package}/" in ignore
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", dockerfile, re.M)
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    assert "RUN pip install --no-deps . && pip check" in dockerfile
    assert "MEDMESH_GRPC_ADDR=0.0.0.0:50051" in dockerfile


def _runs_a_script(service: dict) -> bool:
    return service["command"][1].startswith("/opt/medmesh-scripts/")


@pytest.mark.parametrize("name", ["certs", "db-roles"])
def test_the_one_shot_jobs_run_a_script_they_mount_from_the_repository(name: str) -> None:
    service = compose()["services"][name]
    command = service["command"]
    mounts = dict(v.split(":")[:2][::-1] for v in service["volumes"])
    assert command[0] == "python"
    assert _runs_a_script(service)
    assert (REPO / mounts[command[1]].removeprefix("./")).is_file()


# --- gateway wiring ---------------------------------------------------------------------------


def test_every_upstream_envoy_routes_to_is_a_compose_and_a_kubernetes_service() -> None:
    envoy = load(REPO / "envoy" / "envoy.yaml")
    upstreams = {
        (ep["endpoint"]["address"]["socket_address"]["address"],
         ep["endpoint"]["address"]["socket_address"]["port_value"])
        for cluster in envoy["static_resources"]["clusters"]
        if cluster["name"] not in {"web", "envoy_admin"}  # web: test_deploy_web.py; admin: own
        for group in cluster["load_assignment"]["endpoints"]
        for ep in group["lb_endpoints"]
    }  # fmt: skip
    assert len(upstreams) == 4
    services = compose()["services"]
    for host, port in upstreams:
        assert compose_env(host)["MEDMESH_GRPC_ADDR"].endswith(f":{port}")
        assert port in {p["port"] for p in k8s("Service")[host]["spec"]["ports"]}
        assert services[host]["command"][2] == host.replace("-", "_")


def test_envoy_gets_its_config_and_descriptor_where_envoy_yaml_expects_them() -> None:
    envoy = load(REPO / "envoy" / "envoy.yaml")
    ingress = envoy["static_resources"]["listeners"][0]
    listener = ingress["address"]["socket_address"]
    hcm = ingress["filter_chains"][0]["filters"][0]["typed_config"]
    transcoder = next(f for f in hcm["http_filters"] if f["name"].endswith("grpc_json_transcoder"))
    descriptor = transcoder["typed_config"]["proto_descriptor"]

    service = compose()["services"]["envoy"]
    assert f"./gen/medmesh.binpb:{descriptor}:ro" in service["volumes"]
    assert "./envoy/envoy.yaml:/etc/envoy/envoy.yaml:ro" in service["volumes"]
    assert f"127.0.0.1:8080:{listener['port_value']}" in service["ports"]

    gateway = container("envoy")
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == "config")
    assert Path(mount["mountPath"], "medmesh.binpb") == Path(descriptor)
    assert gateway["ports"][0]["containerPort"] == listener["port_value"]
    kustomization = load(K8S / "kustomization.yaml")
    generated = next(g for g in kustomization["configMapGenerator"] if g["name"] == "medmesh-envoy")
    assert {f.split("=")[0] for f in generated["files"]} == {
        "envoy.yaml",
        "medmesh.binpb",
        "openapi.json",
    }
    # The OpenAPI document Envoy serves at /openapi.json, from the same mounts.
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    openapi = next(r for r in routes if r["match"].get("path") == "/openapi.json")
    served = openapi["direct_response"]["body"]["filename"]
    assert f"./gen/openapi/medmesh.swagger.json:{served}:ro" in service["volumes"]
    assert Path(mount["mountPath"], "openapi.json") == Path(served)
    assert "openapi.json=../../gen/openapi/medmesh.swagger.json" in generated["files"]
