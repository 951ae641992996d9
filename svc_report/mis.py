"""Pushing a DiagnosticReport to a clinic's MIS: `POST <fhir_base_url>/DiagnosticReport`.

Every attempt of one delivery carries the same `Idempotency-Key` header (and FHIR's own
conditional create, `If-None-Exist: identifier=urn:medmesh:report|<id>`), so a MIS that saw
an attempt whose answer was lost does not record the report twice. Attempts are retried with
jittered exponential backoff (tenacity) on 5xx answers, timeouts and network errors only; a
4xx answer means the MIS refused this request as it is, so it is never retried. Each attempt
is reported to `on_attempt` before the next one starts, which stores it as a receipt.
"""

from __future__ import annotations

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


def _mis_id(response: httpx.Response) -> str:
    """The id the MIS gave the resource: the body's `id`, else from `Location`
    (`.../DiagnosticReport/<id>/_history/<v>`)."""
    try:
        body = response.json()
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


class MisClient:
    """An HTTP client for MIS endpoints (one connection pool for every clinic)."""

    def __init__(self, config: ReportConfig) -> None:
        self._config = config
        self._http = httpx.AsyncClient(
            verify=_ssl_context(config.mis_ca_file),
            timeout=httpx.Timeout(config.mis_timeout_s),
            follow_redirects=False,  # a redirect could carry PHI to a host nobody configured
        )

    async def close(self) -> None:
        """Close pooled connections."""
        await self._http.aclose()

    async def _attempt(
        self, endpoint: MisEndpoint, body: bytes, headers: Mapping[str, str], key: str
    ) -> Receipt:
        attempt_time = datetime.now(UTC)
        try:
            response = await self._http.post(endpoint.url, content=body, headers=headers)
        except httpx.TransportError as exc:  # timeouts, refused connections, TLS failures
            return Receipt(attempt_time, 0, "", f"{type(exc).__name__}: {exc}"[:500], key)
        if response.is_success:
            return Receipt(attempt_time, response.status_code, _mis_id(response), "", key)
        detail = response.text[:300].strip()
        error = f"HTTP {response.status_code}" + (f": {detail}" if detail else "")
        return Receipt(attempt_time, response.status_code, "", error, key)

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
                    receipt = await self._attempt(endpoint, body, headers, idempotency_key)
                    await on_attempt(receipt)
                    return _accepted(receipt)
        except _RetryableAttempt as exc:
            raise MisUnavailable(
                f"the MIS did not accept the report in {config.mis_attempts} attempt(s); "
                f"last: {exc.receipt.error}",
                exc.receipt,
            ) from exc
        raise AssertionError("unreachable: tenacity either returns or re-raises")
