"""`pawflow predict` and evaluate give the same probabilities for the same photo, with and without
test-time augmentation (one shared path, tasks.inference); the champion's card carries the setting."""

from __future__ import annotations

import io
import json
from pathlib import Path

import imagegen
import numpy as np
import pytest
from PIL import Image

from tasks import images, predict, tfrecord

CARD = {"class_names": ["Cat", "Dog"], "image_size": 32, "max_side": 224, "jpeg_quality": 90}
PHOTOS = 6


@pytest.fixture(scope="module")
def model_and_shard(tmp_path_factory: pytest.TempPathFactory):
    """A tiny saved model and a one-shard test split made of photos also kept as files."""
    import keras

    root = tmp_path_factory.mktemp("predict")
    # A linear probe with large random weights: every pixel counts, so a mirror changes the output a lot
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1.0 / 255)(inputs))
    dense = keras.layers.Dense(1, activation="sigmoid", name="prediction")
    model = keras.Model(inputs, dense(x))
    rng = np.random.default_rng(3)
    dense.set_weights([rng.normal(0, 0.05, (32 * 32 * 3, 1)).astype("float32"), np.zeros(1, "float32")])
    (root / "models").mkdir()
    model.save(root / "models" / "model.keras")
    (root / "models" / "model.json").write_text(json.dumps(CARD))
    settings = predict.settings_for(CARD, max_pixels=10**8)
    photos, records = root / "photos", []
    photos.mkdir()
    for i in range(PHOTOS):
        label = i % 2
        data = imagegen.jpeg(40 + i, (260 + 10 * i, 190))  # wider than max_side: the shard resizes it
        f = photos / f"{i}.jpg"
        f.write_bytes(data)
        check, thumb = images.check_bytes(data, settings)
        w, h = Image.open(io.BytesIO(thumb)).size
        records.append(
            tfrecord.serialize(thumb, h, w, label, CARD["class_names"][label], check.sha256, f.name)
        )
    processed = root / "processed"
    processed.mkdir()
    tfrecord.write(processed / "test-0.tfrecord", records)
    info = {
        "class_names": CARD["class_names"],
        "num_classes": 2,
        "splits": {"test": {"examples": PHOTOS, "shards": [{"file": "test-0.tfrecord"}]}},
    }
    (processed / "dataset_info.json").write_text(json.dumps(info))
    return root, sorted(photos.iterdir(), key=lambda p: int(p.stem))


def evaluate_probs(root: Path, tta: bool) -> np.ndarray:
    """Probabilities through evaluate's own task body (tf.data over the shard), batch of 4."""
    from flows.evaluate import predict_test_split
    from tasks.params import TensorFlow

    pred, _ = predict_test_split.fn(
        "sha", "sha", 32, 4, tta, TensorFlow(), root / "models" / "model.keras", root / "processed"
    )
    assert pred.paths == [f"{i}.jpg" for i in range(PHOTOS)]
    return pred.probs


def predict_probs(root: Path, files: list[Path], tta: bool | None) -> tuple[list[str], np.ndarray]:
    p = predict.load(root / "models", max_pixels=10**8, tta=tta)
    rows = list(predict.predict(p, iter(files)))
    assert all(not r.error for r in rows)
    return [r.label for r in rows], np.array([r.confidence for r in rows])


@pytest.mark.parametrize("tta", [False, True])
def test_evaluate_and_predict_agree_for_the_same_photo(model_and_shard, tta: bool):
    root, files = model_and_shard
    probs = evaluate_probs(root, tta)
    labels, confidence = predict_probs(root, files, tta)
    assert labels == [CARD["class_names"][k] for k in probs.argmax(axis=1)]
    np.testing.assert_allclose(confidence, probs.max(axis=1), atol=1e-5)


def test_tta_changes_the_probabilities_in_both(model_and_shard):
    """The mirror is really averaged in."""
    root, files = model_and_shard
    plain, flipped = evaluate_probs(root, False), evaluate_probs(root, True)
    assert np.abs(plain - flipped).max() > 0.01
    _, conf_plain = predict_probs(root, files, False)
    _, conf_tta = predict_probs(root, files, True)
    assert np.abs(conf_plain - conf_tta).max() > 0.01


def test_tta_is_the_mean_over_the_photo_and_its_mirror(model_and_shard):
    """A photo and its exact mirror get the same TTA probabilities (which are the mean of both plain ones).

    (Through files this holds only approximately: JPEG's chroma subsampling is not mirror-symmetric.)"""
    import keras

    from tasks import inference

    root, files = model_and_shard
    model = keras.saving.load_model(root / "models" / "model.keras", safe_mode=True)
    x = inference.decode_resize([f.read_bytes() for f in files], 32)
    mirrored = x[:, :, ::-1, :]
    plain, plain_mirrored = (
        inference.class_probs(model, x, False),
        inference.class_probs(model, mirrored, False),
    )
    assert np.abs(plain - plain_mirrored).max() > 0.01
    tta = inference.class_probs(model, x, True)
    np.testing.assert_allclose(tta, inference.class_probs(model, mirrored, True), atol=1e-6)
    np.testing.assert_allclose(tta, (plain + plain_mirrored) / 2, atol=1e-6)
    np.testing.assert_allclose(tta.sum(axis=1), 1.0, atol=1e-6)


def test_tta_setting_comes_from_the_card_unless_given(model_and_shard, tmp_path: Path):
    root, _ = model_and_shard
    assert predict.load(root / "models", 10**8).tta is False  # a card without it: plain prediction
    champion = tmp_path / "champion"
    champion.mkdir()
    (champion / "model.keras").write_bytes((root / "models" / "model.keras").read_bytes())
    (champion / "model.json").write_text(json.dumps({**CARD, "tta": True}))  # as evaluate writes it
    assert predict.load(champion, 10**8).tta is True
    assert predict.load(champion, 10**8, tta=False).tta is False
