"""Build the browser app (web/ → web/dist) when it is missing or older than its sources, for
`medmesh up` and the tests that drive a browser.

Node and npm come from the machine (Debian's `nodejs`/`npm`, or nodejs.org); the packages
from the npm registry, exactly as web/package-lock.json pins them (`npm ci`). The edge serves
web/dist; a stack started without npm still runs, its app addresses answer 503 saying why.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
WEB_DIR = REPO_ROOT / "web"
# What the built app is made of: the app's sources and config, and the generated TS client.
SOURCES = (
    "src",
    "index.html",
    "package.json",
    "package-lock.json",
    "vite.config.ts",
    "tsconfig.json",
)
GENERATED_TS = REPO_ROOT / "gen" / "ts"


class WebBuildError(RuntimeError):
    """npm failed; the message says where its output is."""


def _newest_mtime(paths: list[Path]) -> float:
    newest = 0.0
    for path in paths:
        if path.is_file():
            newest = max(newest, path.stat().st_mtime)
        elif path.is_dir():
            newest = max(
                [newest, *(p.stat().st_mtime for p in path.rglob("*") if p.is_file())]
            )
    return newest


def is_stale(web_dir: Path = WEB_DIR, generated: Path = GENERATED_TS) -> bool:
    """True when web/dist/index.html is missing or older than any source of the app."""
    index = web_dir / "dist" / "index.html"
    if not index.is_file():
        return True
    sources = [*(web_dir / name for name in SOURCES), generated]
    return _newest_mtime(sources) > index.stat().st_mtime


def needs_install(web_dir: Path = WEB_DIR) -> bool:
    """True when web/node_modules is missing or older than package-lock.json."""
    installed = web_dir / "node_modules" / ".package-lock.json"
    lock = web_dir / "package-lock.json"
    return not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime


@contextmanager
def _build_lock(web_dir: Path) -> Iterator[None]:
    """One build at a time (two stacks starting together must not interleave writes to dist)."""
    with (web_dir / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _npm(args: list[str], web_dir: Path, log_file: Path, env: Mapping[str, str]) -> None:
    npm = shutil.which("npm", path=env.get("PATH"))
    if npm is None:
        raise WebBuildError("npm not found: install Node.js 20+ (Debian: nodejs and npm)")
    with log_file.open("ab") as log:
        done = subprocess.run(  # noqa: S603 - npm from PATH with fixed arguments
            [npm, *args],
            cwd=web_dir,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    if done.returncode != 0:
        raise WebBuildError(f"`npm {' '.join(args)}` failed; see {log_file}")


def build_web_app(env: Mapping[str, str], log_file: Path, web_dir: Path = WEB_DIR) -> bool:
    """Install (npm ci) and build (vite) the app if stale. Returns whether it built."""
    if not (web_dir / "package.json").is_file():
        raise WebBuildError(f"no web app sources at {web_dir}")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(web_dir):
        if not is_stale(web_dir):
            return False
        if needs_install(web_dir):
            _npm(["ci", "--no-audit", "--no-fund"], web_dir, log_file, env)
        _npm(["run", "build:app"], web_dir, log_file, env)
    return True
