"""Which RPC an HTTP request at the gateway reaches, read from the contract.

REST requests are matched against the `google.api.http` templates of every RPC in the
descriptor image (`/v1/{name=users/*}:disable`); gRPC and gRPC-Web requests name the RPC in
their path (`/medmesh.auth.v1.AuthService/Login`). Either way the gateway's role rules are
keyed by RPC, so one rule covers all three protocols.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2

from medmesh.contract import DescriptorImage

_HTTP_METHODS = ("get", "put", "post", "delete", "patch")
_VARIABLE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")


@dataclass(frozen=True)
class RestRoute:
    """One `google.api.http` binding of an RPC."""

    rpc: str
    http_method: str
    pattern: re.Pattern[str]
    literal_length: int
    """Characters matched literally: the most specific template wins (`:watch` over `*`)."""


def template_regex(template: str) -> tuple[re.Pattern[str], int]:
    """A google.api.http path template as an anchored regex, and its literal length."""
    parts: list[str] = []
    literal = 0
    position = 0
    for match in _VARIABLE.finditer(template):
        text = template[position : match.start()]
        parts.append(re.escape(text))
        literal += len(text)
        segments = (match.group(2) or "*").split("/")
        regex_segments = []
        for segment in segments:
            if segment == "**":
                regex_segments.append(r".+")
            elif segment == "*":
                regex_segments.append(r"[^/]+")
            else:
                regex_segments.append(re.escape(segment))
                literal += len(segment)
        parts.append("/".join(regex_segments))
        position = match.end()
    tail = template[position:]
    parts.append(re.escape(tail))
    literal += len(tail)
    return re.compile("".join(parts)), literal


def _bindings(rule: http_pb2.HttpRule) -> list[tuple[str, str]]:
    found = []
    for candidate in (rule, *rule.additional_bindings):
        kind = candidate.WhichOneof("pattern")
        if kind in _HTTP_METHODS:
            found.append((kind.upper(), getattr(candidate, kind)))
        elif kind == "custom":
            found.append((candidate.custom.kind.upper(), candidate.custom.path))
    return found


class RouteTable:
    """Resolves (HTTP method, path) to `package.Service/Method`, or None."""

    def __init__(self, image: DescriptorImage) -> None:
        self._grpc_paths: set[str] = set()
        self._rest: list[RestRoute] = []
        for file in image.files.file:
            for service in file.service:
                for method in service.method:
                    rpc = f"{file.package}.{service.name}/{method.name}"
                    self._grpc_paths.add(f"/{rpc}")
                    rule = method.options.Extensions[annotations_pb2.http]
                    for http_method, template in _bindings(rule):
                        pattern, literal = template_regex(template)
                        self._rest.append(RestRoute(rpc, http_method, pattern, literal))
        self._rest.sort(key=lambda route: -route.literal_length)

    def resolve(self, http_method: str, path: str) -> str | None:
        """The RPC this request calls; the query string and fragment are ignored."""
        path = path.split("?", 1)[0].split("#", 1)[0]
        if path in self._grpc_paths:
            return path[1:]
        method = http_method.upper()
        for route in self._rest:
            if route.http_method == method and route.pattern.fullmatch(path):
                return route.rpc
        return None
