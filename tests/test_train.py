"""tasks/train.py and flows/train.py: records drawn from shard files in proportion to their size, the
projective augmentation's geometry (known answers), and the train flow in-process (every output, a
cache hit rewriting them)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import imagegen
import numpy as np
import pytest
from conftest import shipped, workspace_of

from tasks import train
from tasks.core.params import Augment, Params
from tasks.model import augment
from tasks.photos import tfrecord


def shard(path: Path, name: str, count: int) -> Path:
    jpeg = imagegen.jpeg(0, (16, 16))
    tfrecord.write(
        path, [tfrecord.serialize(jpeg, 16, 16, 0, "Cat", str(i), f"{name}/{i}") for i in range(count)]
    )
    return path


def epoch_order(files: list[Path], sizes: list[int], seed: int) -> list[str]:
    """The paths of one training epoch's records, in the order training reads them (before the
    shuffle buffer, which only mixes neighbours)."""
    records = train._records(files, sizes, training=True, seed=seed).map(tfrecord.parse)
    return [ex["path"].numpy().decode() for ex in records]


def test_a_small_new_shard_is_spread_over_the_epoch(tmp_path: Path):
    files = [shard(tmp_path / "old.tfrecord", "old", 180), shard(tmp_path / "new.tfrecord", "new", 20)]
    order = epoch_order(files, [180, 20], seed=3)
    assert sorted(order) == sorted([f"old/{i}" for i in range(180)] + [f"new/{i}" for i in range(20)])
    where = np.array([i for i, p in enumerate(order) if p.startswith("new/")])
    # Interleaved file by file, the 20 new records would all come in the first 40; drawn in proportion
    # to the files' sizes, they spread over the epoch.
    assert where.max() > 100 and 60 < where.mean() < 140, where
    assert epoch_order(files, [180, 20], seed=3) == order  # the same seed, the same order


def test_a_single_shard_is_read_in_file_order(tmp_path: Path):
    files = [shard(tmp_path / "only.tfrecord", "only", 30)]
    assert epoch_order(files, [30], seed=3) == [f"only/{i}" for i in range(30)]


# --------------------------------------------------------------------------- the projective augmentation

NONE = shipped("train.augment", flip=False, rotation=0.0, zoom=0.0, translation=0.0, contrast=0.0)


def transform(a: Augment, seed: int, size: int = 4, in_h: int = 8, in_w: int = 8) -> np.ndarray:
    import tensorflow as tf

    return augment.augment_transform(tf.constant([seed, 0], tf.int64), a, size, in_h, in_w).numpy()


def resample(image: np.ndarray, t: np.ndarray, size: int) -> np.ndarray:
    import tensorflow as tf

    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.constant(image[None], tf.float32),
        transforms=tf.constant(t[None], tf.float32),
        output_shape=[size, size],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )[0].numpy()


def test_without_augmentation_the_map_is_tf_image_resize():
    # Output pixel x of 4 maps to (x + 0.5) * 8/4 - 0.5 = 2x + 0.5 of the 8-pixel photo (half-pixel
    # centres), on both axes: [a0 a1 a2; b0 b1 b2] = [2 0 0.5; 0 2 0.5].
    np.testing.assert_allclose(transform(NONE, seed=1), [2, 0, 0.5, 0, 2, 0.5, 0, 0], atol=1e-6)
    # A 12 x 6 photo (h x w) to 4 x 4: x -> 1.5x + 0.25, y -> 3y + 1.
    np.testing.assert_allclose(transform(NONE, 1, 4, 12, 6), [1.5, 0, 0.25, 0, 3, 1, 0, 0], atol=1e-6)
    import tensorflow as tf

    image = np.random.default_rng(0).uniform(0, 255, (8, 8, 3))
    expected = tf.image.resize(image, (4, 4)).numpy()
    np.testing.assert_allclose(resample(image, transform(NONE, 1), 4), expected, atol=1e-3)


def test_a_flip_mirrors_the_photo_for_about_half_of_the_seeds():
    import tensorflow as tf

    flip = NONE.model_copy(update={"flip": True})
    image = np.random.default_rng(1).uniform(0, 255, (8, 8, 3))
    plain = tf.image.resize(image, (4, 4)).numpy()
    flipped = 0
    for seed in range(40):
        t = transform(flip, seed)
        if t[0] < 0:  # x -> -2x + 6.5: output 0 samples the photo at 8 - 1 - 0.5, its mirror image
            np.testing.assert_allclose(t, [-2, 0, 6.5, 0, 2, 0.5, 0, 0], atol=1e-6)
            np.testing.assert_allclose(resample(image, t, 4), plain[:, ::-1], atol=1e-3)
            flipped += 1
        else:
            np.testing.assert_allclose(t, [2, 0, 0.5, 0, 2, 0.5, 0, 0], atol=1e-6)
    assert 10 < flipped < 30


def test_rotation_and_zoom_turn_and_scale_about_the_centre():
    a = NONE.model_copy(update={"rotation": 0.1, "zoom": 0.2})
    for seed in range(10):
        t = transform(a, seed, size=4, in_h=4, in_w=4)  # no resize: the augmentation alone
        m = np.array([[t[0], t[1]], [t[3], t[4]]])
        scale = np.sqrt(abs(np.linalg.det(m)))
        assert 0.8 - 1e-6 <= scale <= 1.2 + 1e-6
        np.testing.assert_allclose(m / scale @ (m / scale).T, np.eye(2), atol=1e-5)  # a pure rotation
        angle = np.arctan2(t[3], t[0])
        assert abs(angle) <= 0.1 * 2 * np.pi + 1e-6
        centre = m @ [1.5, 1.5] + [t[2], t[5]]
        np.testing.assert_allclose(centre, [1.5, 1.5], atol=1e-5)  # the centre stays (no translation)
    assert len({tuple(transform(a, s)) for s in range(10)}) == 10  # the seed decides the draw
    np.testing.assert_array_equal(transform(a, 3), transform(a, 3))  # stateless: same seed, same map


def test_translation_shifts_by_at_most_its_fraction_of_the_side():
    a = NONE.model_copy(update={"translation": 0.25})
    shifts = np.array([transform(a, s, size=8, in_h=8, in_w=8)[[2, 5]] for s in range(20)])
    assert np.abs(shifts).max() <= 0.25 * 8 + 1e-6 and np.abs(shifts).max() > 0.5


# --------------------------------------------------------------------------- the train flow

TRAIN_OUTPUTS = [
    "models/model.keras",
    "models/model.json",
    "reports/train.json",
    "reports/train/metrics.json",
    "reports/train/plots/metrics/train/loss.tsv",
    "reports/tensorboard",
]
EVAL_OUTPUTS = [
    "reports/metrics.json",
    "reports/gate.json",
    "reports/scores.json",
    "reports/evaluation.html",
    "reports/misclassified.png",
    "reports/plots/confusion.csv",
    "reports/plots/roc.csv",
    "reports/plots/precision_recall.csv",
    "reports/plots/calibration.csv",
    "models/champion/champion.json",
]


def test_every_output_is_written(trained: Params):
    for rel in TRAIN_OUTPUTS + EVAL_OUTPUTS:
        assert (workspace_of(trained) / rel).exists(), rel
    card = json.loads((workspace_of(trained) / "models/model.json").read_text())
    assert card["class_names"] == ["Cat", "Dog"] and card["image_size"] == 32
    # What `pawflow predict` runs the model with, from the card alone: the params it was trained under.
    assert (card["formats"], card["max_pixels"]) == (list(trained.clean.formats), trained.clean.max_pixels)
    assert card["tensorflow"] == trained.tensorflow.model_dump()
    report = json.loads((workspace_of(trained) / "reports/train.json").read_text())
    assert report["epochs_run"] == 1 and report["best_epoch"] == 1
    assert report["device"].startswith("cpu") and report["tensorflow"]["onednn_max_isa"] == "AVX2"
    # This run's figures are in the run history, not in the tracked report.
    assert not {"train_images_per_s", "peak_rss_mb", "wall_time_s"} & set(report)
    runs = [json.loads(line) for line in trained.pipeline.history.read_text().splitlines()]
    figures = [r for r in runs if r.get("stage") == "train"][-1]
    assert figures["train_images_per_s"] > 0 and 0 < figures["peak_rss_mb"] < 4096


@pytest.mark.usefixtures("prefect_server")
def test_cached_training_rewrites_every_output(trained: Params):
    """A Prefect cache hit must not stand in for files that are gone (DVC deletes outputs first)."""
    before = (workspace_of(trained) / "models/model.keras").read_bytes()
    for rel in TRAIN_OUTPUTS:
        p = workspace_of(trained) / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    from flows.train import train_flow

    state = train_flow(params=trained, return_state=True)
    assert state.is_completed()
    for rel in TRAIN_OUTPUTS:
        assert (workspace_of(trained) / rel).exists(), rel
    assert (workspace_of(trained) / "models/model.keras").read_bytes() == before


def test_the_epoch_lines_eta_follows_the_last_epochs_pace():
    # A slow first epoch (start-up, tracing) does not inflate the estimate of the epochs left.
    line = train.epoch_line(0, 6, {"accuracy": 0.5, "loss": 0.7}, 100.0, elapsed=96.0, epoch_s=96.0)
    assert line == "epoch 1/6: accuracy 0.5000 loss 0.7000 | 100 img/s | elapsed 96s, ETA 480s"
    line = train.epoch_line(1, 6, {"accuracy": 0.6}, None, elapsed=101.0, epoch_s=5.0)
    assert line.endswith("| - img/s | elapsed 101s, ETA 20s")


@pytest.mark.slow  # over 10 s: outside the fast tier (make test-fast <= 3 min)
def test_extra_callbacks_see_every_epoch_and_leave_the_model_unchanged(trained: Params, tmp_path: Path):
    import keras

    from tasks.photos.datasetinfo import DatasetInfo

    processed = trained.paths.processed
    info = DatasetInfo.read(processed)
    cfg = trained.train.model_copy(update={"epochs": 2})
    seen: list[int] = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seen.append(epoch)

    watched = train.train(processed, info, cfg, tmp_path / "a", progress=False, callbacks=[Count()])
    plain = train.train(processed, info, cfg, tmp_path / "b", progress=False)
    assert seen == [0, 1]
    # Watching a run does not change what it learns (weights compared: a second model built in the same
    # process gets other automatic layer names, so the files differ).
    nets = []
    for name, result in (("watched", watched), ("plain", plain)):
        (tmp_path / f"{name}.keras").write_bytes(result.model)
        nets.append(keras.saving.load_model(tmp_path / f"{name}.keras", compile=False).get_weights())
    assert len(nets[0]) == len(nets[1]) and all(np.array_equal(a, b) for a, b in zip(*nets, strict=True))


def test_keras_draws_ignore_other_threads_drawing_from_pythons_random():
    """Prefect's background threads draw from Python's global random generator at moments that depend on
    load; the weights a seed gives must not depend on them."""
    import random
    import threading

    import keras

    from tasks.model.model import make_model

    def build(seed: int) -> list[np.ndarray]:
        keras.utils.set_random_seed(seed)
        with train.keras_draws_privately(seed):
            return make_model((32, 32, 3), 2, width=8, blocks=(1, 1)).get_weights()

    quiet = build(7)
    stop = threading.Event()

    def draw() -> None:
        while not stop.is_set():
            random.random()

    busy = threading.Thread(target=draw)
    busy.start()
    try:
        noisy = build(7)
    finally:
        stop.set()
        busy.join()
    assert len(quiet) == len(noisy) and all(np.array_equal(a, b) for a, b in zip(quiet, noisy, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(quiet, build(8), strict=True))  # the seed matters


# The Keras whose private seed hook tasks.train.keras_draws_privately was written against
# (requirements.lock's): Keras 3.15 has no public way to give it a random generator of its own.
KERAS_CHECKED = "3.15.1"


def test_keras_draws_its_made_up_seeds_where_keras_draws_privately_sends_them():
    """A Keras upgrade that renames keras.src.random.seed_generator.python_random, or makes up seeds
    from another generator, fails here by name, not as model bytes that depend on other threads."""
    import random

    import keras

    upgrade = f"Keras {keras.__version__} (tasks/train.py was checked against Keras {KERAS_CHECKED})"
    before = random.getstate()
    try:
        with train.keras_draws_privately(7):
            keras.layers.Dense(3).build((None, 2))  # an initializer without a seed
            keras.layers.Dropout(0.5)  # a seed generator without a seed
    except (ImportError, AttributeError) as err:
        pytest.fail(f"{upgrade}: keras.src.random.seed_generator.python_random is gone: {err}")
    assert random.getstate() == before, (
        f"{upgrade} makes up the seeds of unseeded initializers and dropout from Python's global random "
        "generator, not from the name keras_draws_privately replaces: the model's bytes depend on other "
        "threads' draws again. Find where it draws now (keras.src.random.seed_generator.make_default_seed), "
        "or use its public API if it has one."
    )


def test_a_shard_damaged_in_place_is_refused_before_training(trained: Params, tmp_path: Path):
    """What `dvc checkout` of a damaged cache object leaves (rc 0, `dvc status` clean): train names the
    file and what to run, and writes nothing."""
    from conftest import copy_of_trained

    from flows.train import train_flow
    from tasks.photos.datasetinfo import DatasetInfo

    params = copy_of_trained(trained, tmp_path)
    shard = DatasetInfo.read(params.paths.processed).split_paths(params.paths.processed, "val")[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    shard.write_bytes(bytes(data))
    model = (params.paths.models / "model.keras").read_bytes()
    state = train_flow(params=params, return_state=True)
    assert state.is_failed() and f"{shard}: its sha256 is not the one shard recorded" in state.message
    err = state.result(raise_on_failure=False)
    assert "dvc checkout" in err.fix and "dvc repro --force shard" in err.fix
    assert (params.paths.models / "model.keras").read_bytes() == model


def _no_room(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _tensorboard_no_room(*args, **kwargs):
    import tensorflow as tf

    # What TensorFlow's event writer raises on a full disk (measured on a 12 kB tmpfs).
    raise tf.errors.ResourceExhaustedError(
        None, None, "/x/events.out.tfevents.1.v2; No space left on device\n\tFailed to flush 11 events"
    )


@pytest.mark.parametrize(
    ("writer", "target", "fails"),
    [
        ("dvclive", "dvclive.live.Live.make_summary", _no_room),
        ("tensorboard", "keras.callbacks.TensorBoard._push_writer", _tensorboard_no_room),  # its events file
    ],
)
def test_a_full_disk_under_training_is_one_message_naming_the_scratch_folder(
    trained: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str, target: str, fails
):
    """DVCLive's metrics, Keras's checkpoints and TensorBoard's events are written as training goes;
    whichever finds the disk full (an OSError, or TensorFlow's ResourceExhaustedError, worded), training
    ends with NoSpace naming the folder and its file system."""
    from tasks.core.fileio import NoSpace
    from tasks.photos.datasetinfo import DatasetInfo

    monkeypatch.setattr(target, fails)
    processed = trained.paths.processed
    workdir = tmp_path / "scratch"
    with pytest.raises(NoSpace) as caught:
        train.train(processed, DatasetInfo.read(processed), trained.train, workdir, progress=False)
    assert f"no space left while writing {workdir} (No space left on device)" in str(caught.value)
    assert "Free space on the file system at" in caught.value.fix
