"""Fixtures shared by the browser tests: one `medmesh up` and one headless chromium for every
web-app module of this folder, so that adding a module costs no second start-up."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright
from support.stack import Stack, running_stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="package")
def web_stack(tmp_path_factory: pytest.TempPathFactory, model_base_dir: Path) -> Iterator[Stack]:
    """The whole product, started once by `medmesh up` in a fresh data directory for the web
    app's browser tests (it builds the web app first when web/dist is missing or stale)."""
    with running_stack(tmp_path_factory.mktemp("web-e2e"), model_base_dir) as running:
        yield running


@pytest.fixture(scope="package")
async def web_browser() -> AsyncIterator[Browser]:
    """Headless Debian chromium for the web app's browser tests (a fresh profile per context);
    skips without /usr/bin/chromium unless MEDMESH_REQUIRE_BROWSER is set."""
    if not CHROMIUM.exists():
        if os.environ.get("MEDMESH_REQUIRE_BROWSER"):
            raise RuntimeError(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()
