"""What `medmesh up` adds for a local stack beyond the embedded dependencies: a mail sink,
secrets kept in the data directory (key-encryption keys, database role passwords), one
database role per service and a migration role, the first clinic admin, and the local model
server.

Each piece only fills a gap: a variable that is already set (a real SMTP server, a key from
a secret store, a real TF Serving) is passed through untouched.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import structlog
from cryptography.fernet import Fernet

from medmesh.dbroles import RoleLogin, default_role, ensure_database_roles, with_credentials
from medmesh.mailsink import start_mail_sink
from medmesh.settings import SERVICES

_log = structlog.get_logger("medmesh.up")

DEMO_CLINIC = "demo-clinic"
DEMO_ADMIN_EMAIL = "admin@demo-clinic.example"


@contextmanager
def mail_sink(env: dict[str, str], data_dir: Path) -> Iterator[str]:
    """Without MEDMESH_SMTP_URL, mails (verification, reset, report ready) are written as
    `.eml` files under `<data_dir>/mail` by a local SMTP server. Yields the SMTP URL."""
    if env.get("MEDMESH_SMTP_URL"):
        yield env["MEDMESH_SMTP_URL"]
        return
    sink = start_mail_sink(data_dir / "mail")
    env["MEDMESH_SMTP_URL"] = sink.url
    try:
        yield sink.url
    finally:
        sink.stop()


def _kept_secret(path: Path, make: str) -> str:
    if not path.exists():
        path.write_text(make)
        path.chmod(0o600)
    return path.read_text().strip()


def _operator_is_bootstrap_clinic(env: dict[str, str]) -> None:
    # The local stack's first clinic runs the platform (model registry changes), unless set.
    if env.get("MEDMESH_AUTH_BOOTSTRAP_CLINIC"):
        env.setdefault("MEDMESH_OPERATOR_CLINIC_ID", env["MEDMESH_AUTH_BOOTSTRAP_CLINIC"])


def local_secrets(env: dict[str, str], data_dir: Path) -> dict[str, str]:
    """Key-encryption keys (svc_auth's signing keys, svc_report's MIS tokens) and a first
    admin of a demo clinic, generated once and kept (mode 600) in the data directory so
    restarts keep them.

    Returns what the user needs to log in: clinic, e-mail, and where the password is.
    """
    secrets_dir = data_dir / "secrets"
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    env.setdefault(
        "MEDMESH_AUTH_KEY_ENCRYPTION_KEY",
        _kept_secret(secrets_dir / "key-encryption-key", Fernet.generate_key().decode()),
    )
    # svc_report's own key for the MIS bearer tokens (a service reads only its own secrets).
    env.setdefault(
        "MEDMESH_REPORT_KEY_ENCRYPTION_KEY",
        _kept_secret(secrets_dir / "report-key-encryption-key", Fernet.generate_key().decode()),
    )
    if env.get("MEDMESH_AUTH_BOOTSTRAP_ADMIN_EMAIL"):
        _operator_is_bootstrap_clinic(env)
        return {}
    password_file = secrets_dir / "admin-password"
    env["MEDMESH_AUTH_BOOTSTRAP_CLINIC"] = env.get("MEDMESH_AUTH_BOOTSTRAP_CLINIC", DEMO_CLINIC)
    env["MEDMESH_AUTH_BOOTSTRAP_ADMIN_EMAIL"] = DEMO_ADMIN_EMAIL
    env["MEDMESH_AUTH_BOOTSTRAP_ADMIN_PASSWORD"] = _kept_secret(
        password_file, secrets.token_urlsafe(18)
    )
    _operator_is_bootstrap_clinic(env)
    return {
        "clinic": env["MEDMESH_AUTH_BOOTSTRAP_CLINIC"],
        "email": DEMO_ADMIN_EMAIL,
        "password_file": str(password_file),
    }


MIGRATION_ROLE = "medmesh_migrator"


def database_roles(env: dict[str, str], data_dir: Path, *, embedded: bool) -> dict[str, str]:
    """On the embedded PostgreSQL (`embedded`), unless MEDMESH_POSTGRES_MIGRATION_URL is set:
    create the migration role and one role per service (medmesh/dbroles.py), passwords
    generated once and kept in `<data_dir>/secrets`; point each service at its own role
    (MEDMESH_<SVC>_POSTGRES_URL in `env`, unless set). Returns the environment for the
    migrations: `env` plus MEDMESH_POSTGRES_MIGRATION_URL, which services never get."""
    if env.get("MEDMESH_POSTGRES_MIGRATION_URL") or not embedded:
        return dict(env)
    admin_url = env["MEDMESH_POSTGRES_URL"]
    secrets_dir = data_dir / "secrets"
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def login(name: str) -> RoleLogin:
        password = _kept_secret(secrets_dir / f"db-{name}-password", secrets.token_urlsafe(24))
        return RoleLogin(name, password)

    migration = login(MIGRATION_ROLE)
    services = {service: login(default_role(service)) for service in SERVICES}
    ensure_database_roles(admin_url, migration=migration, services=services)
    for service, role in services.items():
        env.setdefault(
            f"MEDMESH_{service.upper()}_POSTGRES_URL",
            with_credentials(admin_url, role.name, role.password),
        )
    migration_url = with_credentials(admin_url, migration.name, migration.password)
    return {**env, "MEDMESH_POSTGRES_MIGRATION_URL": migration_url}


def build_models(env: Mapping[str, str], data_dir: Path) -> Path:
    """Build the models once into MEDMESH_MODEL_BASE_DIR (default `<data_dir>/models`):
    ResNet-50 (untrained) and the real all-MiniLM-L6-v2; versions that exist are kept.
    Returns the model base directory."""
    base_dir = Path(env.get("MEDMESH_MODEL_BASE_DIR") or data_dir / "models")
    log_file = data_dir / "logs" / "models-build.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        # A subprocess keeps TensorFlow out of the supervisor process.
        built = subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "medmesh.cli", "models", "build", "--base-dir", str(base_dir)],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if built.returncode != 0:
        raise RuntimeError(f"building the models failed; see {log_file}")
    return base_dir
