"""Secrets at rest, encrypted with key-encryption keys (KEKs) from configuration.

Written once for every service that stores a secret in its database: svc_auth's private
signing keys, svc_report's MIS bearer tokens. Fernet (AES-128-CBC + HMAC-SHA256, from
`cryptography`): the first key encrypts, every key decrypts, so a KEK is rotated by putting
the new key first and re-encrypting at leisure.

There is no default key: a service that stores secrets refuses to start without its KEK
variable (`require_key_encryption_keys`), naming the variable and how to make a key. `medmesh
up`, the development launcher, generates one per data directory and keeps it there (mode 600),
so a local stack works out of the box and a deployment cannot run on a key anyone can read.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from medmesh.settings import SettingsError

_MAKE_KEY = (
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


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
            raise SettingsError(f"{variable} must hold Fernet keys ({_MAKE_KEY})") from None


def require_key_encryption_keys(variable: str, keys: Sequence[str]) -> None:
    """SettingsError naming `variable` when no key is configured (there is no default) or one
    is not a Fernet key: the service must not start and store secrets under a guessable key."""
    if not keys:
        raise SettingsError(
            f"{variable} is not set: this service encrypts secrets at rest and has no default "
            f"key-encryption key. Set it to a Fernet key kept in your secret store ({_MAKE_KEY}); "
            "`medmesh up` generates one per data directory."
        )
    check_key_encryption_keys(variable, keys)


def key_encryption_cipher(variable: str, keys: Sequence[str]) -> MultiFernet:
    """Encrypts with the first key, decrypts with any; SettingsError naming `variable`
    when there is none."""
    require_key_encryption_keys(variable, keys)
    return MultiFernet([Fernet(key) for key in keys])


class SecretBox:
    """Encrypts and decrypts short text secrets (tokens, passwords) with the KEKs from
    `variable`; SettingsError at construction when that variable holds no key."""

    def __init__(self, keys: Sequence[str], *, variable: str = "the key-encryption key") -> None:
        self._cipher = key_encryption_cipher(variable, keys)

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
