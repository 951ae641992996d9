"""The address forms the SDK and the CLI accept (no I/O beyond a status file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmesh.client import Endpoints

INGEST = "medmesh.ingest.v1.IngestService"
REGISTRY = "medmesh.infer.v1.ModelRegistryService"


@pytest.mark.parametrize(
    ("spec", "service", "address"),
    [
        ("gateway.example:443", INGEST, "gateway.example:443"),
        ("gateway.example:443", REGISTRY, "gateway.example:443"),
        ("auth=127.0.0.1:1, ingest=127.0.0.1:2", INGEST, "127.0.0.1:2"),
        ("infer=127.0.0.1:3", REGISTRY, "127.0.0.1:3"),
    ],
)
def test_an_address_spec_names_the_server_of_each_service(
    spec: str, service: str, address: str
) -> None:
    assert Endpoints.parse(spec).address_for(service) == address


def test_the_status_file_of_medmesh_up_is_an_address(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    path.write_text(
        json.dumps({"auth": "127.0.0.1:1", "ingest": "127.0.0.1:2", "edge": "http://x"})
    )
    endpoints = Endpoints.parse(str(path))
    assert endpoints.address_for(INGEST) == "127.0.0.1:2"
    assert "edge" not in endpoints.by_area


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no server address given"),
        ("storage=127.0.0.1:1", "expected AREA=HOST:PORT"),
        ("ingest=", "expected AREA=HOST:PORT"),
        ("missing.json", "not a readable status file"),
    ],
)
def test_a_bad_address_spec_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Endpoints.parse(spec)


def test_a_service_without_an_address_is_named() -> None:
    with pytest.raises(ValueError, match=r"no address for report"):
        Endpoints.parse("auth=127.0.0.1:1").address_for("medmesh.report.v1.ReportService")
