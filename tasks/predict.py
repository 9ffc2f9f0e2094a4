"""Predict: label photos with a trained model, preparing each photo exactly as the shards were made."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypedDict

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from tasks.core.errors import PawflowError
from tasks.core.fileio import sha256_file
from tasks.core.params import TensorFlow
from tasks.model import inference
from tasks.photos.images import REASONS, CheckSettings, PhotoCheck, check_bytes, check_file

BATCH = 32


class Permissive(TypedDict):
    """The CheckSettings fields prediction sets its own way (PERMISSIVE)."""

    min_side: int
    max_aspect_ratio: float
    hash_size: int


# Prediction judges nothing but decodability, format and size safety (the clean.formats and
# clean.max_pixels the model's card records): any real photo of a format clean accepted gets a label.
PERMISSIVE: Permissive = {"min_side": 1, "max_aspect_ratio": 1e9, "hash_size": 8}


class ModelCard(BaseModel):
    """model.json, what a prediction needs besides the weights: written by train (train.model_card, plus
    the model's sha256 and lineage), given the champion's `tta` by evaluate, read by evaluate and predict
    (read_card). Keys it does not name (the architecture, the lineage) are kept as they are."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    class_names: Annotated[list[str], Field(min_length=1)]
    image_size: PositiveInt
    max_side: PositiveInt  # the shards' photos: normalised to this side and JPEG quality
    jpeg_quality: Annotated[int, Field(ge=1, le=100)]
    formats: Annotated[list[str], Field(min_length=1)]  # clean.formats and clean.max_pixels, as trained
    max_pixels: PositiveInt
    tensorflow: TensorFlow  # params.yaml tensorflow: as the model was trained and evaluated
    model_sha256: str | None = None  # the .keras file's, checked before it is loaded (model_files)
    tta: bool = False  # the champion's test-time augmentation, as evaluate promoted it


# What a card's check says a wrong value should be.
EXPECTED = {
    "class_names": "a non-empty list of names",
    "image_size": "a positive integer",
    "max_side": "a positive integer",
    "jpeg_quality": "an integer from 1 to 100",
    "formats": "a non-empty list of image format names",
    "max_pixels": "a positive integer",
    "model_sha256": "a sha256 in hex",
    "tta": "true or false",
}
# The keys train's card gained when `pawflow predict` stopped reading params: a card without them comes
# from a model trained before.
RUN_KEYS = ("formats", "max_pixels", "tensorflow")
NOT_REGULAR = "not a regular file (named pipe, socket or device): skipped"


@dataclass
class Row:
    path: str
    label: str = ""
    confidence: float | None = None
    error: str = ""


@dataclass
class Predictor:
    model: object
    class_names: list[str]
    image_size: int
    settings: CheckSettings
    tta: bool = False


def settings_for(card: ModelCard, max_pixels: int, formats: tuple[str, ...]) -> CheckSettings:
    """How a photo is prepared for the model described by `card` (its model.json): normalised as the
    shards it was trained on were (max_side, jpeg_quality), judged only on decodability, its format
    (one of `formats`, clean.formats) and size (max_pixels, clean.max_pixels)."""
    return CheckSettings(
        max_pixels=max_pixels,
        formats=formats,
        max_side=card.max_side,
        jpeg_quality=card.jpeg_quality,
        **PERMISSIVE,
    )


def model_files(model_path: Path) -> tuple[Path, ModelCard]:
    """The .keras file (model_path, or model.keras in that folder) and its checked model.json; no TF.
    A card that records the model's sha256 (train writes it) must match the file: a damaged or replaced
    model is refused before it is loaded (hashing a model costs milliseconds)."""
    file = model_path / "model.keras" if model_path.is_dir() else model_path
    card_path = file.with_name("model.json")
    if not file.exists():
        raise PawflowError(f"no model at {file}.", "Train one first (`make run`), or pass --model PATH.")
    if not card_path.exists():
        raise PawflowError(
            f"{card_path} is missing: it holds the class names and image size of {file.name}.",
            "Use a model written by pawflow's train stage (models/ or models/champion/).",
        )
    card = read_card(card_path)
    if card.model_sha256 is not None and sha256_file(file) != card.model_sha256:
        raise PawflowError(
            f"{file} does not match {card_path}: its sha256 is not the one train recorded (the file was "
            "damaged or replaced after training).",
            f"Restore it: `dvc checkout {file.parent}` (or `dvc pull {file.parent}`); if it is still "
            "damaged, train again (`dvc repro --force train`, or `pawflow run --force`).",
        )
    return file, card


def load(model_path: Path, tta: bool | None = None) -> Predictor:
    """A .keras file (or a folder holding model.keras) and the model.json beside it; Keras safe mode.
    Photos are prepared as the card says (settings_for with its formats and max_pixels).

    tta: test-time augmentation (tasks.model.inference.class_probs); None takes the card's `tta` (evaluate
    records there the setting the champion was evaluated and promoted with), else off.
    """
    file, card = model_files(model_path)
    import keras  # after the checks above, which need no TensorFlow

    try:
        model = keras.saving.load_model(file, compile=False, safe_mode=True)
    except Exception as err:  # a damaged or foreign file: say which, not a traceback
        raise PawflowError(
            f"{file} cannot be loaded as a Keras model ({type(err).__name__}: {err}).",
            "Re-run train, or point --model at another model.",
        ) from None
    return Predictor(
        model,
        list(card.class_names),
        card.image_size,
        settings_for(card, card.max_pixels, tuple(card.formats)),
        card.tta if tta is None else tta,
    )


def read_card(card_path: Path) -> ModelCard:
    """model.json, checked for every key a prediction needs (one message naming what is missing or
    wrong)."""
    what_to_do = "Use the model.json that pawflow's train stage wrote beside the model, or re-run train."
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PawflowError(f"{card_path} cannot be read as JSON ({err}).", what_to_do) from None
    if not isinstance(card, dict):
        raise PawflowError(f"{card_path} holds a {type(card).__name__}, not an object.", what_to_do)
    required = [name for name, field in ModelCard.model_fields.items() if field.is_required()]
    missing = [k for k in required if k not in card]
    if missing and set(missing) <= set(RUN_KEYS):
        raise PawflowError(
            f"{card_path} was written by an older pawflow: it lacks {', '.join(missing)} (the formats, "
            "pixel limit and TensorFlow settings `pawflow predict` now takes from the model, not from "
            "params.yaml).",
            "Re-run the pipeline (`pawflow run`): train rewrites the model's model.json and evaluate the "
            "champion's; or use a model trained since.",
        )
    try:
        return ModelCard.model_validate(card)
    except ValidationError as err:
        raise PawflowError(f"{card_path} is incomplete: {card_problems(err)}.", what_to_do) from None


def card_problems(err: ValidationError) -> str:
    """A card's validation errors as one clause: "missing a, b; wrong c (what it should be)"."""
    missing: list[str] = []
    wrong: dict[str, list[str]] = {}
    for e in err.errors():
        key = str(e["loc"][0])
        if e["type"] == "missing" and len(e["loc"]) == 1:
            missing.append(key)
        else:
            wrong.setdefault(key, []).append(".".join(str(p) for p in e["loc"][1:]))
    described = [
        f"tensorflow ({', '.join(sorted(set(inner)))}: not as params.yaml tensorflow: allows)"
        if key == "tensorflow"
        else f"{key} ({EXPECTED.get(key, 'a valid value')} expected)"
        for key, inner in wrong.items()
    ]
    return "; ".join(
        ([f"missing {', '.join(missing)}"] if missing else [])
        + ([f"wrong {', '.join(described)}"] if described else [])
    )


def list_files(targets: list[Path]) -> list[Path]:
    """Files named, and every entry under folders named (sorted, recursively; folder links not followed).

    Nothing is opened here. Raises PawflowError when the folders named hold nothing to label.
    """
    files: list[Path] = []
    for target in targets:
        if target.is_dir():
            for dirpath, dirnames, filenames in os.walk(target):
                dirnames.sort()
                files += [Path(dirpath) / name for name in sorted(filenames)]
        else:
            files.append(target)
    if not files:
        raise PawflowError(
            f"nothing to label: {', '.join(str(t) for t in targets)} holds no files.",
            "Name photos, or folders that contain photos.",
        )
    return files


def _message(check: PhotoCheck, thumb: bytes | None) -> tuple[bytes | None, str]:
    """The prepared JPEG, or None and the reason as a person reads it."""
    if thumb is None:
        detail = check.detail if check.reason in ("missing", "unreadable") else ""
        return None, f"{check.reason}: {detail or REASONS.get(check.reason, '')}".rstrip(": ")
    return thumb, ""


def prepare_bytes(data: bytes, s: CheckSettings) -> tuple[bytes | None, str]:
    """A photo's bytes -> the JPEG the model's shards would hold for it, or None and why not."""
    return _message(*check_bytes(data, s))


def _prepare(path: Path, s: CheckSettings) -> tuple[bytes | None, str]:
    try:
        mode = path.stat().st_mode  # stat opens nothing: a named pipe would block a reader forever
    except OSError as err:
        return None, f"cannot read: {err.strerror or err}"
    if not stat.S_ISREG(mode):
        return None, NOT_REGULAR
    return _message(*check_file(path, None, s))


def predict(p: Predictor, files: Iterator[Path]) -> Iterator[Row]:
    """One Row per file, in order; a file that cannot be used gets an error, never an exception."""

    def run(batch: list[tuple[Path, bytes]]) -> list[Row]:
        images = inference.decode_resize([j for _, j in batch], p.image_size)
        probs = inference.class_probs(p.model, images, p.tta)
        return [
            Row(str(f), p.class_names[int(k)], float(pr[k]))
            for (f, _), pr, k in zip(batch, probs, probs.argmax(axis=1), strict=True)
        ]

    pending: list[tuple[Path, bytes]] = []
    order: list[Row | Path] = []
    for f in files:
        thumb, error = _prepare(f, p.settings)
        if thumb is None:
            order.append(Row(str(f), error=error))
        else:
            pending.append((f, thumb))
            order.append(f)
        if len(pending) == BATCH:
            yield from _flush(order, run(pending))
            pending, order = [], []
    if pending or order:
        yield from _flush(order, run(pending) if pending else [])


def _flush(order: list[Row | Path], done: list[Row]) -> Iterator[Row]:
    it = iter(done)
    for item in order:
        yield item if isinstance(item, Row) else next(it)
