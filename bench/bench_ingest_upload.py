"""Streamed upload through svc_ingest vs a raw S3 PUT of the same bytes, and the service's
memory while it streams.

    python bench/bench_ingest_upload.py [--sizes 16,64] [--repeat 5] [--writers put,multipart]
                                        [--servers localbucket,moto]

Starts embedded PostgreSQL and NATS, then for each S3 server (`localbucket`: the project's
embedded one, medmesh/launcher/bucket.py; `moto`: moto's ThreadedMotoServer in a process of
its own), each size and each of the service's S3 writers runs a fresh svc_ingest subprocess
(its RSS is sampled from /proc every 5 ms during each upload) and measures, interleaved,
best of N:
  put    = the file's bytes as one raw unsigned PUT (presigned URL) with no client-side
           hashing: the transfer alone, the strictest floor and the headline's reference
           (P3 goal: put / stream >= 0.8);
  floor  = one S3 PUT of the same bytes with the minio SDK (signed, client hashes the payload:
           what a client would do with the file in hand), printed for reference;
  stream = UploadFile over gRPC in 1 MiB chunks, pre-encoded: validation, SHA-256, the
           object in S3, rows, outbox, until the response arrives.
Writers: `put` (the default: one streaming PUT, MEDMESH_INGEST_STREAMING_PUT_MAX_BYTES) and
`multipart` (MEDMESH_INGEST_STREAMING_PUT_MAX_BYTES=0; compared with a raw multipart upload of
the same part size too). Prints seconds, MiB/s, the ratios put/stream (goal >= 0.8) and
floor/stream, and the peak RSS growth of the service over its idle RSS (goal: flat, not
growing with the file).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path

import grpc
import jwt
import numpy as np
import urllib3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _results import record  # noqa: E402

from gen.medmesh.common.v1 import FileKind  # noqa: E402
from gen.medmesh.ingest.v1 import (  # noqa: E402
    CreateStudyRequest,
    UploadFileMetadata,
    UploadFileRequest,
)
from medmesh.client import AsyncStub  # noqa: E402
from medmesh.contract import DescriptorImage  # noqa: E402
from medmesh.launcher import DEPENDENCY_ENV, EmbeddedDependencies  # noqa: E402
from medmesh.objects import RAW_IMAGES, ObjectStore  # noqa: E402

MIB = 1024 * 1024
SERVICE = "medmesh.ingest.v1.IngestService"
PART = 8 * MIB  # svc_ingest's default MEDMESH_INGEST_PART_SIZE_BYTES
SETTLE_S = 0.5
WRITER_ENV = {
    "put": {},  # the default: one streaming PUT up to MEDMESH_INGEST_STREAMING_PUT_MAX_BYTES
    "multipart": {"MEDMESH_INGEST_STREAMING_PUT_MAX_BYTES": "0"},
}


def serve_child(jwks_path: str) -> None:
    """Child process: svc_ingest as `python -m svc_ingest` runs it, verifying bench tokens."""
    from medmesh.auth import StaticJwks, TokenVerifier
    from medmesh.migrate import service_migrations
    from medmesh.runtime import serve
    from medmesh.settings import Settings
    from medmesh.telemetry import configure_logging
    from svc_ingest.app import build

    settings = Settings.from_env(os.environ, service="ingest")
    configure_logging("ingest", "warning")
    verifier = TokenVerifier(
        StaticJwks(json.loads(Path(jwks_path).read_text())), issuer="medmesh", audience="medmesh"
    )

    async def setup(settings: Settings, stack: AsyncExitStack) -> object:
        return await build(settings, stack, verifier=verifier)

    asyncio.run(serve(settings, setup, migrations=service_migrations("ingest")))


def png_of_size(target: int, seed: int) -> bytes:
    """A valid PNG of about `target` bytes (random pixels, no compression)."""
    side = int((target / 3) ** 0.5)
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=0)
    return out.getvalue()


class RssSampler:
    """Peak resident memory of a process, sampled from /proc while active."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def __enter__(self) -> RssSampler:
        self.peak = self.rss()
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, self.rss())
                time.sleep(0.005)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def encode_upload(parent: str, data: bytes) -> list[bytes]:
    """The UploadFile stream's messages, serialised before the clock starts: the client's
    encoding runs on the client's machine in production, not on the service's."""
    messages = [
        bytes(
            UploadFileRequest(
                metadata=UploadFileMetadata(
                    parent=parent,
                    kind=FileKind.IMAGE_PNG,
                    file_name="bench.png",
                    content_type="image/png",
                    size_bytes=len(data),
                )
            )
        )
    ]
    view = memoryview(data)
    for i in range(0, len(data), MIB):
        chunk = view[i : i + MIB]
        # Field 2 (bytes), length-delimited: tag 0x12, varint length, payload.
        length, varint = len(chunk), bytearray()
        while True:
            byte, length = length & 0x7F, length >> 7
            varint.append(byte | (0x80 if length else 0))
            if not length:
                break
        messages.append(b"\x12" + bytes(varint) + bytes(chunk))
    return messages


async def stream_upload(channel: grpc.aio.Channel, metadata: tuple, encoded: list[bytes]) -> float:
    upload = channel.stream_unary(
        f"/{SERVICE}/UploadFile", request_serializer=None, response_deserializer=None
    )

    async def messages() -> AsyncIterator[bytes]:
        for message in encoded:
            yield message

    started = time.perf_counter()
    await upload(messages(), metadata=metadata)
    return time.perf_counter() - started


def raw_put(store: ObjectStore, data: bytes, key: str, part_size: int = 0) -> float:
    """One PUT of the whole file (part_size 0), or a multipart upload with that part size."""
    bucket = store.bucket(RAW_IMAGES)
    started = time.perf_counter()
    store.client.put_object(
        bucket,
        key,
        io.BytesIO(data),
        len(data),
        part_size=part_size or len(data),
        num_parallel_uploads=1,
    )
    return time.perf_counter() - started


def unsigned_put(http: urllib3.PoolManager, store: ObjectStore, data: bytes, key: str) -> float:
    """One PUT of the whole file to a presigned URL: no payload hashing on the client.
    (urllib3 sends headers and body apart; http.client would first copy them together.)"""
    url = store.client.presigned_put_object(store.bucket(RAW_IMAGES), key)
    started = time.perf_counter()
    response = http.request("PUT", url, body=data, headers={"Content-Length": str(len(data))})
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise SystemExit(f"unsigned PUT failed: HTTP {response.status}")
    return elapsed


MOTO_CHILD = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"{host}:{port}", flush=True)
sys.stdin.read()
server.stop()
"""


@contextmanager
def moto_process() -> Iterator[str]:
    """moto's S3 server in a process of its own (as the embedded S3 server runs): its URL."""
    child = subprocess.Popen(
        [sys.executable, "-c", MOTO_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # werkzeug's line per request
        text=True,
    )
    try:
        assert child.stdout is not None
        address = child.stdout.readline().strip()
        if not address:
            raise SystemExit("moto's server failed to start")
        yield f"http://testing:testing@{address}"
    finally:
        if child.stdin:
            child.stdin.close()
        child.wait(timeout=30)


async def run(sizes: list[int], repeat: int, writers: list[str], servers: list[str]) -> None:
    key = Ed25519PrivateKey.generate()
    jwk = {**OKPAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "bench", "alg": "EdDSA"}
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": "medmesh",
            "aud": "medmesh",
            "sub": "bench",
            "clinic": "bench-clinic",
            "roles": ["technician"],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "jti": "bench",
        },
        key,
        algorithm="EdDSA",
        headers={"kid": "bench"},
    )
    metadata = (("authorization", f"Bearer {token}"),)
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedDependencies(Path(tmp) / "deps", {}, only=["postgres", "nats"]) as base_urls,
    ):
        jwks_path = Path(tmp) / "jwks.json"
        jwks_path.write_text(json.dumps({"keys": [jwk]}))
        for server in servers:
            with ExitStack() as s3_stack:
                if server == "moto":
                    s3_url = s3_stack.enter_context(moto_process())
                else:
                    s3_urls = s3_stack.enter_context(
                        EmbeddedDependencies(Path(tmp) / "s3", {}, only=["s3"])
                    )
                    s3_url = s3_urls[DEPENDENCY_ENV["s3"]]
                urls = {**base_urls, DEPENDENCY_ENV["s3"]: s3_url}
                store = ObjectStore(s3_url, bucket_prefix="bench-")
                for size_mib in sizes:
                    for writer in writers:
                        # A fresh service per size and writer: RSS never shrinks, so a shared
                        # process would carry the previous run's high-water mark into the next.
                        env = WRITER_ENV[writer]
                        async with service_process(Path(tmp), urls, jwks_path, env) as (
                            child,
                            address,
                        ):
                            await measure(
                                child, address, metadata, store, size_mib, repeat, writer, server
                            )
                store.close()


@asynccontextmanager
async def service_process(
    tmp: Path, urls: dict[str, str], jwks_path: Path, extra_env: dict[str, str]
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """svc_ingest as a child process, until the context exits (SIGTERM)."""
    ready = tmp / f"ready-{time.monotonic_ns()}.json"
    env = {
        **os.environ,
        **urls,
        **extra_env,
        "MEDMESH_READY_FILE": str(ready),
        "MEDMESH_METRICS_ADDR": "",
        "MEDMESH_S3_BUCKET_PREFIX": "bench-",
        "PYTHONPATH": str(REPO),
    }
    child = subprocess.Popen([sys.executable, __file__, "serve", str(jwks_path)], env=env)  # noqa: ASYNC220 - returns at once
    try:
        while not ready.exists():
            if child.poll() is not None:
                raise SystemExit("svc_ingest failed to start")
            await asyncio.sleep(0.05)
        yield child, json.loads(ready.read_text())["grpc"]
    finally:
        child.terminate()
        child.wait(timeout=60)


async def sampled_upload(
    sampler: RssSampler,
    peaks: list[int],
    channel: grpc.aio.Channel,
    metadata: tuple[tuple[str, str], ...],
    encoded: list[bytes],
) -> float:
    """One streamed upload, with the service's peak RSS during it appended to `peaks`."""
    with sampler:
        elapsed = await stream_upload(channel, metadata, encoded)
    peaks.append(sampler.peak)
    return elapsed


async def measure(
    child: subprocess.Popen[bytes],
    address: str,
    metadata: tuple[tuple[str, str], ...],
    store: ObjectStore,
    size_mib: int,
    repeat: int,
    writer: str,
    server: str,
) -> None:
    """Best-of-`repeat` floors and streamed upload for one size with one writer."""
    sampler = RssSampler(child.pid)
    http = urllib3.PoolManager(retries=False)
    options = [("grpc.max_send_message_length", 4 * MIB)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = AsyncStub(channel, SERVICE, DescriptorImage())
        idle = sampler.rss()
        floors, puts, multiparts, streams, peaks = [], [], [], [], []
        for attempt in range(repeat):
            data = png_of_size(size_mib * MIB, seed=attempt + size_mib)
            study = await stub.create_study(
                CreateStudyRequest(patient_ref="bench"), metadata=metadata
            )
            encoded = encode_upload(study.study.name, data)
            tag = f"{writer}/{size_mib}/{attempt}"
            runs: list[tuple[list[float], Callable[[], Awaitable[float]]]] = [
                (floors, partial(asyncio.to_thread, raw_put, store, data, f"floor/{tag}")),
                (puts, partial(asyncio.to_thread, unsigned_put, http, store, data, f"put/{tag}")),
                (streams, partial(sampled_upload, sampler, peaks, channel, metadata, encoded)),
            ]
            if writer == "multipart":
                mp = partial(asyncio.to_thread, raw_put, store, data, f"mp/{tag}", PART)
                runs.append((multiparts, mp))
            # A different order each attempt, each run after a pause: the S3 server is still
            # writing (and freeing) the previous file for a while, which would otherwise
            # favour whichever run comes first.
            shift = attempt % len(runs)
            for results, measured in runs[shift:] + runs[:shift]:
                await asyncio.sleep(SETTLE_S)
                results.append(await measured())
            del encoded, runs
    size = len(data) / MIB
    floor, put, stream = min(floors), min(puts), min(streams)
    print(
        f"{server:11} {size:6.1f} MiB  writer {writer:9} | raw unsigned PUT, no client hashing"
        f" {put:6.3f} s {size / put:6.1f} MiB/s | streamed UploadFile {stream:6.3f} s"
        f" {size / stream:6.1f} MiB/s | put/stream {put / stream:5.2f} (goal >= 0.80)"
    )
    print(
        f"{'':13}minio SDK PUT (signed, hashed) {floor:6.3f} s | SDK/stream {floor / stream:5.2f}"
    )
    peak = (max(peaks) - idle) / MIB
    if multiparts:
        multipart = min(multiparts)
        print(
            f"{'':13}raw S3 multipart, {PART // MIB} MiB parts {multipart:6.3f} s"
            f" | multipart/stream {multipart / stream:5.2f}"
        )
    print(
        f"{'':13}service RSS idle {idle / MIB:6.1f} MiB, peak during uploads"
        f" {max(peaks) / MIB:6.1f} MiB (+{peak:5.1f} MiB)",
        flush=True,
    )
    record(
        "bench_ingest_upload.py",
        f"P3: {size:.0f} MiB streamed UploadFile, {writer} writer, S3 = {server}",
        round(stream, 3),
        "s",
        floor=round(put, 3),
        floor_name="raw unsigned PUT of the same bytes",
        ratio=round(put / stream, 2),
        ratio_name="floor / figure (time)",
        # The goal is the default writer's; multipart (files past the streaming-PUT limit) is
        # shown for what it costs, next to a raw multipart upload in the note.
        goal=">= 0.8" if writer == "put" else "",
        met=put / stream >= 0.8 if writer == "put" else None,
        note=f"minio SDK PUT {floor:.3f} s (SDK/stream {floor / stream:.2f}); RSS +{peak:.0f} MiB"
        + (f"; raw multipart/stream {min(multiparts) / stream:.2f}" if multiparts else ""),
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "serve":
        serve_child(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="16,64", help="file sizes in MiB, comma-separated")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--writers", default="put,multipart", help="put, multipart or both")
    parser.add_argument("--servers", default="localbucket,moto", help="localbucket, moto")
    args = parser.parse_args()
    writers = [w for w in args.writers.split(",") if w]
    if unknown := set(writers) - set(WRITER_ENV):
        parser.error(f"unknown writers {sorted(unknown)}")
    servers = [s for s in args.servers.split(",") if s]
    if unknown := set(servers) - {"localbucket", "moto"}:
        parser.error(f"unknown servers {sorted(unknown)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    asyncio.run(run(sizes, args.repeat, writers, servers))


if __name__ == "__main__":
    main()
