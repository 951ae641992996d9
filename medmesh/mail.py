"""Sending e-mail over SMTP, written once for every service that mails (svc_auth's account
mails, svc_report's "report ready").

What lives here is the transport: the MEDMESH_SMTP_URL format, composing a text + HTML
message, one blocking submission (run it in a thread), and which SMTP failures are worth
retrying. STARTTLS and SMTPS verify the server's certificate chain and host name (the
system's CAs, or MEDMESH_SMTP_CA_FILE); a user and password over plain `smtp://` are refused
unless MEDMESH_SMTP_ALLOW_PLAIN_LOGIN says otherwise. Queueing, templates and retry policy
stay with each service, because they differ: svc_auth keeps an outbox table of single mails,
svc_report mails from its report job.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import unquote, urlsplit

from medmesh.settings import Settings, SettingsError

SMTP_TIMEOUT_S = 10.0


class PlainLoginRefused(SettingsError):
    """An SMTP URL with a user and password but no TLS, and plain login is not allowed."""


@dataclass(frozen=True)
class SmtpEndpoint:
    """Where and how to submit mail, parsed from MEDMESH_SMTP_URL."""

    host: str
    port: int
    security: str  # "none", "starttls" or "tls"
    username: str = ""
    password: str = ""
    ca_file: str = ""
    """PEM bundle the server's certificate must chain to; empty: the system's CAs."""
    allow_plain_login: bool = False
    """Log in (send the password) over a connection without TLS; off unless configured."""

    def __post_init__(self) -> None:
        if self.username and self.security == "none" and not self.allow_plain_login:
            raise PlainLoginRefused(
                f"MEDMESH_SMTP_URL logs in to {self.host}:{self.port} without TLS, which would "
                "send the password in clear: use smtp+starttls:// or smtps://, or set "
                "MEDMESH_SMTP_ALLOW_PLAIN_LOGIN=true for a trusted local relay"
            )

    @classmethod
    def parse(cls, url: str, *, ca_file: str = "", allow_plain_login: bool = False) -> SmtpEndpoint:
        """`smtp://host:port`, `smtp+starttls://user:pass@host:587`, `smtps://host:465`.

        Raises ValueError for another scheme, PlainLoginRefused for `smtp://user:pass@`
        unless `allow_plain_login`."""
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
            ca_file=ca_file,
            allow_plain_login=allow_plain_login,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpEndpoint:
        """MEDMESH_SMTP_URL with MEDMESH_SMTP_CA_FILE and MEDMESH_SMTP_ALLOW_PLAIN_LOGIN."""
        return cls.parse(
            settings.smtp_url,
            ca_file=settings.smtp_ca_file,
            allow_plain_login=settings.smtp_allow_plain_login,
        )

    def tls_context(self) -> ssl.SSLContext:
        """Verifies the chain (against `ca_file` or the system's CAs) and the host name."""
        context = ssl.create_default_context(cafile=self.ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


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
    smtp: smtplib.SMTP
    if endpoint.security == "tls":
        # smtplib's own default context for SMTP_SSL verifies nothing: always pass ours.
        smtp = smtplib.SMTP_SSL(
            endpoint.host, endpoint.port, timeout=timeout_s, context=endpoint.tls_context()
        )
    else:
        smtp = smtplib.SMTP(endpoint.host, endpoint.port, timeout=timeout_s)
    with smtp:
        if endpoint.security == "starttls":
            # Raises SMTPNotSupportedError when the server offers no STARTTLS: never fall back.
            smtp.starttls(context=endpoint.tls_context())
        if endpoint.username:
            if endpoint.security == "none" and not endpoint.allow_plain_login:
                raise PlainLoginRefused("SMTP login without TLS is not allowed")
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
