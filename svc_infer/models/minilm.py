"""all-MiniLM-L6-v2 as a TensorFlow SavedModel, without torch.

transformers 5 has no TensorFlow classes, keras-hub's BERT hard-codes the tanh GELU (2.6e-4
off), and the transformers 4 TF route needs torch. A BERT encoder is small enough to write:
embeddings + 6 post-LayerNorm transformer layers with the exact (erf) GELU and eps 1e-12,
then sentence-transformers' mean pooling over real tokens and L2 normalisation. The weights
come from the package's safetensors file through `safetensors.numpy`; parity with the real
sentence-transformers is checked against a committed reference fixture.

Activations are flattened to [batch*tokens, hidden] around each dense layer: a 2-D matmul is
about twice as fast on CPU as the batched 3-D one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf
from safetensors.numpy import load_file

from svc_infer.models.card import TEXT_ATTENTION_MASK, TEXT_INPUT_IDS, TEXT_OUTPUT

# A large negative score for padded keys; finite so a row never becomes all -inf (NaN).
_MASKED_SCORE = -1e9


class _Dense(tf.Module):
    """y = x W^T + b with PyTorch's [out, in] weight layout, stored transposed once."""

    def __init__(self, weights: Mapping[str, np.ndarray], prefix: str) -> None:
        super().__init__()
        self.kernel = tf.Variable(weights[f"{prefix}.weight"].T.copy(), trainable=False)
        self.bias = tf.Variable(weights[f"{prefix}.bias"], trainable=False)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(x, self.kernel) + self.bias


class _LayerNorm(tf.Module):
    def __init__(self, weights: Mapping[str, np.ndarray], prefix: str, epsilon: float) -> None:
        super().__init__()
        self.gamma = tf.Variable(weights[f"{prefix}.weight"], trainable=False)
        self.beta = tf.Variable(weights[f"{prefix}.bias"], trainable=False)
        self.epsilon = epsilon

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(variance + self.epsilon) * self.gamma + self.beta


class _EncoderLayer(tf.Module):
    """One BERT layer: self-attention, add & norm, feed-forward (erf GELU), add & norm."""

    def __init__(
        self, weights: Mapping[str, np.ndarray], index: int, heads: int, epsilon: float
    ) -> None:
        super().__init__()
        prefix = f"encoder.layer.{index}"
        self.heads = heads
        self.query = _Dense(weights, f"{prefix}.attention.self.query")
        self.key = _Dense(weights, f"{prefix}.attention.self.key")
        self.value = _Dense(weights, f"{prefix}.attention.self.value")
        self.attention_output = _Dense(weights, f"{prefix}.attention.output.dense")
        self.attention_norm = _LayerNorm(weights, f"{prefix}.attention.output.LayerNorm", epsilon)
        self.intermediate = _Dense(weights, f"{prefix}.intermediate.dense")
        self.output = _Dense(weights, f"{prefix}.output.dense")
        self.output_norm = _LayerNorm(weights, f"{prefix}.output.LayerNorm", epsilon)

    def __call__(self, x: tf.Tensor, batch: tf.Tensor, tokens: tf.Tensor, mask_bias: tf.Tensor):
        """`x` is [batch*tokens, hidden]; `mask_bias` is [batch, 1, 1, tokens]."""
        hidden = x.shape[-1]
        head_size = hidden // self.heads

        def split_heads(t: tf.Tensor) -> tf.Tensor:
            return tf.transpose(tf.reshape(t, [batch, tokens, self.heads, head_size]), [0, 2, 1, 3])

        q, k, v = split_heads(self.query(x)), split_heads(self.key(x)), split_heads(self.value(x))
        scores = tf.matmul(q, k, transpose_b=True) / math.sqrt(head_size) + mask_bias
        context = tf.matmul(tf.nn.softmax(scores, axis=-1), v)
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [batch * tokens, hidden])
        x = self.attention_norm(self.attention_output(context) + x)
        feed_forward = self.output(tf.nn.gelu(self.intermediate(x), approximate=False))
        return self.output_norm(feed_forward + x)


class MiniLMEncoder(tf.Module):
    """Token ids + attention mask → mean-pooled, L2-normalised sentence embedding [B, 384]."""

    def __init__(self, weights: Mapping[str, np.ndarray], config: Mapping[str, object]) -> None:
        super().__init__()
        epsilon = float(config["layer_norm_eps"])  # type: ignore[arg-type]
        heads = int(config["num_attention_heads"])  # type: ignore[call-overload]
        layers = int(config["num_hidden_layers"])  # type: ignore[call-overload]
        if config.get("hidden_act") != "gelu" or config.get("position_embedding_type") not in (
            None,
            "absolute",
        ):
            raise ValueError("this encoder implements BERT with absolute positions and erf GELU")
        self.hidden_size = int(config["hidden_size"])  # type: ignore[call-overload]
        self.max_positions = int(config["max_position_embeddings"])  # type: ignore[call-overload]
        self.word_embeddings = tf.Variable(
            weights["embeddings.word_embeddings.weight"], trainable=False
        )
        self.position_embeddings = tf.Variable(
            weights["embeddings.position_embeddings.weight"], trainable=False
        )
        # Single-sentence inputs: every token has type 0, so only that row is kept.
        self.token_type_embedding = tf.Variable(
            weights["embeddings.token_type_embeddings.weight"][0], trainable=False
        )
        self.embedding_norm = _LayerNorm(weights, "embeddings.LayerNorm", epsilon)
        self.layers = [_EncoderLayer(weights, i, heads, epsilon) for i in range(layers)]

    def embed(self, input_ids: tf.Tensor, attention_mask: tf.Tensor) -> tf.Tensor:
        """The sentence embeddings; see the class docstring."""
        shape = tf.shape(input_ids)
        batch, tokens = shape[0], shape[1]
        tf.debugging.assert_less_equal(
            tokens, self.max_positions, message="sequence longer than the position table"
        )
        x = (
            tf.gather(self.word_embeddings, input_ids)
            + self.position_embeddings[:tokens][tf.newaxis]
            + self.token_type_embedding
        )
        x = tf.reshape(self.embedding_norm(x), [batch * tokens, self.hidden_size])
        mask = tf.cast(attention_mask, tf.float32)
        mask_bias = (1.0 - mask)[:, tf.newaxis, tf.newaxis, :] * _MASKED_SCORE
        for layer in self.layers:
            x = layer(x, batch, tokens, mask_bias)
        x = tf.reshape(x, [batch, tokens, self.hidden_size])
        summed = tf.reduce_sum(x * mask[:, :, tf.newaxis], axis=1)
        counts = tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1e-9)
        return tf.math.l2_normalize(summed / counts, axis=1, epsilon=1e-24)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None], tf.int32, name=TEXT_INPUT_IDS),
            tf.TensorSpec([None, None], tf.int32, name=TEXT_ATTENTION_MASK),
        ]
    )
    def serve(self, input_ids: tf.Tensor, attention_mask: tf.Tensor) -> dict[str, tf.Tensor]:
        """The serving signature: named inputs in, `{"embedding": [B, 384]}` out."""
        return {TEXT_OUTPUT: self.embed(input_ids, attention_mask)}


def load_encoder(model_dir: Path) -> MiniLMEncoder:
    """The encoder with the weights of `model_dir` (config.json + model.safetensors)."""
    config = json.loads((model_dir / "config.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    return MiniLMEncoder(weights, config)
