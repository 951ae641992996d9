"""`python -m svc_infer.model_server`: serve SavedModels over TF Serving's gRPC API.

    python -m svc_infer.model_server --model-base .data/models --port 0 --ready-file r.json
    python -m svc_infer.model_server --model-config-file models.config --port 8500

Flags mirror tensorflow_model_server's where they overlap (`--port`,
`--model_config_file`, `--file_system_poll_wait_seconds`); both spellings are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from svc_infer.models import quiet_tensorflow


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m svc_infer.model_server",
        description="Serve SavedModels over TensorFlow Serving's gRPC API (a faithful subset).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model-base", type=Path, help="serve every sub-directory as a model (<model>/<version>/)"
    )
    source.add_argument(
        "--model-config-file",
        "--model_config_file",
        type=Path,
        help="a TF Serving ModelServerConfig in protobuf text format",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port; 0 picks a free one")
    parser.add_argument(
        "--version-policy",
        default="latest",
        help="with --model-base: latest[:N] (TF Serving's default), all, or specific:V1,V2",
    )
    parser.add_argument(
        "--labels",
        type=json.loads,
        default={},
        help='with --model-base: version labels as JSON, {"resnet50": {"stable": 1}}',
    )
    parser.add_argument(
        "--file-system-poll-wait-seconds",
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="how often to look for new versions; 0 disables polling",
    )
    parser.add_argument("--ready-file", type=Path, help="write {'grpc': address} here once serving")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, then serve until SIGTERM or SIGINT."""
    args = _parser().parse_args(argv)
    quiet_tensorflow()
    # TensorFlow is imported only now, after the log level is set.
    from medmesh.runtime import termination_event
    from medmesh.telemetry import configure_logging
    from svc_infer.model_server import config
    from svc_infer.model_server.manager import ServingError
    from svc_infer.model_server.server import serve_until

    configure_logging("model-server")  # JSON lines on stdout, like every medmesh process
    try:
        if args.model_base is not None:
            server_config = config.config_for_base_dir(
                args.model_base, version_policy=args.version_policy, labels=args.labels
            )
        else:
            server_config = config.read_config_file(args.model_config_file)
    except config.ConfigError as exc:
        print(f"model server: {exc}", file=sys.stderr)  # noqa: T201
        return 2

    async def run() -> None:
        await serve_until(
            server_config,
            termination_event(),
            address=f"{args.host}:{args.port}",
            poll_seconds=args.file_system_poll_wait_seconds,
            ready_file=args.ready_file,
        )

    try:
        asyncio.run(run())
    except (ServingError, config.ConfigError) as exc:  # e.g. a label on a version not on disk
        print(f"model server: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
