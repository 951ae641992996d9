"""The edge's ext_authz wire forms: the CheckRequest it writes and the CheckResponse it reads
directly must mean exactly what envoy-data-plane's typed messages mean."""

from __future__ import annotations

import datetime

import pytest
from envoy_data_plane.envoy.config.core.v3 import HeaderValue, HeaderValueOption
from envoy_data_plane.envoy.service.auth.v3 import (
    CheckRequest,
    CheckResponse,
    DeniedHttpResponse,
    OkHttpResponse,
)
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.rpc import Status

from medmesh.edge.authz import (
    HttpRequestInfo,
    check_request,
    decision_of,
    decode_decision,
    encode_check_request,
)

NOW = datetime.datetime(2026, 12, 4, 13, 0, 7, 123456, tzinfo=datetime.UTC)
NOW_NS = int(NOW.replace(microsecond=0).timestamp()) * 1_000_000_000 + 123_456_000


def _info(**changes: object) -> HttpRequestInfo:
    fields: dict[str, object] = {
        "method": "GET",
        "path": "/v1/studies/s1?view=FULL",
        "headers": [("host", "edge:8080"), ("authorization", "Bearer a.b.c")],
        "host": "edge:8080",
        "scheme": "http",
        "protocol": "HTTP/1.1",
        "client": ("127.0.0.1", 50123),
        "server": ("127.0.0.1", 8080),
        "request_id": "req-1",
    }
    return HttpRequestInfo(**{**fields, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "info",
    [
        _info(),
        _info(client=None, server=None),
        _info(server=("::1", 0)),
        _info(method="POST", headers=[("Content-Length", "42"), ("content-type", "a/b")]),
        _info(headers=[("X-Tag", "one"), ("x-tag", "two"), ("x-request-id", "client-id")]),
        _info(headers=[("x-note", "caf\u00e9 \u0416"), ("x-empty", "")], request_id=""),
        _info(headers=[("content-length", "")], host="", scheme="https", protocol="HTTP/2"),
    ],
    ids=[
        "plain get",
        "no peers",
        "ipv6 server port 0",
        "post with content length",
        "repeated headers and client request id",
        "non-ascii and empty values",
        "empty content length",
    ],
)
def test_the_written_check_request_parses_to_the_typed_one(info: HttpRequestInfo) -> None:
    written = CheckRequest.FromString(encode_check_request(info, now_ns=NOW_NS))
    assert written == check_request(info, now=NOW)


def _header(key: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(header=HeaderValue(key=key, value=value))


@pytest.mark.parametrize(
    "response",
    [
        CheckResponse(status=Status(code=0), ok_response=OkHttpResponse()),
        CheckResponse(status=Status(code=0)),
        CheckResponse(),
        CheckResponse(
            status=Status(code=0),
            ok_response=OkHttpResponse(
                headers=[_header("X-Medmesh-User", "u-1"), _header("x-medmesh-roles", "a,b")],
                headers_to_remove=["Authorization", "x-drop"],
                response_headers_to_add=[_header("X-RateLimit-Remaining", "9")],
            ),
        ),
        CheckResponse(
            status=Status(code=0),
            ok_response=OkHttpResponse(
                headers=[
                    HeaderValueOption(),
                    HeaderValueOption(header=HeaderValue()),
                    _header("k", ""),
                ]
            ),
        ),
        CheckResponse(
            status=Status(code=16, message="no token"),
            denied_response=DeniedHttpResponse(
                status=HttpStatus(code=StatusCode.Unauthorized),
                headers=[_header("WWW-Authenticate", "Bearer"), _header("content-type", "a/json")],
                body='{"error":"no token"}',
            ),
        ),
        CheckResponse(
            status=Status(code=8, message="slow down"),
            denied_response=DeniedHttpResponse(
                status=HttpStatus(code=StatusCode.TooManyRequests),
                headers=[_header("retry-after", "3")],
            ),
        ),
        CheckResponse(status=Status(code=7, message="nope")),
        CheckResponse(status=Status(code=7), denied_response=DeniedHttpResponse(body="\u0416")),
    ],
    ids=[
        "ok",
        "ok without ok_response",
        "empty response",
        "ok with headers to add remove and return",
        "ok with empty header options",
        "denied 401 with headers and body",
        "denied 429 without body",
        "denied without denied_response",
        "denied without http status",
    ],
)
def test_the_read_decision_is_the_typed_decision(response: CheckResponse) -> None:
    assert decode_decision(bytes(response)) == decision_of(response)


def test_a_check_response_sent_in_two_parts_merges_like_protobuf() -> None:
    first = CheckResponse(ok_response=OkHttpResponse(headers=[_header("x-a", "1")]))
    second = CheckResponse(ok_response=OkHttpResponse(headers=[_header("x-b", "2")]))
    # betterproto2 keeps only the last part here; protobuf (and Envoy) merge them.
    assert dict(decode_decision(bytes(first) + bytes(second)).upstream_headers) == {
        "x-a": "1",
        "x-b": "2",
    }


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\x08", b"\x0b", b"\x0d\x00"])
def test_a_malformed_check_response_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="truncated|wire type|varint"):
        decode_decision(data)
