"""`python -m medmesh.edge`: the embedded gateway (REST, gRPC-Web, CORS, ext_authz)."""

from medmesh.edge.server import main

main()
