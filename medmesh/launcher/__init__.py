"""The dependency launcher: for each dependency (PostgreSQL, Redis, NATS JetStream, S3) use
the URL from its MEDMESH_* variable, or start an embedded server on a free loopback port, so a
fresh machine needs nothing beyond Python for `medmesh up` and the tests.

    with EmbeddedDependencies(Path(".medmesh"), os.environ) as urls:
        settings = Settings.from_environ({**os.environ, **urls})

Servers start one after another in the calling thread: each child asks the kernel to signal
it when the thread that spawned it exits (PR_SET_PDEATHSIG), so enter the context in a thread
that lives as long as the servers should (the main thread, not a worker).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

import structlog

from medmesh.launcher._process import EmbeddedServer, EmbeddedStartError
from medmesh.launcher.postgres import PostgresServer
from medmesh.launcher.servers import NatsServer, RedisServer, S3Server

__all__ = [
    "DEPENDENCY_ENV",
    "EmbeddedDependencies",
    "EmbeddedServer",
    "EmbeddedStartError",
    "NatsServer",
    "PostgresServer",
    "RedisServer",
    "S3Server",
]

log = structlog.get_logger()

# PostgreSQL first: it is the slowest to start, so a broken machine fails fast.
_SERVERS: dict[str, type[EmbeddedServer]] = {
    server.name: server for server in (PostgresServer, RedisServer, NatsServer, S3Server)
}
DEPENDENCY_ENV: dict[str, str] = {name: server.env_var for name, server in _SERVERS.items()}


class EmbeddedDependencies:
    """Context manager yielding `{env var: URL}` for each dependency: configured URLs pass
    through untouched, missing ones are started under `data_dir` and stopped on exit."""

    def __init__(
        self, data_dir: Path, environ: Mapping[str, str], *, only: Iterable[str] | None = None
    ) -> None:
        self._names = list(DEPENDENCY_ENV if only is None else only)
        unknown = sorted(set(self._names) - set(DEPENDENCY_ENV))
        if unknown:
            raise ValueError(f"unknown dependencies {unknown}; known: {sorted(DEPENDENCY_ENV)}")
        self._data_dir = Path(data_dir).resolve()
        self._environ = dict(environ)
        self._running: list[EmbeddedServer] = []
        self.started: list[str] = []

    def __enter__(self) -> dict[str, str]:
        """Resolve every dependency; if one fails, stop those already started, then raise."""
        urls: dict[str, str] = {}
        try:
            for name in self._names:
                env_var = DEPENDENCY_ENV[name]
                urls[env_var] = self._environ.get(env_var) or self._start(name)
        except BaseException:
            self._stop_all()
            raise
        return urls

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop exactly what this context started, newest first."""
        self._stop_all()

    def _start(self, name: str) -> str:
        """Start one embedded server and remember it for `__exit__`."""
        self._data_dir.mkdir(parents=True, exist_ok=True)
        server = _SERVERS[name](self._data_dir)
        self._running.append(server)  # before start: a half-started server is stopped too
        began = time.monotonic()
        try:
            server.start()
        except FileNotFoundError as error:  # a binary or package missing from the install
            raise server.start_error(str(error)) from error
        self.started.append(name)
        log.info(
            "dependency started",
            dependency=name,
            port=server.port,
            seconds=round(time.monotonic() - began, 3),
            log_file=str(server.log_path),
        )
        return server.url

    def _stop_all(self) -> None:
        """Stop running servers in reverse start order."""
        while self._running:
            server = self._running.pop()
            server.stop()
            log.info("dependency stopped", dependency=server.name)
