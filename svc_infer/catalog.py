"""Model cards of served versions, and what the workers derive from them.

A version's card (labels, normalisation, tokenizer, zero-shot label embeddings; see
`svc_infer.models.card`) is fetched once per version through the version's `metadata`
signature, with an ordinary Predict: that works against real TF Serving as well, which has
no API for asset files. Cards are immutable per version, so they are cached for the life of
the process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from svc_infer.models.card import (
    METADATA_CARD_OUTPUT,
    METADATA_SIGNATURE,
    METADATA_TOKENIZER_OUTPUT,
    SERVING_SIGNATURE,
    TEXT_ATTENTION_MASK,
    TEXT_INPUT_IDS,
    ModelCard,
)
from svc_infer.models.text import MINILM_LANGUAGES, load_tokenizer
from svc_infer.postprocess import LabelSet
from svc_infer.preprocess import IMAGE_PREPROCESSING_VERSION, ImageSpec
from svc_infer.registry import InputSpec
from svc_infer.text import TEXT_PREPROCESSING_VERSION
from svc_infer.tfserving import ModelRef, PredictFailed, TFServingClient

FINDINGS = "findings"
URGENCY = "urgency"


class CardUnavailable(Exception):
    """The version has no usable model card (no metadata signature, or a bad card)."""


@dataclass(frozen=True)
class TextAssets:
    """What text analysis needs of a version beyond the tensors."""

    tokenizer: Tokenizer
    findings: LabelSet
    urgency: LabelSet
    languages: tuple[str, ...] = MINILM_LANGUAGES
    """The card's declared languages (cards from before the declaration: MiniLM's, `en`)."""


def image_spec(spec: InputSpec) -> ImageSpec:
    """The preprocessing parameters of a registered image version."""
    height, width = (spec.shape[0], spec.shape[1]) if len(spec.shape) >= 2 else (224, 224)
    mean = spec.mean or (0.0, 0.0, 0.0)
    std = spec.std or (1.0, 1.0, 1.0)
    return ImageSpec(
        height=int(height),
        width=int(width),
        color_order=spec.color_order or "RGB",
        mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        std=(float(std[0]), float(std[1]), float(std[2])),
    )


def input_spec_from_card(card: ModelCard) -> InputSpec:
    """The registry's InputSpec for a card. The card normalises 0..255 pixels as
    `(p * scale - mean) / std`; the registry (like torchvision) subtracts its mean from
    pixels scaled to [0, 1]: mean' = mean / (255 * scale), std' = std / (255 * scale)."""
    inputs = list(card.inputs)
    outputs = list(card.outputs)
    if card.image is not None:
        image = card.image
        factor = 255.0 * image.scale
        return InputSpec(
            signature_name=SERVING_SIGNATURE,
            input_name=inputs[0],
            output_name=outputs[0],
            shape=(image.height, image.width, 3),
            dtype="float32",
            mean=tuple(m / factor for m in image.mean),
            std=tuple(s / factor for s in image.std),
            color_order=image.channel_order,
        )
    return InputSpec(
        signature_name=SERVING_SIGNATURE,
        input_name=TEXT_INPUT_IDS if TEXT_INPUT_IDS in card.inputs else inputs[0],
        output_name=outputs[0],
        dtype="int32",
        max_sequence_length=card.max_sequence_length,
    )


def labels_from_card(card: ModelCard) -> tuple[str, ...]:
    """The labels a registry entry lists: class names, or the zero-shot label keys."""
    if card.labels:
        return tuple(card.labels)
    return tuple(key for label_set in card.text_label_sets for key in label_set.keys)


def preprocessing_version_for(card: ModelCard) -> str:
    """Which preprocessing code a card's version expects."""
    return IMAGE_PREPROCESSING_VERSION if card.image is not None else TEXT_PREPROCESSING_VERSION


def text_attention_input() -> str:
    """The second input of the text signature (the first is InputSpec.input_name)."""
    return TEXT_ATTENTION_MASK


class ModelCatalog:
    """Cards and text assets per (model, version), fetched from the model server once."""

    def __init__(self, client: TFServingClient) -> None:
        self._client = client
        self._cards: dict[tuple[str, int], tuple[ModelCard, str]] = {}
        self._text: dict[tuple[str, int], TextAssets] = {}
        self._lock = asyncio.Lock()

    async def _fetch(self, model: str, version: int) -> tuple[ModelCard, str]:
        key = (model, version)
        if key in self._cards:
            return self._cards[key]
        async with self._lock:
            if key in self._cards:
                return self._cards[key]
            ref = ModelRef(model, version, METADATA_SIGNATURE)
            try:
                outputs, _ = await self._client.predict(ref, {})
            except PredictFailed as exc:
                raise CardUnavailable(f"models/{model}/versions/{version}: {exc}") from exc
            try:
                card = ModelCard.from_json(_text(outputs[METADATA_CARD_OUTPUT]))
            except (KeyError, ValueError) as exc:
                raise CardUnavailable(f"models/{model}/versions/{version}: {exc}") from exc
            tokenizer = outputs.get(METADATA_TOKENIZER_OUTPUT)
            self._cards[key] = (card, _text(tokenizer) if tokenizer is not None else "")
            return self._cards[key]

    async def card(self, model: str, version: int) -> ModelCard:
        """The version's model card."""
        return (await self._fetch(model, version))[0]

    async def text_assets(self, model: str, version: int) -> TextAssets:
        """Tokenizer and label sets of a text version."""
        key = (model, version)
        if key not in self._text:
            card, tokenizer_json = await self._fetch(model, version)
            if not tokenizer_json:
                raise CardUnavailable(f"models/{model}/versions/{version} ships no tokenizer")
            try:
                findings = card.text_labels(FINDINGS)
                urgency = card.text_labels(URGENCY)
            except KeyError as exc:
                raise CardUnavailable(str(exc)) from exc
            self._text[key] = TextAssets(
                tokenizer=load_tokenizer(tokenizer_json, card.max_sequence_length or 256),
                findings=LabelSet(findings.keys, findings.embedding_matrix()),
                urgency=LabelSet(urgency.keys, urgency.embedding_matrix()),
                languages=card.languages or MINILM_LANGUAGES,
            )
        return self._text[key]


def _text(value: np.ndarray) -> str:
    item = value.reshape(-1)[0] if isinstance(value, np.ndarray) else value
    return item.decode("utf-8") if isinstance(item, bytes) else str(item)
