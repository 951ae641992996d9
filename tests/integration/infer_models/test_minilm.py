"""The exported all-MiniLM-L6-v2 through the model server: parity with the real
sentence-transformers (tests/fixtures/minilm_reference.json, made by
scripts/make_minilm_reference.py) and a zero-shot analysis that means something."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from svc_infer.model_server.client import ServedCard, fetch_model_card, open_channel
from svc_infer.models.text import MAX_SEQUENCE_LENGTH, encode, load_tokenizer

REFERENCE = json.loads(
    (Path(__file__).resolve().parents[2] / "fixtures" / "minilm_reference.json").read_text()
)
MIN_COSINE = 0.999


@pytest.fixture
async def stub(
    model_server_address: str,
) -> AsyncIterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    """A PredictionService stub on the session's model server."""
    async with open_channel(model_server_address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture
async def served_card(stub: prediction_service_pb2_grpc.PredictionServiceStub) -> ServedCard:
    """The minilm card and tokenizer, read through the metadata signature like a worker does."""
    return await fetch_model_card(stub, "minilm")


async def embed(
    stub: prediction_service_pb2_grpc.PredictionServiceStub, served: ServedCard, texts: list[str]
) -> np.ndarray:
    """Sentence embeddings from one batched Predict on the model server."""
    assert served.tokenizer_json is not None
    input_ids, attention_mask = encode(load_tokenizer(served.tokenizer_json), texts)
    request = predict_pb2.PredictRequest(
        model_spec={"name": "minilm"},
        inputs={
            "input_ids": tf.make_tensor_proto(input_ids),
            "attention_mask": tf.make_tensor_proto(attention_mask),
        },
    )
    response = await stub.Predict(request)
    return tf.make_ndarray(response.outputs["embedding"])


async def test_embeddings_match_sentence_transformers_including_a_note_over_128_tokens(
    stub: prediction_service_pb2_grpc.PredictionServiceStub, served_card: ServedCard
) -> None:
    sentences = REFERENCE["sentences"]
    assert max(s["tokens"] for s in sentences) > 128  # the fixture covers the tokenizer trap
    assert (
        REFERENCE["max_seq_length"] == MAX_SEQUENCE_LENGTH == served_card.card.max_sequence_length
    )
    embeddings = await embed(stub, served_card, [s["text"] for s in sentences])
    reference = np.asarray([s["embedding"] for s in sentences], dtype=np.float64)
    cosines = np.sum(embeddings * reference, axis=1) / (
        np.linalg.norm(embeddings, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert embeddings.shape == (len(sentences), 384)
    assert cosines.min() >= MIN_COSINE, dict(
        zip([s["text"][:30] for s in sentences], cosines, strict=False)
    )
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


async def test_truncating_at_the_shipped_128_tokens_would_break_parity_on_the_long_note(
    stub: prediction_service_pb2_grpc.PredictionServiceStub, served_card: ServedCard
) -> None:
    long_note = max(REFERENCE["sentences"], key=lambda s: s["tokens"])
    assert served_card.tokenizer_json is not None
    shipped = load_tokenizer(served_card.tokenizer_json, max_length=128)
    input_ids, attention_mask = encode(shipped, [long_note["text"]])
    response = await stub.Predict(
        predict_pb2.PredictRequest(
            model_spec={"name": "minilm"},
            inputs={
                "input_ids": tf.make_tensor_proto(input_ids),
                "attention_mask": tf.make_tensor_proto(attention_mask),
            },
        )
    )
    truncated = tf.make_ndarray(response.outputs["embedding"])[0]
    assert float(truncated @ np.asarray(long_note["embedding"])) < MIN_COSINE


FINDING_NOTES = [
    (
        "pneumonia",
        "Five days of productive cough and fever of 39 degrees; crackles at the right base and "
        "the chest film shows right lower lobe consolidation.",
    ),
    (
        "fracture",
        "Fell off his bicycle onto an outstretched hand; the left wrist is swollen and deformed "
        "and the X-ray shows a displaced distal radius break.",
    ),
    (
        "stroke",
        "Woke up with weakness of the right arm and leg, a drooping mouth and difficulty "
        "finding words.",
    ),
    (
        "myocardial_infarction",
        "Crushing central chest pain radiating to the left arm for forty minutes, sweating; "
        "ECG shows ST elevation in V2 to V4.",
    ),
    (
        "appendicitis",
        "Pain that started around the navel and moved to the right lower quadrant, with "
        "nausea, low-grade fever and rebound tenderness.",
    ),
    ("no_acute_finding", "Annual check-up. Feels well, no complaints, examination unremarkable."),
]
URGENCY_NOTES = [
    ("routine", "Annual check-up. Feels well, no complaints, examination unremarkable."),
    ("urgent", "Worsening cough and mild fever for three days; please see the patient today."),
]


@pytest.mark.parametrize(
    ("label_set", "notes"), [("findings", FINDING_NOTES), ("urgency", URGENCY_NOTES)]
)
async def test_zero_shot_analysis_ranks_the_obviously_matching_label_first(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
    served_card: ServedCard,
    label_set: str,
    notes: list[tuple[str, str]],
) -> None:
    labels = served_card.card.text_labels(label_set)
    embeddings = await embed(stub, served_card, [note for _, note in notes])
    similarities = embeddings @ labels.embedding_matrix().T
    ranked = [labels.keys[int(np.argmax(row))] for row in similarities]
    assert ranked == [expected for expected, _ in notes]


async def test_label_embeddings_in_the_card_are_what_the_served_model_computes(
    stub: prediction_service_pb2_grpc.PredictionServiceStub, served_card: ServedCard
) -> None:
    for label_set in served_card.card.text_label_sets:
        served = await embed(stub, served_card, [label.description for label in label_set.labels])
        np.testing.assert_allclose(served, label_set.embedding_matrix(), atol=1e-5)


async def test_token_ids_out_of_the_vocabulary_are_an_invalid_argument(
    stub: prediction_service_pb2_grpc.PredictionServiceStub,
) -> None:
    ids = np.asarray([[101, 999_999, 102]], dtype=np.int32)
    request = predict_pb2.PredictRequest(
        model_spec={"name": "minilm"},
        inputs={
            "input_ids": tf.make_tensor_proto(ids),
            "attention_mask": tf.make_tensor_proto(np.ones_like(ids)),
        },
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Predict(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "indices[0,1] = 999999 is not in [0, 30522)" in (error.value.details() or "")
