"""Helpers for the gateway tests: scripted upstream servicers that record what reached them,
a real ext_authz peer (envoy-data-plane types), the edge in an `async with`, and a small
gRPC-Web client codec. The fixtures that use them are in conftest.py."""

from __future__ import annotations

import asyncio
import base64
import inspect
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import grpc
import httpx
from envoy_data_plane.envoy.config.core.v3 import HeaderValue, HeaderValueOption
from envoy_data_plane.envoy.service.auth.v3 import (
    CheckRequest,
    CheckResponse,
    DeniedHttpResponse,
    OkHttpResponse,
)
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.rpc import Status
from support.tokens import TokenFactory

from gen.medmesh.auth.v1 import GetJwksResponse, Jwk
from medmesh.contract import DescriptorImage, snake_case
from medmesh.edge import EdgeSettings, serve_edge
from medmesh.errors import Unauthenticated
from medmesh.identity import ANY_ROLE, PUBLIC, RoleRules

UPSTREAM_SERVICES = {
    "auth": ["medmesh.auth.v1.AuthService"],
    "ingest": ["medmesh.ingest.v1.IngestService"],
    "infer": ["medmesh.infer.v1.InferenceService", "medmesh.infer.v1.ModelRegistryService"],
    "report": ["medmesh.report.v1.ReportService"],
}
PUBLIC_RPCS = frozenset({"Register", "VerifyEmail", "Login", "RefreshToken", "GetJwks"})
PUBLIC_PATHS = frozenset(
    {
        "/v1/users:register",
        "/v1/auth:login",
        "/v1/auth:refresh",
        "/.well-known/jwks.json",
        "/medmesh.auth.v1.AuthService/GetJwks",
        "/medmesh.auth.v1.AuthService/Login",
    }
)
ALLOWED_ORIGIN = "https://app.medmesh.test"


class AbortWith(Exception):
    """Raised by a script: the upstream ends the call with this exact status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


@dataclass
class Received:
    """One RPC as the upstream saw it."""

    rpc: str
    request: Any
    metadata: dict[str, str]


@dataclass
class Recorder:
    """What reached the upstreams, and how each RPC should answer (by RPC name)."""

    calls: list[Received] = field(default_factory=list)
    scripts: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    defaults: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    """Answers that outlive a test (GetJwks publishes the test key, like svc_auth)."""

    def last(self, rpc: str) -> Received:
        """The most recent call of `rpc` (`GetStudy`); fails the test when there was none."""
        found = [c for c in self.calls if c.rpc == rpc]
        assert found, f"{rpc} never reached its upstream; got {[c.rpc for c in self.calls]}"
        return found[-1]


class ScriptedServicer:
    """Serves every RPC of one service: records the call, then answers by its script (a
    function of the request returning the response, an async iterator, or raising a domain
    error), else with the empty response of the RPC's type."""

    def __init__(self, image: DescriptorImage, service: str, recorder: Recorder) -> None:
        self._methods = {snake_case(m.name): m for m in image.methods(service)}
        self._recorder = recorder

    def __getattr__(self, name: str) -> Any:
        method = self._methods.get(name)
        if method is None:
            raise AttributeError(name)
        recorder = self._recorder

        def record(request: Any, context: grpc.aio.ServicerContext) -> Callable[[Any], Any]:
            metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
            recorder.calls.append(Received(method.name, request, metadata))
            default = recorder.defaults.get(method.name, lambda _: method.response_type())
            return recorder.scripts.get(method.name, default)

        if method.server_streaming:

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                answer = record(request, context)(request)
                if not hasattr(answer, "__aiter__"):
                    yield answer  # the default: one empty message, then the end of the stream
                    return
                async for item in answer:
                    yield item

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                answer = record(request, context)(request)
                return await answer if inspect.isawaitable(answer) else answer
            except AbortWith as abort:
                await context.abort(abort.code, abort.details)

        return unary


def role_rules(image: DescriptorImage, service: str) -> RoleRules:
    return {m.name: PUBLIC if m.name in PUBLIC_RPCS else ANY_ROLE for m in image.methods(service)}


def _header(key: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(header=HeaderValue(key=key, value=value))


def denial(http: StatusCode, code: int, message: str, **headers: str) -> CheckResponse:
    """A CheckResponse refusing the request, as svc_auth sends one."""
    return CheckResponse(
        status=Status(code=code, message=message),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=http),
            headers=[_header(k.replace("_", "-"), v) for k, v in headers.items()],
            body=f'{{"code":{code},"message":"{message}"}}',
        ),
    )


class AuthzPeer:
    """A real `envoy.service.auth.v3.Authorization/Check` server. Its policy: public paths
    pass; otherwise a valid bearer token passes with identity headers, anything else is 401.
    A test may impose the next answers with `answers`."""

    def __init__(self, tokens: TokenFactory) -> None:
        self.requests: list[CheckRequest] = []
        self.answers: list[CheckResponse] = []
        self._verifier = tokens.verifier()
        self.server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            self.check, request_deserializer=CheckRequest.FromString, response_serializer=bytes
        )
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "envoy.service.auth.v3.Authorization", {"Check": handler}
                ),
            )
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    async def check(self, request: CheckRequest, _context: Any) -> CheckResponse:
        self.requests.append(request)
        if self.answers:
            return self.answers.pop(0)
        http = request.attributes.request.http
        if http.path.split("?", 1)[0] in PUBLIC_PATHS:
            return CheckResponse(status=Status(code=0), ok_response=OkHttpResponse())
        scheme, _, token = http.headers.get("authorization", "").partition(" ")
        try:
            identity = await self._verifier.verify(token if scheme.lower() == "bearer" else "")
        except Unauthenticated as exc:
            return denial(
                StatusCode.Unauthorized,
                16,
                exc.message,
                content_type="application/json",
                www_authenticate='Bearer realm="medmesh"',
            )
        headers = {
            "x-medmesh-user": identity.user_id,
            "x-medmesh-clinic": identity.clinic_id,
            "x-medmesh-roles": ",".join(sorted(identity.roles)),
        }
        return CheckResponse(
            status=Status(code=0),
            ok_response=OkHttpResponse(headers=[_header(k, v) for k, v in headers.items()]),
        )


class running_edge:  # used like a function: `async with running_edge(...)`
    """Serve an edge for the duration of an `async with` block; yields its base URL."""

    def __init__(self, settings: EdgeSettings, image: DescriptorImage) -> None:
        self._settings, self._image = settings, image
        self._stop = asyncio.Event()

    async def __aenter__(self) -> str:
        started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(
            serve_edge(self._settings, image=self._image, stop=self._stop, started=started)
        )
        done, _ = await asyncio.wait({started, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            await self._task
        return started.result()

    async def __aexit__(self, *_exc: object) -> None:
        self._stop.set()
        await self._task


@dataclass
class GrpcWebReply:
    """A gRPC-Web response taken apart: HTTP status, headers, messages, status, trailers."""

    http_status: int
    headers: httpx.Headers
    messages: list[bytes]
    trailers: dict[str, str]

    @property
    def code(self) -> int:
        """grpc-status from the trailer frame, or from the headers (trailers-only)."""
        return int(self.trailers.get("grpc-status", self.headers.get("grpc-status", "-1")))

    @property
    def message(self) -> str:
        """grpc-message, percent-decoded."""
        return unquote(self.trailers.get("grpc-message", self.headers.get("grpc-message", "")))


def grpc_web_body(message: bytes, *, text: bool = False) -> bytes:
    """One request frame, base64 in text mode."""
    frame = struct.pack(">BI", 0, len(message)) + message
    return base64.b64encode(frame) if text else frame


def parse_grpc_web(response: httpx.Response, *, text: bool = False) -> GrpcWebReply:
    """Split a gRPC-Web response body into message frames and the trailer frame."""
    body = response.content
    if text:
        body = b"".join(base64.b64decode(chunk) for chunk in _chunks(body))
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    offset = 0
    while offset < len(body):
        flag, length = struct.unpack_from(">BI", body, offset)
        payload = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return GrpcWebReply(response.status_code, response.headers, messages, trailers)


def _chunks(body: bytes) -> list[bytes]:
    chunks, start = [], 0
    for index in range(len(body)):
        if body[index : index + 1] == b"=" and (
            index + 1 == len(body) or body[index + 1 : index + 2] != b"="
        ):
            chunks.append(body[start : index + 1])
            start = index + 1
    if start < len(body):
        chunks.append(body[start:])
    return chunks


def jwks_response(tokens: TokenFactory) -> GetJwksResponse:
    """What the test auth upstream's GetJwks answers: the token factory's public key."""
    key = tokens.jwks["keys"][0]
    return GetJwksResponse(
        keys=[
            Jwk(
                kty=key["kty"],
                kid=key["kid"],
                alg=key["alg"],
                use=key["use"],
                crv=key["crv"],
                x=key["x"],
            )
        ]
    )
