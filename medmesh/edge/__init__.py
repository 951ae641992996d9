"""The embedded edge: what Envoy (envoy/envoy.yaml) does in production, for `medmesh up` and
the tests. REST transcoding from the contract's google.api.http options, gRPC-Web, CORS and
Envoy's ext_authz check against svc_auth, in one plain ASGI app served by uvicorn."""

from medmesh.edge.app import EdgeApp
from medmesh.edge.authz import UNCHECKED_PATHS
from medmesh.edge.server import serve_edge
from medmesh.edge.settings import EdgeSettings

__all__ = ["UNCHECKED_PATHS", "EdgeApp", "EdgeSettings", "serve_edge"]
