"""`medmesh.client`: how Python code talks to medmesh over gRPC.

- `MedmeshClient`, the SDK for integrators: typed async methods for the common flows (log in,
  create a study, upload files, watch it, read results and reports), tokens refreshed before
  they expire, UNAVAILABLE / RESOURCE_EXHAUSTED retried with backoff honouring
  `google.rpc.RetryInfo`; `client.stub(service)` for every other RPC.
- `AsyncStub`, the thin grpc.aio stub built from the contract that services and tests use.
"""

from medmesh.client.stubs import AsyncStub, call_json

__all__ = ["AsyncStub", "call_json"]
