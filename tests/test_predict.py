"""`pawflow predict`: the same probabilities as evaluate for the same photo, with and without test-time
augmentation (one shared path, tasks.model.inference; the champion's card carries the setting); formats, pixel
limit and TensorFlow settings from the model's card alone (no params.yaml needed); pipes and devices
skipped unopened; empty folders and bad or old model cards refused."""

from __future__ import annotations

import io
import json
import os
import socket
from pathlib import Path

import imagegen
import numpy as np
import pytest
from conftest import shipped
from infos import dataset_info
from PIL import Image

from flows.cli import main as pawflow
from tasks import predict, train
from tasks.core.errors import PawflowError
from tasks.core.params import load_params
from tasks.photos import images, tfrecord
from tasks.photos.datasetinfo import DatasetInfo
from tasks.photos.images import CheckSettings

# The formats `pawflow predict` accepts are the shipped params.yaml's clean.formats.
FORMATS = load_params(Path(__file__).resolve().parents[1] / "params.yaml").clean.formats


def card_of(image_size: int, max_side: int, **clean: object) -> dict:
    """model.json as train writes it (train.model_card) for a model of this input size, trained on shards
    of this max_side, under the shipped params.yaml (clean: overrides of its clean: section)."""
    info = dataset_info(["Cat", "Dog"], {}, max_side=max_side)
    return train.model_card(
        info, shipped("train", image_size=image_size), shipped("clean", **clean), shipped("tensorflow")
    )


CARD = card_of(32, 224, max_pixels=10**8)
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
    settings = predict.settings_for(predict.ModelCard.model_validate(CARD), max_pixels=10**8, formats=FORMATS)
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
    dataset_info(CARD["class_names"], {"test": [("test-0.tfrecord", PHOTOS)]}).write(processed)
    return root, sorted(photos.iterdir(), key=lambda p: int(p.stem))


def evaluate_probs(root: Path, tta: bool) -> np.ndarray:
    """Probabilities through evaluate's own task body (tf.data over the shard), batch of 4."""
    from tasks import evaluate

    info = DatasetInfo.read(root / "processed")
    pred, _ = evaluate.predict_test_photos(
        root / "models" / "model.keras",
        root / "processed",
        info,
        predict.ModelCard.model_validate(CARD),
        4,
        tta,
    )
    assert pred.paths == [f"{i}.jpg" for i in range(PHOTOS)]
    return pred.probs


def predict_probs(root: Path, files: list[Path], tta: bool | None) -> tuple[list[str], np.ndarray]:
    p = predict.load(root / "models", tta=tta)
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

    from tasks.model import inference

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
    assert predict.load(root / "models").tta is False  # a card without it: plain prediction
    champion = tmp_path / "champion"
    champion.mkdir()
    (champion / "model.keras").write_bytes((root / "models" / "model.keras").read_bytes())
    (champion / "model.json").write_text(json.dumps({**CARD, "tta": True}))  # as evaluate writes it
    assert predict.load(champion).tta is True
    assert predict.load(champion, tta=False).tta is False


SETTINGS = CheckSettings(
    max_pixels=89_478_485, max_side=64, jpeg_quality=90, formats=FORMATS, **predict.PERMISSIVE
)
SMALL_CARD = card_of(16, 64)


def write_model(folder: Path, card: dict) -> Path:
    """A tiny real Keras model and its model.json, as train writes them."""
    import keras

    model = keras.Sequential(
        [keras.Input((16, 16, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1, "sigmoid")]
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "model.json").write_text(json.dumps(card))
    return folder


@pytest.mark.timeout(20)
def test_pipes_and_sockets_are_skipped_without_being_opened(tmp_path: Path):
    os.mkfifo(tmp_path / "fifo.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.jpg"))
    try:
        for name in ("fifo.jpg", "sock.jpg"):
            assert predict._prepare(tmp_path / name, SETTINGS) == (None, predict.NOT_REGULAR)
    finally:
        sock.close()
    (tmp_path / "good.jpg").write_bytes(imagegen.jpeg(1, (80, 60)))
    thumb, error = predict._prepare(tmp_path / "good.jpg", SETTINGS)
    assert thumb and error == ""


@pytest.mark.timeout(120)
def test_predict_labels_the_photos_beside_a_named_pipe(tmp_path: Path, capsys, monkeypatch):
    model = write_model(tmp_path / "model", SMALL_CARD)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(imagegen.jpeg(1, (80, 60)))
    os.mkfifo(photos / "b.jpg")  # no writer: opening it to read would block forever
    (photos / "c.jpg").write_bytes(imagegen.cut_jpeg_closed(1005))
    # EXIF that Pillow's exif_transpose cannot rewrite: labelled like its undamaged twin, as clean keeps it
    (photos / "d.jpg").write_bytes(imagegen.damaged_exif_jpeg(imagegen.DAMAGED_EXIF_SEEDS["TypeError"]))
    (photos / "e.jpg").write_bytes(imagegen.jpeg_with_metadata(7))
    monkeypatch.chdir(tmp_path)
    code = pawflow(["predict", str(photos), "--model", str(model)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1  # some files could not be labelled
    assert [Path(line.split("\t")[0]).name for line in lines] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    assert lines[0].split("\t")[1] in {"Cat", "Dog"}
    assert lines[1].endswith(f"error: {predict.NOT_REGULAR}")
    assert "error: truncated" in lines[2]
    assert lines[3].split("\t")[1:] == lines[4].split("\t")[1:]  # same label, same confidence


def test_a_format_clean_does_not_accept_is_refused_and_a_size_above_its_limit_too(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(imagegen.encode(imagegen.photo(2, (80, 80)), "PNG"))
    (tmp_path / "b.jpg").write_bytes(imagegen.jpeg(1, (80, 60)))
    jpeg_only = predict.settings_for(
        predict.ModelCard.model_validate(SMALL_CARD), max_pixels=10**8, formats=("JPEG",)
    )
    thumb, error = predict._prepare(tmp_path / "a.png", jpeg_only)
    assert thumb is None and error.startswith("unsupported_format"), error
    assert predict._prepare(tmp_path / "b.jpg", jpeg_only)[1] == ""
    assert (
        predict._prepare(
            tmp_path / "a.png",
            predict.settings_for(predict.ModelCard.model_validate(SMALL_CARD), 10**8, FORMATS),
        )[1]
        == ""
    )
    small = predict.settings_for(
        predict.ModelCard.model_validate(SMALL_CARD), max_pixels=80 * 60 - 1, formats=FORMATS
    )
    assert predict._prepare(tmp_path / "b.jpg", small)[1].startswith("decompression_bomb")


def test_an_empty_folder_is_an_error(tmp_path: Path, capsys, monkeypatch):
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    with pytest.raises(PawflowError, match="nothing to label"):
        predict.list_files([tmp_path / "empty"])
    (tmp_path / "model.keras").write_bytes(b"never loaded: the folder is found empty first")
    (tmp_path / "model.json").write_text(json.dumps(SMALL_CARD))
    monkeypatch.chdir(tmp_path)
    assert pawflow(["predict", str(tmp_path / "empty"), "--model", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "nothing to label" in captured.err and captured.out == ""


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ({"class_names": ["Cat", "Dog"], "image_size": 16}, "missing max_side, jpeg_quality"),
        ({**SMALL_CARD, "image_size": "16"}, "wrong image_size (a positive integer expected)"),
        ({**SMALL_CARD, "class_names": []}, "class_names (a non-empty list of names expected)"),
        ({**SMALL_CARD, "formats": []}, "formats (a non-empty list of image format names expected)"),
        ({**SMALL_CARD, "tensorflow": {**SMALL_CARD["tensorflow"], "threads": 0}}, "tensorflow (threads: "),
        (
            {k: v for k, v in SMALL_CARD.items() if k not in predict.RUN_KEYS},  # trained before they were
            "was written by an older pawflow: it lacks formats, max_pixels, tensorflow",
        ),
        ([1, 2], "holds a list, not an object"),
    ],
)
def test_an_incomplete_model_card_is_one_clear_error(tmp_path: Path, card, message: str, capsys, monkeypatch):
    (tmp_path / "model.keras").write_bytes(b"never loaded: the card is checked first")
    (tmp_path / "model.json").write_text(json.dumps(card))
    (tmp_path / "a.jpg").write_bytes(imagegen.jpeg(1))
    monkeypatch.chdir(tmp_path)
    assert pawflow(["predict", str(tmp_path / "a.jpg"), "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "model.json" in err
    assert "Traceback" not in err and "KeyError" not in err


def test_a_model_card_that_is_not_json_is_one_clear_error(tmp_path: Path):
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(PawflowError, match="cannot be read as JSON"):
        predict.read_card(tmp_path / "model.json")


@pytest.mark.timeout(120)
def test_outside_a_project_the_card_alone_says_how_to_predict(tmp_path: Path, capsys, monkeypatch):
    """No params.yaml: the formats, pixel limit and TensorFlow settings are the model card's."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(imagegen.jpeg(1, (80, 60)))
    (photos / "b.png").write_bytes(imagegen.encode(imagegen.photo(2, (80, 80)), "PNG"))
    monkeypatch.chdir(tmp_path)
    assert not Path("params.yaml").exists()

    def run(**clean: object) -> tuple[int, list[str], str]:
        write_model(tmp_path / "model", card_of(16, 64, **clean))
        code = pawflow(["predict", str(photos), "--model", str(tmp_path / "model")])
        out, err = capsys.readouterr()
        return code, [line.split("\t", 1)[1] for line in out.splitlines()], err

    code, (a, b), _ = run()  # the shipped clean: section: both formats
    assert code == 0 and a.split("\t")[0] in {"Cat", "Dog"} and b.split("\t")[0] in {"Cat", "Dog"}
    code, (a, b), _ = run(formats=["JPEG"])
    assert code == 1 and a.split("\t")[0] in {"Cat", "Dog"} and b.startswith("error: unsupported_format")
    code, (a, b), _ = run(max_pixels=80 * 60)
    assert code == 1 and a.split("\t")[0] in {"Cat", "Dog"} and b.startswith("error: decompression_bomb")
    # The card's TensorFlow settings are applied: this process started TensorFlow with the shipped ones.
    card = card_of(16, 64)
    write_model(tmp_path / "model", {**card, "tensorflow": {**card["tensorflow"], "threads": 3}})
    assert pawflow(["predict", str(photos), "--model", str(tmp_path / "model")]) == 2
    assert "TF_NUM_INTRAOP_THREADS=3" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_a_file_name_cannot_forge_a_line_of_output(tmp_path: Path, capsys, monkeypatch):
    """A name holding a tab and a newline used to print a second, fake result line; now each file is one
    line whose fields round-trip (tasks.core.text.tsv_value), and --csv stays valid CSV."""
    import csv

    from tasks.core.text import tsv_value

    model = write_model(tmp_path / "model", SMALL_CARD)
    photos = tmp_path / "photos"
    photos.mkdir()
    names = [
        "cat.jpg\tDog\t0.9999\nfake.jpg",
        "back\\slash\\t.jpg",
        'quote",comma.jpg',
        os.fsdecode(b"\xff.jpg"),
    ]
    for i, name in enumerate(names):
        (photos / name).write_bytes(imagegen.jpeg(i, (80, 60)))
    (photos / "not a photo\r.jpg").write_bytes(b"text")
    monkeypatch.chdir(tmp_path)
    assert pawflow(["predict", str(photos), "--model", str(model)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(names) + 1  # one line per file, nothing forged
    by_name = {Path(tsv_value(line.split("\t")[0])).name: line.split("\t")[1:] for line in lines}
    assert set(by_name) == {*names, "not a photo\r.jpg"}
    for name in names:
        label, confidence = by_name[name]
        assert label in {"Cat", "Dog"} and float(confidence) <= 1
    assert by_name["not a photo\r.jpg"] == ["error: not_an_image: " + images.REASONS["not_an_image"]]
    assert pawflow(["predict", str(photos), "--model", str(model), "--csv"]) == 1
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["path", "label", "confidence", "error"] and len(rows) == len(names) + 2
    assert {Path(r[0]).name for r in rows[1:]} == {*names[:3], "\ufffd.jpg", "not a photo\r.jpg"}


def test_a_model_that_is_not_the_one_its_card_records_is_refused_before_loading(
    tmp_path: Path, capsys, monkeypatch
):
    from tasks.core.fileio import sha256_file

    model = write_model(tmp_path / "model", SMALL_CARD)
    card = {**SMALL_CARD, "model_sha256": sha256_file(model / "model.keras")}
    (model / "model.json").write_text(json.dumps(card))
    assert predict.model_files(model)[1] == predict.ModelCard.model_validate(card)
    (model / "model.keras").write_bytes((model / "model.keras").read_bytes() + b"\0")
    (tmp_path / "a.jpg").write_bytes(imagegen.jpeg(1))
    monkeypatch.chdir(tmp_path)
    assert pawflow(["predict", str(tmp_path / "a.jpg"), "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert f"{model / 'model.keras'} does not match {model / 'model.json'}" in err and "dvc checkout" in err
    assert err.count("What to do") == 1 and "Traceback" not in err


def test_the_card_train_writes_is_the_card_predict_reads():
    """train.model_card plus the sha256 key flows.train adds: a ModelCard, nothing dropped or renamed."""
    from tasks.core.fileio import MODEL_SHA256

    written = {**SMALL_CARD, MODEL_SHA256: "ab" * 32, "lineage": {"warm_starts": 0}}
    card = predict.ModelCard.model_validate(written)
    assert card.model_sha256 == "ab" * 32 and card.model_extra == {
        "model": SMALL_CARD["model"],
        "lineage": {"warm_starts": 0},
    }
    assert card.model_dump(mode="json", exclude_defaults=True) == {k: v for k, v in written.items()}
