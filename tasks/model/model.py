"""Model builders: pure functions of (input shape, number of classes, hyper-parameters).

Every model takes RGB pixels in [0, 255] (rescaling is inside the model, so prediction needs nothing
else) and ends in sigmoid for two classes or softmax for more, kept in float32 under mixed precision.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import keras
from keras import layers

from tasks.core.errors import PawflowError

MODELS = ("pawnet", "seed_cnn", "keras_xception")
# keras_xception's widths, as in the keras-io example: entry convolution, separable blocks, exit
XCEPTION_ENTRY = 128
XCEPTION_BLOCKS = (256, 512, 728)
XCEPTION_EXIT = 1024
# The zip entries of a saved model get this timestamp (zip's earliest; Keras already uses it for two of
# the three entries), so a model file's bytes depend on its weights and config only.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
BACKBONES = ("mobilenet_v2",)


def output_layer(num_classes: int) -> layers.Layer:
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name="prediction")
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="prediction")


def seed_cnn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The seed article's final network: two conv layers (64, 128), max-pooling, a 512-unit dense layer."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(128, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu")(x)
    return keras.Model(inputs, output_layer(num_classes)(x), name="seed_cnn")


def keras_xception(input_shape: tuple[int, int, int], num_classes: int, dropout: float = 0.25) -> keras.Model:
    """The small Xception of the keras-io example "Image classification from scratch" (fchollet,
    examples/vision/image_classification_from_scratch.py, Keras 3 version): a strided 3x3 entry
    convolution (128), three blocks of two ReLU + 3x3 SeparableConv2D + batch-norm followed by a
    3x3/2 max-pool, each added to a strided 1x1 projection of its input (256, 512, 728), a 1024
    SeparableConv2D, global average pooling, dropout (0.25 there) and the classifier.

    As in the example the convolutions keep their biases; the only change is the head: our sigmoid /
    softmax output layer (float32) where the example returns logits, the same function of the weights.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(XCEPTION_ENTRY, 3, strides=2, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    previous = x  # the residual's source
    for size in XCEPTION_BLOCKS:
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(size, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(size, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(size, 1, strides=2, padding="same")(previous)
        x = layers.add([x, residual])
        previous = x
    x = layers.SeparableConv2D(XCEPTION_EXIT, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, output_layer(num_classes)(x), name="keras_xception")


def _conv(filters: int, stride: int = 1, separable: bool = False) -> layers.Layer:
    if separable:
        return layers.SeparableConv2D(filters, 3, strides=stride, padding="same", use_bias=False)
    return layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)


def pawnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    width: int = 32,
    blocks: tuple[int, ...] = (1, 1, 1, 1),
    separable: bool = False,
    dropout: float = 0.3,
) -> keras.Model:
    """A small residual CNN for CPUs: strided stem, residual stages that halve the resolution and
    double the width, batch-norm, global average pooling, dropout."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    for stage, repeats in enumerate(blocks):
        filters = width * 2**stage
        for r in range(repeats):
            stride = 2 if r == 0 else 1
            shortcut = x
            y = _conv(filters, stride, separable)(x)
            y = layers.BatchNormalization()(y)
            y = layers.Activation("relu")(y)
            y = _conv(filters, 1, separable)(y)
            y = layers.BatchNormalization()(y)
            if stride != 1 or shortcut.shape[-1] != filters:
                shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
                shortcut = layers.BatchNormalization()(shortcut)
            x = layers.Activation("relu")(layers.add([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, output_layer(num_classes)(x), name="pawnet")


def with_backbone(
    input_shape: tuple[int, int, int],
    num_classes: int,
    backbone: str,
    weights: str | None,
    dropout: float = 0.3,
) -> keras.Model:
    """A pretrained Keras application as feature extractor (frozen) with a new classification head.

    weights: "imagenet" (Keras downloads them; needs the internet), a local weights file, or None.
    """
    if backbone != "mobilenet_v2":
        raise PawflowError(f"train.backbone {backbone!r} is not supported.", f"Use one of {BACKBONES}.")
    local = weights not in (None, "imagenet")
    if local and not Path(str(weights)).is_file():
        raise PawflowError(
            f"train.backbone_weights: {weights} does not exist.",
            "Point it at a MobileNetV2 no-top weights file (.h5), or set it to imagenet.",
        )
    try:
        base = keras.applications.MobileNetV2(
            input_shape=input_shape, include_top=False, weights=None if local else weights, pooling="avg"
        )
    except Exception as err:  # download failures surface as many exception types
        raise PawflowError(
            f"the ImageNet weights for {backbone} could not be downloaded ({type(err).__name__}: {err}).",
            "Download mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5 on a machine with "
            "internet access and set train.backbone_weights to its path (or set train.backbone: null).",
        ) from None
    if local:
        base.load_weights(str(weights))
    base.trainable = False
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)  # MobileNetV2 expects [-1, 1]
    x = base(x, training=False)
    if dropout:
        x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, output_layer(num_classes)(x), name=f"{backbone}_transfer")


def make_model(
    input_shape: tuple[int, int, int],
    num_classes: int,
    model: str = "pawnet",
    backbone: str | None = None,
    backbone_weights: str | None = "imagenet",
    width: int = 32,
    blocks: tuple[int, ...] = (1, 1, 1, 1),
    separable: bool = False,
    dropout: float = 0.3,
) -> keras.Model:
    """The model named by train.model / train.backbone."""
    if backbone:
        return with_backbone(input_shape, num_classes, backbone, backbone_weights, dropout)
    if model == "seed_cnn":
        return seed_cnn(input_shape, num_classes)
    if model == "pawnet":
        return pawnet(input_shape, num_classes, width, blocks, separable, dropout)
    if model == "keras_xception":  # fixed widths (the example's); width, blocks, separable unused
        return keras_xception(input_shape, num_classes, dropout)
    raise PawflowError(f"train.model {model!r} is not known.", f"Use one of {MODELS}.")


def _renumber_shared_objects(config: Any) -> Any:
    """Keras names objects shared between layers by their memory address (`shared_object_id`), which
    differs every run; number them 1, 2, ... in order of first appearance instead (the links stay)."""
    ids: dict[int, int] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: ids.setdefault(v, len(ids) + 1) if k == "shared_object_id" else walk(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(config)


def save_model(model: keras.Model, dest: Path) -> None:
    """model.save, with fixed archive metadata: the same weights and config give the same bytes.

    Keras writes `date_saved` into metadata.json and stamps the weights entry with the time of the
    save; the rest of the archive (config, HDF5 weights) is already a function of the model.
    """
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        raw = Path(tmp) / "model.keras"
        model.save(raw)
        with zipfile.ZipFile(raw) as zin, zipfile.ZipFile(dest, "w") as zout:
            for info in zin.infolist():
                data = zin.read(info.filename)
                if info.filename == "metadata.json":
                    meta = json.loads(data)
                    meta.pop("date_saved", None)
                    data = json.dumps(meta, sort_keys=True).encode()
                elif info.filename == "config.json":
                    data = json.dumps(_renumber_shared_objects(json.loads(data))).encode()
                entry = zipfile.ZipInfo(info.filename, date_time=ZIP_EPOCH)
                entry.compress_type = info.compress_type
                entry.external_attr = info.external_attr
                zout.writestr(entry, data)
