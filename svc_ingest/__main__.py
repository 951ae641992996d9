"""`python -m svc_ingest`: run the service until SIGTERM (settings from MEDMESH_* variables)."""

from medmesh.migrate import service_migrations
from medmesh.runtime import run_service
from svc_ingest.app import setup


def main() -> None:
    """Migrate the ingest and audit schemas, then serve."""
    run_service("ingest", setup, migrations=service_migrations("ingest"))


if __name__ == "__main__":
    main()
