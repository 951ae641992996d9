"""The authentication interceptor: verify the bearer token, enforce the RPC's role rule,
bind the caller's Identity for the handler. Installed by the runtime on every service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from grpc_interceptor.server import AsyncServerInterceptor, parse_method_name

from medmesh.auth.tokens import TokenVerifier
from medmesh.errors import PermissionDenied, Unauthenticated
from medmesh.identity import (
    Identity,
    Public,
    RoleRules,
    allows,
    bind_identity,
    reset_identity,
)

# Infrastructure every client (load balancers, grpcurl) may call without a token.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


DenialHook = Callable[[Identity, str, str], Awaitable[None]]
"""Called with (caller, RPC name, resource named by the request) when a verified caller's
roles do not allow the RPC; services pass `medmesh.audit.DeniedAccessRecorder`."""


def _requested_resource(request: Any) -> str:
    # The resource a unary request names (`name`, `parent` or `study`); streams name none here.
    for attribute in ("name", "parent", "study"):
        value = getattr(request, attribute, None)
        if isinstance(value, str) and value:
            return value[:256]
    return ""


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` metadata entry, if any."""
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class AuthInterceptor(AsyncServerInterceptor):
    """Closed by default: an RPC without a rule in `rules` is PERMISSION_DENIED for everyone."""

    def __init__(
        self,
        verifier: TokenVerifier,
        rules: Mapping[str, RoleRules],
        on_denied: DenialHook | None = None,
        *,
        operator_clinic: str = "",
    ) -> None:
        self._verifier = verifier
        self._rules = rules
        self._on_denied = on_denied
        self._operator_clinic = operator_clinic

    async def intercept(
        self, method: Callable, request: Any, context: Any, method_name: str
    ) -> Any:
        name = parse_method_name(method_name)
        if name.fully_qualified_service in OPEN_SERVICES:
            return await _call(method, request, context, None)
        rule = self._rules.get(name.fully_qualified_service, {}).get(name.method)
        identity = await self._identify(bearer_token(context.invocation_metadata()), rule)
        if not allows(rule, identity, self._operator_clinic):
            if identity is not None and self._on_denied is not None:
                await self._on_denied(identity, name.method, _requested_resource(request))
            raise PermissionDenied("the caller's roles do not allow this")
        return await _call(method, request, context, identity)

    async def _identify(self, token: str | None, rule: object) -> Identity | None:
        if isinstance(rule, Public):
            # A public RPC ignores a stale or broken token rather than refusing a login.
            if token is None:
                return None
            try:
                return await self._verifier.verify(token)
            except Unauthenticated:
                return None
        if token is None:
            raise Unauthenticated("a valid access token is required")
        return await self._verifier.verify(token)


async def _call(method: Callable, request: Any, context: Any, identity: Identity | None) -> Any:
    result = method(request, context)
    if hasattr(result, "__aiter__"):
        return _stream_as(identity, result)
    token = bind_identity(identity)
    try:
        return await result
    finally:
        reset_identity(token)


async def _stream_as(identity: Identity | None, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
    # The handler's generator body runs while this one iterates it, so the identity is bound
    # for exactly the life of the stream.
    token = bind_identity(identity)
    try:
        async for item in stream:
            yield item
    finally:
        # A stream the client abandoned is closed by asyncio's finaliser in another task and
        # Context: the binding went away with the RPC's own Context, nothing to undo there.
        with contextlib.suppress(ValueError):
            reset_identity(token)
