"""`python -m medmesh.healthcheck TARGET`: exit 0 when a medmesh process answers healthy.

Container healthchecks (compose, any orchestrator without native gRPC probes) run this inside
the image, so they need neither grpcurl nor grpc_health_probe:

    python -m medmesh.healthcheck 127.0.0.1:50051                    # gRPC health, server-wide
    python -m medmesh.healthcheck 127.0.0.1:50051 --service medmesh.ingest.v1.IngestService
    python -m medmesh.healthcheck http://127.0.0.1:8080/healthz      # the edge (HTTP)
    python -m medmesh.healthcheck 127.0.0.1:50051 --ca-file /certs/ca.crt   # a TLS listener

A gRPC target is asked `grpc.health.v1.Health/Check` (the standard protocol the servers in
`medmesh.server` speak), healthy only when the answer is SERVING: a process that got SIGTERM
answers NOT_SERVING while it drains, so the orchestrator stops routing to it. An `http(s)://`
target is healthy when it answers 200. With `--ca-file` the gRPC check speaks TLS and verifies
the server's certificate against that CA for the name `--tls-name` (default `localhost`, which
the certificates scripts/make_certs.py issues carry). Exit codes: 0 healthy, 1 unhealthy or
unreachable, 2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HEALTHY = 0
UNHEALTHY = 1


def _channel(target: str, ca_file: str, tls_name: str) -> grpc.Channel:
    if not ca_file:
        return grpc.insecure_channel(target)
    with open(ca_file, "rb") as handle:
        credentials = grpc.ssl_channel_credentials(root_certificates=handle.read())
    return grpc.secure_channel(
        target, credentials, options=[("grpc.ssl_target_name_override", tls_name)]
    )


def check_grpc(
    target: str,
    *,
    service: str = "",
    timeout_s: float = 3.0,
    ca_file: str = "",
    tls_name: str = "localhost",
) -> tuple[bool, str]:
    """Ask `target`'s standard health service about `service` ("" = the whole server), over
    TLS verified against `ca_file` for `tls_name` when a CA file is given."""
    with _channel(target, ca_file, tls_name) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            return False, f"{error.code().name}: {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def check_http(url: str, *, timeout_s: float = 3.0) -> tuple[bool, str]:
    """GET `url`; only a 200 is healthy (a draining edge answers 503)."""
    if not url.startswith(("http://", "https://")):
        return False, f"not an http(s) URL: {url}"
    try:
        # The scheme is checked above, so urlopen cannot be steered to file:// or the like.
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            return response.status == 200, f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return False, f"HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        return False, str(getattr(error, "reason", error))


def check(
    target: str,
    *,
    service: str = "",
    timeout_s: float = 3.0,
    ca_file: str = "",
    tls_name: str = "localhost",
) -> tuple[bool, str]:
    """Dispatch on the target's form: a URL is HTTP, `host:port` is gRPC health."""
    if "://" in target:
        return check_http(target, timeout_s=timeout_s)
    return check_grpc(
        target, service=service, timeout_s=timeout_s, ca_file=ca_file, tls_name=tls_name
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, check once, print one line, return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m medmesh.healthcheck",
        description="Exit 0 when TARGET is healthy (gRPC health SERVING, or HTTP 200).",
    )
    parser.add_argument("target", help="host:port (gRPC health) or http(s)://host:port/path")
    parser.add_argument("--service", default="", help="gRPC service name; default: the server")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument("--ca-file", default="", help="PEM CA: check a TLS listener")
    parser.add_argument(
        "--tls-name",
        default="localhost",
        help="name the certificate must carry (default localhost)",
    )
    args = parser.parse_args(argv)
    try:
        healthy, detail = check(
            args.target,
            service=args.service,
            timeout_s=args.timeout,
            ca_file=args.ca_file,
            tls_name=args.tls_name,
        )
    except OSError as error:  # an unreadable CA file
        healthy, detail = False, str(error)
    # A healthcheck's output lands in `docker inspect`; one line says why it failed.
    sys.stdout.write(f"{args.target}: {detail}\n")
    return HEALTHY if healthy else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
