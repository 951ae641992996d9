"""A small but real FHIR MIS for the delivery tests: an https server (stdlib http.server in a
thread, TLS with a throwaway CA made here) that accepts `POST /fhir/DiagnosticReport`.

It answers from a script (`statuses`: e.g. 503, 503, then 201 for ever), records every
request it saw, and keeps one stored report per `Idempotency-Key`, like a MIS that honours the
header: a repeated key gets the first answer again and stores nothing new. Misbehaviour on
demand: `drip_s` sends the answer one byte per that many seconds (a slow MIS), `padding` adds
that many bytes to the answer (a huge one), `echo` puts text into error answers (a MIS that
echoes what it was sent).

Its certificate names both 127.0.0.1 and `MIS_HOST_NAME`, so a test can address it by a name
that no DNS knows and let the client's pinned address take it there.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MIS_HOST_NAME = "mis.medmesh.test"
REPORT_KEK = Fernet.generate_key().decode()
"""The test session's key-encryption key for MIS bearer tokens (MEDMESH_REPORT_*)."""


@dataclass(frozen=True)
class TlsFiles:
    """A CA certificate (what the client trusts) and a server certificate + key it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA and a certificate for 127.0.0.1 signed by it, as PEM files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medmesh test MIS CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName(MIS_HOST_NAME)]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "mis.pem", directory / "mis.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@dataclass
class SeenRequest:
    """One request as the MIS received it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int


@dataclass
class MisState:
    """What the MIS saw and stored; `statuses` scripts its next answers."""

    statuses: list[int] = field(default_factory=list)
    requests: list[SeenRequest] = field(default_factory=list)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Accepted DiagnosticReports by idempotency key."""
    ids: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    drip_s: float = 0.0
    padding: int = 0
    echo: str = ""
    started: threading.Event = field(default_factory=threading.Event)
    """Set when a request has arrived (before it is answered)."""
    closing: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: _MisServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests assert on `state.requests` instead."""

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        body = json.loads(raw) if raw else {}
        key = self.headers.get("Idempotency-Key", "")
        state.started.set()
        with state.lock:
            status = state.statuses.pop(0) if state.statuses else 201
            if self.path != "/fhir/DiagnosticReport":
                status = 404
            if 200 <= status < 300:
                if key in state.ids:
                    status = 200  # seen before: the same resource, nothing new stored
                else:
                    state.ids[key] = str(uuid.uuid4())
                    state.stored[key] = body
            state.requests.append(SeenRequest(self.path, dict(self.headers), body, status))
            mis_id = state.ids.get(key, "")
        if 200 <= status < 300:
            payload = json.dumps({**body, "id": mis_id, "padding": "x" * state.padding}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Location", f"/fhir/DiagnosticReport/{mis_id}/_history/1")
        else:
            payload = json.dumps(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "error", "code": "processing", "diagnostics": state.echo}
                    ],
                }
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not state.drip_s:
            self.wfile.write(payload)
            return
        for byte in payload:  # a byte at a time: no read timeout ever fires
            if state.closing.wait(state.drip_s):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()


class _MisServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: MisState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@dataclass(frozen=True)
class MisReceiver:
    """A running MIS: its FHIR base URL, the CA that signed it, and its state."""

    base_url: str
    ca_file: Path
    state: MisState


@contextmanager
def running_mis(tls: TlsFiles) -> Iterator[MisReceiver]:
    """Serve https on a free loopback port until the block ends."""
    state = MisState()
    server = _MisServer(state)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="mis-receiver", daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield MisReceiver(f"https://127.0.0.1:{port}/fhir", tls.ca_file, state)
    finally:
        state.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
