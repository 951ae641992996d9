"""Client helpers for any TF Serving endpoint (this package's server or the real one).

`open_channel` sets what a PredictionService client needs (no message size limit: a batch
of eight 224x224x3 float32 images is 4.8 MB); `fetch_model_card` reads a version's card and
tokenizer through the `metadata` signature, so a client needs nothing but the address.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from svc_infer.models.card import (
    METADATA_CARD_OUTPUT,
    METADATA_SIGNATURE,
    METADATA_TOKENIZER_OUTPUT,
    ModelCard,
)

CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
)


def open_channel(address: str) -> grpc.aio.Channel:
    """An insecure grpc.aio channel to a model server without message size limits."""
    return grpc.aio.insecure_channel(address, options=list(CHANNEL_OPTIONS))


@dataclass(frozen=True)
class ServedCard:
    """A model card as served, with the version that served it and the tokenizer (text)."""

    card: ModelCard
    version: int
    tokenizer_json: str | None


async def fetch_model_card(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    model: str,
    *,
    version: int | None = None,
    label: str | None = None,
    timeout_s: float = 10.0,
) -> ServedCard:
    """Predict on the `metadata` signature of `model` (latest, `version` or `label`)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = METADATA_SIGNATURE
    if version is not None:
        request.model_spec.version.value = version
    elif label is not None:
        request.model_spec.version_label = label
    response = await stub.Predict(request, timeout=timeout_s)
    card = ModelCard.from_json(tf.make_ndarray(response.outputs[METADATA_CARD_OUTPUT]).item())
    tokenizer = None
    if METADATA_TOKENIZER_OUTPUT in response.outputs:
        raw = tf.make_ndarray(response.outputs[METADATA_TOKENIZER_OUTPUT]).item()
        tokenizer = raw.decode("utf-8")
    return ServedCard(card, response.model_spec.version.value, tokenizer)
