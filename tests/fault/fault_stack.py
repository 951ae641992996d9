"""Handles of the fault suite: service processes started, killed and stopped by the tests,
and the environment they share."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from medmesh.jetstream import Topology

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0


@dataclass
class ServiceProcess:
    """One `python -m <module>` process with its log file."""

    module: str
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0

    async def start(self) -> float:
        """Start it and wait until it wrote its ready file (it is SERVING); the seconds that
        took."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        ready = Path(self.env["MEDMESH_READY_FILE"])
        ready.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        while not ready.exists():
            if self.process.returncode is not None:
                raise AssertionError(f"{self.module} exited: see {self.log_path}")
            if loop.time() - began > START_TIMEOUT_S:
                raise AssertionError(f"{self.module} not ready in {START_TIMEOUT_S} s")
            await asyncio.sleep(0.05)
        return loop.time() - began

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.returncode is None

    async def kill9(self) -> None:
        """SIGKILL: no grace, nothing settled, nothing flushed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 30 s); a no-op when it is not running."""
        if self.process is None or not self.running:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                await self.process.wait()
        except TimeoutError:
            await self.kill9()


@dataclass
class FaultStack:
    """The test's names and environment, and the processes it started."""

    tmp_path: Path
    prefix: str
    database_url: str
    base_env: dict[str, str]
    topology: Topology
    processes: list[ServiceProcess] = field(default_factory=list)

    def service(self, service: str, name: str, **extra: str) -> ServiceProcess:
        """A (not yet started) process of `svc_<service>`; `extra` adds variables."""
        env = {
            **self.base_env,
            "MEDMESH_READY_FILE": str(self.tmp_path / f"{name}.ready.json"),
            **extra,
        }
        process = ServiceProcess(f"svc_{service}", env, self.tmp_path / f"{name}.log")
        self.processes.append(process)
        return process

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Rows of a query against the test's database."""
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True, row_factory=dict_row
        ) as conn:
            cur = await conn.execute(sql, params)  # type: ignore[arg-type]
            return await cur.fetchall()

    async def count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """The single number a `SELECT count(*) ...` returns (0 before the table exists)."""
        try:
            rows = await self.query(sql, params)
        except psycopg.errors.UndefinedTable:
            return 0
        return int(next(iter(rows[0].values())))


def full_run() -> bool:
    """MEDMESH_FAULT_FULL=1 runs the issue's full sizes (slower); CI runs smaller ones."""
    return os.environ.get("MEDMESH_FAULT_FULL", "") == "1"
