"""Token verification throughput, and the gateway Check's latency against a trivial RPC.

    python bench/bench_auth.py [--verifications 20000] [--calls 2000]

1. In-process: `TokenVerifier.verify` (header parse, kid lookup, EdDSA signature, claims) on
   svc_auth-shaped tokens, against the floor of the bare Ed25519 signature check of the same
   bytes with `cryptography`. Prints verifications/s of each and the ratio.
2. svc_auth runs as `python -m svc_auth` (embedded PostgreSQL and Redis unless MEDMESH_*_URL
   are set); one client calls, one at a time, `envoy.service.auth.v3.Authorization/Check`
   for an allowed request with a real access token (signature, revocation lookup in Redis,
   two rate-limit buckets in Redis) and `grpc.health.v1.Health/Check` on the same server.
   Prints p50/p99 of each and the ratios Check/health.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import jwt
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jwt.algorithms import OKPAlgorithm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _results import record  # noqa: E402
from envoy_data_plane.envoy.service.auth.v3 import CheckRequest, CheckResponse  # noqa: E402

from gen.medmesh.auth.v1 import LoginRequest  # noqa: E402
from medmesh.auth import StaticJwks, TokenVerifier  # noqa: E402
from medmesh.client import AsyncStub  # noqa: E402
from medmesh.contract import DescriptorImage  # noqa: E402
from medmesh.launcher import DEPENDENCY_ENV, EmbeddedDependencies  # noqa: E402

ADMIN = "bench-admin@clinic-a.example"
PASSWORD = "bench passphrase that is long"


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


async def bench_verifications(count: int) -> None:
    key = Ed25519PrivateKey.generate()
    public = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks = {"keys": [{**public, "kid": "k1", "alg": "EdDSA", "use": "sig"}]}
    now = int(time.time())
    claims = {
        "iss": "medmesh",
        "aud": "medmesh",
        "sub": "3f1c2d4e-0000-4000-8000-000000000001",
        "clinic": "clinic-a",
        "roles": ["clinician"],
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "jti": "6b0e3c1a-0000-4000-8000-000000000002",
    }
    token = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "k1"})
    verifier = TokenVerifier(StaticJwks(jwks), issuer="medmesh", audience="medmesh")
    await verifier.verify(token)  # warm the key cache

    started = time.perf_counter()
    for _ in range(count):
        await verifier.verify(token)
    verifier_rate = count / (time.perf_counter() - started)

    signing_input, _, signature = token.rpartition(".")
    public_key = key.public_key()
    raw_signature, raw_input = _b64decode(signature), signing_input.encode()
    started = time.perf_counter()
    for _ in range(count):
        public_key.verify(raw_signature, raw_input)
    floor_rate = count / (time.perf_counter() - started)

    print(f"token verifications/s   TokenVerifier {verifier_rate:10.0f}")
    print(f"                        floor: bare Ed25519 verify {floor_rate:10.0f}")
    print(f"                        ratio verifier/floor {verifier_rate / floor_rate:.2f}")
    record(
        "bench_auth.py",
        "token verifications/s in-process",
        round(verifier_rate),
        "/s",
        floor=round(floor_rate),
        floor_name="bare Ed25519 verify",
        ratio=round(verifier_rate / floor_rate, 2),
    )


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99


async def _time_calls(call: object, request: object, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call(request)  # type: ignore[operator]
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def bench_check(address: str, calls: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = AsyncStub(channel, "medmesh.auth.v1.AuthService", DescriptorImage())
        login = await stub.login(LoginRequest(email=ADMIN, password=PASSWORD))
        check = channel.unary_unary(
            "/envoy.service.auth.v3.Authorization/Check",
            request_serializer=bytes,
            response_deserializer=CheckResponse.FromString,
        )
        request = CheckRequest.from_dict(
            {
                "attributes": {
                    "source": {"address": {"socketAddress": {"address": "10.0.0.1"}}},
                    "request": {
                        "http": {
                            "method": "GET",
                            "path": "/v1/users/me",
                            "headers": {"authorization": f"Bearer {login.access_token}"},
                        }
                    },
                }
            }
        )
        response = await check(request)
        assert response.ok_response is not None, response
        health = health_pb2_grpc.HealthStub(channel).Check
        health_request = health_pb2.HealthCheckRequest(service="")
        for _ in range(200):  # warm-up of both paths
            await check(request)
            await health(health_request)
        check_ms = await _time_calls(check, request, calls)
        health_ms = await _time_calls(health, health_request, calls)

    check_p50, check_p99 = _percentiles(check_ms)
    health_p50, health_p99 = _percentiles(health_ms)
    print(f"Check RPC latency ms    p50 {check_p50:7.3f}   p99 {check_p99:7.3f}   ({calls} calls)")
    print(f"  floor: health Check   p50 {health_p50:7.3f}   p99 {health_p99:7.3f}")
    p50_ratio, p99_ratio = check_p50 / health_p50, check_p99 / health_p99
    print(f"  ratio Check/health    p50 {p50_ratio:7.2f}   p99 {p99_ratio:7.2f}")
    record(
        "bench_auth.py",
        f"Check RPC p50 (p99 {check_p99:.2f} ms)",
        round(check_p50, 3),
        "ms",
        floor=round(health_p50, 3),
        floor_name=f"gRPC health Check p50 (p99 {health_p99:.2f} ms)",
        ratio=round(p50_ratio, 2),
    )


def run_service(urls: dict[str, str], workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    ready = workdir / "auth.json"
    env = {
        **os.environ,
        **urls,
        "MEDMESH_READY_FILE": str(ready),
        "MEDMESH_GRPC_ADDR": "127.0.0.1:0",
        "MEDMESH_METRICS_ADDR": "",
        "MEDMESH_LOG_LEVEL": "warning",
        "MEDMESH_AUTH_KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "MEDMESH_AUTH_BOOTSTRAP_CLINIC": "clinic-a",
        "MEDMESH_AUTH_BOOTSTRAP_ADMIN_EMAIL": ADMIN,
        "MEDMESH_AUTH_BOOTSTRAP_ADMIN_PASSWORD": PASSWORD,
        "MEDMESH_AUTH_RATE_LIMIT_USER": "1000000000/60",
        "MEDMESH_AUTH_RATE_LIMIT_IP": "1000000000/60",
        "MEDMESH_SUBJECT_ROOT": f"bench{os.getpid()}",
    }
    log = (workdir / "auth.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "svc_auth"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"svc_auth did not start; see {workdir / 'auth.log'}")
        time.sleep(0.05)
    return process, json.loads(ready.read_text())["grpc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verifications", type=int, default=20000)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(bench_verifications(args.verifications))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        only = ["postgres", "redis"]
        with EmbeddedDependencies(workdir / "deps", os.environ, only=only) as started:
            urls = {k: v for k, v in started.items() if k in {DEPENDENCY_ENV[n] for n in only}}
            process, address = run_service(urls, workdir)
            try:
                asyncio.run(bench_check(address, args.calls))
            finally:
                process.terminate()
                process.wait(timeout=30)


if __name__ == "__main__":
    main()
