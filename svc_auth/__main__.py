"""`python -m svc_auth`: run the service until SIGTERM (settings from MEDMESH_* variables)."""

from medmesh.migrate import service_migrations
from medmesh.runtime import run_service
from svc_auth.app import setup


def main() -> None:
    """Migrate the auth and audit schemas, then serve."""
    run_service("auth", setup, migrations=service_migrations("auth"))


if __name__ == "__main__":
    main()
