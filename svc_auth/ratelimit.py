"""Rate limits in Redis: a token bucket in its GCRA form (one key per bucket, no timers).

GCRA stores a single number per key, the "theoretical arrival time" (TAT) of the next request.
Each request pushes it `period / count` into the future; a request is refused when the TAT
would be more than `period` ahead of now, and the wait until it would not is the exact
Retry-After. The key expires when the bucket is full again, so idle counters vanish by
themselves. The clock is Redis's own (`TIME`), so replicas with skewed clocks agree.

When Redis cannot be reached, or does not answer within `OP_TIMEOUT_S`, every call raises
`DependencyUnavailable("redis")` (UNAVAILABLE): the limits fail closed. A sign-in attempt that
cannot be counted is not allowed, or a Redis outage would be a window for unlimited password
guessing (tests/fault/test_fault_redis_outage.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from redis.asyncio import Redis

from medmesh.cache import TRANSIENT_ERRORS
from medmesh.errors import DependencyUnavailable
from svc_auth.config import Rate

# KEYS[1] bucket; ARGV[1] emission interval (µs), ARGV[2] tolerance (µs), ARGV[3] 1 = consume.
# Returns {allowed (1/0), retry_after_us}.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + emission
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, allow_at - now}
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
end
return {1, 0}
"""

# Give one request back (it turned out not to count, e.g. a sign-in that succeeded):
# KEYS[1] bucket; ARGV[1] emission interval (µs).
_REFUND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
local new_tat = tat - tonumber(ARGV[1])
if new_tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
end
return 1
"""


OP_TIMEOUT_S = 1.0
"""The most one limiter call may take before it counts as Redis unavailable (a hung Redis
would otherwise hold a sign-in for the client's socket timeout times its retries, per bucket)."""
_UNAVAILABLE: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, TimeoutError)


@dataclass(frozen=True)
class Verdict:
    """Whether a request may proceed, and if not, after how many seconds it may."""

    allowed: bool
    retry_after_s: float = 0.0


class RateLimiter:
    """Named GCRA buckets under one Redis key prefix."""

    def __init__(self, redis: Redis, prefix: str, *, op_timeout_s: float = OP_TIMEOUT_S) -> None:
        self._redis = redis
        self._prefix = prefix
        self._op_timeout_s = op_timeout_s
        self._script = redis.register_script(_GCRA)
        self._refund = redis.register_script(_REFUND)

    def key(self, bucket: str, subject: str) -> str:
        """The Redis key of `subject`'s bucket (`<prefix>rl:<bucket>:<subject>`)."""
        return f"{self._prefix}rl:{bucket}:{subject}"

    async def hit(self, bucket: str, subject: str, rate: Rate) -> Verdict:
        """Count one request against the bucket; refused requests are not counted."""
        return await self._run(bucket, subject, rate, consume=True)

    async def peek(self, bucket: str, subject: str, rate: Rate) -> Verdict:
        """Would one more request be allowed? Counts nothing."""
        return await self._run(bucket, subject, rate, consume=False)

    async def refund(self, bucket: str, subject: str, rate: Rate) -> None:
        """Give back one request counted by `hit` (it turned out not to count)."""
        try:
            async with asyncio.timeout(self._op_timeout_s):
                await self._refund(keys=[self.key(bucket, subject)], args=[_emission_us(rate)])
        except _UNAVAILABLE as exc:
            raise DependencyUnavailable("redis", str(exc) or "no answer in time") from exc

    async def reset(self, bucket: str, subject: str) -> None:
        """Forget the bucket (e.g. failed logins after a successful one)."""
        try:
            async with asyncio.timeout(self._op_timeout_s):
                await self._redis.delete(self.key(bucket, subject))
        except _UNAVAILABLE as exc:
            raise DependencyUnavailable("redis", str(exc) or "no answer in time") from exc

    async def _run(self, bucket: str, subject: str, rate: Rate, *, consume: bool) -> Verdict:
        tolerance_us = rate.period_s * 1_000_000
        try:
            async with asyncio.timeout(self._op_timeout_s):
                allowed, retry_us = await self._script(
                    keys=[self.key(bucket, subject)],
                    args=[_emission_us(rate), int(tolerance_us), "1" if consume else "0"],
                )
        except _UNAVAILABLE as exc:
            raise DependencyUnavailable("redis", str(exc) or "no answer in time") from exc
        return Verdict(bool(allowed), int(retry_us) / 1_000_000)


def _emission_us(rate: Rate) -> int:
    return int(max(1.0, rate.period_s * 1_000_000 / rate.count))
