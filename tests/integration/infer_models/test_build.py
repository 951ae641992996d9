"""The model build: reproducible (same card, signatures and weights), immutable versions,
a card clients can rely on, and versions that round-trip through the ml-models bucket."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from medmesh.objects import ML_MODELS, ObjectStore
from svc_infer.model_server.manager import load_servable
from svc_infer.models.artifacts import download_model_version, upload_model_version
from svc_infer.models.build import build_minilm, build_resnet50
from svc_infer.models.card import CARD_ASSET, ImagePreprocessing, ModelCard
from svc_infer.models.resnet import DEFAULT_IMAGE_LABELS
from svc_infer.models.sources import default_cache_dir

REPO = Path(__file__).resolve().parents[3]


def signature_shapes(version_dir: Path) -> dict[str, object]:
    """Each signature's inputs and outputs as (dtype, dims), from saved_model.pb."""
    servable = load_servable("m", 1, version_dir)
    return {
        key: {
            kind: {a: (i.dtype, [d.size for d in i.tensor_shape.dim]) for a, i in tensors.items()}
            for kind, tensors in (("in", signature.inputs), ("out", signature.outputs))
        }
        for key, signature in servable.signature_defs.items()
    }


def card_of(version_dir: Path) -> ModelCard:
    """The card in the version's assets."""
    return ModelCard.from_json((version_dir / "assets" / CARD_ASSET).read_text())


def test_resnet50_build_is_reproducible_card_signatures_and_weights(
    model_base_dir: Path, tmp_path: Path
) -> None:
    rebuilt = build_resnet50(tmp_path, 1)
    cached = model_base_dir / "resnet50" / "1"
    assert card_of(rebuilt) == card_of(cached)
    assert card_of(rebuilt).labels == DEFAULT_IMAGE_LABELS
    assert card_of(rebuilt).trained is False
    assert signature_shapes(rebuilt) == signature_shapes(cached)
    image = np.random.default_rng(3).uniform(-120, 120, (2, 224, 224, 3)).astype(np.float32)
    outputs = [
        tf.saved_model.load(str(path)).signatures["serving_default"](image=image)["probabilities"]
        for path in (rebuilt, cached)
    ]
    np.testing.assert_array_equal(outputs[0].numpy(), outputs[1].numpy())


def test_minilm_build_is_reproducible_down_to_the_label_embeddings(
    model_base_dir: Path, tmp_path: Path
) -> None:
    rebuilt = build_minilm(tmp_path, 1, cache_dir=default_cache_dir())
    cached = model_base_dir / "minilm" / "1"
    assert (rebuilt / "assets" / CARD_ASSET).read_bytes() == (
        cached / "assets" / CARD_ASSET
    ).read_bytes()
    assert signature_shapes(rebuilt) == signature_shapes(cached)
    card = card_of(rebuilt)
    assert [s.name for s in card.text_label_sets] == ["findings", "urgency"]
    assert card.text_labels("urgency").keys == ("routine", "urgent", "emergency")


def test_an_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    version_dir = tmp_path / "resnet50" / "4"
    version_dir.mkdir(parents=True)
    (version_dir / "saved_model.pb").write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        build_resnet50(tmp_path, 4, labels=("a", "b"))
    assert (version_dir / "saved_model.pb").read_bytes() == b"keep me"
    assert sorted(p.name for p in (tmp_path / "resnet50").iterdir()) == ["4"]  # no scratch left


def test_image_normalisation_in_the_card_is_keras_resnet50_preprocessing() -> None:
    rgb = np.random.default_rng(5).integers(0, 256, (224, 224, 3)).astype(np.float32)
    expected = tf.keras.applications.resnet50.preprocess_input(rgb.copy())
    np.testing.assert_allclose(ImagePreprocessing().normalise(rgb), expected, rtol=1e-6)


def test_card_survives_a_json_round_trip(model_base_dir: Path) -> None:
    for model in ("resnet50", "minilm"):
        card = card_of(model_base_dir / model / "1")
        assert ModelCard.from_json(card.to_json()) == card


def digests(root: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under `root`."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


async def test_a_version_uploaded_to_ml_models_downloads_identically(
    model_base_dir: Path, tmp_path: Path, s3_url: str, name_prefix: str
) -> None:
    store = ObjectStore(s3_url, bucket_prefix=name_prefix + "-")
    try:
        await store.ensure_buckets()
        uri = await upload_model_version(store, model_base_dir, "minilm", 1)
        assert uri == f"s3://{name_prefix}-ml-models/minilm/1/"
        assert await store.size(ML_MODELS, "minilm/1/assets/model_card.json") > 0
        downloaded = await download_model_version(store, "minilm", 1, tmp_path)
    finally:
        store.close()
    assert downloaded == tmp_path / "minilm" / "1"
    assert digests(downloaded) == digests(model_base_dir / "minilm" / "1")


async def test_medmesh_models_build_builds_uploads_and_then_keeps_the_version(
    tmp_path: Path, s3_url: str, name_prefix: str
) -> None:
    base_dir = tmp_path / "models"
    command = [
        sys.executable,
        "-m",
        "medmesh.cli",
        "models",
        "build",
        "--base-dir",
        str(base_dir),
        "--model",
        "minilm",
        "--upload",
    ]
    env = {**os.environ, "MEDMESH_S3_URL": s3_url, "MEDMESH_S3_BUCKET_PREFIX": name_prefix + "-"}
    first = await asyncio.to_thread(
        subprocess.run, command, env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        f"minilm 1 {base_dir / 'minilm' / '1'}",
        f"minilm 1 s3://{name_prefix}-ml-models/minilm/1/",
    ]
    card_written = (base_dir / "minilm" / "1" / "assets" / CARD_ASSET).stat().st_mtime_ns
    store = ObjectStore(s3_url, bucket_prefix=name_prefix + "-")
    try:
        uploaded = await store.get_bytes(ML_MODELS, "minilm/1/assets/model_card.json")
    finally:
        store.close()
    assert ModelCard.from_json(uploaded) == card_of(base_dir / "minilm" / "1")

    again = await asyncio.to_thread(
        subprocess.run, command[:-1], env=env, cwd=REPO, capture_output=True, text=True, check=False
    )
    assert again.returncode == 0, again.stderr
    assert (base_dir / "minilm" / "1" / "assets" / CARD_ASSET).stat().st_mtime_ns == card_written
