"""The SMTP client (medmesh.mail) against real aiosmtpd servers with a certificate from a
throw-away CA: SMTPS and STARTTLS verify the chain and host name, and a password is never
sent over a connection without TLS unless MEDMESH_SMTP_ALLOW_PLAIN_LOGIN allows it."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, LoginPassword
from support.pki import Pki, make_pki

from medmesh.mail import PlainLoginRefused, SmtpEndpoint, compose, send_messages
from medmesh.mailsink import FreePortController
from medmesh.settings import Settings


class Inbox:
    """Records what the server accepted and which logins it saw."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        """Keep the message."""
        self.messages.append(envelope.original_content or envelope.content)
        return "250 OK"

    def authenticate(
        self, _server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any
    ) -> AuthResult:
        """Accept `user` / `secret`, remembering every attempt."""
        assert isinstance(data, LoginPassword)
        login = (data.login.decode(), data.password.decode())
        self.logins.append(login)
        return AuthResult(success=login == ("user", "secret"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 it signed, and a CA nobody trusts."""
    return make_pki(tmp_path_factory.mktemp("smtp-pki"))


def _server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    return context


@contextmanager
def smtp_server(pki: Pki, mode: str, host: str = "127.0.0.1") -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server on a free port: `smtps` (TLS from the first byte), `starttls`
    (offers STARTTLS, AUTH only after it) or `plain` (no TLS at all, AUTH allowed)."""
    inbox = Inbox()
    options: dict[str, Any] = {"authenticator": inbox.authenticate}
    if mode == "smtps":
        options["ssl_context"] = _server_context(pki)
        # aiosmtpd does not count implicit TLS as TLS for AUTH; the socket is TLS regardless.
        options["auth_require_tls"] = False
    elif mode == "starttls":
        options["tls_context"] = _server_context(pki)
    else:
        options["auth_require_tls"] = False
    controller = FreePortController(inbox, hostname=host, port=0, **options)
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


def _mail() -> list[Any]:
    return [compose("a@medmesh.test", "b@clinic.test", "hello", "text", "<p>html</p>")]


def _ca(pki: Pki, which: str) -> str:
    return {"system": "", "rogue": str(pki.rogue_ca), "ours": str(pki.ca)}[which]


@pytest.mark.parametrize("mode", ["smtps", "starttls"])
@pytest.mark.parametrize("trusted", ["system", "rogue"])
def test_a_server_whose_certificate_is_not_trusted_gets_no_password_and_no_mail(
    pki: Pki, mode: str, trusted: str
) -> None:
    scheme = {"smtps": "smtps", "starttls": "smtp+starttls"}[mode]
    with smtp_server(pki, mode) as (inbox, port):
        endpoint = SmtpEndpoint.parse(
            f"{scheme}://user:secret@127.0.0.1:{port}", ca_file=_ca(pki, trusted)
        )
        with pytest.raises(ssl.SSLCertVerificationError):
            send_messages(endpoint, _mail())

    assert inbox.logins == []
    assert inbox.messages == []


def test_a_certificate_for_another_host_name_is_refused_even_from_the_trusted_ca(
    pki: Pki,
) -> None:
    # The certificate names 127.0.0.1 and localhost, not 127.0.0.2 (also loopback on Linux).
    with smtp_server(pki, "smtps", host="127.0.0.2") as (inbox, port):
        endpoint = SmtpEndpoint.parse(f"smtps://127.0.0.2:{port}", ca_file=str(pki.ca))
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            send_messages(endpoint, _mail())

    assert inbox.messages == []


@pytest.mark.parametrize("mode", ["smtps", "starttls"])
def test_with_the_servers_ca_configured_the_mail_is_delivered_after_login(
    pki: Pki, mode: str
) -> None:
    scheme = {"smtps": "smtps", "starttls": "smtp+starttls"}[mode]
    with smtp_server(pki, mode) as (inbox, port):
        settings = Settings.from_env(
            {
                "MEDMESH_SMTP_URL": f"{scheme}://user:secret@127.0.0.1:{port}",
                "MEDMESH_SMTP_CA_FILE": str(pki.ca),
            },
            service="report",
        )
        send_messages(SmtpEndpoint.from_settings(settings), _mail())

    assert inbox.logins == [("user", "secret")]
    assert len(inbox.messages) == 1
    assert b"Subject: hello" in inbox.messages[0]


def test_a_password_over_plain_smtp_is_refused_before_any_connection() -> None:
    settings = Settings.from_env(
        {"MEDMESH_SMTP_URL": "smtp://user:secret@127.0.0.1:2525"}, service="auth"
    )

    with pytest.raises(PlainLoginRefused, match="MEDMESH_SMTP_ALLOW_PLAIN_LOGIN"):
        SmtpEndpoint.from_settings(settings)


def test_starttls_that_the_server_does_not_offer_is_not_skipped(pki: Pki) -> None:
    with smtp_server(pki, "plain") as (inbox, port):
        endpoint = SmtpEndpoint.parse(
            f"smtp+starttls://user:secret@127.0.0.1:{port}", ca_file=str(pki.ca)
        )
        with pytest.raises(smtplib.SMTPNotSupportedError):
            send_messages(endpoint, _mail())

    assert inbox.logins == []
    assert inbox.messages == []


def test_plain_login_works_only_when_explicitly_allowed(pki: Pki) -> None:
    with smtp_server(pki, "plain") as (inbox, port):
        settings = Settings.from_env(
            {
                "MEDMESH_SMTP_URL": f"smtp://user:secret@127.0.0.1:{port}",
                "MEDMESH_SMTP_ALLOW_PLAIN_LOGIN": "true",
            },
            service="auth",
        )
        send_messages(SmtpEndpoint.from_settings(settings), _mail())

    assert inbox.logins == [("user", "secret")]
    assert len(inbox.messages) == 1


def test_the_development_sink_needs_no_login_and_no_allowance(tmp_path: Path) -> None:
    from medmesh.mailsink import start_mail_sink

    sink = start_mail_sink(tmp_path / "mail")
    try:
        endpoint = SmtpEndpoint.from_settings(
            Settings.from_env({"MEDMESH_SMTP_URL": sink.url}, service="auth")
        )
        send_messages(endpoint, _mail())
    finally:
        sink.stop()

    assert len(list((tmp_path / "mail").glob("*.eml"))) == 1
