"""Input rules for accounts (e-mail, password, names) and argon2id password hashing.

The password policy follows NIST SP 800-63B: length and a block-list matter, composition
rules ("one digit, one symbol") do not. Hashing runs on its own small thread pool: an argon2id
hash costs tens of milliseconds of CPU and 64 MiB, so it must not stall the event loop, and
a flood of sign-ins must not take every core (the gateway's Check runs in this process too).
At most `max_concurrent` hashes run and `max_waiting` wait; beyond that a call is refused at
once with RESOURCE_EXHAUSTED (retry in a second) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import threading
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from medmesh.errors import FieldViolation, ResourceExhausted

T = TypeVar("T")

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


def _lower_thread_priority() -> None:
    # Linux schedules threads individually: a niced hashing thread yields the CPU to the
    # event loop (Check, token refresh, JWKS) whenever both want it.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def usable_cpus() -> int:
    """CPUs this process may use: the cgroup v2 quota (a container's CPU limit) when there is
    one, else the CPUs it may run on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, min(cpus or 1, math.ceil(int(quota) / int(period))))
    return cpus or 1


def default_hash_concurrency() -> int:
    """Half the usable CPUs (at least one): the rest keeps serving Check, tokens and JWKS."""
    return max(1, usable_cpus() // 2)


class PasswordHashing:
    """argon2id with the given cost; async methods run the hash on a bounded thread pool."""

    def __init__(
        self,
        *,
        time_cost: int = 3,
        memory_kib: int = 64 * 1024,
        max_concurrent: int = 0,
        max_waiting: int = 16,
    ) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=1, type=Type.ID
        )
        # Compared against when the e-mail is unknown, so that a wrong address costs the
        # same time as a wrong password (no user enumeration by timing).
        self._decoy_hash = self._hasher.hash("decoy password that never matches")
        self.max_concurrent = max_concurrent or default_hash_concurrency()
        self._capacity = self.max_concurrent + max_waiting
        self._in_flight = 0
        self._executor: ThreadPoolExecutor | None = None

    async def hash(self, password: str) -> str:
        """The encoded argon2id hash of `password` (salt and parameters included)."""
        return await self._run(self._hasher.hash, password)

    async def verify(self, encoded: str | None, password: str) -> bool:
        """True when `password` matches; None for `encoded` spends the same time and fails."""
        return await self._run(self._verify, encoded, password)

    def needs_rehash(self, encoded: str) -> bool:
        """True when `encoded` was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(encoded)

    def close(self) -> None:
        """Stop the thread pool (running hashes finish)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def refuse_if_busy(self) -> None:
        """RESOURCE_EXHAUSTED now when a hash could not even queue (saves the lookups and
        counters a caller would spend before hashing)."""
        if self._in_flight >= self._capacity:
            raise ResourceExhausted("too many password checks in progress; try again", 1.0)

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        self.refuse_if_busy()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.max_concurrent,
                thread_name_prefix="argon2",
                initializer=_lower_thread_priority,
            )
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        finally:
            self._in_flight -= 1

    def _verify(self, encoded: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(encoded or self._decoy_hash, password) and bool(encoded)
        except (VerificationError, InvalidHashError):
            return False
