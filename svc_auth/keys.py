"""Token signing keys: generation, encryption at rest, the JWKS document, rotation.

One key is active (it signs new tokens). Rotation retires it: its private half is erased and
its public half stays in the JWKS until `publish_until`, the moment every token it signed has
expired, so rotating never logs anybody out. Private keys are stored encrypted with the
key-encryption key(s) from configuration (Fernet: AES-128-CBC + HMAC-SHA256).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.fernet import InvalidToken, MultiFernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from medmesh.db import Database
from medmesh.errors import DependencyUnavailable
from svc_auth import store

PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
_THUMBPRINT_MEMBERS = {"OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


class KeyDecryptionError(RuntimeError):
    """A stored private key does not decrypt with the configured key-encryption keys."""


@dataclass(frozen=True)
class SigningKey:
    """The active key: what signs new access tokens."""

    kid: str
    algorithm: str
    private_key: PrivateKey
    created_at: datetime


def thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url): a key id derived from the key."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def generate_key(algorithm: str) -> tuple[PrivateKey, dict[str, Any]]:
    """A new private key and its public JWK (kid = thumbprint, alg, use=sig)."""
    private: PrivateKey
    if algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        public = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        raise ValueError(f"unsupported signing algorithm {algorithm!r}")
    jwk = {**public, "kid": thumbprint(public), "alg": algorithm, "use": "sig"}
    return private, jwk


def encrypt_private_key(key: PrivateKey, cipher: MultiFernet) -> bytes:
    """PKCS#8 DER of `key`, encrypted with the first key-encryption key."""
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cipher.encrypt(der)


def decrypt_private_key(blob: bytes, cipher: MultiFernet) -> PrivateKey:
    """The private key in `blob`; KeyDecryptionError when no configured key opens it."""
    try:
        der = cipher.decrypt(blob)
    except InvalidToken:
        raise KeyDecryptionError(
            "the active signing key does not decrypt with MEDMESH_AUTH_KEY_ENCRYPTION_KEY; "
            "keep the old key in the list (comma-separated, new key first) when changing it"
        ) from None
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise KeyDecryptionError(f"unexpected private key type {type(key).__name__}")
    return key


class KeyRing:
    """The signing keys in `auth.signing_keys`, with the active private key cached by kid."""

    def __init__(
        self,
        database: Database,
        cipher: MultiFernet,
        *,
        algorithm: str,
        publish_after_retire: timedelta,
        max_age: timedelta,
    ) -> None:
        self._database = database
        self._cipher = cipher
        self._algorithm = algorithm
        self._publish_after_retire = publish_after_retire
        self._max_age = max_age
        self._cached: SigningKey | None = None

    async def ensure_active(self) -> SigningKey:
        """At start-up: create the first key, or rotate one older than the maximum age."""
        key = await self._load_active()
        if key is None or key.created_at < await self._now() - self._max_age:
            await self.rotate()
        return await self.active()

    async def active(self) -> SigningKey:
        """The key that signs now (another replica may have rotated: the kid is re-read)."""
        async with self._database.read_connection() as conn:
            row = await store.active_signing_key(conn)
        if row is None:
            raise DependencyUnavailable("postgres", "no active signing key")
        if self._cached is None or self._cached.kid != row["kid"]:
            self._cached = self._signing_key(row)
        return self._cached

    async def rotate(self) -> tuple[dict[str, Any], str]:
        """Make a fresh key active and retire the old one; returns (new JWK, retired kid)."""
        private, jwk = generate_key(self._algorithm)
        encrypted = encrypt_private_key(private, self._cipher)
        async with self._database.transaction() as conn:
            retired = await store.retire_active_signing_key(conn, self._publish_after_retire)
            await store.insert_signing_key(conn, jwk, encrypted)
        return jwk, retired or ""

    async def jwks(self) -> list[dict[str, Any]]:
        """The public keys to publish: the active key first, then retired ones still needed."""
        async with self._database.read_connection() as conn:
            return await store.published_jwks(conn)

    async def _load_active(self) -> SigningKey | None:
        async with self._database.read_connection() as conn:
            row = await store.active_signing_key(conn)
        return None if row is None else self._signing_key(row)

    def _signing_key(self, row: dict[str, Any]) -> SigningKey:
        return SigningKey(
            kid=row["kid"],
            algorithm=row["alg"],
            private_key=decrypt_private_key(bytes(row["private_key_encrypted"]), self._cipher),
            created_at=row["created_at"],
        )

    async def _now(self) -> datetime:
        async with self._database.read_connection() as conn:
            return await store.database_now(conn)


class LocalJwks:
    """A `JwksSource` reading svc_auth's own key table (svc_auth does not call itself)."""

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring

    async def fetch(self) -> dict[str, Any]:
        """The current JWKS document."""
        return {"keys": await self._ring.jwks()}
