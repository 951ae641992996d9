"""Input rules for accounts (e-mail, password, names) and argon2id password hashing.

The password policy follows NIST SP 800-63B: length and a block-list matter, composition
rules ("one digit, one symbol") do not. Hashing runs in a worker thread: an argon2id hash
costs tens of milliseconds of CPU and must not stall the event loop.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from medmesh.errors import FieldViolation

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 128
MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit
MAX_DISPLAY_NAME_LENGTH = 100
MIN_DISTINCT_CHARACTERS = 5

_EMAIL = re.compile(
    r"[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+"
)
_CLINIC_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")

# The most common leaked passwords of 12+ characters; a real deployment can extend this list.
_COMMON_PASSWORDS = frozenset(
    {
        "123456789012",
        "1234567890123",
        "password1234",
        "password12345",
        "passwordpassword",
        "qwertyuiopasdf",
        "qwerty123456",
        "iloveyou1234",
        "123412341234",
        "abcdefghijkl",
        "abc123abc123",
        "letmein12345",
        "welcome12345",
        "administrator",
        "changeme1234",
        "medmesh12345",
    }
)


def normalize_email(email: str) -> str:
    """The stored form of an address: trimmed and lower-cased (addresses are unique on it)."""
    return email.strip().lower()


def email_violation(field: str, email: str) -> FieldViolation | None:
    """Why `email` (already normalized) is not an acceptable address, or None."""
    if not email:
        return FieldViolation(field, "is required")
    if len(email) > MAX_EMAIL_LENGTH:
        return FieldViolation(field, f"must be at most {MAX_EMAIL_LENGTH} characters")
    if not _EMAIL.fullmatch(email):
        return FieldViolation(field, "is not a valid e-mail address")
    return None


def password_violation(field: str, password: str, *, email: str = "") -> FieldViolation | None:
    """Why `password` is too weak (or too long to hash sensibly), or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return FieldViolation(field, f"must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        return FieldViolation(field, f"must be at most {MAX_PASSWORD_LENGTH} characters")
    folded = password.casefold()
    if folded in _COMMON_PASSWORDS:
        return FieldViolation(field, "is a commonly used password")
    if len(set(folded)) < MIN_DISTINCT_CHARACTERS:
        return FieldViolation(
            field, f"must contain at least {MIN_DISTINCT_CHARACTERS} different characters"
        )
    local_part = email.partition("@")[0]
    if len(local_part) >= 4 and local_part in folded:
        return FieldViolation(field, "must not contain the e-mail address")
    return None


def display_name_violation(field: str, name: str) -> FieldViolation | None:
    """Why `name` cannot be shown as a user's name, or None."""
    if not name.strip():
        return FieldViolation(field, "is required")
    if len(name) > MAX_DISPLAY_NAME_LENGTH:
        return FieldViolation(field, f"must be at most {MAX_DISPLAY_NAME_LENGTH} characters")
    if any(unicodedata.category(ch) in {"Cc", "Cf"} for ch in name):
        return FieldViolation(field, "must not contain control characters")
    return None


def clinic_id_violation(field: str, clinic_id: str) -> FieldViolation | None:
    """Why `clinic_id` is not a well-formed clinic id, or None (existence is checked later)."""
    if not clinic_id:
        return FieldViolation(field, "is required")
    if not _CLINIC_ID.fullmatch(clinic_id):
        return FieldViolation(field, "must be 2-63 lowercase letters, digits or dashes")
    return None


class PasswordHashing:
    """argon2id with the given cost; async methods run the hash in a worker thread."""

    def __init__(self, *, time_cost: int = 3, memory_kib: int = 64 * 1024) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=1, type=Type.ID
        )
        # Compared against when the e-mail is unknown, so that a wrong address costs the
        # same time as a wrong password (no user enumeration by timing).
        self._decoy_hash = self._hasher.hash("decoy password that never matches")

    async def hash(self, password: str) -> str:
        """The encoded argon2id hash of `password` (salt and parameters included)."""
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, encoded: str | None, password: str) -> bool:
        """True when `password` matches; None for `encoded` spends the same time and fails."""
        return await asyncio.to_thread(self._verify, encoded, password)

    def needs_rehash(self, encoded: str) -> bool:
        """True when `encoded` was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(encoded)

    def _verify(self, encoded: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(encoded or self._decoy_hash, password) and bool(encoded)
        except (VerificationError, InvalidHashError):
            return False
