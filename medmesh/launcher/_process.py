"""Process plumbing shared by the embedded dependencies: free ports, packaged binaries,
children that die with their parent, and a base class that owns one server's lifecycle."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import structlog

log = structlog.get_logger()

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_PORT_ATTEMPTS = 3  # a free port can be taken by someone else before the server binds it
_POLL_INTERVAL_S = 0.02
_LOG_TAIL_CHARS = 2000


class EmbeddedStartError(RuntimeError):
    """An embedded dependency could not be started; the message names the variable that
    points medmesh at an already running server instead."""

    def __init__(self, name: str, env_var: str, reason: str) -> None:
        super().__init__(
            f"could not start embedded {name}: {reason}\n"
            f"Set {env_var} to the URL of a running {name} server to use it instead."
        )
        self.name = name
        self.env_var = env_var


def free_port() -> int:
    """Ask the OS for a free loopback port; never a standard one, so a developer's own
    PostgreSQL/Redis/NATS/MinIO on this machine is never touched."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def port_accepts(port: int) -> bool:
    """True when something accepts TCP connections on the loopback port."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def packaged_file(distribution: str, file_name: str) -> Path:
    """Locate an executable shipped inside an installed distribution (not from PATH), so
    the version pinned in pyproject.toml is the one that runs."""
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError as error:
        raise FileNotFoundError(f"the package {distribution} is not installed") from error
    for entry in files:
        if entry.name == file_name:
            path = Path(str(entry.locate())).resolve()
            if os.access(path, os.X_OK):
                return path
    raise FileNotFoundError(f"{file_name} is not among the files of the package {distribution}")


def die_with_parent(death_signal: int) -> Any:
    """Build a preexec_fn asking the kernel to signal the child when its parent dies, so a
    killed test run or CLI leaves no servers behind. Runs after setuid in the child (the
    kernel clears this setting on credential changes), and only calls one C function."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, death_signal)

    return preexec


def spawn(
    command: Sequence[str],
    log_path: Path,
    death_signal: signal.Signals,
    *,
    cwd: Path,
    user: int | None = None,
    group: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server in its own session (a terminal's Ctrl-C reaches only the parent,
    which then stops children in order) with its output appended to `log_path`."""
    with log_path.open("ab") as log_file:
        return subprocess.Popen(  # noqa: S603 - command is built from packaged binaries
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            user=user,
            group=group,
            start_new_session=True,
            preexec_fn=die_with_parent(death_signal),  # noqa: PLW1509 - only calls prctl
        )


def stop_process(
    process: subprocess.Popen[bytes], stop_signal: signal.Signals, timeout_s: float = 15.0
) -> None:
    """Ask politely, wait, then kill the whole process group (PostgreSQL backends too)."""
    if process.poll() is None:
        process.send_signal(stop_signal)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("dependency did not stop in time, killing it", pid=process.pid)
            # Killed while still unreaped, so the group id cannot have been reused.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def read_log_tail(log_path: Path) -> str:
    """The end of a server's log, for error messages that explain a failed start."""
    try:
        return log_path.read_text(errors="replace")[-_LOG_TAIL_CHARS:]
    except FileNotFoundError:
        return ""


class EmbeddedServer(ABC):
    """One embedded server: data in `data_dir/<name>/`, log in `data_dir/<name>.log`,
    listening on a free loopback port, ready only when a real client request succeeds."""

    name: ClassVar[str]
    env_var: ClassVar[str]
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    start_timeout_s: ClassVar[float] = 60.0

    def __init__(self, data_dir: Path) -> None:
        self.storage = data_dir / self.name
        self.log_path = data_dir / f"{self.name}.log"
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    @abstractmethod
    def url(self) -> str:
        """The URL clients use, in the form the matching MEDMESH_* variable takes."""

    @abstractmethod
    def command(self) -> list[str]:
        """The server's command line for the ports allocated by `allocate_ports`."""

    @abstractmethod
    def is_ready(self) -> bool:
        """One readiness probe with the real client; False while the server is starting."""

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return None if self._process is None else self._process.pid

    def prepare(self) -> None:
        """Create the data folder; servers with more setup (initdb) extend this."""
        self.storage.mkdir(parents=True, exist_ok=True)

    def allocate_ports(self) -> None:
        """Pick the ports for one start attempt."""
        self.port = free_port()

    def spawn_options(self) -> dict[str, Any]:
        """Extra spawn arguments (PostgreSQL runs as another user when we are root)."""
        return {}

    def on_ready(self) -> None:
        """Hook run once the server answers (PostgreSQL creates its database here)."""
        log.debug("dependency answers", dependency=self.name, port=self.port)

    def start(self) -> None:
        """Start the server and return once it answers, retrying on a lost port race."""
        self.prepare()
        for _ in range(_PORT_ATTEMPTS):
            self.allocate_ports()
            self._process = spawn(
                self.command(),
                self.log_path,
                self.stop_signal,
                cwd=self.storage,
                **self.spawn_options(),
            )
            if self._wait_until_ready():
                self.on_ready()
                return
        code = self._process.returncode if self._process else None
        raise self.start_error(
            f"it exited with code {code}; log {self.log_path}:\n{read_log_tail(self.log_path)}"
        )

    def _wait_until_ready(self) -> bool:
        """Poll until ready (True) or the process exits (False); raise on timeout."""
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            if port_accepts(self.port) and self.is_ready():
                return True
            time.sleep(_POLL_INTERVAL_S)
        self.stop()
        raise self.start_error(f"not ready after {self.start_timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        """Stop the server if it runs; safe to call twice."""
        if self._process is not None:
            stop_process(self._process, self.stop_signal)
            self._process = None

    def start_error(self, reason: str) -> EmbeddedStartError:
        """An error that says what failed and which variable avoids starting this server."""
        return EmbeddedStartError(self.name, self.env_var, reason)
