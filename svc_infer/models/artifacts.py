"""Model versions in the `ml-models` bucket: `<model>/<version>/<path inside the version>`.

The bucket is the registry's system of record for artifacts (TF Serving can read `s3://`
base paths directly; the local model server reads a directory, filled by
`download_model_version`). The `infer.models` table, owned by the registry, stores the
artifact URI returned by `upload_model_version`.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from medmesh.objects import ML_MODELS, ObjectStore

SAVED_MODEL_FILE = "saved_model.pb"


def version_prefix(model: str, version: int) -> str:
    """`resnet50/3/`: the key prefix of one version in the bucket."""
    if not model or "/" in model:
        raise ValueError(f"invalid model name {model!r}")
    if version < 1:
        raise ValueError("model versions are positive integers")
    return f"{model}/{version}/"


def _files(version_dir: Path) -> list[Path]:
    return sorted(p for p in version_dir.rglob("*") if p.is_file())


async def upload_model_version(store: ObjectStore, base_dir: Path, model: str, version: int) -> str:
    """Upload `<base_dir>/<model>/<version>/` and return its URI `s3://<bucket>/<model>/<v>/`.

    `saved_model.pb` goes last: a reader that finds it knows the rest is there.
    """
    prefix = version_prefix(model, version)
    version_dir = base_dir / model / str(version)
    if not (version_dir / SAVED_MODEL_FILE).is_file():
        raise FileNotFoundError(f"{version_dir} is not a SavedModel directory")
    files = _files(version_dir)
    files.sort(key=lambda p: p.name == SAVED_MODEL_FILE)
    for path in files:
        key = prefix + path.relative_to(version_dir).as_posix()
        with path.open("rb") as stream:
            await store.put_stream(ML_MODELS, key, stream, length=path.stat().st_size)
    return f"s3://{store.bucket(ML_MODELS)}/{prefix}"


def _list_keys(store: ObjectStore, prefix: str) -> list[str]:
    objects = store.client.list_objects(store.bucket(ML_MODELS), prefix=prefix, recursive=True)
    return sorted(o.object_name for o in objects if o.object_name)


def _fget(store: ObjectStore, key: str, destination: Path) -> None:
    store.client.fget_object(store.bucket(ML_MODELS), key, str(destination))


async def download_model_version(
    store: ObjectStore, model: str, version: int, base_dir: Path
) -> Path:
    """Copy a version from the bucket to `<base_dir>/<model>/<version>/` (atomically, so a
    polling model server never sees half of it). An existing directory is kept as is."""
    prefix = version_prefix(model, version)
    target = base_dir / model / str(version)
    if target.exists():
        return target
    keys = await asyncio.to_thread(_list_keys, store, prefix)
    if prefix + SAVED_MODEL_FILE not in keys:
        raise FileNotFoundError(f"no SavedModel under {store.bucket(ML_MODELS)}/{prefix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".downloading-{version}-", dir=target.parent))
    try:
        for key in keys:
            destination = scratch / key[len(prefix) :]
            destination.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(_fget, store, key, destination)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
