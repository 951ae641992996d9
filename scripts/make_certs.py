#!/usr/bin/env python3
"""Issue the TLS certificates of a medmesh stack from a private CA (compose's `certs` job,
or by hand for Kubernetes without cert-manager).

    python scripts/make_certs.py --ca-dir CA_DIR --out OUT_DIR \
        postgres:70:70 redis:999:999 nats seaweedfs[=DNS,DNS...] ...

Each argument is `NAME[:UID:GID][=DNS,...]`: a server certificate for the host name NAME (and
the extra DNS names), written as OUT/NAME/tls.crt and OUT/NAME/tls.key (0600, owned by
UID:GID so the server's own user can read it: 70 for postgres:alpine, 999 for redis:alpine).
OUT/ca.crt is the CA every client verifies with. The CA's key stays in CA_DIR, which only this
job mounts. Re-running keeps the CA and every certificate valid for more than 30 more days,
so a restart of the stack changes nothing; delete a file to have it issued again.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
CERT_DAYS = 397
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Request:
    """One server certificate: its host names and the owner of its key file."""

    name: str
    dns: tuple[str, ...]
    uid: int | None
    gid: int | None

    @classmethod
    def parse(cls, spec: str) -> Request:
        """`NAME[:UID:GID][=DNS,...]`."""
        head, _, extra = spec.partition("=")
        name, *owner = head.split(":")
        if not name or len(owner) not in (0, 2):
            raise argparse.ArgumentTypeError(f"{spec!r} is not NAME[:UID:GID][=DNS,...]")
        dns = (name, *(d for d in extra.split(",") if d))
        uid, gid = (int(owner[0]), int(owner[1])) if owner else (None, None)
        return cls(name, dns, uid, gid)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with `mode` from the start (a key is never world-readable)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _fresh(cert_path: Path) -> bool:
    """True when the certificate exists and stays valid past the renewal margin."""
    if not cert_path.exists():
        return False
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert.not_valid_after_utc - _now() > RENEW_BEFORE


def load_or_create_ca(ca_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA in `ca_dir` (ca.key, ca.crt), created on first use."""
    ca_dir.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = ca_dir / "ca.key", ca_dir / "ca.crt"
    if key_path.exists() and _fresh(cert_path):
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "medmesh internal CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return key, cert


def issue(
    request: Request,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    out: Path,
) -> bool:
    """Write OUT/NAME/tls.{crt,key} unless a fresh one signed by this CA is there; True if
    issued."""
    folder = out / request.name
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    if key_path.exists() and _fresh(cert_path):
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if current.issuer == ca_cert.subject and _signed_by(current, ca_cert):
            _own(key_path, request)
            return False
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, request.name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=CERT_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in request.dns]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _own(key_path, request)
    return True


def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception:  # noqa: BLE001 - InvalidSignature, ValueError, TypeError: all mean "no"
        return False
    return True


def _own(key_path: Path, request: Request) -> None:
    if request.uid is not None and request.gid is not None:
        os.chown(key_path, request.uid, request.gid)


def main(argv: list[str] | None = None) -> int:
    """Create the CA if needed, issue what is missing or expiring, copy ca.crt to OUT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ca-dir", type=Path, required=True, help="holds ca.key (private)")
    parser.add_argument("--out", type=Path, required=True, help="what servers/clients mount")
    parser.add_argument("requests", nargs="+", type=Request.parse, metavar="NAME[:UID:GID][=DNS]")
    args = parser.parse_args(argv)
    ca_key, ca_cert = load_or_create_ca(args.ca_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    _write(args.out / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    for request in args.requests:
        issued = issue(request, ca_key, ca_cert, args.out)
        print(f"{request.name}: {'issued' if issued else 'kept'} ({', '.join(request.dns)})")  # noqa: T201 - a command-line tool reports on stdout
    return 0


if __name__ == "__main__":
    sys.exit(main())
