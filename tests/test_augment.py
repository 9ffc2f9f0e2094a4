"""Train-only augmentation (tasks/model/augment.py): the random resized crop, down-then-up sampling and JPEG
quality jitter keep shapes and value ranges, are deterministic for a seed, and change nothing when off."""

from __future__ import annotations

from pathlib import Path

import imagegen
import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import shipped

from tasks import train
from tasks.core.errors import PawflowError
from tasks.core.params import Augment as AugmentParams
from tasks.core.params import parse_params
from tasks.model import augment
from tasks.photos import tfrecord

ROOT = Path(__file__).resolve().parents[1]
OFF = AugmentParams(
    flip=False,
    rotation=0.0,
    zoom=0.0,
    translation=0.0,
    contrast=0.0,
    crop=0.0,
    downsample=0.0,
    jpeg_quality=None,
)
SIZE = 32


def replace(a: AugmentParams, **changes: object) -> AugmentParams:
    return a.model_copy(update=changes)


def seed(i: int) -> tf.Tensor:
    return tf.constant([i, 17], tf.int64)


def photo(h: int = 60, w: int = 80, i: int = 0) -> tf.Tensor:
    return tf.io.decode_jpeg(imagegen.jpeg(i, (w, h)), channels=3)


def column_ramp(h: int, w: int) -> tf.Tensor:
    """A photo whose every pixel holds its own column index (w <= 256)."""
    row = np.arange(w, dtype=np.uint8)
    return tf.constant(np.broadcast_to(row[None, :, None], (h, w, 3)).copy())


def checkerboard(side: int) -> tf.Tensor:
    board = ((np.indices((side, side)).sum(axis=0) % 2) * 255).astype(np.float32)
    return tf.constant(np.repeat(board[:, :, None], 3, axis=2))


# --------------------------------------------------------------------------- params


def test_the_new_augmentations_are_off_by_default():
    a = shipped("train.augment")  # the repository's params.yaml (the models hold no values)
    assert (a.crop, a.downsample, a.jpeg_quality) == (0.0, 0.0, None)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("jpeg_quality", [80, 40], "train.augment.jpeg_quality"),
        ("jpeg_quality", [0, 40], "train.augment.jpeg_quality"),
        ("crop", 1.0, "train.augment.crop"),
        ("downsample", -0.1, "train.augment.downsample"),
        ("cutout", 0.2, "train.augment.cutout: unknown key"),
    ],
)
def test_a_bad_augment_value_is_refused_and_named(key: str, value: object, message: str):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["train"]["augment"][key] = value
    with pytest.raises(PawflowError) as info:
        parse_params(data)
    assert message in str(info.value)


# --------------------------------------------------------------------------- no-op when off


def test_everything_off_is_a_plain_resize():
    image = photo()
    out = augment.augment_image(image, seed(1), SIZE, OFF)
    plain = tf.image.resize(tf.cast(image, tf.float32), (SIZE, SIZE))
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), plain.numpy(), atol=1e-3)


def test_degrade_off_returns_the_image_untouched():
    image = tf.random.stateless_uniform((SIZE, SIZE, 3), seed(2), 0.0, 255.0)
    assert augment.degrade(image, seed(3), OFF) is image


def test_crop_off_maps_to_the_whole_photo():
    box = augment.crop_box(seed(4), 0.0, tf.constant(60), tf.constant(80)).numpy()
    assert box.tolist() == [0.0, 0.0, 60.0, 80.0]


def test_the_recipe_without_the_new_augmentations_draws_the_same_images_as_before():
    """The shipped recipe (flip, rotation, zoom, translation, contrast): the new code paths, off, leave
    every training image as the one-pass transform + contrast gave it, so today's model bytes stay."""
    a = replace(OFF, flip=True, rotation=0.05, zoom=0.1, translation=0.1, contrast=0.2)
    image, s = photo(), seed(5)
    got = augment.augment_image(image, s, SIZE, a)
    # the pre-issue-15 pipeline, written out: one projective resampling, then contrast with fold-in 7
    shape = tf.shape(image)
    t = augment.augment_transform(s, a, SIZE, shape[0], shape[1])
    want = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=t[None],
        output_shape=[SIZE, SIZE],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )[0]
    f = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(s, 7), 0.8, 1.2)
    want = tf.clip_by_value((want - tf.reduce_mean(want)) * f + tf.reduce_mean(want), 0.0, 255.0)
    assert np.array_equal(got.numpy(), want.numpy())


# --------------------------------------------------------------------------- random resized crop


def test_crop_boxes_lie_inside_the_photo_with_the_drawn_area():
    h, w, crop = 60, 80, 0.6
    areas = []
    for i in range(200):
        y0, x0, ch, cw = augment.crop_box(seed(i), crop, tf.constant(h), tf.constant(w)).numpy()
        assert y0 >= 0 and x0 >= 0 and y0 + ch <= h + 1e-3 and x0 + cw <= w + 1e-3, (y0, x0, ch, cw)
        frac = ch * cw / (h * w)
        # area in [1 - crop, 1], less only where the aspect jitter hits the photo's edge
        assert (1 - crop) * augment.CROP_ASPECT[0] - 1e-6 <= frac <= 1 + 1e-6
        areas.append(frac)
    assert min(areas) < 0.5 and max(areas) > 0.9  # the whole range is drawn, not one size


def test_a_cropped_image_shows_only_its_crop_box():
    h, w, crop = 40, 200, 0.7
    ramp = column_ramp(h, w)
    for i in range(20):
        a = replace(OFF, crop=crop)
        out = augment.augment_image(ramp, seed(i), SIZE, a).numpy()
        _, x0, _, cw = augment.crop_box(seed(i), crop, tf.constant(h), tf.constant(w)).numpy()
        assert out.shape == (SIZE, SIZE, 3) and out.min() >= 0 and out.max() <= 255
        # columns of the photo seen by the output: those of the box, edge to edge (within a pixel)
        assert x0 - 1 <= out.min() <= x0 + cw / SIZE + 1, (out.min(), x0, cw)
        assert x0 + cw - cw / SIZE - 2 <= out.max() <= x0 + cw, (out.max(), x0, cw)


# --------------------------------------------------------------------------- quality: downsample, JPEG


def test_downsampling_blurs_fine_detail_and_keeps_the_size():
    board = checkerboard(SIZE)
    a = replace(OFF, downsample=0.9)
    outs = [augment.degrade(board, seed(i), a) for i in range(10)]
    for out in outs:
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == tf.float32
        assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255
    spreads = [float(tf.math.reduce_std(o)) for o in outs]
    assert max(spreads) <= float(tf.math.reduce_std(board)) + 1e-3
    assert min(spreads) < 0.5 * float(tf.math.reduce_std(board))  # a strong shrink averages the squares away


def test_jpeg_quality_re_encodes_at_the_drawn_quality():
    image = tf.cast(photo(SIZE, SIZE, i=3), tf.float32)
    low = augment.degrade(image, seed(6), replace(OFF, jpeg_quality=(10, 10)))
    want = tf.cast(tf.image.adjust_jpeg_quality(tf.cast(image, tf.uint8), 10), tf.float32)
    assert low.shape == (SIZE, SIZE, 3) and low.dtype == tf.float32
    assert np.array_equal(low.numpy(), want.numpy())
    high = augment.degrade(image, seed(6), replace(OFF, jpeg_quality=(100, 100)))
    err_low = float(tf.reduce_mean(tf.abs(low - image)))
    err_high = float(tf.reduce_mean(tf.abs(high - image)))
    assert err_high < err_low and err_low > 1.0


def test_jpeg_quality_is_drawn_within_low_high_inclusive():
    image = tf.cast(photo(SIZE, SIZE, i=4), tf.float32)
    by_quality = {
        q: tf.cast(tf.image.adjust_jpeg_quality(tf.cast(image, tf.uint8), q), tf.float32).numpy()
        for q in (20, 21, 22)
    }
    seen = set()
    for i in range(40):
        out = augment.degrade(image, seed(i), replace(OFF, jpeg_quality=(20, 22))).numpy()
        matches = [q for q, ref in by_quality.items() if np.array_equal(out, ref)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {20, 21, 22}


# --------------------------------------------------------------------------- determinism, in tf.data

ALL = replace(
    OFF,
    flip=True,
    rotation=0.05,
    zoom=0.1,
    translation=0.1,
    contrast=0.2,
    crop=0.6,
    downsample=0.5,
    jpeg_quality=(40, 95),
)


def test_the_same_seed_gives_the_same_image_and_another_seed_another():
    image = photo()
    first = augment.augment_image(image, seed(7), SIZE, ALL).numpy()
    assert np.array_equal(first, augment.augment_image(image, seed(7), SIZE, ALL).numpy())
    assert not np.array_equal(first, augment.augment_image(image, seed(8), SIZE, ALL).numpy())
    assert first.shape == (SIZE, SIZE, 3) and first.min() >= 0 and first.max() <= 255


def shard(path: Path, count: int) -> Path:
    records = []
    for i in range(count):
        jpeg = imagegen.jpeg(i, (48, 40))
        records.append(tfrecord.serialize(jpeg, 40, 48, i % 2, ["Cat", "Dog"][i % 2], str(i), f"p/{i}"))
    tfrecord.write(path, records)
    return path


def batches(files: list[Path], training: bool, a: AugmentParams | None) -> list[np.ndarray]:
    # val/test take no Shuffled spec, so no augmentation can reach them
    shuffled = train.Shuffled(seed=11, shuffle_buffer=8, augment=a) if training else None
    ds = train.make_dataset(files, num_classes=2, image_size=SIZE, batch_size=4, shuffled=shuffled)
    return [x.numpy() for x, _ in ds]


def test_training_batches_are_reproducible_and_only_the_train_split_is_augmented(tmp_path: Path):
    files = [shard(tmp_path / "train.tfrecord", 12)]
    augmented = batches(files, True, ALL)
    assert [b.shape for b in augmented] == [(4, SIZE, SIZE, 3)] * 3
    assert all(np.array_equal(x, y) for x, y in zip(augmented, batches(files, True, ALL), strict=True))
    # the same records, shuffled the same way, without augmentation: other pixels
    plain = batches(files, True, OFF)
    assert not any(np.array_equal(x, y) for x, y in zip(augmented, plain, strict=True))
    # val/test take no Shuffled spec (no augmentation): the records in file order, only resized
    evaluated = np.concatenate(batches(files, False, None))
    shuffled_plain = np.concatenate(plain)
    assert not np.array_equal(evaluated, shuffled_plain)
    assert sorted(map(bytes, evaluated)) == sorted(map(bytes, shuffled_plain))
