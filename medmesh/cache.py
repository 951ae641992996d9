"""Redis for every service (sessions, rate limits, result cache), opened the same way everywhere.

redis-py connects lazily, so a wrong URL would otherwise only show on the first request;
`open_redis` pings first so that start-up fails with `DependencyUnavailable("redis")`.
Short socket timeouts keep a stalled Redis from holding a request for redis-py's default
of "forever", and a jittered exponential retry rides out a failover or a dropped connection.
The pool *waits* (up to the socket timeout) for a free connection when all `max_connections`
are busy: redis-py's default pool raises "Too many connections" at once instead, which under
200 concurrent clients made svc_auth's gateway Check answer UNAVAILABLE within milliseconds
(found by bench/bench_load.py).

Transport: `rediss://` speaks TLS and verifies the server's certificate and host name (against
`ca_file` when given, else the system's CAs); the password (`redis://:PASSWORD@host`, or
`USER:PASSWORD@` for an ACL user) travels in the URL and never reaches a log or an error.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from medmesh.errors import DependencyUnavailable

# Errors after which the command is safe to resend on a fresh connection.
TRANSIENT_ERRORS: tuple[type[RedisError], ...] = (RedisConnectionError, RedisTimeoutError)


async def open_redis(
    url: str,
    *,
    socket_timeout_s: float = 2.0,
    connect_timeout_s: float = 2.0,
    retries: int = 3,
    max_connections: int = 50,
    health_check_interval_s: int = 30,
    client_name: str | None = None,
    ca_file: str = "",
) -> Redis:
    """Connect to `url` (`redis://host:port/db`, `rediss://` for TLS), ping, and return it.

    Raises DependencyUnavailable("redis") when the ping fails after the retries (a refused
    password, an untrusted certificate). The client returns bytes (no decode_responses)
    because callers store both text and binary values.
    """
    tls: dict[str, Any] = {}
    if url.startswith("rediss://"):
        tls = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if ca_file:
            tls["ssl_ca_certs"] = ca_file
    pool = BlockingConnectionPool.from_url(
        url,
        timeout=socket_timeout_s,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        socket_keepalive=True,
        retry=Retry(
            ExponentialWithJitterBackoff(base=0.05, cap=1.0),
            retries,
            supported_errors=TRANSIENT_ERRORS,
        ),
        max_connections=max_connections,
        health_check_interval=health_check_interval_s,
        client_name=client_name,
        **tls,
    )
    client = Redis.from_pool(pool)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise DependencyUnavailable("redis", str(exc)) from exc
    return client
