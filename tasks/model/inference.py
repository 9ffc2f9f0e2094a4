"""From prepared photos to class probabilities: the one path evaluate and `pawflow predict` share.

A prepared photo is the JPEG the shard stage writes (tasks.photos.images.check_bytes: longer side <= max_side,
re-encoded); it is decoded and resized here exactly as train/evaluate's tf.data pipeline does
(tf.io.decode_jpeg, then tf.image.resize to image_size x image_size, float32 in [0, 255]).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_class_probs(outputs: np.ndarray) -> np.ndarray:
    """Sigmoid outputs (n, 1) -> (n, 2); softmax outputs pass through."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 1 or outputs.shape[1] == 1:
        p = outputs.reshape(-1)
        return np.stack([1 - p, p], axis=1)
    return outputs


def decode_resize(jpegs: Sequence[bytes], image_size: int):
    """A batch (n, image_size, image_size, 3) float32 tensor, as tasks.train's test-split pipeline makes."""
    import tensorflow as tf

    return tf.stack(
        [tf.image.resize(tf.io.decode_jpeg(j, channels=3), (image_size, image_size)) for j in jpegs]
    )


def class_probs(model, images, tta: bool) -> np.ndarray:
    """Class probabilities (n, classes) for a batch of images; with tta, the mean of the photo's and
    its left-right mirror's (test-time augmentation: training flips photos too, so both are in-domain)."""
    import tensorflow as tf

    probs = as_class_probs(model.predict_on_batch(images))
    if tta:
        mirrored = tf.reverse(images, axis=[2])  # (batch, height, width, channels): flip the width
        probs = (probs + as_class_probs(model.predict_on_batch(mirrored))) / 2
    return probs
