"""The web app in the production image, checked offline: no Docker engine runs here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from medmesh.edge.webapp import APP_SECTIONS, ASSETS_PREFIX

REPO = Path(__file__).resolve().parents[2]


def test_the_image_builds_the_web_app_from_its_lock_file_and_the_edge_serves_it() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    web_stage = dockerfile.split("FROM ${NODE_IMAGE} AS web", 1)[1].split("\nFROM ", 1)[0]
    assert "COPY web/package.json web/package-lock.json ./" in web_stage
    assert "RUN npm ci" in web_stage
    # The generated client sits where web/vite.config.ts and tsconfig.json look for it.
    assert "COPY gen/ts /src/gen/ts" in web_stage
    assert re.search(r"^WORKDIR /src/web$", web_stage, re.M)
    assert "RUN npm run build" in web_stage
    assert "COPY --from=web /src/web/dist /opt/medmesh/web" in dockerfile
    assert "ENV MEDMESH_EDGE_WEB_DIR=/opt/medmesh/web" in dockerfile
    vite = (REPO / "web" / "vite.config.ts").read_text()
    assert 'here("../gen/ts/")' in vite


def test_the_build_context_has_the_web_sources_but_not_local_builds() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "!web/" in ignore
    assert "web/node_modules" in ignore
    assert "web/dist" in ignore
    lock = json.loads((REPO / "web" / "package-lock.json").read_text())
    assert lock["lockfileVersion"] >= 2


def _envoy() -> dict:
    return yaml.safe_load((REPO / "envoy" / "envoy.yaml").read_text())


def _envoy_routes() -> list[dict]:
    listener = _envoy()["static_resources"]["listeners"][0]
    for chain in listener["filter_chains"]:
        for network_filter in chain["filters"]:
            config = network_filter["typed_config"]
            if "route_config" in config:
                return config["route_config"]["virtual_hosts"][0]["routes"]
    raise AssertionError("no route_config in envoy.yaml")


def _web_route() -> dict:
    return next(route for route in _envoy_routes() if route["name"] == "web-app")


@pytest.mark.parametrize(
    "path",
    [
        "/",
        *(f"/{section}" for section in sorted(APP_SECTIONS)),
        "/studies/3f6c/report",
        "/assets/index-1a2b3c.js",
    ],
)
def test_envoy_sends_every_screen_and_asset_of_the_web_app_to_the_edge(path: str) -> None:
    assert re.fullmatch(_web_route()["match"]["safe_regex"]["regex"], path)


@pytest.mark.parametrize(
    "path",
    ["/v1/studies", "/.well-known/jwks.json", "/healthz", "/openapi.json", "/studiesx",
     "/medmesh.ingest.v1.IngestService/GetStudy"],
)  # fmt: skip
def test_envoy_keeps_api_paths_away_from_the_web_app_route(path: str) -> None:
    assert not re.fullmatch(_web_route()["match"]["safe_regex"]["regex"], path)


def test_the_web_app_route_names_exactly_the_edges_app_sections() -> None:
    regex = _web_route()["match"]["safe_regex"]["regex"]
    sections = set(re.search(r"\(([a-z|-]+)\)", regex).group(1).split("|"))
    assert sections == APP_SECTIONS | {ASSETS_PREFIX.strip("/")}


def test_envoy_web_cluster_is_the_compose_edge_which_serves_the_built_app() -> None:
    (cluster,) = [c for c in _envoy()["static_resources"]["clusters"] if c["name"] == "web"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    address = endpoint["address"]["socket_address"]
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    edge = compose["services"][address["address"]]
    assert "profiles" not in edge  # part of the default stack, not opt-in
    assert edge["command"] == ["python", "-m", "medmesh.edge"]
    assert edge["environment"]["MEDMESH_EDGE_ADDR"].endswith(f":{address['port_value']}")
    assert _web_route()["route"]["cluster"] == "web"
