"""Post-processing: model outputs → the analysis a result stores. Pure functions, no I/O.

Images: the classifier's scores → softmax (unless the SavedModel already ends in a softmax)
→ the top-k labels with their probabilities.

Text: MiniLM maps a note to a unit-length sentence embedding. The analysis is zero-shot: the
note is compared by cosine similarity with the embeddings of short label descriptions that
were computed with the same model when the version was built (shipped in the version's
assets). Similarities become probabilities with a temperature softmax, separately for the
findings and the urgency classes; the summary is the note's sentences that are closest to
the note as a whole (an extractive summary, no text is generated).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_TOP_K = 5
# Cosine similarities between MiniLM sentence embeddings of related texts differ by a few
# hundredths; a softmax over raw cosines would be nearly flat. 1/0.05 = 20 is CLIP's order
# of magnitude of logit scale and separates the labels without making one of them certain.
DEFAULT_TEMPERATURE = 0.05
SUMMARY_SENTENCES = 2
SUMMARY_MAX_CHARS = 400
# How far from 1.0 a row may sum and still count as the model's own softmax output.
_PROBABILITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ScoredLabel:
    """One label and its probability in [0, 1]."""

    label: str
    score: float


@dataclass(frozen=True)
class LabelSet:
    """Zero-shot labels and the embeddings of their descriptions, one row per label."""

    labels: tuple[str, ...]
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.labels):
            raise ValueError(
                f"{len(self.labels)} labels need as many embedding rows, "
                f"got shape {self.embeddings.shape}"
            )
        if not self.labels:
            raise ValueError("a label set needs at least one label")


@dataclass(frozen=True)
class TextFindings:
    """The analysis of one note."""

    findings: tuple[ScoredLabel, ...]
    urgency: ScoredLabel
    summary: str
    language: str = ""
    """The note's language (svc_infer.language); empty when it was not judged."""
    model_languages: tuple[str, ...] = ()
    outside_model_languages: bool = False
    """True when the findings come from a model that does not read the note's language."""


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (the maximum is subtracted before exponentiating)."""
    shifted = logits - np.max(logits, axis=axis, keepdims=True)
    exps = np.exp(shifted)
    return exps / np.sum(exps, axis=axis, keepdims=True)


def looks_like_probabilities(row: np.ndarray) -> bool:
    """True when `row` is already a distribution (non-negative, sums to 1): the Keras
    classifier ends in a softmax, a logits model does not, and softmaxing twice would
    flatten the scores."""
    return bool(np.all(row >= 0) and abs(float(np.sum(row)) - 1.0) <= _PROBABILITY_TOLERANCE)


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[ScoredLabel]:
    """The `k` most probable labels, best first; ties keep the label order."""
    if probabilities.ndim != 1 or probabilities.shape[0] != len(labels):
        raise ValueError(
            f"{len(labels)} labels need a vector of that length, got {probabilities.shape}"
        )
    k = max(0, min(k, len(labels)))
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [ScoredLabel(labels[i], float(probabilities[i])) for i in order]


def classify_image(
    scores: np.ndarray, labels: Sequence[str], k: int = DEFAULT_TOP_K
) -> list[ScoredLabel]:
    """One row of classifier output → top-k labels with probabilities."""
    row = np.asarray(scores, dtype=np.float64).reshape(-1)
    probabilities = row if looks_like_probabilities(row) else softmax(row)
    return top_k(probabilities, labels, k)


def cosine_similarities(vector: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Cosine similarity of `vector` with each row of `matrix` (zero vectors score 0)."""
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    m = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(m, axis=1) * np.linalg.norm(v)
    dots = m @ v
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def zero_shot(
    embedding: np.ndarray, label_set: LabelSet, *, temperature: float = DEFAULT_TEMPERATURE
) -> np.ndarray:
    """Probabilities over `label_set` for one embedding: softmax(cosine / temperature)."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    return softmax(cosine_similarities(embedding, label_set.embeddings) / temperature)


def extractive_summary(
    note_embedding: np.ndarray,
    sentences: Sequence[str],
    sentence_embeddings: np.ndarray,
    *,
    count: int = SUMMARY_SENTENCES,
    max_chars: int = SUMMARY_MAX_CHARS,
) -> str:
    """The `count` sentences closest to the whole note, in their original order."""
    if not sentences:
        return ""
    if len(sentences) != sentence_embeddings.shape[0]:
        raise ValueError("one embedding per sentence is needed")
    similarity = cosine_similarities(note_embedding, sentence_embeddings)
    chosen = sorted(np.argsort(-similarity, kind="stable")[:count])
    summary = " ".join(sentences[i] for i in chosen)
    return summary if len(summary) <= max_chars else summary[: max_chars - 1].rstrip() + "…"


def analyse_text(
    note_embedding: np.ndarray,
    sentences: Sequence[str],
    sentence_embeddings: np.ndarray,
    findings: LabelSet,
    urgency: LabelSet,
    *,
    top: int = 3,
    temperature: float = DEFAULT_TEMPERATURE,
) -> TextFindings:
    """The zero-shot analysis of one note (see the module docstring)."""
    finding_probs = zero_shot(note_embedding, findings, temperature=temperature)
    urgency_probs = zero_shot(note_embedding, urgency, temperature=temperature)
    best_urgency = top_k(urgency_probs, urgency.labels, 1)[0]
    return TextFindings(
        findings=tuple(top_k(finding_probs, findings.labels, top)),
        urgency=best_urgency,
        summary=extractive_summary(note_embedding, sentences, sentence_embeddings),
    )
