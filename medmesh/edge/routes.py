"""The edge's route table, read from the contract: REST bindings from the `google.api.http`
options of every RPC, gRPC(-Web) paths from the services themselves, and which upstream owns
each service (`medmesh.<area>.v1.*` is served by the `<area>` service process)."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from google.api import annotations_pb2, http_pb2  # registers the google.api.http extension
from google.protobuf import descriptor

from medmesh.contract import DescriptorImage, Method
from medmesh.edge.templates import PathTemplate, parse_template, split_path

_log = structlog.get_logger("medmesh.edge")

_HTTP_METHODS = ("get", "put", "post", "delete", "patch")


def upstream_of(service_name: str) -> str:
    """`medmesh.infer.v1.ModelRegistryService` → `infer`: the process that serves it."""
    parts = service_name.split(".")
    return parts[1] if len(parts) > 3 and parts[0] == "medmesh" else ""


@dataclass(frozen=True)
class Rpc:
    """One RPC of the contract with what the edge needs to forward it."""

    method: Method
    upstream: str
    input: descriptor.Descriptor
    """The request message's descriptor (field types for path and query values)."""

    @property
    def name(self) -> str:
        """`medmesh.ingest.v1.IngestService/GetStudy`: the label in logs and metrics."""
        return self.method.path[1:]


@dataclass(frozen=True)
class RestRoute:
    """One HTTP binding of an RPC: `GET /v1/{name=studies/*}` → IngestService/GetStudy."""

    http_method: str
    template: PathTemplate
    rpc: Rpc
    body: str
    """`*` (the whole request), a field path, or empty (no body: fields come from the query)."""
    response_body: str


@dataclass(frozen=True)
class RestMatch:
    """A request matched to a route, with the values its path variables captured."""

    route: RestRoute
    bindings: dict[str, str]


def _bindings(rule: http_pb2.HttpRule) -> list[tuple[str, str, str, str]]:
    found = []
    for candidate in (rule, *rule.additional_bindings):
        kind = candidate.WhichOneof("pattern")
        if kind in _HTTP_METHODS:
            verb, path = kind.upper(), getattr(candidate, kind)
        elif kind == "custom":
            verb, path = candidate.custom.kind.upper(), candidate.custom.path
        else:
            continue
        found.append((verb, path, candidate.body, candidate.response_body))
    return found


class RouteTable:
    """Every RPC of the contract, by gRPC path and by REST binding."""

    def __init__(self, image: DescriptorImage, package_prefix: str = "medmesh.") -> None:
        self.rpcs: dict[str, Rpc] = {}
        self.rest: list[RestRoute] = []
        for service_name in image.service_names(package_prefix):
            service = image.service(service_name)
            for method in image.methods(service_name):
                method_descriptor = service.methods_by_name[method.name]
                rpc = Rpc(method, upstream_of(service_name), method_descriptor.input_type)
                self.rpcs[method.path] = rpc
                options = method_descriptor.GetOptions()
                if not options.HasExtension(annotations_pb2.http):
                    continue
                if method.client_streaming:
                    # Uploads stay on gRPC or presigned URLs; REST never buffers a stream.
                    _log.warning("client-streaming RPC not exposed over REST", rpc=rpc.name)
                    continue
                for verb, path, body, response_body in _bindings(
                    options.Extensions[annotations_pb2.http]
                ):
                    self.rest.append(
                        RestRoute(verb, parse_template(path), rpc, body, response_body)
                    )
        self.rest.sort(key=lambda route: route.template.specificity)
        self.verbs = frozenset(r.template.verb for r in self.rest if r.template.verb)

    def match_rest(self, http_method: str, raw_path: str) -> RestMatch | None:
        """The route for a request (`raw_path` still percent-encoded, without the query)."""
        segments, verb = split_path(raw_path, self.verbs)
        for route in self.rest:
            if route.http_method != http_method:
                continue
            bindings = route.template.match(segments, verb)
            if bindings is not None:
                return RestMatch(route, bindings)
        return None

    def rpc(self, grpc_path: str) -> Rpc | None:
        """The RPC a gRPC(-Web) request names by its path: `/package.Service/Method`."""
        return self.rpcs.get(grpc_path)
