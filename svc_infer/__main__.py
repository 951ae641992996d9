"""`python -m svc_infer`: run the service until SIGTERM (settings from MEDMESH_* variables)."""

from medmesh.migrate import service_migrations
from medmesh.runtime import run_service
from svc_infer.app import setup


def main() -> None:
    """Migrate the infer and audit schemas, then serve."""
    run_service("infer", setup, migrations=service_migrations("infer"))


if __name__ == "__main__":
    main()
