"""Sending e-mail over SMTP, written once for every service that mails (svc_auth's account
mails, svc_report's "report ready").

What lives here is the transport: the MEDMESH_SMTP_URL format, composing a text + HTML
message, one blocking submission (run it in a thread), and which SMTP failures are worth
retrying. Queueing, templates and retry policy stay with each service, because they differ:
svc_auth keeps an outbox table of single mails, svc_report mails from its report job.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import unquote, urlsplit

SMTP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SmtpEndpoint:
    """Where and how to submit mail, parsed from MEDMESH_SMTP_URL."""

    host: str
    port: int
    security: str  # "none", "starttls" or "tls"
    username: str = ""
    password: str = ""

    @classmethod
    def parse(cls, url: str) -> SmtpEndpoint:
        """`smtp://host:port`, `smtp+starttls://user:pass@host:587`, `smtps://host:465`."""
        parts = urlsplit(url)
        security = {"smtp": "none", "smtp+starttls": "starttls", "smtps": "tls"}.get(parts.scheme)
        if security is None or not parts.hostname:
            raise ValueError(f"not an SMTP URL: {url!r} (use smtp://host:port)")
        default_port = {"none": 25, "starttls": 587, "tls": 465}[security]
        return cls(
            host=parts.hostname,
            port=parts.port or default_port,
            security=security,
            username=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
        )


def compose(
    sender: str, recipient: str, subject: str, body_text: str, body_html: str
) -> EmailMessage:
    """A multipart/alternative message (plain text first, HTML second) to one recipient."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain="medmesh")
    message.set_content(body_text)
    message.add_alternative(body_html, subtype="html")
    return message


def send_messages(
    endpoint: SmtpEndpoint, messages: Sequence[EmailMessage], *, timeout_s: float = SMTP_TIMEOUT_S
) -> None:
    """Submit `messages` over one SMTP session. Blocking: call it with `asyncio.to_thread`.

    Raises smtplib/OSError exceptions unchanged; `is_transient` says which to retry.
    """
    smtp_class = smtplib.SMTP_SSL if endpoint.security == "tls" else smtplib.SMTP
    with smtp_class(endpoint.host, endpoint.port, timeout=timeout_s) as smtp:
        if endpoint.security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
        if endpoint.username:
            smtp.login(endpoint.username, endpoint.password)
        for message in messages:
            smtp.send_message(message)


def is_transient(exc: BaseException) -> bool:
    """True for failures a later attempt may fix: 4xx replies, lost connections, network errors;
    False for permanent refusals (5xx) and anything that is not about SMTP at all."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return any(400 <= code < 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, smtplib.SMTPServerDisconnected | OSError)
