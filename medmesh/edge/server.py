"""The edge's lifecycle: build the app, serve it with uvicorn on a socket bound up front (so
port 0 works and the address is known before the ready file is written), stop gracefully.

Signals are the caller's business (`termination_event`), as for the services: uvicorn's own
handlers are switched off so that it never swallows Ctrl-C meant for the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
from collections.abc import Iterator

import structlog
import uvicorn

from medmesh.contract import DescriptorImage
from medmesh.edge.app import EdgeApp
from medmesh.edge.settings import EdgeSettings
from medmesh.edge.webapp import WebApp
from medmesh.runtime import _write_ready_file as write_ready_file  # the services' own, atomic
from medmesh.runtime import termination_event
from medmesh.settings import SERVICES
from medmesh.telemetry import configure_logging, configure_tracing, start_metrics_endpoint

_log = structlog.get_logger("medmesh.edge")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(addr: str) -> socket.socket:
    """A listening TCP socket on `host:port` (port 0: a free one)."""
    host, _, port = addr.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose `proto`
    # says TCP, and a socket made with proto 0 says 0. Without it, Nagle + delayed ACKs add
    # ~40 ms to every response written in two parts (headers, then body).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def build_app(settings: EdgeSettings, image: DescriptorImage | None = None) -> EdgeApp:
    """The ASGI app for these settings (must run inside the event loop that serves it)."""
    missing = [name for name in SERVICES if name not in settings.upstreams]
    if missing:
        _log.warning("no upstream configured; their routes answer 503", services=missing)
    return EdgeApp(
        image or DescriptorImage(),
        settings.upstreams,
        authz_addr=settings.authz_addr,
        upstream_ca_file=settings.upstream_ca_file,
        cors_origins=settings.cors_origins,
        upstream_timeout_s=settings.upstream_timeout_s,
        authz_timeout_s=settings.authz_timeout_s,
        max_body_bytes=settings.max_body_bytes,
        webapp=WebApp(settings.web_dir, settings.object_origins) if settings.web_dir else None,
    )


async def serve_edge(
    settings: EdgeSettings,
    *,
    image: DescriptorImage | None = None,
    stop: asyncio.Event | None = None,
    started: asyncio.Future[str] | None = None,
) -> None:
    """Serve until `stop` is set (default: SIGTERM/SIGINT). `started` gets the base URL."""
    stop = stop or termination_event()
    metrics = start_metrics_endpoint(settings.metrics_addr)
    app = build_app(settings, image)
    sock = bind(settings.addr)
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    config = uvicorn.Config(
        app,
        # httptools' C parser; uvicorn's pure-Python h11 when it is not installed.
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="off",
        log_config=None,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=max(1, int(settings.grace_period_s)),
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                await task  # raises what made start-up fail
                raise RuntimeError("the edge stopped while starting")
            await asyncio.sleep(0.01)
        _log.info("edge serving", url=url, upstreams=dict(settings.upstreams))
        if settings.ready_file:
            addresses = {"http": url, "metrics": metrics.address if metrics else ""}
            write_ready_file(settings.ready_file, addresses)
        if started is not None and not started.done():
            started.set_result(url)
        await stop.wait()
        _log.info("edge draining", grace_s=settings.grace_period_s)
        app.serving = False
        server.should_exit = True
        await task
    finally:
        if not task.done():
            server.should_exit = True
            server.force_exit = True
            await task
        await app.close()
        sock.close()
        if metrics:
            metrics.close()
        _log.info("edge stopped")


def main() -> None:
    """`python -m medmesh.edge`: settings from the environment, then serve."""
    settings = EdgeSettings.from_env(os.environ)
    configure_logging("edge", settings.log_level)
    configure_tracing("edge", settings.otlp_endpoint)
    asyncio.run(serve_edge(settings))
