"""The model card: what a client must know to use a model version, shipped inside the version.

A SavedModel's signature says which tensors go in and out, but not what the classes are
called, how pixels must be normalised, or which tokenizer produced the ids. That knowledge
travels with the version in two forms that always hold the same JSON document:

- `assets/model_card.json` (and, for the text model, `assets/tokenizer.json`): read from the
  version directory or from its copy in the `ml-models` bucket;
- the `metadata` signature: a Predict with `signature_name="metadata"` and no inputs returns
  the card (and the tokenizer) as string tensors. This works unchanged against real
  TensorFlow Serving, which cannot hand out asset files and whose GetModelMetadata returns
  only signature definitions; so clients need nothing but the PredictionService address.

This module imports no TensorFlow: the workers parse cards without loading the runtime.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RESNET50 = "resnet50"
MINILM = "minilm"

SERVING_SIGNATURE = "serving_default"
METADATA_SIGNATURE = "metadata"
CARD_ASSET = "model_card.json"
TOKENIZER_ASSET = "tokenizer.json"

IMAGE_INPUT = "image"
IMAGE_OUTPUT = "probabilities"
TEXT_INPUT_IDS = "input_ids"
TEXT_ATTENTION_MASK = "attention_mask"
TEXT_OUTPUT = "embedding"
METADATA_CARD_OUTPUT = "card"
METADATA_TOKENIZER_OUTPUT = "tokenizer"

TASK_IMAGE_CLASSIFICATION = "image-classification"
TASK_TEXT_EMBEDDING = "text-embedding"

CARD_FORMAT = 1


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a decoded image becomes the model's input tensor.

    `x[..., c] = (pixel[..., c] * scale - mean[c]) / std[c]`, with the channels in
    `channel_order` and the image resized to `height` x `width` (NHWC, float32). The
    defaults are Keras' ResNet-50 convention ("caffe": BGR, ImageNet means, no scaling), so a
    trained Keras ResNet-50 can replace the shipped untrained one without client changes.
    """

    height: int = 224
    width: int = 224
    channel_order: str = "BGR"
    scale: float = 1.0
    mean: tuple[float, float, float] = (103.939, 116.779, 123.68)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def normalise(self, pixels_rgb: np.ndarray) -> np.ndarray:
        """HxWx3 RGB pixels (0..255, already resized) → the float32 model input."""
        rgb = np.asarray(pixels_rgb, dtype=np.float32)
        channels = rgb[..., ::-1] if self.channel_order == "BGR" else rgb
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((channels * np.float32(self.scale) - mean) / std).astype(np.float32)


@dataclass(frozen=True)
class TextLabel:
    """A zero-shot label: its key, the sentence that describes it, that sentence's embedding."""

    key: str
    description: str
    embedding: tuple[float, ...] = ()


@dataclass(frozen=True)
class TextLabelSet:
    """A group of mutually exclusive zero-shot labels (e.g. the urgency classes)."""

    name: str
    labels: tuple[TextLabel, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        """The label keys in order."""
        return tuple(label.key for label in self.labels)

    def embedding_matrix(self) -> np.ndarray:
        """One unit-length row per label (float32), for cosine similarity by a dot product."""
        return np.asarray([label.embedding for label in self.labels], dtype=np.float32)


@dataclass(frozen=True)
class ModelCard:
    """Everything a client needs besides the tensors: see the module docstring."""

    model: str
    version: int
    task: str
    trained: bool
    source: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    labels: tuple[str, ...] = ()
    image: ImagePreprocessing | None = None
    max_sequence_length: int = 0
    text_label_sets: tuple[TextLabelSet, ...] = ()
    languages: tuple[str, ...] = ()
    """ISO 639-1 codes of the languages a text model understands (all-MiniLM-L6-v2: `en`);
    notes in other languages are analysed but flagged. Empty: not declared."""
    build: Mapping[str, str] = field(default_factory=dict)

    def text_labels(self, name: str) -> TextLabelSet:
        """The zero-shot label set called `name` (`findings`, `urgency`)."""
        for label_set in self.text_label_sets:
            if label_set.name == name:
                return label_set
        raise KeyError(f"model card of {self.model} has no label set {name!r}")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): equal cards give equal bytes."""
        document: dict[str, Any] = {
            "format": CARD_FORMAT,
            "model": self.model,
            "version": self.version,
            "task": self.task,
            "trained": self.trained,
            "source": self.source,
            "signature": SERVING_SIGNATURE,
            "inputs": dict(self.inputs),
            "outputs": dict(self.outputs),
            "labels": list(self.labels),
            "build": dict(self.build),
        }
        if self.image is not None:
            document["image"] = {
                "height": self.image.height,
                "width": self.image.width,
                "channel_order": self.image.channel_order,
                "scale": self.image.scale,
                "mean": list(self.image.mean),
                "std": list(self.image.std),
            }
        if self.max_sequence_length:
            document["max_sequence_length"] = self.max_sequence_length
        if self.languages:
            document["languages"] = list(self.languages)
        if self.text_label_sets:
            document["text_label_sets"] = [
                {
                    "name": label_set.name,
                    "labels": [
                        {
                            "key": label.key,
                            "description": label.description,
                            "embedding": [float(x) for x in label.embedding],
                        }
                        for label in label_set.labels
                    ],
                }
                for label_set in self.text_label_sets
            ]
        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        """Parse a card written by `to_json`; unknown keys are ignored (newer writers)."""
        document = json.loads(text)
        if document.get("format") != CARD_FORMAT:
            raise ValueError(f"unsupported model card format {document.get('format')!r}")
        image = document.get("image")
        return cls(
            model=document["model"],
            version=int(document["version"]),
            task=document["task"],
            trained=bool(document["trained"]),
            source=document["source"],
            inputs=dict(document["inputs"]),
            outputs=dict(document["outputs"]),
            labels=tuple(document.get("labels", ())),
            image=None
            if image is None
            else ImagePreprocessing(
                height=int(image["height"]),
                width=int(image["width"]),
                channel_order=image["channel_order"],
                scale=float(image["scale"]),
                mean=_triple(image["mean"]),
                std=_triple(image["std"]),
            ),
            max_sequence_length=int(document.get("max_sequence_length", 0)),
            text_label_sets=tuple(
                TextLabelSet(
                    name=entry["name"],
                    labels=tuple(
                        TextLabel(
                            key=label["key"],
                            description=label["description"],
                            embedding=tuple(float(x) for x in label["embedding"]),
                        )
                        for label in entry["labels"]
                    ),
                )
                for entry in document.get("text_label_sets", ())
            ),
            languages=tuple(str(code) for code in document.get("languages", ())),
            build=dict(document.get("build", {})),
        )


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ValueError(f"expected 3 channel values, got {len(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))
