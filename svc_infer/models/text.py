"""The text model's tokenizer and zero-shot label sets (no TensorFlow here).

Tokenizer: the model's own `tokenizer.json` (shipped in the version's assets and returned by
its `metadata` signature) through the `tokenizers` library, offline. The file carries
truncation at 128 and padding to 128 built in, while sentence-transformers runs
all-MiniLM-L6-v2 with `max_seq_length` 256: without `enable_truncation(max_length=256)` a
long note silently loses its second half, and fixed padding wastes compute on short notes.

Label sets: the zero-shot analysis compares a note's embedding with embeddings of short
descriptive sentences. Sentences work far better than bare words with a sentence-embedding
model ("Findings consistent with pneumonia ..." rather than "pneumonia"). Their embeddings are
computed with the exported model when a version is built and stored in its card.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

MAX_SEQUENCE_LENGTH = 256
MINILM_LANGUAGES: tuple[str, ...] = ("en",)
"""all-MiniLM-L6-v2 was trained on English sentence pairs only: what its model card declares.
Cards written before cards declared languages are all builds of it, so readers assume this
for a text card without `languages`."""

FINDING_LABELS: tuple[tuple[str, str], ...] = (
    (
        "pneumonia",
        "Pneumonia: a lung infection with fever, cough and consolidation on the chest X-ray.",
    ),
    ("fracture", "Bone fracture: a broken bone after trauma or a fall, with pain and deformity."),
    (
        "pneumothorax",
        "Pneumothorax: collapsed lung with air in the pleural space and sudden chest pain.",
    ),
    ("pleural_effusion", "Pleural effusion: fluid collecting around the lung."),
    (
        "heart_failure",
        "Heart failure: an enlarged heart with fluid overload, leg swelling and breathlessness.",
    ),
    (
        "myocardial_infarction",
        "Heart attack: crushing chest pain, ST elevation on the ECG and raised troponin.",
    ),
    ("stroke", "Stroke: sudden weakness on one side of the body, facial droop and slurred speech."),
    ("lung_nodule", "Lung nodule or mass: a small round opacity in the lung, possibly cancer."),
    ("appendicitis", "Appendicitis: pain in the right lower abdomen with nausea and fever."),
    ("no_acute_finding", "Normal examination: no acute abnormality, the patient is well."),
)

URGENCY_LABELS: tuple[tuple[str, str], ...] = (
    (
        "routine",
        "Routine follow-up: a stable patient with no acute problem, seen at the next visit.",
    ),
    ("urgent", "Urgent: the patient should be assessed and treated within a day."),
    (
        "emergency",
        "Emergency: a life-threatening condition that needs immediate treatment right now.",
    ),
)

LABEL_SETS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("findings", FINDING_LABELS),
    ("urgency", URGENCY_LABELS),
)


def load_tokenizer(tokenizer_json: str, max_length: int = MAX_SEQUENCE_LENGTH) -> Tokenizer:
    """A tokenizer that truncates at `max_length` tokens and pads each batch to its longest."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.enable_truncation(max_length=max_length)
    padding = tokenizer.padding or {}
    tokenizer.enable_padding(
        pad_id=int(padding.get("pad_id", 0)), pad_token=str(padding.get("pad_token", "[PAD]"))
    )
    return tokenizer


def encode(tokenizer: Tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """`input_ids` and `attention_mask` (int32, [len(texts), longest]) for the serving signature."""
    if not texts:
        raise ValueError("nothing to encode")
    encodings = tokenizer.encode_batch(list(texts))
    input_ids = np.asarray([e.ids for e in encodings], dtype=np.int32)
    attention_mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int32)
    return input_ids, attention_mask
