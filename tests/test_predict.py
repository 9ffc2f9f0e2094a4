"""predict's input handling: pipes and devices skipped unopened, empty folders and bad model cards refused."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import imagegen
import pytest

from flows.cli import main as pawflow
from tasks import predict
from tasks.errors import PawflowError
from tasks.images import CheckSettings

SETTINGS = CheckSettings(max_pixels=89_478_485, max_side=64, jpeg_quality=90, **predict.PERMISSIVE)
CARD = {"class_names": ["Cat", "Dog"], "image_size": 16, "max_side": 64, "jpeg_quality": 90}


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
    model = write_model(tmp_path / "model", CARD)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(imagegen.jpeg(1, (80, 60)))
    os.mkfifo(photos / "b.jpg")  # no writer: opening it to read would block forever
    (photos / "c.jpg").write_bytes(imagegen.cut_jpeg_closed(1005))
    monkeypatch.chdir(tmp_path)
    code = pawflow(["predict", str(photos), "--model", str(model)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1  # some files could not be labelled
    assert [Path(line.split("\t")[0]).name for line in lines] == ["a.jpg", "b.jpg", "c.jpg"]
    assert lines[0].split("\t")[1] in {"Cat", "Dog"}
    assert lines[1].endswith(f"error: {predict.NOT_REGULAR}")
    assert "error: truncated" in lines[2]


def test_an_empty_folder_is_an_error(tmp_path: Path, capsys, monkeypatch):
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    with pytest.raises(PawflowError, match="nothing to label"):
        predict.list_files([tmp_path / "empty"])
    (tmp_path / "model.keras").write_bytes(b"never loaded: the folder is found empty first")
    (tmp_path / "model.json").write_text(json.dumps(CARD))
    monkeypatch.chdir(tmp_path)
    assert pawflow(["predict", str(tmp_path / "empty"), "--model", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "nothing to label" in captured.err and captured.out == ""


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ({"class_names": ["Cat", "Dog"], "image_size": 16}, "missing max_side, jpeg_quality"),
        ({**CARD, "image_size": "16"}, "wrong image_size (a int expected)"),
        ({**CARD, "class_names": []}, "class_names (a non-empty list of names expected)"),
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
