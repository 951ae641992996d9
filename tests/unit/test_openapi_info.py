"""The OpenAPI document names the product, its real version and the server it is served from:
`info` from the package metadata (not the generator's "version not set" and first file name),
`host` and `schemes` from the request the edge answers."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

from medmesh.openapi import PRODUCT_TITLE, product_info, rewrite_file, with_server

COMMITTED = Path(__file__).resolve().parents[2] / "gen/openapi/medmesh.swagger.json"
GENERATED = {
    "swagger": "2.0",
    "info": {"title": "medmesh/common/v1/common.proto", "version": "version not set"},
    "schemes": ["http", "https"],
    "paths": {},
}


def test_product_info_is_the_title_summary_and_version_of_the_installed_package() -> None:
    meta = metadata.metadata("medmesh")
    assert product_info() == {
        "title": "medmesh API",
        "description": meta["Summary"],
        "version": meta["Version"],
    }


def test_the_committed_document_carries_the_product_title_and_the_package_version() -> None:
    info = json.loads(COMMITTED.read_text())["info"]
    assert info["title"] == PRODUCT_TITLE
    assert info["version"] == metadata.version("medmesh")
    assert info["version"] != "version not set"


def test_rewriting_a_generated_file_replaces_the_generators_info_in_place(tmp_path: Path) -> None:
    path = tmp_path / "medmesh.swagger.json"
    path.write_text(json.dumps(GENERATED))
    rewrite_file(path, {"title": "t", "description": "d", "version": "9.9.9"})
    text = path.read_text()
    assert list(json.loads(text)) == ["swagger", "info", "schemes", "paths"]
    assert json.loads(text)["info"] == {"title": "t", "description": "d", "version": "9.9.9"}


@pytest.mark.parametrize(
    ("host", "scheme"),
    [
        ("api.clinic.example", "https"),
        ("127.0.0.1:8080", "http"),
        ("[::1]:8443", "https"),
    ],
)
def test_the_served_document_names_the_host_and_scheme_it_was_asked_on(
    host: str, scheme: str
) -> None:
    served = json.loads(with_server(json.dumps(GENERATED).encode(), host, scheme))
    assert served["host"] == host
    assert served["schemes"] == [scheme]
    assert list(served)[:3] == ["swagger", "info", "host"]
    assert served["paths"] == {}


@pytest.mark.parametrize(
    ("host", "scheme"),
    [
        ("evil.example/path", "http"),
        ("a b", "http"),
        ("", "http"),
        (None, "https"),
        ("api.clinic.example", "ftp"),
        ("api.clinic.example", None),
    ],
)
def test_a_host_or_scheme_that_is_not_a_plain_one_is_left_out(
    host: str | None, scheme: str | None
) -> None:
    served = json.loads(with_server(json.dumps(GENERATED).encode(), host, scheme))
    assert "host" not in served
    assert served["schemes"] == ["http", "https"]
