"""Every SDK call goes through here: the right channel, a bearer token that is not about to
expire, one refresh and one more try when the server still says UNAUTHENTICATED, and
retries of UNAVAILABLE / RESOURCE_EXHAUSTED (see `retry.py`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import grpc

from medmesh.client.endpoints import Channels, Endpoints
from medmesh.client.retry import RetryPolicy
from medmesh.client.stubs import AsyncStub
from medmesh.client.tokens import TokenKeeper
from medmesh.contract import DescriptorImage, snake_case

Metadata = tuple[tuple[str, str], ...]


def _bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def _is_iterator(request: Any) -> bool:
    return hasattr(request, "__aiter__") or hasattr(request, "__iter__")


class Caller:
    """Makes calls for `MedmeshClient`; see the module docstring."""

    def __init__(
        self,
        endpoints: Endpoints,
        channels: Channels,
        image: DescriptorImage,
        keeper: TokenKeeper,
        retry: RetryPolicy,
        timeout_s: float,
    ) -> None:
        self.endpoints = endpoints
        self.channels = channels
        self.image = image
        self.keeper = keeper
        self.retry = retry
        self.timeout_s = timeout_s
        self._stubs: dict[str, AsyncStub] = {}

    def raw_stub(self, service: str) -> AsyncStub:
        """The plain AsyncStub of `service` on its channel (no token, no retry)."""
        stub = self._stubs.get(service)
        if stub is None:
            channel = self.channels.get(self.endpoints.address_for(service))
            stub = self._stubs[service] = AsyncStub(channel, service, self.image)
        return stub

    async def _authorized(
        self, invoke: Callable[[Metadata], Awaitable[Any]], *, authenticated: bool, replayable: bool
    ) -> Any:
        if not authenticated:
            return await invoke(())
        token = await self.keeper.access_token()
        try:
            return await invoke(_bearer(token))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED or not replayable:
                raise
            # The server refused a token this client thought valid (revoked signing key,
            # a clock far off): refresh once and try once more.
            token = await self.keeper.after_rejection(token)
        return await invoke(_bearer(token))

    async def unary(
        self,
        service: str,
        method: str,
        request: Any,
        *,
        timeout_s: float | None = None,
        authenticated: bool = True,
    ) -> Any:
        """A unary or client-streaming call. For client streaming, pass a function that
        returns a fresh request iterator to get retries; an iterator is sent once."""
        rpc = getattr(self.raw_stub(service), snake_case(method))
        replayable = not _is_iterator(request)
        timeout = timeout_s if timeout_s is not None else self.timeout_s

        async def attempt() -> Any:
            return await self._authorized(
                lambda metadata: rpc(
                    request() if callable(request) else request,
                    metadata=metadata,
                    timeout=timeout,
                ),
                authenticated=authenticated,
                replayable=replayable,
            )

        if not replayable:
            return await attempt()
        return await self.retry.retrying()(attempt)

    async def server_stream(
        self,
        service: str,
        method: str,
        request: Any,
        *,
        timeout_s: float | None = None,
        resume: bool = False,
    ) -> AsyncIterator[Any]:
        """The responses of a server-streaming call. A stream that fails before its first
        response is retried like a unary call; one that fails later is called again only
        when `resume` is set (a watch restarts from the current state; a download cannot)."""
        rpc = getattr(self.raw_stub(service), snake_case(method))
        token = await self.keeper.access_token()
        failures, refreshed = 0, False
        while True:
            received = False
            call = rpc(request, metadata=_bearer(token), timeout=timeout_s)
            try:
                async for response in call:
                    received, failures, refreshed = True, 0, False
                    yield response
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED and not refreshed:
                    refreshed = True
                    token = await self.keeper.after_rejection(token)
                    continue
                failures += 1
                retry = self.retry.should_retry(exc) and failures < self.retry.attempts
                if not retry or (received and not resume):
                    raise
                await asyncio.sleep(self.retry.delay_s(exc, failures))
                token = await self.keeper.access_token()
            else:
                return
            finally:
                call.cancel()  # a no-op once the call ended; stops it if the caller left


class AuthorizedStub:
    """`client.stub("medmesh.infer.v1.ModelRegistryService").list_models(request)`: every RPC
    of a service, called with the client's token, refresh and retries; server-streaming
    RPCs return an async iterator."""

    def __init__(self, caller: Caller, service: str) -> None:
        self._caller = caller
        self.service = service
        self._streaming = {
            snake_case(m.name): m.server_streaming for m in caller.image.methods(service)
        }

    def __getattr__(self, name: str) -> Any:
        if name not in self._streaming:
            raise AttributeError(f"{self.service} has no RPC {name!r}")
        call = self._caller.server_stream if self._streaming[name] else self._caller.unary
        return partial(call, self.service, name)
