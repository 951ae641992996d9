"""Which failed calls the SDK tries again, and when (tenacity does the looping).

UNAVAILABLE is retried: the service or one of its dependencies is down for a moment (a
restart, a failover, a connection reset). RESOURCE_EXHAUSTED is retried only when the server
says when, with a `google.rpc.RetryInfo` in `grpc-status-details-bin` (a rate limit); without
one it is a hard limit (a file over the streaming limit) and comes back at once. A RetryInfo
delay is honoured as given, not shortened; one longer than `max_retry_delay_s` is not waited
for: the error goes back to the caller, who can decide to wait that long.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc
import tenacity
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"


def retry_delay_of(error: BaseException) -> float | None:
    """The delay in seconds a `google.rpc.RetryInfo` detail of a failed call asks for."""
    if not isinstance(error, grpc.aio.AioRpcError):
        return None
    for key, value in error.trailing_metadata() or ():
        if key != _DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.ToNanoseconds() / 1e9
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry; `RetryPolicy(attempts=1)` turns retries off."""

    attempts: int = 5
    """Calls in all, the first one included."""
    initial_backoff_s: float = 0.2
    """First wait without a RetryInfo; doubles per attempt, with jitter."""
    max_backoff_s: float = 5.0
    """Longest wait without a RetryInfo."""
    max_retry_delay_s: float = 30.0
    """Longest RetryInfo delay waited for; a longer one returns the error."""

    def should_retry(self, error: BaseException) -> bool:
        """Whether `error` is one to try again after (see the module docstring)."""
        if not isinstance(error, grpc.aio.AioRpcError):
            return False
        delay = retry_delay_of(error)
        if delay is not None and delay > self.max_retry_delay_s:
            return False
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            return True
        return error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None

    def backoff_s(self, attempt: int) -> float:
        """Exponential backoff with full jitter on the top half, `attempt` counting from 1."""
        ceiling = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto

    def delay_s(self, error: BaseException, attempt: int) -> float:
        """How long to wait after `error` on attempt `attempt`: RetryInfo, else backoff."""
        delay = retry_delay_of(error)
        return delay if delay is not None else self.backoff_s(attempt)

    def retrying(self) -> tenacity.AsyncRetrying:
        """A fresh tenacity loop for one call: `await policy.retrying()(coroutine_fn)`."""
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(self.should_retry),
            wait=_WaitRetryInfo(self),
            stop=tenacity.stop_after_attempt(self.attempts),
            reraise=True,
        )


class _WaitRetryInfo(tenacity.wait.wait_base):
    """tenacity wait strategy: the server's RetryInfo delay if it sent one, else backoff."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if error is None:
            return self._policy.backoff_s(retry_state.attempt_number)
        return self._policy.delay_s(error, retry_state.attempt_number)
