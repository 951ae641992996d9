"""The "report ready" e-mail to a clinic's clinicians and admins (`auth.report_recipients`)
and the addresses on its delivery target, over SMTP (medmesh.mail).

No PHI in the mail at all, the subject least: mail crosses systems the clinic does not
control. The subject is fixed text; the body names the study and report by id and links to
the web app, where reading the report needs a sign-in (and is audited).

Sent from the report job after the report is READY (`notified_at` records it), one message
per recipient over one SMTP session, so recipients do not see each other. A transient SMTP
failure retries a few times at once (tenacity), then the job is retried; after its last
attempt, or on a permanent refusal, the failure is recorded and the report stays READY.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage

import jinja2
import structlog
from opentelemetry import trace
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from medmesh.db import Database
from medmesh.mail import SmtpEndpoint, compose, is_transient, send_messages
from svc_report import delivery_store, read_store, store
from svc_report.consumers import Done, Outcome, Retry
from svc_report.model import ReportRecord
from svc_report.render import AI_NOTICE

log = structlog.get_logger(__name__)
_tracer = trace.get_tracer(__name__)

SUBJECT = "medmesh: a diagnostic report is ready"

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("svc_report", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


class ReportNotifier:
    """Mails "report ready" for READY reports that were not announced yet."""

    def __init__(
        self,
        database: Database,
        endpoint: SmtpEndpoint | None,
        *,
        sender: str,
        subject: str = SUBJECT,
        public_url: str = "",
        quick_retries: int = 3,
    ) -> None:
        self._database = database
        self._endpoint = endpoint
        self._sender = sender
        self._subject = subject
        self._public_url = public_url.rstrip("/")
        self._quick_retries = quick_retries

    async def recipients(self, clinic_id: str) -> list[str]:
        """The clinic's clinicians and admins, then the target's extra addresses, once each."""
        async with self._database.read_connection() as conn:
            people = await read_store.recipients(conn, clinic_id)
            target = await delivery_store.get_target(conn, clinic_id)
        addresses = [p.email.lower() for p in people]
        if target is not None:
            addresses += [a.lower() for a in target.notify_emails]
        return list(dict.fromkeys(addresses))

    def render(self, report: ReportRecord, recipient: str) -> tuple[str, str]:
        """(text, html) bodies for one recipient."""
        ready = report.ready_time or datetime.now(UTC)
        context = {
            "study_id": report.study_id,
            "report_id": report.report_id,
            "version": report.version,
            "clinic_id": report.clinic_id,
            "ready_time": ready.strftime("%Y-%m-%d %H:%M UTC"),
            "link": f"{self._public_url}/reports/{report.report_id}" if self._public_url else "",
            "notice": AI_NOTICE,
            "recipient": recipient,
        }
        return (
            _templates.get_template("report_ready.txt").render(context),
            _templates.get_template("report_ready.html").render(context),
        )

    async def notify(self, report: ReportRecord, *, last_attempt: bool) -> Outcome:
        """Send the mails once (under a `notify report-ready` span, the end of a study's
        trace); the outcome settles the report job."""
        with _tracer.start_as_current_span(
            "notify report-ready",
            attributes={"medmesh.study_id": report.study_id, "medmesh.report_id": report.report_id},
        ) as span:
            outcome = await self._notify(report, last_attempt=last_attempt)
            span.set_attribute("medmesh.outcome", type(outcome).__name__)
            return outcome

    async def _notify(self, report: ReportRecord, *, last_attempt: bool) -> Outcome:
        if self._endpoint is None:
            await self._record(report, "MEDMESH_SMTP_URL is unset: no mail sent")
            return Done()
        recipients = await self.recipients(report.clinic_id)
        if not recipients:
            await self._record(report, "the clinic has no verified clinicians or admins")
            return Done()
        messages = []
        for recipient in recipients:
            text, html = self.render(report, recipient)
            messages.append(compose(self._sender, recipient, self._subject, text, html))
        error = await self._send(messages)
        if error and error[0] and not last_attempt:
            return Retry(f"report-ready mail: {error[1]}")
        await self._record(report, error[1] if error else "")
        log.info("report.mailed", report=report.report_id, recipients=len(recipients), error=error)
        return Done()

    async def _send(self, messages: Sequence[EmailMessage]) -> tuple[bool, str] | None:
        """None when sent; else (transient, error)."""
        endpoint = self._endpoint
        assert endpoint is not None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._quick_retries),
                wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
                retry=retry_if_exception(is_transient),
                reraise=True,
            ):
                with attempt:
                    await asyncio.to_thread(send_messages, endpoint, messages)
        except Exception as exc:  # noqa: BLE001 - recorded on the report, never raised
            return is_transient(exc), f"{type(exc).__name__}: {exc}"[:500]
        return None

    async def _record(self, report: ReportRecord, error: str) -> None:
        async with self._database.transaction() as conn:
            await store.mark_notified(conn, report.report_id, error)
