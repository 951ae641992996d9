"""Text preprocessing for the BERT-family encoder: decoding a stored note and splitting it
into sentences (the rows the extractive summary chooses from). Pure functions, no I/O.

Tokenization itself uses the model version's own `tokenizer.json` through
`svc_infer.models.text.load_tokenizer` / `encode` (truncation at the card's
`max_sequence_length`, padding to the longest row of each batch), so the worker and the build
that computed the label embeddings tokenize identically.
"""

from __future__ import annotations

import re

TEXT_PREPROCESSING_VERSION = "text-wordpiece-v1"
"""UTF-8 decode → sentence split (at most MAX_SENTENCES) → model tokenizer, truncated, padded."""

MAX_SENTENCES = 8
MAX_NOTE_BYTES = 256 * 1024
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n+")
_MIN_SENTENCE_CHARS = 3


class TextPreprocessingError(ValueError):
    """The note cannot be analysed (not UTF-8, empty, too large)."""


def decode_note(data: bytes) -> str:
    """A stored note's bytes → text; TextPreprocessingError for empty, oversized or non-UTF-8."""
    if len(data) > MAX_NOTE_BYTES:
        raise TextPreprocessingError(f"the note has {len(data)} bytes, over {MAX_NOTE_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextPreprocessingError(f"the note is not UTF-8: {exc}") from exc
    text = text.replace("\r\n", "\n").strip()
    if not text:
        raise TextPreprocessingError("the note is empty")
    return text


def split_sentences(text: str, limit: int = MAX_SENTENCES) -> list[str]:
    """The note's first `limit` sentences (split at . ! ? ; and line breaks), whitespace
    collapsed; fragments shorter than three characters (list bullets, numbering) dropped."""
    sentences = []
    for piece in _SENTENCE_END.split(text):
        sentence = " ".join(piece.split())
        if len(sentence) >= _MIN_SENTENCE_CHARS:
            sentences.append(sentence)
        if len(sentences) == limit:
            break
    return sentences
