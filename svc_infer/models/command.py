"""`medmesh models build`: build the models into TF Serving's layout, optionally upload them.

    medmesh models build                       # .data/models/{resnet50,minilm}/1
    medmesh models build --base-dir /srv/models --version 2 --model resnet50 --upload

Existing versions are kept (versions are immutable); `--upload` copies each version to the
`ml-models` bucket of MEDMESH_S3_URL (with MEDMESH_S3_BUCKET_PREFIX) and prints its URI,
which is what the registry's RegisterModelVersion takes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path

from svc_infer.models import quiet_tensorflow
from svc_infer.models.card import MINILM, RESNET50

MODELS = (RESNET50, MINILM)


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `medmesh models build`."""
    parser.add_argument("--base-dir", type=Path, help="model base directory (default DATA/models)")
    parser.add_argument("--version", type=int, default=1, help="version number to build (1)")
    parser.add_argument(
        "--model", action="append", choices=MODELS, help="build only this model (repeatable)"
    )
    parser.add_argument("--cache-dir", type=Path, help="downloaded weights (~/.cache/medmesh)")
    parser.add_argument(
        "--upload", action="store_true", help="upload each version to the ml-models bucket"
    )


async def _upload(base_dir: Path, models: list[str], version: int, environ: Mapping[str, str]):
    from medmesh.objects import ObjectStore
    from medmesh.settings import Settings
    from svc_infer.models.artifacts import upload_model_version

    settings = Settings.from_env(environ, service="medmesh")
    settings.require("s3_url")
    store = ObjectStore(settings.s3_url, bucket_prefix=settings.s3_bucket_prefix)
    try:
        await store.ensure_buckets()
        return {m: await upload_model_version(store, base_dir, m, version) for m in models}
    finally:
        store.close()


def build_command(args: argparse.Namespace, data_dir: Path, environ: Mapping[str, str]) -> int:
    """Run `medmesh models build` with parsed `args`; returns the exit code."""
    quiet_tensorflow()
    from medmesh.settings import SettingsError
    from svc_infer.models.build import build_all
    from svc_infer.models.sources import ModelSourceError, default_cache_dir

    base_dir: Path = args.base_dir or data_dir / "models"
    models: list[str] = args.model or list(MODELS)
    try:
        built = build_all(
            base_dir,
            cache_dir=args.cache_dir or default_cache_dir(),
            version=args.version,
            models=models,
        )
        for name, path in built.items():
            print(f"{name} {args.version} {path}", flush=True)  # noqa: T201
        if args.upload:
            for name, uri in asyncio.run(_upload(base_dir, models, args.version, environ)).items():
                print(f"{name} {args.version} {uri}", flush=True)  # noqa: T201
    except (ModelSourceError, SettingsError, FileExistsError) as exc:
        print(f"medmesh models build: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0
