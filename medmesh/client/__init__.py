"""`medmesh.client`: how Python code talks to medmesh over gRPC.

- `MedmeshClient`, the SDK for integrators: typed async methods for the common flows (log in,
  create a study, upload files, watch it, read results and reports), tokens refreshed before
  they expire, UNAVAILABLE / RESOURCE_EXHAUSTED retried with backoff honouring
  `google.rpc.RetryInfo`; `client.stub(service)` for every other RPC.
- `AsyncStub`, the thin grpc.aio stub built from the contract that services and tests use.
"""

from medmesh.client.endpoints import Endpoints
from medmesh.client.files import LocalFile, UnknownFileKind, describe_file, files_under
from medmesh.client.retry import RetryPolicy, retry_delay_of
from medmesh.client.sdk import (
    ChecksumMismatch,
    MedmeshClient,
    ReportNotReady,
    study_name,
)
from medmesh.client.stubs import AsyncStub, call_json
from medmesh.client.tokens import NotLoggedIn, Tokens

__all__ = [
    "AsyncStub",
    "ChecksumMismatch",
    "Endpoints",
    "LocalFile",
    "MedmeshClient",
    "NotLoggedIn",
    "ReportNotReady",
    "RetryPolicy",
    "Tokens",
    "UnknownFileKind",
    "call_json",
    "describe_file",
    "files_under",
    "retry_delay_of",
    "study_name",
]
