"""The Dockerfile's two images, checked offline (no Docker engine here): the default target
(`service`, the last stage) installs medmesh with no extra, so no TensorFlow, embedded servers
or dev tools; `--target models` adds the `models` extra (TensorFlow) and is the image of the
model build and the local model server in compose and Kubernetes, and of nothing else."""

from __future__ import annotations

import re

import yaml
from support.deploy_files import REPO, compose, k8s

DOCKERFILE = (REPO / "Dockerfile").read_text()
MODEL_COMMANDS = (("medmesh", "models", "build"), ("python", "-m", "svc_infer.model_server"))


def stages() -> dict[str, str]:
    """Each stage's name → its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    found = re.split(r"^FROM \S+ AS (\S+)\n", text, flags=re.M)
    return dict(zip(found[1::2], found[2::2], strict=True))


def pip_installs(stage: str) -> list[str]:
    found = re.findall(r"pip install (?!--upgrade)(.*?)(?:&&|$)", stages()[stage], re.M)
    return [args.strip() for args in found]


def runs_a_model_command(command: list[str]) -> bool:
    return any(tuple(command[: len(m)]) == m for m in MODEL_COMMANDS)


def test_the_default_target_is_the_service_image() -> None:
    assert list(stages())[-1] == "service"
    assert "COPY --from=build /opt/medmesh /opt/medmesh" in stages()["service"]


def test_the_service_image_installs_medmesh_with_no_extra() -> None:
    assert pip_installs("build") == [".", "--no-deps ."]


def test_the_models_target_adds_the_models_extra_to_the_same_runtime() -> None:
    assert pip_installs("build-models") == ['".[models]"', '--no-deps ".[models]"']
    assert re.search(r"^FROM runtime-base AS models$", DOCKERFILE, re.M)
    assert re.search(r"^FROM runtime-base AS service$", DOCKERFILE, re.M)
    assert "COPY --from=build-models /opt/medmesh /opt/medmesh" in stages()["models"]


def test_compose_builds_the_models_target_only_for_the_model_commands() -> None:
    built = {name: s for name, s in compose()["services"].items() if "build" in s}
    for name, service in built.items():
        wants_models = runs_a_model_command(service["command"])
        assert (service["build"].get("target") == "models") == wants_models, name
        assert service["image"].startswith("${MEDMESH_MODELS_IMAGE") == wants_models, name
    assert sum(runs_a_model_command(s["command"]) for s in built.values()) == 2


def test_kubernetes_runs_the_model_build_from_the_models_image_and_services_from_the_other() -> (
    None
):
    containers = [
        c
        for doc in (*k8s("Deployment").values(), *k8s("Job").values())
        for c in doc["spec"]["template"]["spec"]["containers"]
        if c["image"] in ("medmesh", "medmesh-models")
    ]
    assert containers
    for container in containers:
        expected = "medmesh-models" if runs_a_model_command(container["command"]) else "medmesh"
        assert container["image"] == expected, container["command"]
    kustomized = {i["name"] for i in k8s_images()}
    assert {"medmesh", "medmesh-models"} <= kustomized


def k8s_images() -> list[dict[str, str]]:
    return yaml.safe_load((REPO / "deploy" / "k8s" / "kustomization.yaml").read_text())["images"]
