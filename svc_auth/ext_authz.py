"""Envoy's external authorization API (`envoy.service.auth.v3.Authorization/Check`) around
the gateway decision. Envoy and the embedded edge both call it for every request.

envoy-data-plane ships the message classes but no descriptors, so the handler is bound by
its method path (it does not appear in reflection; Envoy does not need it to).
"""

from __future__ import annotations

import json
from typing import Any

import grpc
from envoy_data_plane.envoy.config.core.v3 import (
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
)
from envoy_data_plane.envoy.service.auth.v3 import (
    CheckRequest,
    CheckResponse,
    DeniedHttpResponse,
    OkHttpResponse,
)
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.rpc import Status

from svc_auth.gateway import (
    FORBIDDEN,
    TOO_MANY_REQUESTS,
    UNAUTHORIZED,
    Decision,
    Gateway,
    HttpRequest,
)

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
IDENTITY_HEADERS = ("x-medmesh-user", "x-medmesh-clinic", "x-medmesh-roles")

_GRPC_CODE = {UNAUTHORIZED: 16, FORBIDDEN: 7, TOO_MANY_REQUESTS: 8}  # google.rpc.Code
_HTTP_STATUS = {
    UNAUTHORIZED: StatusCode.Unauthorized,
    FORBIDDEN: StatusCode.Forbidden,
    TOO_MANY_REQUESTS: StatusCode.TooManyRequests,
}
_OVERWRITE = HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD


def http_request(check: CheckRequest) -> HttpRequest:
    """The parts of Envoy's attribute context the decision needs."""
    attributes = check.attributes
    http = attributes.request.http if attributes and attributes.request else None
    source = attributes.source if attributes else None
    socket = source.address.socket_address if source and source.address else None
    headers = dict(http.headers) if http else {}
    if http and http.header_map:
        headers.update({h.key.lower(): h.value for h in http.header_map.headers})
    return HttpRequest(
        method=http.method if http else "",
        path=http.path if http else "",
        headers={key.lower(): value for key, value in headers.items()},
        client_ip=socket.address if socket and socket.address else "unknown",
    )


def _header(key: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(header=HeaderValue(key=key, value=value), append_action=_OVERWRITE)


def check_response(decision: Decision) -> CheckResponse:
    """Envoy's answer: OK with identity headers, or the denial with its HTTP status."""
    if decision.allowed:
        identity = decision.identity
        if identity is None:
            # Anonymous (public route): nobody may smuggle identity headers upstream.
            ok = OkHttpResponse(headers_to_remove=list(IDENTITY_HEADERS))
        else:
            values = (identity.user_id, identity.clinic_id, ",".join(sorted(identity.roles)))
            ok = OkHttpResponse(
                headers=[_header(k, v) for k, v in zip(IDENTITY_HEADERS, values, strict=True)]
            )
        return CheckResponse(status=Status(code=0), ok_response=ok)
    headers = [_header("content-type", "application/json")]
    if decision.status == UNAUTHORIZED:
        headers.append(_header("www-authenticate", 'Bearer realm="medmesh"'))
    if decision.status == TOO_MANY_REQUESTS:
        headers.append(_header("retry-after", str(decision.retry_after_s)))
    body = json.dumps({"code": _GRPC_CODE[decision.status], "message": decision.reason})
    return CheckResponse(
        status=Status(code=_GRPC_CODE[decision.status], message=decision.reason),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=_HTTP_STATUS[decision.status]), headers=headers, body=body
        ),
    )


class AuthorizationServicer:
    """`Check`: thin, like every servicer (Envoy types ↔ the gateway decision)."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def check(self, request: CheckRequest, _context: Any) -> CheckResponse:
        """Decide on one request entering the mesh."""
        return check_response(await self._gateway.check(http_request(request)))


def authorization_handler(servicer: AuthorizationServicer) -> grpc.GenericRpcHandler:
    """The generic handler serving `Check` on a grpc.aio server."""
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                servicer.check,
                request_deserializer=CheckRequest.FromString,
                response_serializer=bytes,
            )
        },
    )
