"""The web app in the production image, checked offline: no Docker engine runs here."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
