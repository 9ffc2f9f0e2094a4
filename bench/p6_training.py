"""P6: test accuracy per minute of training, seed_cnn vs the default model, same data, same epochs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import WORK, run, save
from tasks.datasetinfo import DatasetInfo

EPOCHS = 5  # with P2 (a full default run), make bench stays under 30 minutes here
IMAGE_SIZE = (
    64  # seed_cnn trains at ~27 img/s at 128 px here: 5 epochs of it would not fit make bench in 30 min
)


def train_one(ws: Path, model: str) -> dict:
    out = WORK / f"p6-{model}.json"
    run(
        [sys.executable, "-m", "bench.p6_train", str(ws), model, str(EPOCHS), str(IMAGE_SIZE), str(out)],
        Path.cwd(),
    )
    return json.loads(out.read_text())


def main(ws: Path) -> dict:
    results = {m: train_one(ws, m) for m in ("seed_cnn", "pawnet")}
    chance = 1 / DatasetInfo.read(ws / "data/processed").num_classes
    for r in results.values():
        # Accuracy above chance: a model that learned nothing scores 0 however fast it trained.
        r["accuracy_over_chance_per_minute"] = (r["test_accuracy"] - chance) / (r["train_wall_time_s"] / 60)
    seed, ours = results["seed_cnn"], results["pawnet"]
    return save(
        6,
        f"default {ours['test_accuracy']:.3f} test acc in {ours['train_wall_time_s'] / 60:.1f} min "
        f"({ours['images_per_s']:.0f} img/s) vs seed_cnn {seed['test_accuracy']:.3f} in "
        f"{seed['train_wall_time_s'] / 60:.1f} min ({seed['images_per_s']:.0f} img/s), {EPOCHS} epochs at "
        f"{IMAGE_SIZE} px each",
        "default model: more test accuracy (above chance) per minute of training than seed_cnn",
        ours["accuracy_over_chance_per_minute"] > seed["accuracy_over_chance_per_minute"],
        epochs=EPOCHS,
        chance_accuracy=chance,
        image_size=IMAGE_SIZE,
        models=results,
        notes="same shards (P2's), same epochs and input size for both; each trained in its own process.",
    )
