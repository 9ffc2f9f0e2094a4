"""P6: time-to-accuracy, the way training is compared (issue 15).

On P2's shards (the sample, as `make run` builds them) and the same input pipeline, each model trains
in its own process with the default recipe (params.yaml `train:`, image size included) and a schedule
sized to the same budget (BUDGET_S: the epochs that fit at the speed a short probe measures, at most
train.epochs). Test accuracy is measured after every epoch, the way evaluate measures it (flip
average per evaluate.tta), outside the training clock. The figure: minutes of training until the test
accuracy first reaches each of THRESHOLDS, per model ("-": not within the budget).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import WORK, run, save

MODELS = ("pawnet", "seed_cnn", "keras_xception")  # the default, the seed article's, the keras-io example's
BUDGET_S = 15 * 60  # issue 15's training budget on the sample, for every model
THRESHOLDS = (0.80, 0.85)


def train_one(ws: Path, model: str) -> dict:
    out = WORK / f"p6-{model}.json"
    cmd = [sys.executable, "-m", "bench.p6_train", str(ws), model, str(out)]
    run([*cmd, "--budget-s", str(BUDGET_S), "--test-each-epoch"], Path.cwd())
    return json.loads(out.read_text())


def minutes_to(curve: list[dict], threshold: float) -> float | None:
    """Training minutes until the test accuracy after an epoch first reached threshold (None: never)."""
    return next((round(p["train_s"] / 60, 1) for p in curve if p["test_accuracy"] >= threshold), None)


def shown(minutes: float | None) -> str:
    return "-" if minutes is None else f"{minutes:.1f}"


def main(ws: Path) -> dict:
    results = {m: train_one(ws, m) for m in MODELS}
    for r in results.values():
        r["minutes_to"] = {f"{t:.2f}": minutes_to(r["curve"], t) for t in THRESHOLDS}
    default, *others = MODELS
    top = f"{THRESHOLDS[-1]:.2f}"

    def sooner(a: float | None, b: float | None) -> bool:  # a reached it, and before b (or b never did)
        return a is not None and (b is None or a <= b)

    ours = results[default]["minutes_to"][top]
    met = (
        ours is not None
        and ours <= BUDGET_S / 60
        and all(sooner(ours, results[o]["minutes_to"][top]) for o in others)
    )
    per_model = "; ".join(
        f"{m} {' / '.join(shown(r['minutes_to'][f'{t:.2f}']) for t in THRESHOLDS)} "
        f"(best {max(p['test_accuracy'] for p in r['curve']):.3f} in {r['train_wall_time_s'] / 60:.1f} min, "
        f"{r['epochs']} ep)"
        for m, r in results.items()
    )
    return save(
        6,
        f"minutes to {' / '.join(f'{t:.2f}' for t in THRESHOLDS)} test accuracy: {per_model}",
        f"the default model reaches {top} test accuracy within {BUDGET_S // 60} min, before the others",
        met,
        budget_s=BUDGET_S,
        thresholds=THRESHOLDS,
        models=results,
        notes="P2's shards; each model in its own process, one after the other; test accuracy after every "
        "epoch, outside the training clock.",
    )
