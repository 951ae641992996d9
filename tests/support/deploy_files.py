"""Reading the deployment files (compose.yaml, deploy/k8s) and what the code requires of
them, shared by tests/unit/test_deploy*.py. Parsed once per session: callers must not mutate
what they get (deep-copy first)."""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33"  # the oldest version still supported upstream when this was written


# libyaml when PyYAML was built with it: several times faster on these files.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def _parsed(path: Path) -> tuple[Any, ...]:
    return tuple(yaml.load_all(path.read_text(), Loader=YAML_LOADER))


def load(path: Path) -> Any:
    """One YAML document (parsed once per test session; callers must not mutate it)."""
    return _parsed(path)[0]


def compose() -> dict[str, Any]:
    """compose.yaml, anchors and merge keys resolved."""
    return load(REPO / "compose.yaml")


def compose_env_script() -> Any:
    """scripts/make_compose_env.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "make_compose_env", REPO / "scripts" / "make_compose_env.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def generated_env() -> dict[str, str]:
    """What `scripts/make_compose_env.py` puts in `.env`: a value per `${VAR:?...}`."""
    script = compose_env_script()
    text = (REPO / "compose.yaml").read_text()
    return {name: script.generate(name) for name in script.required_variables(text)}


def interpolate(value: Any) -> str:
    """A compose value as it runs with the generated `.env` and nothing else:
    `${VAR:?...}` → the generated value, `${VAR:-default}` → default."""
    pattern = r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*)|:\?[^}]*)?\}"
    env = generated_env()
    return re.sub(pattern, lambda m: env.get(m.group(1)) or m.group(2) or "", str(value))


def compose_env(name: str) -> dict[str, str]:
    """The environment compose gives service `name`."""
    return {k: interpolate(v) for k, v in compose()["services"][name]["environment"].items()}


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every manifest in deploy/k8s, the kustomization excluded."""
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in _parsed(path)
        if doc
    ]


def k8s(kind: str) -> dict[str, dict[str, Any]]:
    """Applied manifests of one kind, by name."""
    return {
        doc["metadata"]["name"]: doc
        for file, doc in k8s_docs()
        if doc["kind"] == kind and not file.endswith(".example.yaml")
    }


def k8s_env(service: str) -> dict[str, str]:
    """The variables the Deployment gives a service: its ConfigMap plus its own `env`."""
    config = k8s("ConfigMap")["medmesh-config"]["data"]
    container = k8s("Deployment")[f"svc-{service}"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": "medmesh-config"}}]
    own = {
        e["name"]: e.get("value") or f"<secret {e['valueFrom']['secretKeyRef']['key']}>"
        for e in container.get("env", [])
    }
    return {**config, **own}


def _called_names(tree: ast.AST) -> set[str]:
    return {
        node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }


def required_variables(service: str) -> set[str]:
    """The MEDMESH_* variables a service cannot start without, read from the code: the
    `settings.require(...)` of each `medmesh.resources` opener its setup calls, the primary
    database for its migrations, and svc_auth's address for the JWKS verifier unless the
    service builds its own `TokenVerifier` (svc_auth does, from its key ring)."""
    resources = ast.parse((REPO / "medmesh" / "resources.py").read_text())
    opener_needs = {
        func.name: {
            call.args[0].value
            for call in ast.walk(func)
            if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "require"
        }
        for func in resources.body
        if isinstance(func, ast.AsyncFunctionDef)
    }
    app = ast.parse((REPO / f"svc_{service}" / "app.py").read_text())
    fields = {"postgres_url"}  # every service migrates its schema before serving
    for name in _called_names(app) & opener_needs.keys():
        fields |= opener_needs[name]
    if "TokenVerifier" not in _called_names(app):
        fields.add("auth_addr")
    return {f"MEDMESH_{field.upper()}" for field in fields}


# Not fatal at start-up, but the service is crippled without them (mail stays queued; jobs
# wait in the queue), so a full stack must set them.
DEGRADED_WITHOUT = {
    "auth": {"MEDMESH_SMTP_URL"},
    "infer": {"MEDMESH_INFER_TF_SERVING_ADDR"},
}


def compose_services() -> dict[str, Any]:
    """compose.yaml's services."""
    return compose()["services"]


def container(deployment: str) -> dict[str, Any]:
    """The (first) container of a Deployment's pod template."""
    return k8s("Deployment")[deployment]["spec"]["template"]["spec"]["containers"][0]


@functools.cache
def _k8s_schema_file(name: str) -> dict[str, Any]:
    folder = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict/{name}"
    return json.loads(resources.files("kubernetes_validate").joinpath(folder).read_text())


@functools.cache
def _k8s_validator(kind: str, api_version: str) -> jsonschema.Validator:
    """kubernetes_validate.validate's strict validator, built once per kind instead of once per
    document (each build parses its 1.4 MB of definitions)."""
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = _k8s_schema_file(f"{kind.lower()}-{group}.json")
    registry = Resource.from_contents(schema) @ Registry()
    registry = Resource.from_contents(_k8s_schema_file("_definitions.json")) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


# Custom resources (not in kubernetes-validate's schemas): a strict schema of their own.
CRD_SCHEMAS = {("ScaledObject", "keda.sh/v1alpha1"): "keda-scaledobject-v1alpha1.json"}


@functools.cache
def _crd_validator(file: str) -> jsonschema.Validator:
    schema = json.loads((Path(__file__).parent / "schemas" / file).read_text())
    return jsonschema.Draft202012Validator(schema)


def validate_k8s(doc: dict[str, Any]) -> None:
    """Validate one object against the Kubernetes schema of KUBERNETES_VERSION, strictly
    (unknown fields are errors); KEDA's ScaledObject against tests/support/schemas/."""
    crd = CRD_SCHEMAS.get((doc["kind"], doc["apiVersion"]))
    if crd is not None:
        _crd_validator(crd).validate(doc)
        return
    _k8s_validator(doc["kind"], doc["apiVersion"]).validate(doc)
