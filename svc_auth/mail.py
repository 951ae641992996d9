"""Account e-mail: rendered from templates, queued in the `mail_outbox` table inside the
transaction that creates the token it carries, and sent by a background worker.

Request handling never waits for SMTP: the handler commits the row and wakes the worker.
The worker sends with stdlib smtplib in a thread, retries transient failures (connection
lost, 4xx replies) a few times at once with tenacity, then reschedules the row with growing
back-off; a permanent failure (5xx) or too many attempts marks the row failed. Rows are
deleted once the server accepts the mail, so plaintext tokens do not linger in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import jinja2
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from medmesh.db import Connection, Database
from medmesh.mail import SmtpEndpoint, compose, is_transient, send_messages
from svc_auth import store

_log = structlog.get_logger("svc_auth.mail")

SUBJECTS = {
    "verify_email": "Confirm your e-mail address for medmesh",
    "password_reset": "Reset your medmesh password",
    "invitation": "You are invited to medmesh",
}
MAX_ATTEMPTS = 8

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("svc_auth", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class Mail:
    """One rendered mail."""

    recipient: str
    subject: str
    body_text: str
    body_html: str


def render(template: str, recipient: str, context: dict[str, Any]) -> Mail:
    """Render `<template>.txt` and `<template>.html` for `recipient`."""
    return Mail(
        recipient=recipient,
        subject=SUBJECTS[template],
        body_text=_templates.get_template(f"{template}.txt").render(context),
        body_html=_templates.get_template(f"{template}.html").render(context),
    )


async def enqueue(conn: Connection, mail: Mail) -> None:
    """Queue `mail` in the caller's transaction (it is sent only if that commits)."""
    await store.insert_mail(conn, mail.recipient, mail.subject, mail.body_text, mail.body_html)


class MailSender:
    """The outbox worker. `wake()` after committing a mail; `run()` until `stop()`."""

    def __init__(
        self,
        database: Database,
        endpoint: SmtpEndpoint,
        sender: str,
        *,
        poll_interval_s: float = 5.0,
        quick_retries: int = 3,
    ) -> None:
        self._database = database
        self._endpoint = endpoint
        self._sender = sender
        self._poll_interval_s = poll_interval_s
        self._quick_retries = quick_retries
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run the worker as a background task."""
        self._task = asyncio.create_task(self.run(), name="svc_auth-mail-sender")

    async def stop(self) -> None:
        """Finish the mail being sent, then stop."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        """A mail was committed: send it now instead of at the next poll."""
        self._wakeup.set()

    async def run(self) -> None:
        """Send due mails until stopped; survives database and SMTP outages."""
        while not self._stopping:
            self._wakeup.clear()
            try:
                sent = await self.send_due()
            except Exception:  # noqa: BLE001 - the worker must outlive any single failure
                _log.exception("mail outbox pass failed")
                sent = 0
            if sent == 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self._poll_interval_s)

    async def send_due(self, batch: int = 20) -> int:
        """Send the mails that are due; returns how many were accepted by the server."""
        async with self._database.transaction() as conn:
            rows = await store.lease_due_mail(conn, batch, lease_s=120)
        sent = 0
        for row in rows:
            if await self._deliver(row):
                sent += 1
        return sent

    async def _deliver(self, row: dict[str, Any]) -> bool:
        mail = Mail(row["recipient"], row["subject"], row["body_text"], row["body_html"])
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._quick_retries),
                wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
                retry=retry_if_exception(is_transient),
                reraise=True,
            ):
                with attempt:
                    await asyncio.to_thread(self._send, mail)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the row
            give_up = not is_transient(exc) or row["attempts"] >= MAX_ATTEMPTS
            async with self._database.transaction() as conn:
                await store.mail_failed(
                    conn,
                    row["id"],
                    error=f"{type(exc).__name__}: {exc}"[:500],
                    retry_in_s=min(30 * 2 ** row["attempts"], 3600),
                    give_up=give_up,
                )
            _log.warning("mail not sent", mail_id=row["id"], give_up=give_up, error=str(exc))
            return False
        async with self._database.transaction() as conn:
            await store.delete_mail(conn, row["id"])
        _log.info("mail sent", mail_id=row["id"], subject=mail.subject)
        return True

    def _send(self, mail: Mail) -> None:
        message = compose(
            self._sender, mail.recipient, mail.subject, mail.body_text, mail.body_html
        )
        send_messages(self._endpoint, [message])
