"""PostgreSQL pool use on `/metrics`: psycopg_pool's own counters (`get_stats()`), read at
scrape time for every pool a service opened (`watch_database`).

Query time is `medmesh_db_query_seconds` (medmesh.telemetry, from the psycopg spans).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from medmesh.db import Database

# (metric, help, get_stats key, divisor); gauges are the pool's state now, counters totals.
_GAUGES = (
    ("medmesh_db_pool_connections", "Connections the pool holds (idle + in use).", "pool_size"),
    ("medmesh_db_pool_idle", "Connections idle in the pool, ready to lend.", "pool_available"),
    ("medmesh_db_pool_max", "The pool's maximum size.", "pool_max"),
    ("medmesh_db_pool_waiting", "Requests waiting for a connection now.", "requests_waiting"),
)
_COUNTERS = (
    ("medmesh_db_pool_requests", "Connections requested from the pool.", "requests_num", 1),
    ("medmesh_db_pool_queued", "Requests that had to wait for a connection.", "requests_queued", 1),
    (
        "medmesh_db_pool_wait_seconds",
        "Time requests spent waiting for a connection.",
        "requests_wait_ms",
        1000,
    ),
    ("medmesh_db_pool_usage_seconds", "Time connections were lent out.", "usage_ms", 1000),
    (
        "medmesh_db_pool_timeouts",
        "Requests that got no connection in time (UNAVAILABLE).",
        "requests_errors",
        1,
    ),
    (
        "medmesh_db_pool_connections_lost",
        "Connections found broken on checkout or lost.",
        "connections_lost",
        1,
    ),
    (
        "medmesh_db_pool_connection_errors",
        "Failed attempts to open a connection.",
        "connections_errors",
        1,
    ),
)


class PoolCollector(Collector):
    """Reads `Database.stats()` of every watched database when Prometheus scrapes."""

    def __init__(self) -> None:
        self._databases: dict[str, Database] = {}
        self._lock = threading.Lock()

    def watch(self, name: str, database: Database) -> None:
        """Report `database`'s pools as `pool="<name>-<write|read>"` (replaces a namesake)."""
        with self._lock:
            self._databases[name] = database

    def forget(self, name: str) -> None:
        """Stop reporting `name` (its pools closed)."""
        with self._lock:
            self._databases.pop(name, None)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self._lock:
            databases = list(self._databases.items())
        gauges = [GaugeMetricFamily(n, h, labels=["pool"]) for n, h, _ in _GAUGES]
        counters = [CounterMetricFamily(n, h, labels=["pool"]) for n, h, _, _ in _COUNTERS]
        for name, database in databases:
            for role, stats in database.stats().items():
                pool = f"{name}-{role}"
                for family, (_, _, key) in zip(gauges, _GAUGES, strict=True):
                    family.add_metric([pool], stats.get(key, 0))
                for counter, (_, _, key, divisor) in zip(counters, _COUNTERS, strict=True):
                    counter.add_metric([pool], stats.get(key, 0) / divisor)
        yield from gauges
        yield from counters


_collector: PoolCollector | None = None
_collector_lock = threading.Lock()


def pool_collector() -> PoolCollector:
    """The process's collector, registered in the default registry on first use."""
    global _collector  # noqa: PLW0603 - one collector per registry, like the metric objects
    with _collector_lock:
        if _collector is None:
            _collector = PoolCollector()
            REGISTRY.register(_collector)
        return _collector


def watch_database(name: str, database: Database) -> None:
    """Export `database`'s pool counters under `pool="<name>-write"` (and `-read`)."""
    pool_collector().watch(name, database)
