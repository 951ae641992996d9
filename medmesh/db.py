"""PostgreSQL access for every service: one pool for writes, an optional one for a read replica.

Connections run in autocommit mode, so a read never leaves a transaction idle and every
write is an explicit `async with db.transaction() as conn:` block. Losing the server
(pool exhausted waiting for a connection, connection refused or dropped) surfaces as
`DependencyUnavailable("postgres")`, which the error interceptor maps to UNAVAILABLE so that
callers retry; SQL errors (constraint violations, syntax) pass through unchanged.

Failing fast when the server is down: every connection attempt a pool makes reports whether
the server answered. After a refused attempt (a connection failure, not "too many clients")
the database counts as unreachable until an attempt succeeds: requests waiting for a
connection get `DependencyUnavailable` at once, and new ones wait at most
`unreachable_wait_s` (long enough to take a connection the pool makes meanwhile, which is how
the pool notices the server is back) instead of the full `acquire_timeout_s`, which stays
the wait of a busy pool on a healthy server. Reconnection attempts back off as psycopg_pool's
do (1 s, doubling) but give up after `reconnect_timeout_s`, after which the next request
starts a new attempt at once: recovery after an outage of any length takes seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self, TypeAlias

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from medmesh.errors import DependencyUnavailable

Connection: TypeAlias = psycopg.AsyncConnection[DictRow]

# SQLSTATE classes that mean "the server went away", not "your SQL is wrong":
# 08 connection exception, 57P admin/crash shutdown, cannot connect now.
_CONNECTION_SQLSTATE_PREFIXES = ("08", "57P")


def _is_connection_failure(exc: psycopg.OperationalError) -> bool:
    """True when the error is about reaching the server; client-side failures have no SQLSTATE."""
    return exc.sqlstate is None or exc.sqlstate.startswith(_CONNECTION_SQLSTATE_PREFIXES)


class Reachability:
    """Whether the server answered the last connection attempt of a database's pools, and
    the checkouts waiting for a connection (woken with an error when an attempt fails)."""

    def __init__(self) -> None:
        self.failure: str | None = None
        """Why the last connection attempt failed; None once one succeeded."""
        self._waiting: set[asyncio.Timeout] = set()

    @property
    def reachable(self) -> bool:
        """False from a refused connection attempt until the next successful one."""
        return self.failure is None

    def connected(self) -> None:
        """A pool's connection attempt succeeded."""
        self.failure = None

    def refused(self, exc: psycopg.OperationalError) -> None:
        """A pool's connection attempt failed to reach the server: wake every waiting
        checkout (its scope expires now, it raises DependencyUnavailable)."""
        self.failure = str(exc).strip() or type(exc).__name__
        now = asyncio.get_running_loop().time()
        for scope in self._waiting:
            if not scope.expired():
                scope.reschedule(now)

    @asynccontextmanager
    async def waiting(self) -> AsyncIterator[asyncio.Timeout]:
        """A scope around one wait for a connection that `refused` can end early."""
        async with asyncio.timeout(None) as scope:
            self._waiting.add(scope)
            try:
                yield scope
            finally:
                self._waiting.discard(scope)


def _reporting_connection_class(reachability: Reachability) -> type[Connection]:
    """The pools' connection class: each connection attempt reports its outcome."""

    class ReportingConnection(psycopg.AsyncConnection[DictRow]):
        @classmethod
        async def connect(  # type: ignore[override]
            cls, conninfo: str = "", **kwargs: Any
        ) -> ReportingConnection:
            try:
                conn = await super().connect(conninfo, **kwargs)
            except psycopg.OperationalError as exc:
                if _is_connection_failure(exc):
                    reachability.refused(exc)
                raise
            reachability.connected()
            return conn

    return ReportingConnection


class Database:
    """A write pool and a read pool (the same pool when no replica URL is given).

    Open it with `await db.open()` or `async with Database(url) as db:`; `open` waits until
    `min_size` connections exist so that a service that cannot reach its database fails at
    start-up instead of on its first request.
    """

    def __init__(
        self,
        url: str,
        *,
        read_url: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        open_timeout_s: float = 10.0,
        acquire_timeout_s: float = 5.0,
        connect_timeout_s: int = 5,
        unreachable_wait_s: float = 0.5,
        reconnect_timeout_s: float = 10.0,
        application_name: str = "medmesh",
    ) -> None:
        self._open_timeout_s = open_timeout_s
        self._unreachable_wait_s = unreachable_wait_s
        self._reconnect_timeout_s = reconnect_timeout_s
        # One per pool: a replica that is down must not fail the primary's checkouts.
        self._write_reachability = self._read_reachability = Reachability()
        self._write_pool = self._make_pool(
            url,
            "write",
            self._write_reachability,
            min_size,
            max_size,
            acquire_timeout_s,
            connect_timeout_s,
            application_name,
        )
        self._read_pool = self._write_pool
        if read_url and read_url != url:
            self._read_reachability = Reachability()
            self._read_pool = self._make_pool(
                read_url,
                "read",
                self._read_reachability,
                min_size,
                max_size,
                acquire_timeout_s,
                connect_timeout_s,
                application_name,
            )

    def _make_pool(
        self,
        url: str,
        role: str,
        reachability: Reachability,
        min_size: int,
        max_size: int,
        acquire_timeout_s: float,
        connect_timeout_s: int,
        application_name: str,
    ) -> AsyncConnectionPool[Connection]:
        return AsyncConnectionPool(
            conninfo=url,
            connection_class=_reporting_connection_class(reachability),
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "connect_timeout": connect_timeout_s,
                "application_name": application_name,
            },
            min_size=min_size,
            max_size=max_size,
            timeout=acquire_timeout_s,
            # A connection that died while idle (server restart, failover) is replaced on
            # checkout instead of failing the request that happened to get it.
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=self._reconnect_timeout_s,
            name=f"{application_name}-{role}",
            open=False,
        )

    @property
    def has_replica(self) -> bool:
        """True when reads go to a separate pool (a replica URL was given)."""
        return self._read_pool is not self._write_pool

    async def open(self) -> None:
        """Open the pools, waiting for their first connections; raises DependencyUnavailable."""
        pools = [self._write_pool] + ([self._read_pool] if self.has_replica else [])
        try:
            for pool in pools:
                await pool.open(wait=True, timeout=self._open_timeout_s)
        except PoolTimeout as exc:
            await self.close()
            raise DependencyUnavailable(
                "postgres", f"no connection within {self._open_timeout_s:g} s: {exc}"
            ) from exc

    async def close(self) -> None:
        """Close both pools; connections in use are closed when returned."""
        await self._write_pool.close()
        if self.has_replica:
            await self._read_pool.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A write connection inside one transaction: committed on exit, rolled back on error."""
        async with self._checkout(self._write_pool) as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def write_connection(self) -> AsyncIterator[Connection]:
        """An autocommit connection on the primary, for one-statement writes (an audit row)
        that need no BEGIN/COMMIT round trips."""
        async with self._checkout(self._write_pool) as conn:
            yield conn

    @asynccontextmanager
    async def read_connection(self) -> AsyncIterator[Connection]:
        """An autocommit connection for reads, from the replica when one is configured."""
        async with self._checkout(self._read_pool) as conn:
            yield conn

    def reachable(self, role: str = "write") -> bool:
        """False while the pool's (`write` or `read`) last connection attempt failed."""
        return (self._write_reachability if role == "write" else self._read_reachability).reachable

    @asynccontextmanager
    async def _checkout(self, pool: AsyncConnectionPool[Connection]) -> AsyncIterator[Connection]:
        conn = await self._acquire(pool)
        try:
            async with conn:
                yield conn
        except psycopg.OperationalError as exc:
            if _is_connection_failure(exc):
                raise DependencyUnavailable("postgres", str(exc)) from exc
            raise
        finally:
            await pool.putconn(conn)

    async def _acquire(self, pool: AsyncConnectionPool[Connection]) -> Connection:
        """A connection from `pool`: the pool's full wait while the server answers, a short
        one while it does not, and an error at once when an attempt fails meanwhile."""
        reachability = (
            self._write_reachability if pool is self._write_pool else self._read_reachability
        )
        timeout = None if reachability.reachable else self._unreachable_wait_s
        try:
            async with reachability.waiting():
                return await pool.getconn(timeout)
        except TimeoutError as exc:  # woken by a refused connection attempt
            raise DependencyUnavailable(
                "postgres", f"server unreachable: {reachability.failure}"
            ) from exc
        except PoolTimeout as exc:
            if not reachability.reachable:
                raise DependencyUnavailable(
                    "postgres", f"server unreachable: {reachability.failure}"
                ) from exc
            raise DependencyUnavailable("postgres", f"no free connection: {exc}") from exc
        except psycopg.OperationalError as exc:
            if _is_connection_failure(exc):
                raise DependencyUnavailable("postgres", str(exc)) from exc
            raise

    def stats(self) -> dict[str, Any]:
        """Pool counters (size, waiting, errors) for metrics and the health endpoint."""
        stats: dict[str, Any] = {"write": self._write_pool.get_stats()}
        if self.has_replica:
            stats["read"] = self._read_pool.get_stats()
        return stats
