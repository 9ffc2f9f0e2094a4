"""Train-only augmentation inside tf.data (params.yaml train.augment), seeded per photo.

Geometry (flip, rotation, zoom, translation and the random resized crop) is one projective map composed
with the resize, so one bilinear resampling does all of it; then contrast, then the quality of the
photos users send (down-then-up sampling, JPEG re-encoding). Every random draw is stateless: the same
per-photo seed gives the same image, so the same inputs + params give the same model bytes.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tasks.core.params import Augment  # params.yaml train.augment: all zero/False/None turns it off

# Random resized crop: the crop's aspect ratio (width / height, relative to the photo's) is drawn
# log-uniformly in this range, as in Inception's and torchvision's RandomResizedCrop.
CROP_ASPECT = (3 / 4, 4 / 3)
# Fold-in constants deriving each independent draw from a photo's seed. The geometry keeps its
# stateless_split(seed, 5) and contrast its fold-in 7 (the model bytes of the recipe before these
# augmentations existed do not change); the new draws take numbers of their own.
_CONTRAST, _CROP_AREA, _CROP_ASPECT, _CROP_X, _CROP_Y, _DOWNSAMPLE, _JPEG = 7, 11, 12, 13, 14, 15, 16


def _fold(seed: tf.Tensor, k: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, k)


def _uniform(seed: tf.Tensor, lo: float | tf.Tensor, hi: float | tf.Tensor) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed, lo, hi)


def crop_box(seed: tf.Tensor, crop: float, in_h: tf.Tensor, in_w: tf.Tensor) -> tf.Tensor:
    """[y0, x0, h, w] (float32, photo pixels) of a random resized crop inside an in_h x in_w photo: an
    area fraction in [1 - crop, 1], an aspect ratio in CROP_ASPECT relative to the photo's, clipped to
    the photo, at a random place. crop = 0: the whole photo."""
    h, w = tf.cast(in_h, tf.float32), tf.cast(in_w, tf.float32)
    if not crop:
        return tf.stack([0.0, 0.0, h, w])
    area = _uniform(_fold(seed, _CROP_AREA), 1.0 - crop, 1.0)
    ratio = tf.exp(_uniform(_fold(seed, _CROP_ASPECT), math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1])))
    ch = tf.minimum(h, h * tf.sqrt(area / ratio))
    cw = tf.minimum(w, w * tf.sqrt(area * ratio))
    y0 = _uniform(_fold(seed, _CROP_Y), 0.0, 1.0) * (h - ch)
    x0 = _uniform(_fold(seed, _CROP_X), 0.0, 1.0) * (w - cw)
    return tf.stack([y0, x0, ch, cw])


def augment_transform(seed: tf.Tensor, a: Augment, size: int, in_h: tf.Tensor, in_w: tf.Tensor) -> tf.Tensor:
    """The 8 projective parameters mapping an output pixel of the size x size training image to the
    stored photo: a random flip, rotation, zoom and translation composed with the resize of the photo
    (or of its random resized crop), so one bilinear resampling does both. Stateless: the same seed
    gives the same map."""
    seeds = tf.random.experimental.stateless_split(seed, num=5)

    def uniform(k: int, lo: float, hi: float) -> tf.Tensor:
        return tf.random.stateless_uniform([], seeds[k], lo, hi)

    angle = uniform(0, -a.rotation * 2 * math.pi, a.rotation * 2 * math.pi)
    scale = uniform(1, 1.0 - a.zoom, 1.0 + a.zoom)
    tx = uniform(2, -a.translation, a.translation) * size
    ty = uniform(3, -a.translation, a.translation) * size
    fx = tf.where(uniform(4, 0.0, 1.0) < 0.5, -1.0, 1.0) if a.flip else 1.0
    c = (size - 1) / 2
    cos, sin = tf.cos(angle), tf.sin(angle)
    # augmentation in output space: q = R * S * F * (p - c) + c + t ...
    m00, m01, m10, m11 = scale * cos * fx, -scale * sin, scale * sin * fx, scale * cos
    # ... then the resize to the photo's pixels with half-pixel centres, as tf.image.resize does ...
    if a.crop:  # ... of the crop box, placed at (x0, y0) in the photo
        y0, x0, ch, cw = tf.unstack(crop_box(seed, a.crop, in_h, in_w))
        sx, sy = cw / size, ch / size
    else:
        x0 = y0 = 0.0
        sx, sy = tf.cast(in_w, tf.float32) / size, tf.cast(in_h, tf.float32) / size
    a2 = (c - m00 * c - m01 * c + tx + 0.5) * sx - 0.5 + x0
    b2 = (c - m10 * c - m11 * c + ty + 0.5) * sy - 0.5 + y0
    return tf.stack([m00 * sx, m01 * sx, a2, m10 * sy, m11 * sy, b2, 0.0, 0.0])


def degrade(image: tf.Tensor, seed: tf.Tensor, a: Augment) -> tf.Tensor:
    """The look of small, compressed web photos on a float32 [0, 255] H x W x 3 image: shrunk to a
    side in [1 - downsample, 1] of its own (antialiased), re-encoded as JPEG at a quality in
    jpeg_quality, then resized back to H x W. Off (downsample 0, jpeg_quality None): unchanged."""
    if not a.downsample and a.jpeg_quality is None:
        return image
    shape = tf.shape(image)[:2]
    out = image
    if a.downsample:
        factor = _uniform(_fold(seed, _DOWNSAMPLE), 1.0 - a.downsample, 1.0)
        small = tf.maximum(1, tf.cast(tf.round(tf.cast(shape, tf.float32) * factor), tf.int32))
        out = tf.image.resize(out, small, antialias=True)
    if a.jpeg_quality is not None:
        low, high = a.jpeg_quality
        quality = tf.random.stateless_uniform([], _fold(seed, _JPEG), low, high + 1, dtype=tf.int32)
        pixels = tf.cast(tf.round(tf.clip_by_value(out, 0.0, 255.0)), tf.uint8)
        out = tf.cast(tf.image.adjust_jpeg_quality(pixels, quality), tf.float32)
    if a.downsample:
        out = tf.image.resize(out, shape)
    return tf.clip_by_value(out, 0.0, 255.0)


def augment_image(image: tf.Tensor, seed: tf.Tensor, image_size: int, a: Augment) -> tf.Tensor:
    """A decoded photo (uint8 or float32 in [0, 255], any size) -> the float32 image_size x image_size
    training image: resize + flip/rotate/zoom/translate/crop in a single resampling, then random
    contrast, then degrade. (Keras's Random* layers resample once per layer after a separate resize;
    one pass is ~4x faster.)"""
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    transform = augment_transform(seed, a, image_size, shape[0], shape[1])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform[None],
        output_shape=[image_size, image_size],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )[0]
    if a.contrast:
        factor = _uniform(_fold(seed, _CONTRAST), 1.0 - a.contrast, 1.0 + a.contrast)
        mean = tf.reduce_mean(out)
        out = tf.clip_by_value((out - mean) * factor + mean, 0.0, 255.0)
    return degrade(out, seed, a)
