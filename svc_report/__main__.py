"""`python -m svc_report`: run the service until SIGTERM (settings from MEDMESH_* variables)."""

from medmesh.migrate import service_migrations
from medmesh.runtime import run_service
from svc_report.app import setup


def main() -> None:
    """Migrate the report and audit schemas, then serve."""
    run_service("report", setup, migrations=service_migrations("report"))


if __name__ == "__main__":
    main()
