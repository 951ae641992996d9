"""gRPC status → HTTP: the standard mapping (google/rpc/code.proto, the table Envoy's
transcoder and grpc-gateway use) and the google.rpc.Status JSON body errors carry."""

from __future__ import annotations

import json
import math

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from medmesh.errors import DomainError
from medmesh.interceptors import status_for

# error_details_pb2 is imported for its side effect too: json_format can only print the
# `details` of a Status when their types (BadRequest, RetryInfo, ...) are registered.
HTTP_STATUS_OF: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
    code_pb2.UNAUTHENTICATED: 401,
}

# The reverse, for local replies to gRPC-Web clients (Envoy's Grpc::Utility::httpToGrpcStatus).
GRPC_CODE_OF_HTTP: dict[int, int] = {
    400: code_pb2.INTERNAL,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.UNIMPLEMENTED,
    429: code_pb2.UNAVAILABLE,
    502: code_pb2.UNAVAILABLE,
    503: code_pb2.UNAVAILABLE,
    504: code_pb2.UNAVAILABLE,
}

DETAILS_KEY = "grpc-status-details-bin"


def http_status(code: int) -> int:
    """The HTTP status of a gRPC status code (unknown codes are 500)."""
    return HTTP_STATUS_OF.get(code, 500)


def grpc_code_for_http(status: int) -> int:
    """The gRPC code a gateway reports for an HTTP status it produced itself."""
    return GRPC_CODE_OF_HTTP.get(status, code_pb2.UNKNOWN)


def status_of_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The full google.rpc.Status of a failed call: details from `grpc-status-details-bin`
    when the server sent them (and they agree with the code), else code and message only."""
    code = error.code().value[0]
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except ValueError:
                break
            if status.code == code:
                return status
    return status_pb2.Status(code=code, message=error.details() or "")


def status_of(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    """A Status without details, for failures the edge itself detects."""
    return status_pb2.Status(code=code.value[0], message=message)


def status_of_domain_error(error: DomainError) -> status_pb2.Status:
    """The Status a domain error maps to: the same mapping the services' interceptor uses."""
    return status_for(error)


def status_json(status: status_pb2.Status) -> dict[str, object]:
    """google.rpc.Status in proto-JSON: `{"code", "message", "details": [{"@type", ...}]}`."""
    body = json_format.MessageToDict(status)
    body.setdefault("code", 0)
    body.setdefault("message", "")
    body.setdefault("details", [])
    return body


def error_body(status: status_pb2.Status) -> bytes:
    """The JSON body of an error response."""
    return json.dumps(status_json(status), separators=(",", ":"), ensure_ascii=False).encode()


def retry_after(status: status_pb2.Status) -> str | None:
    """A Retry-After value (whole seconds, rounded up) from a RetryInfo detail, if any."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            seconds = retry.retry_delay.ToNanoseconds() / 1e9
            return str(max(1, math.ceil(seconds)))
    return None
