"""Secrets at rest, encrypted with key-encryption keys (KEKs) from configuration.

Written once for every service that stores a secret in its database: svc_auth's private
signing keys, svc_report's MIS bearer tokens. Fernet (AES-128-CBC + HMAC-SHA256, from
`cryptography`): the first key encrypts, every key decrypts, so a KEK is rotated by putting
the new key first and re-encrypting at leisure.

Without a configured key the published development key is used (it is in this file, so it
protects nothing): `medmesh up` generates and keeps real keys in its data directory, and a
service running on the development key says so loudly at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from medmesh.settings import SettingsError

# Public on purpose: only used when no key is configured, and start-up says so loudly.
DEV_KEY_ENCRYPTION_KEY = "bWVkbWVzaC1kZXYtb25seS1pbnNlY3VyZS1rZXkhISE="


class SecretUnreadable(Exception):
    """A stored secret does not decrypt with any configured key-encryption key."""


def parse_key_encryption_keys(variable: str, raw: str) -> tuple[str, ...]:
    """Comma-separated Fernet keys from `variable`; SettingsError names it when one is bad."""
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    check_key_encryption_keys(variable, keys)
    return keys


def check_key_encryption_keys(variable: str, keys: Sequence[str]) -> None:
    """SettingsError naming `variable` unless every key is a Fernet key."""
    for key in keys:
        try:
            Fernet(key)
        except ValueError:
            raise SettingsError(
                f"{variable} must hold Fernet keys (python -c 'from cryptography.fernet "
                "import Fernet; print(Fernet.generate_key().decode())')"
            ) from None


def key_encryption_cipher(keys: Sequence[str]) -> MultiFernet:
    """Encrypts with the first key, decrypts with any; the development key when none."""
    return MultiFernet([Fernet(key) for key in (keys or (DEV_KEY_ENCRYPTION_KEY,))])


class SecretBox:
    """Encrypts and decrypts short text secrets (tokens, passwords) with the KEKs."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.dev_key_in_use = not keys
        self._cipher = key_encryption_cipher(keys)

    def seal(self, secret: str) -> bytes:
        """`secret` encrypted (and authenticated) with the first key."""
        return self._cipher.encrypt(secret.encode("utf-8"))

    def open(self, sealed: bytes) -> str:
        """The secret inside `sealed`; SecretUnreadable if no configured key opens it."""
        try:
            return self._cipher.decrypt(bytes(sealed)).decode("utf-8")
        except InvalidToken:
            raise SecretUnreadable(
                "a stored secret does not decrypt with the configured keys"
            ) from None
