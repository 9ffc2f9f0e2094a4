"""P7: what the reproducible TensorFlow settings cost in training speed, measured in one run.

The default model trains for EPOCHS epochs on P2's shards (at params.yaml's train.image_size) under
each setting of params.yaml `tensorflow:`, each in its own process (the settings apply before
TensorFlow starts). The figure is each setting's training throughput as a ratio of the params.yaml
default, and whether two runs with the default settings gave byte-identical models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import WORK, run, save

EPOCHS = 2
SETTINGS = {
    "default (oneDNN, AVX2 cap, 2 threads, deterministic ops)": {},
    "default again (same bytes?)": {},
    "no op determinism": {"deterministic_ops": False},
    "oneDNN uncapped (ALL)": {"onednn_max_isa": "ALL"},
    "oneDNN off": {"onednn": False},
}


def train_one(ws: Path, index: int, name: str, overrides: dict) -> dict:
    out = WORK / f"p7-{index}.json"
    cmd = [sys.executable, "-m", "bench.p6_train", str(ws), "pawnet", str(out), "--epochs", str(EPOCHS)]
    t = run([*cmd, "--tensorflow", json.dumps(overrides)], Path.cwd(), check=False)
    if t.returncode != 0:  # a native crash is a result here, not a benchmark failure
        return {"setting": name, "exit": t.returncode, "images_per_s": None, "model_md5": None}
    return {"setting": name, "exit": 0, **json.loads(out.read_text())}


def main(ws: Path) -> dict:
    results = [train_one(ws, i, name, o) for i, (name, o) in enumerate(SETTINGS.items())]
    base = results[0]["images_per_s"] or float("nan")
    for r in results:
        r["ratio_to_default"] = round(r["images_per_s"] / base, 2) if r["images_per_s"] else None
    same = results[0]["model_md5"] is not None and results[0]["model_md5"] == results[1]["model_md5"]
    shown = ", ".join(f"{r['setting'].split(' (')[0]} {r['ratio_to_default']}x" for r in results[2:])
    return save(
        7,
        f"default settings {base:.0f} img/s, identical model bytes twice: {same}; vs default: {shown}",
        "the reproducible settings give identical models and cost under 10% of the fastest setting",
        same and all((r["ratio_to_default"] or 0) <= 1.1 for r in results[2:]),
        epochs=EPOCHS,
        image_size=results[0].get("image_size"),
        runs=results,
        notes="P2's shards; each setting trained in its own process, one after the other.",
    )
