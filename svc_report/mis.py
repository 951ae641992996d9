"""Pushing a DiagnosticReport to a clinic's MIS: `POST <fhir_base_url>/DiagnosticReport`.

Every attempt of one delivery carries the same `Idempotency-Key` header (and FHIR's own
conditional create, `If-None-Exist: identifier=urn:medmesh:report|<id>`), so a MIS that saw
an attempt whose answer was lost does not record the report twice. Attempts are retried with
jittered exponential backoff (tenacity) on 5xx answers, timeouts and network errors only; a
4xx answer means the MIS refused this request as it is, so it is never retried. Each attempt
is reported to `on_attempt` before the next one starts, which stores it as a receipt.

Bounded, so one clinic's MIS cannot hurt the others (svc_report.egress for where it may
connect): each attempt has a total deadline (connect, send, the whole answer:
MEDMESH_REPORT_MIS_TIMEOUT_S; a MIS that drips its answer a byte at a time is cut off), the
answer is read up to MEDMESH_REPORT_MIS_MAX_RESPONSE_BYTES, a delivery with all its attempts
and waits has MEDMESH_REPORT_MIS_DELIVERY_DEADLINE_S, and the `deliver` consumer runs
deliveries one per slot in parallel (MEDMESH_REPORT_MIS_CONCURRENCY). A receipt keeps the
HTTP status and the resource id, never the MIS's response body (it may echo PHI or secrets).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from svc_report.config import ReportConfig
from svc_report.egress import EgressPolicy, RefusedDestination, Unresolved
from svc_report.fhir import REPORT_SYSTEM
from svc_report.model import Receipt

FHIR_JSON = "application/fhir+json"
IDEMPOTENCY_HEADER = "Idempotency-Key"


class MisDeliveryError(Exception):
    """The MIS did not accept the report; `receipt` is the last attempt."""

    def __init__(self, message: str, receipt: Receipt) -> None:
        super().__init__(message)
        self.receipt = receipt


class MisRejected(MisDeliveryError):
    """A 4xx answer: retrying the same request cannot help."""


class MisUnavailable(MisDeliveryError):
    """5xx answers, timeouts or network errors on every attempt."""


class _RetryableAttempt(Exception):
    def __init__(self, receipt: Receipt) -> None:
        super().__init__(receipt.error)
        self.receipt = receipt


@dataclass(frozen=True)
class MisEndpoint:
    """Where one clinic's reports go."""

    fhir_base_url: str
    bearer_token: str = ""

    @property
    def url(self) -> str:
        """The DiagnosticReport type endpoint (FHIR create)."""
        return self.fhir_base_url.rstrip("/") + "/DiagnosticReport"


def _mis_id(response: httpx.Response, content: bytes) -> str:
    """The id the MIS gave the resource: the body's `id`, else from `Location`
    (`.../DiagnosticReport/<id>/_history/<v>`)."""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("id"), str) and body["id"]:
        return str(body["id"])
    location = response.headers.get("location", "")
    if "/DiagnosticReport/" in location:
        return location.split("/DiagnosticReport/", 1)[1].split("/", 1)[0]
    return ""


def _accepted(receipt: Receipt) -> Receipt:
    """The receipt of an accepted attempt; raises what tenacity retries, or MisRejected."""
    status = receipt.http_status
    if 200 <= status < 300:
        return receipt
    if status == 0 or status >= 500:
        raise _RetryableAttempt(receipt)
    # 4xx (and an unexpected 1xx/3xx): this request as it is will not do.
    raise MisRejected(f"the MIS refused the report: {receipt.error}", receipt)


def _ssl_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """At most `limit` bytes of the answer; the rest is never read (the connection closes)."""
    content = bytearray()
    async for chunk in response.aiter_bytes():
        content += chunk[: limit - len(content)]
        if len(content) >= limit:
            break
    return bytes(content)


class MisClient:
    """An HTTP client for MIS endpoints (one connection pool for every clinic)."""

    def __init__(self, config: ReportConfig, policy: EgressPolicy | None = None) -> None:
        self._config = config
        self._policy = policy or EgressPolicy.from_cidrs(config.mis_allow_networks)
        self._http = httpx.AsyncClient(
            verify=_ssl_context(config.mis_ca_file),
            timeout=httpx.Timeout(config.mis_timeout_s),
            follow_redirects=False,  # a redirect could carry PHI to a host nobody configured
            trust_env=False,  # no proxy from the environment: the pinned address is the peer
            # Pooled connections are keyed by the pinned IP, not the host name: a kept-alive
            # connection verified for one clinic's MIS must not carry another's request to a
            # host on the same IP. Deliveries are rare; a fresh connection each costs little.
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def close(self) -> None:
        """Close pooled connections."""
        await self._http.aclose()

    async def _attempt(
        self, endpoint: MisEndpoint, body: bytes, headers: Mapping[str, str], key: str
    ) -> Receipt:
        attempt_time = datetime.now(UTC)
        try:
            destination = await self._policy.resolve(endpoint.url)
        except RefusedDestination as exc:
            receipt = Receipt(attempt_time, 0, "", f"refused destination: {exc}"[:500], key)
            raise MisRejected(f"the MIS URL is refused: {exc}", receipt) from None
        except Unresolved as exc:
            return Receipt(attempt_time, 0, "", str(exc)[:500], key)
        # Pinned: connect to the address just checked; TLS and Host still name the host.
        url = httpx.URL(endpoint.url).copy_with(host=str(destination.address))
        pinned_headers = {**headers, "Host": httpx.URL(endpoint.url).netloc.decode("ascii")}
        try:
            async with asyncio.timeout(self._config.mis_timeout_s):
                async with self._http.stream(
                    "POST",
                    url,
                    content=body,
                    headers=pinned_headers,
                    extensions={"sni_hostname": destination.host},
                ) as response:
                    content = await _read_capped(response, self._config.mis_max_response_bytes)
        except TimeoutError:
            error = f"no complete answer within {self._config.mis_timeout_s:g} s"
            return Receipt(attempt_time, 0, "", error, key)
        except httpx.TransportError as exc:  # refused connections, TLS failures
            return Receipt(attempt_time, 0, "", f"{type(exc).__name__}: {exc}"[:500], key)
        status = response.status_code
        if response.is_success:
            return Receipt(attempt_time, status, _mis_id(response, content), "", key)
        return Receipt(attempt_time, status, "", f"HTTP {status} {response.reason_phrase}", key)

    async def post(
        self,
        endpoint: MisEndpoint,
        resource: Mapping[str, Any],
        *,
        idempotency_key: str,
        report_id: str,
        on_attempt: Callable[[Receipt], Awaitable[None]],
    ) -> Receipt:
        """POST until accepted, refused (4xx) or out of attempts; returns the accepting
        attempt's receipt, raises MisRejected or MisUnavailable otherwise."""
        body = httpx.Request("POST", endpoint.url, json=dict(resource)).content
        headers = {
            "Content-Type": FHIR_JSON,
            "Accept": FHIR_JSON,
            IDEMPOTENCY_HEADER: idempotency_key,
            "If-None-Exist": f"identifier={REPORT_SYSTEM}|{report_id}",
        }
        if endpoint.bearer_token:
            headers["Authorization"] = f"Bearer {endpoint.bearer_token}"
        config = self._config
        last: list[Receipt] = []

        async def record(receipt: Receipt) -> None:
            last[:] = [receipt]
            await on_attempt(receipt)

        try:
            async with asyncio.timeout(config.mis_delivery_deadline_s):
                return await self._post_with_retries(
                    endpoint, body, headers, idempotency_key, record
                )
        except TimeoutError:
            receipt = (
                last[0]
                if last
                else Receipt(datetime.now(UTC), 0, "", "no attempt finished", idempotency_key)
            )
            raise MisUnavailable(
                f"the MIS did not accept the report within the delivery deadline "
                f"({config.mis_delivery_deadline_s:g} s)",
                receipt,
            ) from None

    async def _post_with_retries(
        self,
        endpoint: MisEndpoint,
        body: bytes,
        headers: Mapping[str, str],
        idempotency_key: str,
        on_attempt: Callable[[Receipt], Awaitable[None]],
    ) -> Receipt:
        config = self._config
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(config.mis_attempts),
                wait=wait_exponential_jitter(
                    multiplier=config.mis_backoff_initial_s,
                    max=config.mis_backoff_max_s,
                    jitter=config.mis_backoff_initial_s / 2,
                ),
                retry=retry_if_exception_type(_RetryableAttempt),
                reraise=True,
            ):
                with attempt:
                    try:
                        receipt = await self._attempt(endpoint, body, headers, idempotency_key)
                    except MisRejected as refused:  # a refused destination: never retried
                        await on_attempt(refused.receipt)
                        raise
                    await on_attempt(receipt)
                    return _accepted(receipt)
        except _RetryableAttempt as exc:
            raise MisUnavailable(
                f"the MIS did not accept the report in {config.mis_attempts} attempt(s); "
                f"last: {exc.receipt.error}",
                exc.receipt,
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or re-raises")
