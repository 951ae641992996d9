"""Who is calling: the identity every handler can ask for, and the per-RPC role rules.

The authentication interceptor (built with the svc_auth work, in `medmesh/`) verifies the
bearer token of each call, checks the RPC's rule below, and binds the caller's `Identity` for
the duration of the call. Handlers and domain code read it with `current_identity()`; every
query they run filters by `identity.clinic_id`.

Each service declares its rules in one readable table, next to its servicer:

    INGEST_RULES: RoleRules = {
        "CreateStudy": WRITERS,
        "GetStudy": ANY_ROLE,
        ...
    }

An RPC missing from the table is denied (PERMISSION_DENIED): new RPCs are closed by default.
`PUBLIC` marks the few RPCs callable without a token (Login, Register, GetJwks); `SIGNED_IN`
the RPCs about the caller's own account, open to a token without roles (a self-registered
account awaiting approval holds no roles, so every other rule refuses it); `OperatorOnly`
the platform-wide changes reserved to the operator clinic. `allows()` is the one check.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from medmesh.errors import PermissionDenied, Unauthenticated

# Role names as they appear in tokens (the `roles` claim) and in the database.
ADMIN = "admin"
CLINICIAN = "clinician"
TECHNICIAN = "technician"
VIEWER = "viewer"
SERVICE = "service"
ALL_ROLES: frozenset[str] = frozenset({ADMIN, CLINICIAN, TECHNICIAN, VIEWER, SERVICE})


@dataclass(frozen=True)
class Public:
    """Marker: the RPC needs no token (an identity is bound anyway when one is sent)."""


@dataclass(frozen=True)
class SignedIn:
    """Marker: any verified token, even one without roles. Only for RPCs about the caller's own
    account (GetMe, ChangePassword): an account awaiting its admin's approval gets tokens
    without roles, so every role rule, i.e. every clinic RPC, refuses it."""


@dataclass(frozen=True)
class OperatorOnly:
    """Rule: one of `roles`, held in the operator clinic (MEDMESH_OPERATOR_CLINIC_ID). For
    platform-wide changes that no single clinic may make (the model registry serves every
    clinic). Denied to everyone when no operator clinic is configured."""

    roles: frozenset[str]


PUBLIC = Public()
SIGNED_IN = SignedIn()
ANY_ROLE: frozenset[str] = ALL_ROLES
HUMAN_ROLES: frozenset[str] = frozenset({ADMIN, CLINICIAN, TECHNICIAN, VIEWER})
WRITERS: frozenset[str] = frozenset({ADMIN, CLINICIAN, TECHNICIAN, SERVICE})
ADMINS: frozenset[str] = frozenset({ADMIN})

RoleRule = frozenset[str] | Public | SignedIn | OperatorOnly
RoleRules = Mapping[str, RoleRule]
"""RPC name (`GetStudy`) → the roles allowed to call it, PUBLIC, SIGNED_IN or OperatorOnly."""


@dataclass(frozen=True)
class Identity:
    """A verified caller: user (or machine client), its clinic, its roles."""

    user_id: str
    clinic_id: str
    roles: frozenset[str]
    token_id: str = ""

    def has_any(self, roles: Iterable[str]) -> bool:
        """True when the caller holds at least one of `roles`."""
        return not self.roles.isdisjoint(roles)

    def require_any(self, roles: Iterable[str]) -> None:
        """Raise PermissionDenied unless the caller holds one of `roles`."""
        if not self.has_any(roles):
            raise PermissionDenied("the caller's roles do not allow this")


def allows(rule: RoleRule | None, identity: Identity | None, operator_clinic: str = "") -> bool:
    """The one role check every service and the gateway run: may `identity` call an RPC with
    `rule`? No rule (an RPC missing from the table) allows nobody."""
    if isinstance(rule, Public):
        return True
    if rule is None or identity is None:
        return False
    if isinstance(rule, SignedIn):
        return True
    if isinstance(rule, OperatorOnly):
        in_operator_clinic = bool(operator_clinic) and identity.clinic_id == operator_clinic
        return in_operator_clinic and identity.has_any(rule.roles)
    return identity.has_any(rule)


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "medmesh_identity", default=None
)


def current_identity() -> Identity:
    """The caller of the RPC being handled; UNAUTHENTICATED when it presented no valid token."""
    identity = _current.get()
    if identity is None:
        raise Unauthenticated("a valid access token is required")
    return identity


def optional_identity() -> Identity | None:
    """The caller when one is known (PUBLIC RPCs may be called with or without a token)."""
    return _current.get()


def bind_identity(identity: Identity | None) -> contextvars.Token[Identity | None]:
    """Make `identity` current for this task; the auth interceptor calls it around each RPC."""
    return _current.set(identity)


def reset_identity(token: contextvars.Token[Identity | None]) -> None:
    """Undo `bind_identity`."""
    _current.reset(token)
