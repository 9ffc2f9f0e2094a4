"""Warm-start training: whether train fine-tunes a starting model or trains from scratch.

The starting weights are a tracked input of the train stage: `models/base/` (paths.models), the output
of dvc.yaml's `base` stage, which the Prefect pipeline sets from the champion (warm start) or empties
(from scratch) and records with `dvc commit base`. Its base.json is `null` (no starting model) or
describes model.keras beside it: its sha256, the warm starts behind it since its last full retrain, the
train-split size at that full retrain, and what shaped it (MODEL_SHAPING + the data's classes and image
encoding). Train decides from base.json, params and dataset_info.json alone (`plan`), so a model stays a
pure function of (shards, params, starting model bytes): `dvc repro` rebuilds it from a dvc.lock.

Every model's model.json carries the same lineage under "training" (`lineage`); evaluate copies it into
the champion, which is where the next warm start reads it (`base_from_champion`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tasks.core.errors import PawflowError
from tasks.core.fileio import atomic_dir, dumps_json, sha256_bytes, sha256_file
from tasks.core.params import Finetune, Train
from tasks.photos.datasetinfo import DatasetInfo
from tasks.reports.reports import WarmStart

BASE_CARD = "base.json"
BASE_MODEL = "model.keras"
LINEAGE_KEY = "training"  # the key of model.json (and the champion's) that holds the lineage
# The train params that shape the model: its architecture, its input, and what its weights were fit to
# (augmentation, label smoothing). A change of any of them, of the class names or of the shards' image
# encoding makes the next model a from-scratch one. Not model-shaping (a warm start uses their current
# values, or ignores them): epochs, learning_rate, warmup_epochs, weight_decay, batch_size,
# early_stopping_patience, shuffle_buffer, seed, jit_compile and finetune itself.
MODEL_SHAPING = (
    "model",
    "backbone",
    "backbone_weights",
    "width",
    "blocks",
    "separable",
    "dropout",
    "image_size",
    "mixed_precision",
    "augment",
    "label_smoothing",
)
BaseChoice = Literal["keep", "scratch", "champion"]


@dataclass(frozen=True)
class Base:
    """A starting model, as base.json describes it."""

    sha256: str
    count: int  # warm starts behind this model since its last full retrain (0: trained from scratch)
    full_retrain_examples: int  # train-split size when its last full retrain happened
    shaping: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """How train starts: from `base` (warm) or from scratch, and why."""

    warm: bool
    reason: str
    count: int  # warm starts since the last full retrain, this one included (0 from scratch)
    full_retrain_examples: int
    from_sha256: str | None

    @property
    def start_sha256(self) -> str:
        """The starting model's sha256, which a warm start always has."""
        if self.from_sha256 is None:
            raise ValueError("a plan from scratch has no starting model")
        return self.from_sha256


def shaping(train: Train, info: DatasetInfo) -> dict[str, Any]:
    """What shapes a model trained with these params on these shards (see MODEL_SHAPING)."""
    return {
        **train.model_dump(mode="json", include=set(MODEL_SHAPING)),
        "class_names": list(info.class_names),
        "max_side": info.image.max_side,
        "jpeg_quality": info.image.jpeg_quality,
    }


def train_examples(info: DatasetInfo) -> int:
    return info.examples("train")


def plan(base: Base | None, now: dict[str, Any], n_train: int, finetune: Finetune) -> Plan:
    """Warm-start from `base` unless something calls for a full retrain: no base, a model-shaping change,
    too many warm starts in a row, or a train split that grew by more than finetune.max_growth (or
    shrank) since the last full retrain."""

    def full(reason: str) -> Plan:
        return Plan(False, reason, 0, n_train, None)

    if base is None:
        return full("no starting model (models/base is empty)")
    changed = sorted(k for k in now.keys() | base.shaping.keys() if now.get(k) != base.shaping.get(k))
    if changed:
        return full(f"model-shaping settings changed since the starting model: {', '.join(changed)}")
    if finetune.max_warm_starts is not None and base.count >= finetune.max_warm_starts:
        return full(f"{base.count} warm starts in a row (train.finetune.max_warm_starts)")
    if n_train < base.full_retrain_examples:
        return full(f"the train split shrank ({base.full_retrain_examples} -> {n_train} photos)")
    growth = n_train / base.full_retrain_examples - 1
    if growth > finetune.max_growth:
        return full(
            f"the train split grew by {growth:.1%} since the last full retrain "
            f"(> train.finetune.max_growth {finetune.max_growth:.1%})"
        )
    return Plan(
        True,
        f"fine-tuning the starting model ({growth:.1%} more train photos since the last full retrain)",
        base.count + 1,
        base.full_retrain_examples,
        base.sha256,
    )


def warm_start_report(p: Plan) -> WarmStart | None:
    """reports/train.json `warm_start`: null from scratch, else the starting model and the count."""
    return {"from_sha256": p.start_sha256, "count": p.count} if p.warm else None


def lineage(p: Plan, now: dict[str, Any]) -> dict[str, Any]:
    """model.json "training": what the next warm start from this model needs to know."""
    return {
        "shaping": now,
        "warm_start": warm_start_report(p),
        "full_retrain_examples": p.full_retrain_examples,
    }


# --------------------------------------------------------------------------- models/base


def _base_error(folder: Path, what: str) -> PawflowError:
    return PawflowError(
        f"{folder / BASE_CARD}: {what}.",
        f"Restore it (`dvc checkout base`), or empty it for a from-scratch model: write `null` into "
        f"{folder / BASE_CARD} and delete {folder / BASE_MODEL}, then `dvc commit base`.",
    )


def read_base(folder: Path) -> Base | None:
    """models/base as train sees it: None (from scratch) or the starting model, its sha256 checked.

    No models/base at all is from scratch too: a stage run outside DVC (`python -m flows.train`, the
    in-process flows) has no `base` stage before it."""
    card = folder / BASE_CARD
    if not card.is_file():
        if (folder / BASE_MODEL).exists():
            raise _base_error(folder, f"not found beside {folder / BASE_MODEL}")
        return None
    try:
        data = json.loads(card.read_text())
    except json.JSONDecodeError as err:
        raise _base_error(folder, f"not valid JSON ({err})") from None
    if data is None:
        return None
    try:
        base = Base(
            sha256=str(data["sha256"]),
            count=int(data["count"]),
            full_retrain_examples=int(data["full_retrain_examples"]),
            shaping=dict(data["shaping"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise _base_error(folder, f"not a starting-model description ({type(err).__name__}: {err})") from None
    model = folder / BASE_MODEL
    if not model.is_file():
        raise _base_error(folder, f"names a starting model but {model} is missing")
    if sha256_file(model) != base.sha256:
        raise _base_error(folder, f"{model} is not the model it names (sha256 differs)")
    return base


def write_base(folder: Path, start: tuple[bytes, Base] | None) -> None:
    """Set models/base atomically: empty (`null`) or the given model bytes and their description."""
    with atomic_dir(folder) as tmp:
        if start is None:
            (tmp / BASE_CARD).write_text(dumps_json(None))
            return
        data, base = start
        if sha256_bytes(data) != base.sha256:
            raise ValueError("write_base: the model bytes do not match base.sha256")
        (tmp / BASE_MODEL).write_bytes(data)
        card = {
            "sha256": base.sha256,
            "count": base.count,
            "full_retrain_examples": base.full_retrain_examples,
            "shaping": base.shaping,
        }
        (tmp / BASE_CARD).write_text(dumps_json(card))


def ensure_base(folder: Path) -> Base | None:
    """The `base` stage's command: an empty models/base when there is none, else the one there, checked."""
    if not (folder / BASE_CARD).exists():
        write_base(folder, None)
    return read_base(folder)


def base_from_champion(champion: Path) -> tuple[bytes, Base] | None:
    """The champion as a starting model, or None when there is no champion or it has no lineage (a
    model from before warm starts, or one the gate never promoted)."""
    model, card = champion / "model.keras", champion / "model.json"
    if not (model.is_file() and card.is_file()):
        return None
    training = json.loads(card.read_text()).get(LINEAGE_KEY)
    if not training:
        return None
    data = model.read_bytes()
    warm = training.get("warm_start")
    return data, Base(
        sha256=sha256_bytes(data),
        count=int(warm["count"]) if warm else 0,
        full_retrain_examples=int(training["full_retrain_examples"]),
        shaping=dict(training["shaping"]),
    )


def choose_base(
    warm_start: bool,
    full_retrain: bool,
    train_will_run: bool,
    current: Base | None,
    champion: tuple[bytes, Base] | None,
    now: dict[str, Any],
    n_train: int,
    finetune: Finetune,
) -> tuple[BaseChoice, str]:
    """What the pipeline sets models/base to before train, and why.

    full_retrain: empty it (a from-scratch model, even when nothing else changed). Otherwise models/base
    is left as it is when train would not run (no new data: nothing is retrained); when it will run,
    it becomes the champion if warm_start is asked and the champion passes `plan`, else it is emptied.
    """
    if full_retrain:
        return "scratch", "a full retrain was asked for"
    if not train_will_run:
        return "keep", "train is up to date"
    if not warm_start:
        return "scratch", "no warm start asked for"
    if champion is None:
        return "scratch", "no champion with a training lineage to start from"
    p = plan(champion[1], now, n_train, finetune)
    if not p.warm:
        return "scratch", p.reason
    if current is not None and current.sha256 == champion[1].sha256:
        return "keep", "models/base already holds the champion"
    return "champion", p.reason
