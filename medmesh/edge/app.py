"""The edge as an ASGI application: what Envoy's filter chain does in production, in order.

    CORS (preflights answered here) → /healthz, /openapi.json → the web app's files →
    ext_authz (Check on svc_auth) →
    gRPC-Web (by content type) or REST transcoding (by the google.api.http templates)

The order mirrors envoy/envoy.yaml, so a client sees the same answers from both gateways:
a preflight never needs a token; a request is authorized before its body is read or its
route is looked up (an unknown route is svc_auth's to refuse first, as with Envoy).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
import structlog
from google.rpc import status_pb2
from prometheus_client import Counter, Histogram

from medmesh.contract import DescriptorImage
from medmesh.edge.asgi import Message, Receive, Request, Scope, Send, send_response
from medmesh.edge.authz import (
    UNCHECKED_PATHS,
    AuthzClient,
    AuthzUnavailable,
    Decision,
    HttpRequestInfo,
)
from medmesh.edge.cors import CorsPolicy
from medmesh.edge.grpcweb import is_grpc_web, is_text
from medmesh.edge.rest import JSON, forward_rest, send_status
from medmesh.edge.routes import RouteTable
from medmesh.edge.status import error_body, grpc_code_for_http, status_of
from medmesh.edge.upstreams import Call, Upstreams, forwarded_metadata
from medmesh.edge.web import forward_grpc_web, send_trailers_only
from medmesh.edge.webapp import WebApp
from medmesh.openapi import with_server
from medmesh.transport import grpc_channel

_log = structlog.get_logger("medmesh.edge")

_REQUESTS = Counter(
    "edge_requests_total",
    "Requests answered by the edge, by protocol, RPC and HTTP status.",
    ["protocol", "route", "status"],
)
_LATENCY = Histogram(
    "edge_request_duration_seconds",
    "Time from a request's arrival at the edge to the end of its response.",
    ["protocol", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_AUTHZ = Counter("edge_authz_checks_total", "ext_authz checks by outcome.", ["outcome"])

HEALTH_PATH = "/healthz"
# The OpenAPI 2.0 document of every REST binding, generated from proto/ into gen/ (codegen.py),
# public like the signing keys: integrators read it before they have a token.
OPENAPI_PATH = "/openapi.json"
DEFAULT_OPENAPI_FILE = Path(__file__).resolve().parents[2] / "gen/openapi/medmesh.swagger.json"
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


class _Exchange:
    """Per-request bookkeeping: the labels for logs and metrics, headers every response gets."""

    def __init__(self, send: Send, extra_headers: list[tuple[str, str]]) -> None:
        self._send = send
        self.extra_headers = extra_headers
        self.status = 0
        self.protocol = "http"
        self.route = "-"
        self.grpc_code: int | None = None
        self.content_type = ""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.extra_headers]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await self._send(message)


class EdgeApp:
    """REST + gRPC-Web + CORS + ext_authz in front of the services' gRPC ports."""

    def __init__(
        self,
        image: DescriptorImage,
        upstreams: Mapping[str, str],
        *,
        authz_addr: str,
        cors_origins: Iterable[str] = (),
        unchecked_paths: frozenset[str] = UNCHECKED_PATHS,
        upstream_timeout_s: float = 30.0,
        authz_timeout_s: float = 2.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        webapp: WebApp | None = None,
        openapi_file: Path | None = DEFAULT_OPENAPI_FILE,
        upstream_ca_file: str = "",
    ) -> None:
        if not authz_addr:
            raise ValueError("the edge needs an authorization service (svc_auth's address)")
        self.routes = RouteTable(image)
        self.upstreams = Upstreams(upstreams, ca_file=upstream_ca_file)
        self._authz_channel = grpc_channel(authz_addr, ca_file=upstream_ca_file)
        self._authz = AuthzClient(self._authz_channel, timeout_s=authz_timeout_s)
        self.cors = CorsPolicy.of(cors_origins)
        self.unchecked_paths = unchecked_paths
        self.upstream_timeout_s = upstream_timeout_s
        self.max_body_bytes = max_body_bytes
        self.webapp = webapp
        self.openapi = _read_openapi(openapi_file)
        self.serving = True

    async def close(self) -> None:
        """Close the channels to the services and to svc_auth."""
        self.serving = False
        await self.upstreams.close()
        await self._authz_channel.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request = Request(scope, receive)
        request_id = request.header("x-request-id") or str(uuid.uuid4())
        origin = request.header("origin")
        exchange = _Exchange(send, [("x-request-id", request_id)])
        exchange.content_type = request.header("content-type")
        try:
            await self._handle(request, request_id, origin, exchange)
        except Exception:  # noqa: BLE001 - a bug must answer 500, not drop the connection
            _log.exception("edge failure", route=exchange.route, request_id=request_id)
            if not exchange.status:
                internal = status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0])
                internal.message = "internal error"
                await send_response(exchange.send, 500, [JSON], error_body(internal))
        finally:
            self._observe(request, exchange, time.perf_counter() - started)

    async def _handle(
        self, request: Request, request_id: str, origin: str, exchange: _Exchange
    ) -> None:
        if CorsPolicy.is_preflight(
            request.method, origin, request.header("access-control-request-method")
        ):
            exchange.route = "preflight"
            allowed = self.cors.allows(origin)
            await send_response(
                exchange.send,
                204 if allowed else 403,
                self.cors.preflight_headers(origin) if allowed else [],
            )
            return
        exchange.extra_headers.extend(self.cors.response_headers(origin))
        grpc_web = is_grpc_web(request.header("content-type")) and request.method == "POST"
        exchange.protocol = "grpc-web" if grpc_web else "rest"
        if request.method == "GET" and request.raw_path in (HEALTH_PATH, OPENAPI_PATH):
            await self._answer_locally(request, exchange)
            return
        web = self.webapp
        if web is not None and not grpc_web and web.claims(request.method, request.raw_path):
            exchange.protocol, exchange.route = "web", "webapp"
            await web.respond(request.method, request.raw_path, exchange.send)
            return
        # Routing is pure and cheap: done first so that refusals are counted per RPC too,
        # but a missing route is only reported after the authorization check, like Envoy.
        rpc = self.routes.rpc(request.raw_path) if grpc_web else None
        match = None if grpc_web else self.routes.match_rest(request.method, request.raw_path)
        found = rpc or (match.route.rpc if match else None)
        exchange.route = found.name if found else "-"
        decision = None
        if request.raw_path not in self.unchecked_paths:
            decision = await self._authorize(request, request_id, grpc_web, exchange)
            if decision is None:
                return
            exchange.extra_headers.extend(decision.response_headers)
        call = Call(
            request=request,
            send=exchange.send,
            metadata=forwarded_metadata(
                request.headers,
                request_id=request_id,
                client_ip=request.client[0] if request.client else None,
                decision=decision,
            ),
            timeout_s=self.upstream_timeout_s,
            max_body_bytes=self.max_body_bytes,
        )
        if grpc_web:
            exchange.grpc_code = await forward_grpc_web(call, rpc, self.upstreams)
            return
        if match is None:
            missing = f"no route for {request.method} {request.raw_path}"
            exchange.grpc_code = await send_status(
                call, status_of(grpc.StatusCode.NOT_FOUND, missing)
            )
            return
        exchange.grpc_code = await forward_rest(call, match, self.upstreams)

    async def _answer_locally(self, request: Request, exchange: _Exchange) -> None:
        """/healthz and /openapi.json: answered by the edge itself, with no token."""
        if request.raw_path == HEALTH_PATH:
            exchange.route = "healthz"
            await self._health(exchange)
        else:
            exchange.route = "openapi"
            await self._openapi(request, exchange)

    async def _health(self, exchange: _Exchange) -> None:
        state = "SERVING" if self.serving else "NOT_SERVING"
        body = f'{{"status":"{state}"}}'.encode()
        await send_response(exchange.send, 200 if self.serving else 503, [JSON], body)

    async def _openapi(self, request: Request, exchange: _Exchange) -> None:
        if self.openapi is None:
            missing = status_of(grpc.StatusCode.NOT_FOUND, "no OpenAPI document in this build")
            await send_response(exchange.send, 404, [JSON], error_body(missing))
            return
        # The server URL is the one the caller used (medmesh/openapi.py).
        served = with_server(self.openapi, request.header("host"), request.scope.get("scheme"))
        await send_response(exchange.send, 200, [JSON], served)

    async def _authorize(
        self, request: Request, request_id: str, grpc_web: bool, exchange: _Exchange
    ) -> Decision | None:
        """The decision when the request may go on; None once a refusal has been sent."""
        info = HttpRequestInfo(
            method=request.method,
            path=request.path_with_query,
            headers=request.headers,
            host=request.header("host"),
            scheme=request.scope.get("scheme", "http"),
            protocol=f"HTTP/{request.scope.get('http_version', '1.1')}",
            client=request.client,
            server=request.server,
            request_id=request_id,
        )
        try:
            decision = await self._authz.check(info)
        except AuthzUnavailable as exc:
            _AUTHZ.labels("error").inc()
            _log.warning("authorization unavailable", error=str(exc), request_id=request_id)
            await self._refuse(
                exchange,
                grpc_web,
                Decision(
                    allowed=False,
                    http_status=503,
                    grpc_code=grpc.StatusCode.UNAVAILABLE.value[0],
                    message="the authorization service is unavailable",
                ),
            )
            return None
        _AUTHZ.labels("allowed" if decision.allowed else "denied").inc()
        if decision.allowed:
            return decision
        await self._refuse(exchange, grpc_web, decision)
        return None

    async def _refuse(self, exchange: _Exchange, grpc_web: bool, decision: Decision) -> None:
        code = decision.grpc_code or grpc_code_for_http(decision.http_status)
        exchange.grpc_code = code
        if grpc_web:
            headers = [(k, v) for k, v in decision.headers if k != "content-type"]
            message = decision.message or decision.body.decode(errors="replace")
            text = is_text(exchange.content_type)
            await send_trailers_only(exchange.send, text, code, message, headers)
            return
        headers = list(decision.headers)
        body = decision.body
        if not body:
            # Envoy passes an empty denial body through; the edge gives the Status JSON
            # every other error carries, which is what a REST client parses anyway.
            body = _status_body(code, decision.message)
            headers = [(k, v) for k, v in headers if k != "content-type"] + [JSON]
        await send_response(exchange.send, decision.http_status, headers, body)

    def _observe(self, request: Request, exchange: _Exchange, seconds: float) -> None:
        _REQUESTS.labels(exchange.protocol, exchange.route, str(exchange.status)).inc()
        _LATENCY.labels(exchange.protocol, exchange.route).observe(seconds)
        log = _log.warning if exchange.status >= 500 else _log.info
        # Never the query or the body: both may carry patient data.
        log(
            "request",
            http_method=request.method,
            protocol=exchange.protocol,
            route=exchange.route,
            status=exchange.status,
            grpc_code=exchange.grpc_code,
            duration_ms=round(seconds * 1000, 2),
        )


def _read_openapi(path: Path | None) -> bytes | None:
    """The OpenAPI document's bytes, or None (answered 404) when this build has none."""
    if path is None or not path.is_file():
        return None
    return path.read_bytes()


def _status_body(code: int, message: str) -> bytes:
    return error_body(status_pb2.Status(code=code, message=message))


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
