"""`medmesh up`: the whole product on one machine.

Starts the dependencies that have no URL configured (embedded, data kept under the data
directory), migrates every schema, starts each service as its own process on a free port,
waits until each reports SERVING through its ready file, then prints where everything listens.
A service, the edge or the model server that dies (a crash, kill -9, OOM) is started again on
the addresses it had, with a growing pause between restarts, so the printed addresses stay
true and the edge keeps its upstreams; what a dead worker had taken is redelivered by
JetStream and what svc_ingest had committed is sent by its outbox. Ctrl-C (or SIGTERM) stops
the services gracefully, then the embedded dependencies.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import structlog

from medmesh.devstack import build_models, database_roles, local_secrets, mail_sink
from medmesh.launcher import DEPENDENCY_ENV, EmbeddedDependencies
from medmesh.launcher._process import die_with_parent
from medmesh.migrate import migrate_all
from medmesh.settings import SERVICES
from medmesh.webbuild import WebBuildError, build_web_app

_log = structlog.get_logger("medmesh.up")

READY_TIMEOUT_S = 60.0
MODEL_SERVER_READY_TIMEOUT_S = 180.0
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Pause before the 1st, 2nd, ... restart of the same process (the last one repeats); a
process that stayed up for RESTART_RESET_S starts again from the first."""
RESTART_RESET_S = 60.0


class StartupError(RuntimeError):
    """A service did not become ready; the message says which and where its log is."""


@dataclass
class ServiceProcess:
    """A running service child process and what it reported once ready."""

    name: str
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_file: Path
    addresses: Mapping[str, str] | None = None
    # How it was started, so that a dead one can be started again the same way.
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    module: str = ""
    arguments: tuple[str, ...] = ()
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)


def _spawn(
    name: str,
    env: Mapping[str, str],
    run_dir: Path,
    log_dir: Path,
    module: str = "",
    arguments: tuple[str, ...] = (),
) -> ServiceProcess:
    ready_file = run_dir / f"{name}.json"
    ready_file.unlink(missing_ok=True)
    log_file = log_dir / f"{name}.log"
    child_env = {**env, "MEDMESH_READY_FILE": str(ready_file)}
    child_env.setdefault("MEDMESH_GRPC_ADDR", "127.0.0.1:0")
    child_env.pop("MEDMESH_GRPC_ADDR_" + name.upper(), None)
    with log_file.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", module or f"svc_{name}", *arguments],
            env=child_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # A supervisor killed outright (SIGKILL, OOM) must not leave services running.
            preexec_fn=die_with_parent(signal.SIGTERM),  # noqa: PLW1509 - only calls prctl
        )
    return ServiceProcess(
        name, process, ready_file, log_file, env=env, module=module, arguments=arguments
    )


def _same_addresses(service: ServiceProcess) -> tuple[dict[str, str], tuple[str, ...]]:
    """The environment and arguments that bind a restarted process where the dead one was."""
    addresses = service.addresses or {}
    env = dict(service.env)
    arguments = service.arguments
    if grpc_addr := addresses.get("grpc"):
        env["MEDMESH_GRPC_ADDR"] = grpc_addr
        port = grpc_addr.rsplit(":", 1)[1]
        arguments = tuple(
            port if i > 0 and arguments[i - 1] == "--port" else value
            for i, value in enumerate(arguments)
        )
    if metrics_addr := addresses.get("metrics"):
        env["MEDMESH_METRICS_ADDR"] = metrics_addr
    return env, arguments


def restart_if_dead(
    service: ServiceProcess,
    timeout_s: float = READY_TIMEOUT_S,
    stopping: Callable[[], bool] = lambda: False,
) -> bool:
    """Start `service` again, on its old addresses, if its process has exited and its pause
    is over; True once it is SERVING again. The same object is updated, so whoever holds it
    (the Ctrl-C handling included) sees the new process."""
    code = service.process.poll()
    if code is None:
        return False
    now = time.monotonic()
    if now - service.started_at > RESTART_RESET_S:
        service.restarts = 0
    pause = RESTART_BACKOFF_S[min(service.restarts, len(RESTART_BACKOFF_S) - 1)]
    try:
        why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    except ValueError:
        why = f"signal {-code}"
    print(
        f"medmesh up: {service.name} died ({why}; see {service.log_file}); "
        f"starting it again in {pause:.0f} s on the same addresses",
        file=sys.stderr,
        flush=True,
    )
    until = time.monotonic() + pause
    while time.monotonic() < until:
        if stopping():
            return False
        time.sleep(0.1)
    env, arguments = _same_addresses(service)
    fresh = _spawn(
        service.name,
        env,
        service.ready_file.parent,
        service.log_file.parent,
        service.module,
        arguments,
    )
    service.process, service.restarts, service.started_at = fresh.process, service.restarts + 1, now
    previous, service.addresses = service.addresses, None
    try:
        _wait_ready([service], timeout_s)
    except StartupError as exc:
        service.addresses = previous  # try again, on the same addresses, after a longer pause
        print(f"medmesh up: {exc}", file=sys.stderr, flush=True)
        return False
    return True


def _wait_ready(services: list[ServiceProcess], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = [s for s in services if s.addresses is None]
    while pending:
        for service in list(pending):
            if service.process.poll() is not None:
                raise StartupError(
                    f"{service.name} exited with {service.process.returncode}; "
                    f"see {service.log_file}"
                )
            if service.ready_file.exists():
                service.addresses = json.loads(service.ready_file.read_text())
                pending.remove(service)
        if time.monotonic() > deadline:
            names = ", ".join(s.name for s in pending)
            raise StartupError(f"not ready after {timeout_s:.0f} s: {names}")
        time.sleep(0.05)


def _stop(services: list[ServiceProcess], grace_s: float) -> None:
    for service in services:
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 5
    for service in services:
        try:
            service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()


@contextmanager
def running_services(
    env: Mapping[str, str], data_dir: Path, names: tuple[str, ...] = SERVICES
) -> Iterator[list[ServiceProcess]]:
    """Start the services as child processes and yield them once all are SERVING."""
    run_dir, log_dir = data_dir / "run", data_dir / "logs"
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    services: list[ServiceProcess] = []
    try:
        # svc_auth first: every other service verifies tokens with the keys it publishes.
        first, rest = names[:1], names[1:]
        services.extend(_spawn(name, env, run_dir, log_dir) for name in first)
        _wait_ready(services, READY_TIMEOUT_S)
        env = {**env, "MEDMESH_AUTH_ADDR": (services[0].addresses or {})["grpc"]}
        services.extend(_spawn(name, env, run_dir, log_dir) for name in rest)
        _wait_ready(services, READY_TIMEOUT_S)
        yield services
    finally:
        _stop(services, grace_s=float(env.get("MEDMESH_GRACE_PERIOD_S", "10")))


@contextmanager
def running_edge(
    env: Mapping[str, str], data_dir: Path, services: list[ServiceProcess]
) -> Iterator[ServiceProcess]:
    """Start the embedded edge (REST, gRPC-Web, ext_authz) in front of the running services
    and yield it once it listens. Entered after the services, so it stops before them."""
    upstreams = {
        f"MEDMESH_{s.name.upper()}_ADDR": (s.addresses or {}).get("grpc", "") for s in services
    }
    edge = _spawn("edge", {**env, **upstreams}, data_dir / "run", data_dir / "logs", "medmesh.edge")
    try:
        _wait_ready([edge], READY_TIMEOUT_S)
        yield edge
    finally:
        _stop([edge], grace_s=float(env.get("MEDMESH_GRACE_PERIOD_S", "10")))


@contextmanager
def running_model_server(env: dict[str, str], data_dir: Path) -> Iterator[ServiceProcess | None]:
    """Without MEDMESH_INFER_TF_SERVING_ADDR: build the models and serve them with the
    project's TF Serving-compatible server, and point svc_infer at it."""
    if env.get("MEDMESH_INFER_TF_SERVING_ADDR"):
        yield None
        return
    base_dir = build_models(env, data_dir)
    run_dir = data_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    arguments = (
        "--model-base",
        str(base_dir),
        "--version-policy",
        "all",
        "--port",
        "0",
        "--ready-file",
        str(run_dir / "model-server.json"),
    )
    server = _spawn(
        "model-server", env, run_dir, data_dir / "logs", "svc_infer.model_server", arguments
    )
    try:
        _wait_ready([server], MODEL_SERVER_READY_TIMEOUT_S)
        env["MEDMESH_INFER_TF_SERVING_ADDR"] = (server.addresses or {})["grpc"]
        yield server
    finally:
        _stop([server], grace_s=5)


def reserve_edge_url(env: dict[str, str]) -> str:
    """Fix the edge's address before the services start (a free port unless MEDMESH_EDGE_ADDR
    names one), so that the links in their mails (MEDMESH_AUTH_PUBLIC_URL,
    MEDMESH_REPORT_PUBLIC_URL; kept when set) open the web app the edge serves."""
    host, _, port = env.get("MEDMESH_EDGE_ADDR", "").rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port or port == "0":
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, 0))
            port = str(probe.getsockname()[1])
        env["MEDMESH_EDGE_ADDR"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 - a comparison
    url = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    env.setdefault("MEDMESH_AUTH_PUBLIC_URL", url)
    env.setdefault("MEDMESH_REPORT_PUBLIC_URL", url)
    return url


def web_app_note(env: Mapping[str, str], data_dir: Path) -> str:
    """Build the web app when stale (MEDMESH_WEB_BUILD=off skips it); "" when it is ready,
    else why it is not (the stack runs anyway; the app's addresses answer 503)."""
    if env.get("MEDMESH_WEB_BUILD", "").lower() == "off":
        return "not rebuilt (MEDMESH_WEB_BUILD=off)"
    try:
        build_web_app(env, data_dir / "logs" / "web-build.log")
    except WebBuildError as exc:
        _log.warning("web app not built", error=str(exc))
        return f"not built: {exc}"
    return ""


def status_lines(dependencies: Mapping[str, str], services: list[ServiceProcess]) -> list[str]:
    """`auth grpc 127.0.0.1:PORT` lines: what `medmesh up` prints once everything is ready."""
    lines = [f"{name} {url}" for name, url in dependencies.items()]
    for service in services:
        addresses = service.addresses or {}
        if "http" in addresses:  # the edge
            lines.append(f"{service.name} {addresses['http']}")
        else:
            lines.append(f"{service.name} grpc {addresses.get('grpc', '')}")
        if addresses.get("metrics"):
            lines.append(f"{service.name} metrics http://{addresses['metrics']}/metrics")
    return lines


def status_document(services: list[ServiceProcess]) -> dict[str, str]:
    """`{"auth": "127.0.0.1:PORT", ..., "edge": "http://127.0.0.1:PORT"}`: the JSON written
    by `--status-file`."""
    return {
        s.name: (s.addresses or {}).get("http") or (s.addresses or {}).get("grpc", "")
        for s in services
    }


def _supervise_until_signal(children: list[ServiceProcess], poll_s: float = 0.5) -> None:
    """Until Ctrl-C/SIGTERM: start again any child that died."""
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not received:
            for child in children:
                if received:
                    break
                restart_if_dead(child, stopping=lambda: bool(received))
            time.sleep(poll_s)
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def up(data_dir: Path, status_file: Path | None, environ: Mapping[str, str]) -> int:
    """Run the whole stack in the foreground until Ctrl-C. Returns the process exit code."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        dependencies_started = EmbeddedDependencies(data_dir, environ)
        urls = stack.enter_context(dependencies_started)
        env = {**environ, **urls}
        smtp_url = stack.enter_context(mail_sink(env, data_dir))
        admin = local_secrets(env, data_dir)
        migration_env = database_roles(
            env, data_dir, embedded="postgres" in dependencies_started.started
        )
        web_url = reserve_edge_url(env)
        web_note = web_app_note(env, data_dir)
        migrate_all(migration_env)  # as the migration role; services get their own roles
        try:
            model_server = stack.enter_context(running_model_server(env, data_dir))
            services = stack.enter_context(running_services(env, data_dir))
            edge = stack.enter_context(running_edge(env, data_dir, services))
        except (StartupError, RuntimeError) as exc:
            print(f"medmesh up: {exc}", file=sys.stderr)
            return 1
        dependencies = {name: urls[var] for name, var in DEPENDENCY_ENV.items()}
        dependencies["smtp"] = smtp_url
        if model_server:
            dependencies["tfserving"] = f"grpc {env['MEDMESH_INFER_TF_SERVING_ADDR']}"
        for line in status_lines(dependencies, [*services, edge]):
            print(line, flush=True)
        print(f"web {web_url}/ {web_note or '(the web app)'}", flush=True)
        if admin:
            print(
                f"admin {admin['email']} of {admin['clinic']} (password in "
                f"{admin['password_file']})",
                flush=True,
            )
        if status_file:
            status_file.write_text(json.dumps(status_document([*services, edge]), indent=2))
        print(
            f"logs in {data_dir / 'logs'}; mail in {data_dir / 'mail'}; Ctrl-C stops everything",
            flush=True,
        )
        _supervise_until_signal([*([model_server] if model_server else []), *services, edge])
    return 0


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """MEDMESH_DATA_DIR, else `.data` in the current directory."""
    return Path(environ.get("MEDMESH_DATA_DIR", os.path.join(os.getcwd(), ".data")))
