"""The gateway's decision for one HTTP request: allow with an identity, or deny with 401, 403
or 429. Transport-free; svc_auth.ext_authz speaks Envoy's protocol around it.

Order matters: the per-IP limit comes first (a flood of forged tokens costs Redis, not
signature checks), then the route and its rule, the token, the role, and finally the
per-user limit (only a verified user id names a bucket).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from medmesh.auth import TokenVerifier
from medmesh.errors import Unauthenticated
from medmesh.identity import Identity, Public, RoleRule, allows
from svc_auth.config import Rate
from svc_auth.gateway_rules import GATEWAY_RULES, PUBLIC_PATHS, rule_for
from svc_auth.ratelimit import RateLimiter
from svc_auth.routes import RouteTable

OK, UNAUTHORIZED, FORBIDDEN, TOO_MANY_REQUESTS = 200, 401, 403, 429


@dataclass(frozen=True)
class HttpRequest:
    """What the gateway tells us about a request (header names lower-case)."""

    method: str
    path: str
    headers: Mapping[str, str]
    client_ip: str


@dataclass(frozen=True)
class Decision:
    """Allow (status 200, with the caller's identity when it sent a valid token) or deny."""

    status: int
    reason: str = ""
    identity: Identity | None = None
    rpc: str | None = None
    retry_after_s: int = 0

    @property
    def allowed(self) -> bool:
        """True when the request may go upstream."""
        return self.status == OK


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an `authorization: Bearer <token>` header."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class Gateway:
    """Authentication, authorization and rate limits for requests entering the mesh."""

    def __init__(
        self,
        verifier: TokenVerifier,
        limiter: RateLimiter,
        routes: RouteTable,
        *,
        rate_per_ip: Rate,
        rate_per_user: Rate,
        rules: Mapping[str, RoleRule] = GATEWAY_RULES,
        public_paths: frozenset[str] = PUBLIC_PATHS,
        operator_clinic: str = "",
    ) -> None:
        self._operator_clinic = operator_clinic
        self._verifier = verifier
        self._limiter = limiter
        self._routes = routes
        self._rate_per_ip = rate_per_ip
        self._rate_per_user = rate_per_user
        self._rules = rules
        self._public_paths = public_paths

    async def check(self, request: HttpRequest) -> Decision:
        """Decide; raises DependencyUnavailable when Redis or the key store is down."""
        verdict = await self._limiter.hit("gw-ip", request.client_ip, self._rate_per_ip)
        if not verdict.allowed:
            return _throttled("too many requests from this address", verdict.retry_after_s)
        rpc = self._routes.resolve(request.method, request.path)
        if rpc is None:
            if request.path.split("?", 1)[0] in self._public_paths:
                return Decision(OK)
            return Decision(FORBIDDEN, "no gateway rule for this route")
        rule = rule_for(rpc, self._rules)
        if rule is None:
            return Decision(FORBIDDEN, "no gateway rule for this RPC", rpc=rpc)
        return await self._authorize(rpc, rule, bearer(request.headers))

    async def _authorize(self, rpc: str, rule: RoleRule, token: str | None) -> Decision:
        if isinstance(rule, Public):
            return Decision(OK, identity=await self._optional_identity(token), rpc=rpc)
        if token is None:
            return Decision(UNAUTHORIZED, "a bearer access token is required", rpc=rpc)
        try:
            identity = await self._verifier.verify(token)
        except Unauthenticated as exc:
            return Decision(UNAUTHORIZED, exc.message, rpc=rpc)
        if not allows(rule, identity, self._operator_clinic):
            return Decision(FORBIDDEN, "the caller's roles do not allow this", identity, rpc)
        verdict = await self._limiter.hit("gw-user", identity.user_id, self._rate_per_user)
        if not verdict.allowed:
            return _throttled("too many requests from this user", verdict.retry_after_s)
        return Decision(OK, identity=identity, rpc=rpc)

    async def _optional_identity(self, token: str | None) -> Identity | None:
        # Public routes ignore a stale token rather than refusing a login.
        if token is None:
            return None
        try:
            return await self._verifier.verify(token)
        except Unauthenticated:
            return None


def _throttled(reason: str, retry_after_s: float) -> Decision:
    return Decision(TOO_MANY_REQUESTS, reason, retry_after_s=max(1, math.ceil(retry_after_s)))
