"""P9: time-to-accuracy on the full collection (issue 15): the sample grown by petimages-16k.

The collection is built the way a user's grows: the sample first (`dvc repro shard`), then its folder
gains petimages-16k's 15,989 photos (names prefixed `p16k-`) and `dvc repro shard` runs again. The
split ledger keeps every sample photo in its split, so the grown test split holds the sample's test
photos (the ones `make run` scores) plus new ones, and the full-collection models are also scored on
those alone: directly comparable with the sample's figures.

Each run trains one model with the default recipe (params.yaml `train:`) and a schedule sized to its
budget (bench.p6_train --budget-s: the epochs a short probe says fit, at least one), and measures the
test accuracy (flip average, as evaluate does) when the training clock passes 15 and 30 minutes, test
time left out; training stops at the last mark. A model whose epoch is longer than the budget is
measured mid-epoch, with its weights of that moment. The default also gets a run sized to 15 minutes,
the schedule a user with that budget would set.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from bench.common import (
    PETIMAGES_16K,
    SAMPLE,
    WORK,
    image_files,
    link_files,
    run,
    save,
    source_files,
    workspace,
)
from tasks.photos.datasetinfo import DatasetInfo

PREFIX = "p16k-"  # petimages-16k's names (<N>.jpg) are prefixed: the sample holds the same names
MARKS_S = (15 * 60, 30 * 60)
RUNS = (  # (model, budget): the default first; the slowest last
    ("pawnet", 30 * 60),
    ("pawnet", 15 * 60),
    ("seed_cnn", 30 * 60),
    ("keras_xception", 30 * 60),
)


def build(source: Path) -> Path:
    """The grown collection's shards: the sample, then the sample plus petimages-16k."""
    shutil.rmtree(source, ignore_errors=True)
    link_files(source_files(SAMPLE), SAMPLE, source)
    ws = workspace("p9", source)
    run([sys.executable, "-m", "dvc", "repro", "shard"], ws)
    link_files(image_files(PETIMAGES_16K), PETIMAGES_16K, source, prefix=PREFIX)
    run([sys.executable, "-m", "dvc", "repro", "shard"], ws)
    return ws


def train_one(ws: Path, model: str, budget_s: int) -> dict:
    out = WORK / f"p9-{model}-{budget_s // 60}min.json"
    marks = [str(m) for m in MARKS_S if m <= budget_s]
    cmd = [sys.executable, "-m", "bench.p6_train", str(ws), model, str(out), "--budget-s", str(budget_s)]
    run([*cmd, "--marks-s", *marks, "--apart", PREFIX], Path.cwd())
    return json.loads(out.read_text())


def main() -> dict:
    ws = build(WORK / "p9-source")
    info = DatasetInfo.read(ws / "data/processed")
    results: dict[str, dict] = {}
    for model, budget in RUNS:
        results[f"{model}/{budget // 60}min"] = train_one(ws, model, budget)
        result = report(info, results)  # after every run: a long benchmark keeps what it measured
    return result


def report(info: DatasetInfo, results: dict[str, dict]) -> dict:
    def at(key: str, mark: int, field: str = "test_accuracy") -> float | None:
        r = results.get(key)
        return next((m[field] for m in r["marks"] if m["mark_s"] == mark), None) if r else None

    def shown(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    rows = []
    for key in results:
        cells = [f"{shown(at(key, m))} ({shown(at(key, m, 'test_accuracy_apart'))})" for m in MARKS_S]
        rows.append(f"{key} {' / '.join(cells)}")
    best = {  # the most accurate run at each mark (any schedule)
        m: max(results, key=lambda k: at(k, m) or 0.0) for m in MARKS_S if any(at(k, m) for k in results)
    }
    met = len(results) == len(RUNS) and all(k.startswith(f"{RUNS[0][0]}/") for k in best.values())
    first = next(iter(results.values()))
    return save(
        9,
        f"test accuracy after {' / '.join(f'{m // 60}' for m in MARKS_S)} min of training, all "
        f"{info.examples('test')} test photos (the sample's {first['marks'][0].get('test_photos_apart')}): "
        + "; ".join(rows),
        f"the default model is the most accurate after {' and '.join(f'{m // 60}' for m in MARKS_S)} min "
        "on the full collection",
        met,
        marks_s=MARKS_S,
        collection={s: info.examples(s) for s in ("train", "val", "test")},
        runs=results,
        notes="the sample, grown by petimages-16k (hard links, names prefixed p16k-) through dvc repro "
        "shard twice; each run in its own process, one after the other; marks on the training clock, "
        "test time left out; the accuracy in parentheses: the sample's test photos only.",
    )
