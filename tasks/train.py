"""Train: a Keras model from the TFRecord shards through tf.data, on whatever devices there are."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tasks.core.fileio import atomic_dir, no_space_is_a_clear_error, write_bytes
from tasks.core.params import Augment, Clean, TensorFlow, Train
from tasks.model.augment import augment_image
from tasks.model.model import make_model, save_model
from tasks.photos import tfrecord
from tasks.photos.datasetinfo import DatasetInfo
from tasks.reports.reports import Trained
from tasks.scaleout import distributed
from tasks.scaleout.cluster import Role, role

log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE
# The cosine schedule ends at 1% of the peak learning rate rather than 0 (measured: best val loss
# comes in the last epochs, so the tail still learns).
COSINE_FLOOR = 0.01
# make_dataset draws from seed, seed + 1 and seed + 2; each worker of a cluster starts this far apart.
SEEDS_PER_DATASET = 3


# --------------------------------------------------------------------------- input pipeline


def split_files(processed: Path, info: DatasetInfo, split: str) -> list[Path]:
    return info.split_paths(processed, split)


def split_sizes(info: DatasetInfo, split: str) -> list[int]:
    """Records per shard file of a split, in split_files' order."""
    return [s.examples for s in info.splits[split].shards]


def _records(files: list[Path], sizes: list[int] | None, training: bool, seed: int) -> tf.data.Dataset:
    """Every record of the files. Training draws each next record from a file with probability
    proportional to what the file holds, so a grown collection's small new shards (one per arrival) are
    spread over the whole epoch rather than read in its first steps; otherwise files are interleaved."""
    if training and sizes and len(files) > 1:
        total = sum(sizes)
        return tf.data.Dataset.sample_from_datasets(
            [tf.data.TFRecordDataset(str(f)) for f in files],
            weights=[n / total for n in sizes],
            seed=seed,
            stop_on_empty_dataset=False,
            rerandomize_each_iteration=True,
        )
    ds = tf.data.Dataset.from_tensor_slices([str(f) for f in files])
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(4, len(files)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )


def _target(label: tf.Tensor, num_classes: int) -> tf.Tensor:
    return tf.cast(label, tf.float32)[None] if num_classes == 2 else tf.one_hot(label, num_classes)


def _decode(example: dict[str, tf.Tensor], image_size: int, num_classes: int) -> tuple[tf.Tensor, tf.Tensor]:
    image = tf.io.decode_jpeg(example["image/encoded"], channels=3)
    image = tf.image.resize(image, (image_size, image_size))  # float32 in [0, 255]
    return image, _target(example["label"], num_classes)


def _decode_augment(
    example: dict[str, tf.Tensor], seed: tf.Tensor, image_size: int, num_classes: int, a: Augment
) -> tuple[tf.Tensor, tf.Tensor]:
    image = augment_image(tf.io.decode_jpeg(example["image/encoded"], channels=3), seed, image_size, a)
    return image, _target(example["label"], num_classes)


@dataclass(frozen=True)
class Shuffled:
    """How the train split is read: records drawn in a seeded random order (from seed, seed + 1 and
    seed + 2), and augmented when `augment` turns anything on. The val and test splits take None."""

    seed: int
    shuffle_buffer: int
    augment: Augment | None = None
    sizes: list[int] | None = None  # records per file (split_sizes), to draw from each in proportion


def make_dataset(
    files: list[Path],
    *,
    num_classes: int,
    image_size: int,
    batch_size: int,
    shuffled: Shuffled | None = None,
    with_meta: bool = False,
    examples: int | None = None,
    part: tuple[int, int] | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Shards -> records (_records) -> (part: every n-th record from the i-th) -> (shuffled: shuffle)
    -> parallel parse, decode, resize (shuffled with augment: augmented in the same pass; with_meta:
    each photo's path and JPEG too) -> (repeat: endless) -> batch -> prefetch. Nothing is held in
    memory beyond the buffer."""
    training = shuffled is not None
    seed = shuffled.seed if shuffled else 0
    sizes = shuffled.sizes if shuffled else None
    augment = shuffled.augment if shuffled else None
    ds = _records(files, sizes, training, seed)
    if part is not None:  # one worker's share, by record: a small split may be a single shard file
        ds = ds.shard(*part)
    if shuffled is not None:
        ds = ds.shuffle(shuffled.shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    ds = ds.map(tfrecord.parse, num_parallel_calls=AUTOTUNE, deterministic=True)
    if augment is not None and any(augment.model_dump().values()):
        # Each photo gets its own stateless seed from a seeded stream that differs every epoch.
        seeds = tf.data.Dataset.random(seed=seed + 2, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda ex, s: _decode_augment(ex, s, image_size, num_classes, augment),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    elif with_meta:
        ds = ds.map(
            lambda ex: (*_decode(ex, image_size, num_classes), ex["path"], ex["image/encoded"]),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    else:
        ds = ds.map(
            lambda ex: _decode(ex, image_size, num_classes), num_parallel_calls=AUTOTUNE, deterministic=True
        )
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size)
    if examples is not None:  # a known length lets Keras show progress and skip its "ran out of data" probe
        ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(examples / batch_size)))
    return ds.prefetch(AUTOTUNE)


# --------------------------------------------------------------------------- devices


@dataclass
class Devices:
    strategy: Any
    kind: str  # "cpu", "gpu", "multi-gpu", "multi-worker"
    replicas: int
    description: str
    gpus: int
    role: Role  # this process's place among the TF_CONFIG workers (0 of 1 alone)


def choose_strategy(tf_config: str | None) -> Devices:
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers, MirroredStrategy on several
    GPUs, the default strategy otherwise (one GPU or the CPU)."""
    gpus = tf.config.list_physical_devices("GPU")
    me = role(tf_config)
    if me.workers > 1:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        kind = "multi-worker"
    elif len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        kind = "multi-gpu"
    else:
        strategy = tf.distribute.get_strategy()
        kind = "gpu" if gpus else "cpu"
    names = ", ".join(g.name for g in gpus) or "CPU"
    desc = f"{kind}: {strategy.num_replicas_in_sync} replica(s) on {names}"
    if me.workers > 1:
        desc += f" across {me.workers} workers"
    return Devices(strategy, kind, strategy.num_replicas_in_sync, desc, len(gpus), me)


def precision_policy(setting: str, gpus: int) -> str:
    """mixed_float16 on GPUs (auto) or when forced; float32 otherwise (it is 2-5x slower on CPUs)."""
    if setting == "on" or (setting == "auto" and gpus):
        return "mixed_float16"
    return "float32"


# --------------------------------------------------------------------------- training


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_and_compile(cfg: Train, num_classes: int, steps_per_epoch: int) -> keras.Model:
    """A new model, compiled with the from-scratch schedule: warmup, then cosine decay."""
    model = make_model(
        (cfg.image_size, cfg.image_size, 3),
        num_classes,
        model=cfg.model,
        backbone=cfg.backbone,
        backbone_weights=cfg.backbone_weights,
        width=cfg.width,
        blocks=cfg.blocks,
        separable=cfg.separable,
        dropout=cfg.dropout,
    )
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.learning_rate / 10 if warmup else cfg.learning_rate,
        decay_steps=total - warmup,
        warmup_target=cfg.learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=COSINE_FLOOR,
    )
    return compile_model(cfg, num_classes, schedule, model)


def load_and_compile(cfg: Train, num_classes: int, steps_per_epoch: int, start: Path) -> keras.Model:
    """The starting model of a warm start, compiled with the fine-tuning schedule (train.finetune): no
    warmup, the weights are already trained; cosine decay from its learning rate, or constant."""
    model = keras.models.load_model(start, compile=False)
    f = cfg.finetune
    schedule: Any = f.learning_rate
    if f.schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=f.learning_rate,
            decay_steps=max(1, f.epochs * steps_per_epoch),
            alpha=COSINE_FLOOR,
        )
    return compile_model(cfg, num_classes, schedule, model)


def compile_model(cfg: Train, num_classes: int, schedule: Any, model: keras.Model) -> keras.Model:
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing)
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy")]
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=cfg.jit_compile)
    return model


class _Throughput(keras.callbacks.Callback):
    """Training images per second, measured over the training batches only."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self.images = 0
        self._t = 0.0
        self.batch_size = 0

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.seconds += time.perf_counter() - self._t
        self.images += self.batch_size

    def per_second(self) -> float | None:
        return round(self.images / self.seconds, 1) if self.seconds else None


def epoch_line(
    epoch: int, epochs: int, logs: dict, images_per_s: float | None, elapsed: float, epoch_s: float
) -> str:
    """One line per epoch: its metrics, the throughput so far, elapsed time and an estimate of the rest
    (the epochs left at this epoch's pace: the first epoch's start-up and tracing do not weigh on it)."""
    metrics = " ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items()) if isinstance(v, int | float))
    eta = epoch_s * (epochs - epoch - 1)
    speed = f"{images_per_s:.0f} img/s" if images_per_s else "- img/s"
    return f"epoch {epoch + 1}/{epochs}: {metrics} | {speed} | elapsed {elapsed:.0f}s, ETA {eta:.0f}s"


class EpochLog(keras.callbacks.Callback):
    """Calls `say(epochs done, epoch_line())` after each epoch (in a flow: the Prefect run logger and a
    progress artifact). Keras's own epoch lines go to sys.stdout, which Prefect's logs never see."""

    def __init__(self, say: Callable[[int, str], None], epochs: int, speed: _Throughput) -> None:
        super().__init__()
        self.say, self.epochs, self.speed = say, epochs, speed
        self.started = self.epoch_started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = time.monotonic()
        elapsed, epoch_s = now - self.started, now - self.epoch_started
        speed = self.speed.per_second()
        self.say(epoch + 1, epoch_line(epoch, self.epochs, logs or {}, speed, elapsed, epoch_s))


@dataclass(frozen=True)
class RunFigures:
    """How this particular run went: it goes to the run history, never into a tracked file."""

    wall_time_s: float
    train_images_per_s: float | None
    peak_rss_mb: float


@dataclass(frozen=True)
class TrainResult:
    """What train produces, as values rather than files in its scratch folder, so that Prefect can
    persist it and a cache hit rewrites every output of train without training (write_outputs)."""

    model: bytes  # models/model.keras
    dvclive: dict[str, bytes]  # reports/train/: DVCLive's metrics and plots, by relative path
    tensorboard: dict[str, bytes]  # reports/tensorboard/: the event files, by relative path
    report: Trained  # reports/train.json before the flow adds how the run started: what the inputs determine
    run: RunFigures


def collect_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    """Replace `folder` with exactly `files` (relative path -> bytes), atomically."""
    with atomic_dir(folder) as tmp:
        for rel, data in files.items():
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)


def write_outputs(result: TrainResult, model_path: Path, dvclive_dir: Path, tensorboard_dir: Path) -> None:
    """The model file and the training logs of `result` at their places (models/, reports/)."""
    write_bytes(model_path, result.model)
    write_files(dvclive_dir, result.dvclive)
    write_files(tensorboard_dir, result.tensorboard)


@contextlib.contextmanager
def global_precision(policy: str) -> Iterator[None]:
    """Keras's global dtype policy set to `policy` for the block, and back to float32 however it ends
    (a model built later in the same process, e.g. by evaluate or a test, must not inherit it)."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


@contextlib.contextmanager
def keras_draws_privately(seed: int) -> Iterator[None]:
    """In the block, Keras draws the seeds it makes up for itself from a generator of its own, seeded with
    `seed`, rather than from Python's global `random` generator.

    Keras seeds every initializer and seed generator built without a seed (each layer's weights, each
    dropout, a loaded model's layers) with `random.randint` on the global generator
    (keras.src.random.seed_generator.make_default_seed). Other threads draw from that generator at moments
    that depend on time: the websockets library puts `random.getrandbits(32)` in every ping, and Prefect's
    events client pings when it connects and at each checkpoint of the events it sends (its thread
    GlobalEventLoopThread), websockets' keepalive every 20 s. One such draw between `set_random_seed` and
    the model's build gave another model: why an import that took seconds after the seed changed the
    model's bytes under the train flow and not when train was called directly, and why a byte-equality
    test flaked under load. Keras has no public way to give it a generator (3.15); the private name this
    swaps is pinned by tests/test_train.py."""
    from keras.src.random import seed_generator

    shared = seed_generator.python_random
    seed_generator.python_random = random.Random(seed)
    try:
        yield
    finally:
        seed_generator.python_random = shared


def train(
    processed: Path,
    info: DatasetInfo,
    cfg: Train,
    workdir: Path,
    tf_config: str | None = None,
    progress: bool = True,
    say: Callable[[int, str], None] = lambda done, line: print(line, flush=True),
    start: Path | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Fit a model on the train split with early stopping on the val split (never the test split).

    start: a warm start's starting model (models/base/model.keras): fine-tuned for train.finetune.epochs
    instead of a new model trained for train.epochs. callbacks: more Keras callbacks, after pawflow's
    (the benchmarks measure test accuracy per epoch with one)."""
    keras.utils.set_random_seed(cfg.seed)
    devices = choose_strategy(tf_config)
    policy = precision_policy(cfg.mixed_precision, devices.gpus)
    # The scratch folder takes DVCLive's metrics, TensorBoard's events and Keras's checkpoints as training
    # goes: a full disk there (an OSError, or TensorFlow's ResourceExhaustedError) is one message naming it.
    with (
        global_precision(policy),
        keras_draws_privately(cfg.seed),
        no_space_is_a_clear_error(workdir),
    ):
        log.info("training on %s, precision %s", devices.description, policy)
        return _train(
            processed, info, cfg, workdir, devices, policy, say if progress else None, start, callbacks
        )


def _train(
    processed: Path,
    info: DatasetInfo,
    cfg: Train,
    workdir: Path,
    devices: Devices,
    policy: str,
    say: Callable[[int, str], None] | None,
    start: Path | None,
    extra: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    from dvclive import Live

    me = devices.role
    num_classes = info.num_classes
    global_batch = cfg.batch_size * devices.replicas
    n_train = info.examples("train")
    steps = max(1, math.ceil(n_train / global_batch))
    n_val = info.examples("val")
    val_ds = make_dataset(
        split_files(processed, info, "val"),
        num_classes=num_classes,
        image_size=cfg.image_size,
        batch_size=global_batch,
        examples=n_val,
    )
    if not me.chief:  # every worker keeps its own logs; only the chief's become the outputs
        workdir = workdir.with_name(f"{workdir.name}-worker{me.index}")
    if workdir.exists():
        shutil.rmtree(workdir)
    live_dir, tb_dir = workdir / "dvclive", workdir / "tensorboard"
    epochs = cfg.finetune.epochs if start is not None else cfg.epochs
    with devices.strategy.scope():
        if start is None:
            model = build_and_compile(cfg, num_classes, steps)
        else:
            model = load_and_compile(cfg, num_classes, steps, start)
    monitor = "val_loss" if n_val > 0 else "loss"
    speed = _Throughput()
    speed.batch_size = global_batch
    started = time.monotonic()
    with Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        callbacks = [
            *_callbacks(cfg, monitor, workdir / "best.keras", tb_dir, live, speed, say, epochs),
            *extra,
        ]
        history = _fit(
            model,
            devices,
            processed,
            info,
            cfg,
            val_ds if n_val > 0 else None,
            global_batch,
            steps,
            epochs,
            callbacks,
        )
    wall = time.monotonic() - started
    model_path = workdir / "model.keras"
    save_model(model, model_path)
    return TrainResult(
        model=model_path.read_bytes(),
        dvclive=collect_files(live_dir),
        tensorboard=collect_files(tb_dir),
        report=_report(model, history, monitor, devices, policy, global_batch, info),
        run=RunFigures(
            wall_time_s=round(wall, 1),
            train_images_per_s=speed.per_second(),
            peak_rss_mb=round(peak_rss_mb(), 1),
        ),
    )


def _callbacks(
    cfg: Train,
    monitor: str,
    checkpoint: Path,
    tensorboard_dir: Path,
    live: Any,
    speed: _Throughput,
    say: Callable[[int, str], None] | None,
    epochs: int,
) -> list[keras.callbacks.Callback]:
    """Early stopping (best weights kept), the best checkpoint, TensorBoard and DVCLive logs, the
    throughput and (say) a line per epoch."""
    from dvclive.keras import DVCLiveCallback

    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=cfg.early_stopping_patience, restore_best_weights=True
        ),
        keras.callbacks.ModelCheckpoint(str(checkpoint), monitor=monitor, save_best_only=True),
        keras.callbacks.TensorBoard(
            str(tensorboard_dir), histogram_freq=0, write_graph=False, profile_batch=0
        ),
        DVCLiveCallback(live=live),
        speed,
    ]
    if say is not None:
        callbacks.append(EpochLog(say, epochs, speed))
    return callbacks


def _fit(
    model: keras.Model,
    devices: Devices,
    processed: Path,
    info: DatasetInfo,
    cfg: Train,
    val_ds: tf.data.Dataset | None,
    global_batch: int,
    steps: int,
    epochs: int,
    callbacks: list[keras.callbacks.Callback],
) -> dict[str, list[float]]:
    """model.fit on the train split (each worker of a cluster on its own share); the history."""
    train_files = split_files(processed, info, "train")
    sizes = split_sizes(info, "train")
    num_classes = info.num_classes

    def train_dataset(batch_size: int, seed: int, **kwargs: Any) -> tf.data.Dataset:
        return make_dataset(
            train_files,
            num_classes=num_classes,
            image_size=cfg.image_size,
            batch_size=batch_size,
            shuffled=Shuffled(seed, cfg.shuffle_buffer, cfg.augment, sizes),
            **kwargs,
        )

    if devices.kind == "multi-worker":

        def worker_share(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            return train_dataset(
                ctx.get_per_replica_batch_size(global_batch),
                cfg.seed + SEEDS_PER_DATASET * ctx.input_pipeline_id,
                part=(ctx.num_input_pipelines, ctx.input_pipeline_id),
                repeat=True,
            )

        return distributed.fit(
            model, devices.strategy, worker_share, val_ds, global_batch, steps, epochs, callbacks
        )
    train_ds = train_dataset(global_batch, cfg.seed, examples=info.examples("train"))
    return model.fit(
        train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, shuffle=False, verbose=0
    ).history


def _report(
    model: keras.Model,
    history: dict[str, list[float]],
    monitor: str,
    devices: Devices,
    policy: str,
    global_batch: int,
    info: DatasetInfo,
) -> Trained:
    """reports/train.json's part that training determines: the model, the epochs, the best epoch's
    metrics and the whole history, and where it ran."""
    losses = history[monitor]
    best = int(np.argmin(losses))
    return {
        "model": model.name,
        "parameters": int(model.count_params()),
        "epochs_run": len(losses),
        "best_epoch": best + 1,
        "best": {k: float(v[best]) for k, v in history.items()},
        "history": {k: [float(x) for x in v] for k, v in history.items()},
        "device": devices.description,
        "precision": policy,
        "replicas": devices.replicas,
        "worker": devices.role.index,
        "workers": devices.role.workers,
        "global_batch_size": global_batch,
        "examples": {s: info.examples(s) for s in ("train", "val")},
    }


def model_card(info: DatasetInfo, cfg: Train, clean: Clean, tf_settings: TensorFlow) -> dict:
    """models/model.json: what a prediction needs besides the weights, so that `pawflow predict` runs
    the model from it alone (no params.yaml): its classes and input size; how its photos were prepared
    (the shards' max_side and jpeg_quality, the formats and pixel limit clean decoded them under); the
    TensorFlow settings that computed it (params.yaml tensorflow:, as evaluate runs it too)."""
    return {
        "class_names": info.class_names,
        "image_size": cfg.image_size,
        "max_side": info.image.max_side,
        "jpeg_quality": info.image.jpeg_quality,
        "formats": list(clean.formats),
        "max_pixels": clean.max_pixels,
        "tensorflow": tf_settings.model_dump(mode="json"),
        "model": cfg.backbone or cfg.model,
    }
