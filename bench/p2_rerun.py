"""P2: the whole pipeline once, then again with nothing changed, through dvc repro and the Prefect flow."""

from __future__ import annotations

import json
import sys

from bench.common import SAMPLE, median_of, run, save, workspace
from tasks.reports.reports import METRICS, TRAIN

REPS = 3


def main() -> tuple[dict, object]:
    ws = workspace("p2", SAMPLE)
    first = run([sys.executable, "-m", "dvc", "repro"], ws)
    assert "Running stage 'evaluate'" in first.stdout

    def dvc_noop() -> float:
        t = run([sys.executable, "-m", "dvc", "repro"], ws)
        assert "Running stage" not in t.stdout, t.stdout
        return t.seconds

    def prefect_noop() -> float:
        t = run([sys.executable, "-m", "flows.pipeline", "--no-push"], ws)
        last = json.loads((ws / "reports/runs.jsonl").read_text().splitlines()[-1])
        assert all(v.startswith("skipped") for v in last["stages"].values()), last["stages"]
        return t.seconds

    dvc_s, dvc_runs = median_of(REPS, dvc_noop)
    pf_s, pf_runs = median_of(REPS, prefect_noop)
    worst = max(dvc_s, pf_s)
    share = worst / first.seconds
    train = TRAIN.read(ws / "reports")
    history = [json.loads(line) for line in (ws / "reports/runs.jsonl").read_text().splitlines()]
    train_run = [r for r in history if r.get("stage") == "train"][-1]  # the first run's figures
    metrics = METRICS.read(ws / "reports")
    result = save(
        2,
        f"no-change rerun: dvc repro {dvc_s:.1f}s, Prefect pipeline {pf_s:.1f}s = {share:.2%} of the "
        f"first run ({first.seconds:.0f}s)",
        "rerun <= 2% of the first run's wall time and under 10 s",
        share <= 0.02 and worst < 10,
        first_run_s=first.seconds,
        first_run_peak_rss_mb=first.peak_rss_mb,
        dvc_repro_noop_s=dvc_s,
        prefect_pipeline_noop_s=pf_s,
        runs={"dvc_repro": dvc_runs, "prefect_pipeline": pf_runs},
        train_wall_time_s=train_run["wall_time_s"],
        train_images_per_s=train_run["train_images_per_s"],
        train_peak_rss_mb=train_run["peak_rss_mb"],
        test_accuracy=metrics["accuracy"],
        epochs_run=train["epochs_run"],
        notes="first run: dvc repro of all six stages with the default params.yaml on the sample (cold "
        "caches); reruns: the command-line wall time including interpreter start-up.",
    )
    return result, ws
