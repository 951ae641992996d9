"""ResNet-50 image classifier as a TensorFlow SavedModel.

No pretrained weights can be downloaded here, so the shipped model is
`tf.keras.applications.ResNet50(weights=None)`: the real architecture and the real cost per
image, with seeded random weights, whose scores mean nothing. Its card says `trained: false`;
a trained SavedModel with the same signature replaces it through the registry (README,
"Models and the model server").
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from svc_infer.models.card import IMAGE_INPUT, IMAGE_OUTPUT, ImagePreprocessing

# The 14 findings of the NIH ChestX-ray14 set plus "no finding": a realistic label space for
# a chest radiograph classifier (the untrained weights do not know any of them).
DEFAULT_IMAGE_LABELS: tuple[str, ...] = (
    "no_finding",
    "atelectasis",
    "cardiomegaly",
    "consolidation",
    "edema",
    "effusion",
    "emphysema",
    "fibrosis",
    "hernia",
    "infiltration",
    "mass",
    "nodule",
    "pleural_thickening",
    "pneumonia",
    "pneumothorax",
)

IMAGE_SPEC = ImagePreprocessing()
DEFAULT_SEED = 20260501


def make_resnet50(num_classes: int, seed: int = DEFAULT_SEED) -> tf.keras.Model:
    """Keras' ResNet-50 with `num_classes` softmax outputs and weights drawn from `seed`."""
    if num_classes < 2:
        raise ValueError("a classifier needs at least two labels")
    tf.keras.utils.set_random_seed(seed)
    return tf.keras.applications.ResNet50(
        weights=None,
        input_shape=(IMAGE_SPEC.height, IMAGE_SPEC.width, 3),
        classes=num_classes,
        classifier_activation="softmax",
    )


class ImageClassifier(tf.Module):
    """The exported object: the Keras model behind a signature with named tensors."""

    def __init__(self, model: tf.keras.Model) -> None:
        super().__init__()
        self.model = model

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, IMAGE_SPEC.height, IMAGE_SPEC.width, 3], tf.float32, IMAGE_INPUT)
        ]
    )
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        """`image` normalised as the card says → `probabilities` [batch, labels]."""
        return {IMAGE_OUTPUT: self.model(image, training=False)}


def image_classifier(labels: Sequence[str], seed: int = DEFAULT_SEED) -> ImageClassifier:
    """The untrained ResNet-50 for `labels`, ready to export."""
    return ImageClassifier(make_resnet50(len(labels), seed))
