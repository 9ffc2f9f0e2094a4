"""Predict: label photos with a trained model, preparing each photo exactly as the shards were made."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks import inference
from tasks.errors import PawflowError
from tasks.images import REASONS, CheckSettings, check_bytes

BATCH = 32
# Prediction judges nothing but decodability and size safety: any real photo gets a label.
PERMISSIVE = {
    "min_side": 1,
    "max_aspect_ratio": 1e9,
    "formats": ("BMP", "GIF", "JPEG", "MPO", "PNG", "TIFF", "WEBP"),
    "hash_size": 8,
}


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


def settings_for(card: dict, max_pixels: int) -> CheckSettings:
    """How a photo is prepared for the model described by `card` (its model.json): normalised as the
    shards it was trained on were (max_side, jpeg_quality), judged only on decodability and size."""
    return CheckSettings(
        max_pixels=max_pixels,
        max_side=int(card["max_side"]),
        jpeg_quality=int(card["jpeg_quality"]),
        **PERMISSIVE,
    )


def load(model_path: Path, max_pixels: int, tta: bool | None = None) -> Predictor:
    """A .keras file (or a folder holding model.keras) and the model.json beside it; Keras safe mode.

    tta: test-time augmentation (tasks.inference.class_probs); None takes the card's `tta` (evaluate
    records there the setting the champion was evaluated and promoted with), else off.
    """
    import keras

    file = model_path / "model.keras" if model_path.is_dir() else model_path
    card_path = file.with_name("model.json")
    if not file.exists():
        raise PawflowError(f"no model at {file}.", "Train one first (`make run`), or pass --model PATH.")
    if not card_path.exists():
        raise PawflowError(
            f"{card_path} is missing: it holds the class names and image size of {file.name}.",
            "Use a model written by pawflow's train stage (models/ or models/champion/).",
        )
    card = json.loads(card_path.read_text())
    try:
        model = keras.saving.load_model(file, compile=False, safe_mode=True)
    except Exception as err:  # a damaged or foreign file: say which, not a traceback
        raise PawflowError(
            f"{file} cannot be loaded as a Keras model ({type(err).__name__}: {err}).",
            "Re-run train, or point --model at another model.",
        ) from None
    return Predictor(
        model,
        list(card["class_names"]),
        int(card["image_size"]),
        settings_for(card, max_pixels),
        bool(card.get("tta", False)) if tta is None else tta,
    )


def iter_files(targets: list[Path]) -> Iterator[Path]:
    """Files named, and every file under folders named (sorted, recursively; folder links not followed)."""
    for target in targets:
        if target.is_dir():
            for dirpath, dirnames, filenames in os.walk(target):
                dirnames.sort()
                for name in sorted(filenames):
                    yield Path(dirpath) / name
        else:
            yield target


def prepare_bytes(data: bytes, s: CheckSettings) -> tuple[bytes | None, str]:
    """A photo's bytes -> the JPEG the model's shards would hold for it, or None and why not."""
    check, thumb = check_bytes(data, s)
    if thumb is None:
        return None, f"{check.reason}: {REASONS.get(check.reason, '')}".rstrip(": ")
    return thumb, ""


def _prepare(path: Path, s: CheckSettings) -> tuple[bytes | None, str]:
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, f"cannot read: {err.strerror or err}"
    return prepare_bytes(data, s)


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
