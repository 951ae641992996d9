"""How the web app is wired into the local stack: the edge's CSP origins from the object
store's URL, the public URL the services' mails link to, and the screens the edge serves."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest

from medmesh.edge import EdgeSettings
from medmesh.edge.webapp import APP_SECTIONS, WebApp
from medmesh.supervisor import reserve_edge_url
from medmesh.webbuild import WEB_DIR, is_stale
from svc_ingest.config import IngestConfig
from svc_ingest.validation import MAX_FILE_NAME

ROUTES_FILE = WEB_DIR / "src" / "app" / "routes.tsx"


@pytest.mark.parametrize(
    ("environ", "origins"),
    [
        ({"MEDMESH_S3_URL": "http://key:secret@127.0.0.1:9000"}, ("http://127.0.0.1:9000",)),
        ({"MEDMESH_S3_URL": "https://s3.example.org"}, ("https://s3.example.org",)),
        (
            {
                "MEDMESH_S3_URL": "http://k:s@127.0.0.1:9000",
                "MEDMESH_EDGE_OBJECT_ORIGINS": "https://a.example, https://b.example",
            },
            ("https://a.example", "https://b.example"),
        ),
        ({}, ()),
    ],
)
def test_the_apps_object_store_origins_come_from_the_s3_url_without_its_credentials(
    environ: dict[str, str], origins: tuple[str, ...]
) -> None:
    settings = EdgeSettings.from_env({"MEDMESH_AUTH_ADDR": "127.0.0.1:1", **environ})
    assert settings.object_origins == origins


def test_web_dir_off_serves_no_app() -> None:
    settings = EdgeSettings.from_env({"MEDMESH_AUTH_ADDR": "a:1", "MEDMESH_EDGE_WEB_DIR": "off"})
    assert settings.web_dir is None


def test_up_fixes_the_edge_port_first_and_points_the_mail_links_at_it() -> None:
    env: dict[str, str] = {}
    url = reserve_edge_url(env)
    host, port = env["MEDMESH_EDGE_ADDR"].split(":")
    assert host == "127.0.0.1"
    assert int(port) > 0
    assert url == f"http://127.0.0.1:{port}"
    assert env["MEDMESH_AUTH_PUBLIC_URL"] == url
    assert env["MEDMESH_REPORT_PUBLIC_URL"] == url


def test_up_keeps_a_configured_edge_address_and_public_urls() -> None:
    env = {
        "MEDMESH_EDGE_ADDR": "0.0.0.0:8080",
        "MEDMESH_REPORT_PUBLIC_URL": "https://medmesh.example.org",
    }
    assert reserve_edge_url(env) == "http://127.0.0.1:8080"
    assert env["MEDMESH_EDGE_ADDR"] == "0.0.0.0:8080"
    assert env["MEDMESH_AUTH_PUBLIC_URL"] == "http://127.0.0.1:8080"
    assert env["MEDMESH_REPORT_PUBLIC_URL"] == "https://medmesh.example.org"


def test_every_screen_of_the_route_table_is_served_by_the_edge() -> None:
    paths = re.findall(r'path: "(/[^"]*)"', ROUTES_FILE.read_text())
    assert "/studies/:studyId" in paths
    for path in paths:
        assert WebApp.claims("GET", path.replace(":", "x-")), path
        assert path.split("/")[1] in APP_SECTIONS


@pytest.mark.parametrize(
    "path", ["/v1/studies", "/.well-known/jwks.json", "/healthz", "/metrics", "/medmesh.x/Y"]
)
def test_api_paths_are_not_the_apps(path: str) -> None:
    assert not WebApp.claims("GET", path)


@pytest.mark.parametrize(
    ("emails", "link"),
    [
        ("verify", "/verify-email#token=T"),
        ("reset", "/reset-password#token=T"),
        ("invite", "/accept-invitation#token=T"),
        ("report", "/reports/0b7c6a56"),
    ],
)
def test_the_pages_mails_link_to_are_served(emails: str, link: str) -> None:
    assert WebApp.claims("GET", link.split("#")[0]), emails


def test_a_built_app_is_stale_once_a_source_is_newer(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    source = tmp_path / "src" / "main.tsx"
    source.write_text("x")
    assert is_stale(tmp_path, tmp_path / "gen")
    (tmp_path / "dist").mkdir()
    index = tmp_path / "dist" / "index.html"
    index.write_text("<!doctype html>")
    later = source.stat().st_mtime + 10
    os.utime(index, (later, later))
    assert not is_stale(tmp_path, tmp_path / "gen")
    os.utime(source, (later + 10, later + 10))
    assert is_stale(tmp_path, tmp_path / "gen")


def test_the_apps_upload_limits_are_svc_ingests_defaults() -> None:
    source = (WEB_DIR / "src" / "upload" / "limits.ts").read_text()
    mib = 1024 * 1024
    declared = {
        name: math.prod(mib if f.strip() == "MIB" else int(f) for f in expression.split("*"))
        for name, expression in re.findall(r"export const (MAX_\w+) = ([\d\s*MIB]+);", source)
    }
    defaults = IngestConfig()
    assert declared == {
        "MAX_IMAGE_BYTES": defaults.max_image_bytes,
        "MAX_DICOM_BYTES": defaults.max_dicom_bytes,
        "MAX_TEXT_BYTES": defaults.max_text_bytes,
        "MAX_FILE_NAME": MAX_FILE_NAME,
    }
