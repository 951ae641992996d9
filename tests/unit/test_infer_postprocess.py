"""svc_infer's post-processing and text preprocessing, without I/O: softmax top-k, zero-shot
scoring by cosine similarity, the extractive summary, sentence splitting, tokenization."""

from __future__ import annotations

import numpy as np
import pytest

from svc_infer.postprocess import (
    LabelSet,
    ScoredLabel,
    analyse_text,
    classify_image,
    cosine_similarities,
    extractive_summary,
    looks_like_probabilities,
    softmax,
    top_k,
)
from svc_infer.text import TextPreprocessingError, decode_note, split_sentences

LABELS = ("normal", "pneumonia", "effusion", "nodule")


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def test_softmax_is_a_distribution_and_keeps_the_order() -> None:
    probabilities = softmax(np.array([1.0, 3.0, 2.0, 30.0]))
    assert probabilities.sum() == pytest.approx(1.0)
    assert list(np.argsort(probabilities)) == [0, 2, 1, 3]
    assert np.isfinite(softmax(np.array([0.0, 1000.0]))).all()  # no overflow


def test_logits_are_softmaxed_and_the_top_k_come_best_first() -> None:
    result = classify_image(np.array([0.0, 2.0, 1.0, -1.0]), LABELS, k=2)
    expected = softmax(np.array([0.0, 2.0, 1.0, -1.0]))
    assert result == [
        ScoredLabel("pneumonia", pytest.approx(expected[1])),
        ScoredLabel("effusion", pytest.approx(expected[2])),
    ]


def test_probabilities_from_a_softmax_head_are_not_softmaxed_twice() -> None:
    head = np.array([0.1, 0.6, 0.2, 0.1], dtype=np.float32)
    assert looks_like_probabilities(head)
    result = classify_image(head, LABELS, k=1)
    assert result[0].label == "pneumonia"
    assert result[0].score == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("k", "expected"),
    [(0, []), (1, ["b"]), (3, ["b", "a", "c"]), (10, ["b", "a", "c"])],
)
def test_top_k_is_capped_by_the_number_of_labels(k: int, expected: list[str]) -> None:
    chosen = top_k(np.array([0.3, 0.5, 0.2]), ["a", "b", "c"], k)
    assert [s.label for s in chosen] == expected


def test_top_k_rejects_a_label_count_that_differs_from_the_output() -> None:
    with pytest.raises(ValueError, match="labels"):
        top_k(np.array([0.5, 0.5]), ["only-one"], 1)


def test_cosine_similarity_ignores_length_and_scores_zero_vectors_zero() -> None:
    similarities = cosine_similarities(
        np.array([1.0, 0.0]), np.array([[10.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    )
    assert list(similarities) == [pytest.approx(1.0), pytest.approx(0.0), 0.0]


def test_the_closest_labels_win_the_zero_shot_analysis() -> None:
    findings = LabelSet(
        ("pneumonia", "fracture", "normal"),
        np.stack([unit(1, 0.1, 0), unit(0, 1, 0), unit(0, 0, 1)]),
    )
    urgency = LabelSet(("routine", "urgent"), np.stack([unit(0, 0, 1), unit(1, 0, 0.2)]))
    note = unit(0.9, 0.2, 0.1)
    sentences = ["Fever and cough.", "Consolidation in the right lower lobe.", "No fracture."]
    sentence_vectors = np.stack([unit(0.8, 0.1, 0.2), unit(1, 0.1, 0), unit(0, 1, 0.3)])
    analysis = analyse_text(note, sentences, sentence_vectors, findings, urgency, top=2)
    assert [f.label for f in analysis.findings] == ["pneumonia", "fracture"]
    assert analysis.findings[0].score > 0.5
    assert analysis.urgency.label == "urgent"
    assert analysis.summary == "Fever and cough. Consolidation in the right lower lobe."


def test_the_summary_keeps_the_notes_order_and_is_capped() -> None:
    note = unit(1, 0)
    sentences = ["far away", "close one", "closest"]
    vectors = np.stack([unit(0, 1), unit(1, 0.5), unit(1, 0.01)])
    assert extractive_summary(note, sentences, vectors) == "close one closest"
    assert extractive_summary(note, sentences, vectors, max_chars=8) == "close o…"
    assert extractive_summary(note, [], np.zeros((0, 2))) == ""


def test_a_label_set_needs_one_embedding_per_label() -> None:
    with pytest.raises(ValueError, match="labels"):
        LabelSet(("a", "b"), np.zeros((3, 4)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two!  Three?", ["One.", "Two!", "Three?"]),
        ("Line one\n\nline   two", ["Line one", "line two"]),
        ("1.\nChest pain; dyspnoea.", ["Chest pain;", "dyspnoea."]),
        ("", []),
    ],
)
def test_sentences_are_split_at_punctuation_and_line_breaks(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_sentence_splitting_stops_at_the_limit() -> None:
    assert split_sentences("a1. b2. c3. d4.", limit=2) == ["a1.", "b2."]


@pytest.mark.parametrize(
    "data", [b"", b"   \n", b"\xff\xfe not utf-8", b"x" * (256 * 1024 + 1)], ids=repr
)
def test_a_note_that_cannot_be_analysed_is_refused(data: bytes) -> None:
    with pytest.raises(TextPreprocessingError):
        decode_note(data)
