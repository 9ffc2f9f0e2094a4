"""The pipeline run's summary (a Prefect markdown artifact), from the stage reports in reports/."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from tasks.reports import AUDIT, CLEAN, DEDUP, GATE, METRICS, SHARD, TRAIN, Report

T = TypeVar("T")


def train_start(reports: Path) -> dict:
    """The run history's record of how the current model started: reports/train.json's warm_start."""
    rep = TRAIN.read_if_written(reports)
    return {"warm_start": rep["warm_start"] if rep else None}


def warm_start_markdown(reports: Path, origin: str = "") -> list[str]:
    """The summary's line on how the current model started (reports/train.json); origin says which run
    trained it when it was not this one."""
    rep = TRAIN.read_if_written(reports)
    if rep is None:
        return []
    warm = rep["warm_start"]
    if warm:
        start = f"warm start #{warm['count']} from {warm['from_sha256'][:12]} (the champion then)"
    else:
        start = "trained from scratch"
    return ["", f"**train**{origin}: {start}: {rep['start_reason']}"]


def pipeline_markdown(
    reports: Path,
    stages: dict[str, str],
    no_new_data: bool,
    order: Sequence[str],
    collection: dict | None = None,
) -> str:
    """The run's summary: what each stage of this run did (stages: stage -> "ran (…)" or "skipped …",
    order: every stage of the pipeline). A stage's numbers appear only when the stage is in this run,
    and are marked as an earlier run's when DVC found it up to date; stages outside the run (--until)
    show none. collection: what this run's ingest changed (its run figures), when it ran."""

    def read(report: Report[T]) -> T | None:
        """The stage's report if the stage is part of this run and has written it."""
        return report.read_if_written(reports) if report.stage in stages else None

    def origin(stage: str) -> str:
        return "" if stages[stage].startswith("ran") else " (from an earlier run: up to date in dvc.lock)"

    clean, dedup, shard, metrics, gate = read(CLEAN), read(DEDUP), read(SHARD), read(METRICS), read(GATE)
    audit = read(AUDIT)
    lines = ["## pawflow pipeline", ""]
    if no_new_data:
        lines += ["**No new data**: the source has not changed, nothing was retrained.", ""]
    lines += ["| stage | this run |", "|---|---|"] + [f"| {s} | {v} |" for s, v in stages.items()]
    left_out = [s for s in order if s not in stages]
    if left_out:
        lines += ["", f"Not part of this run: {', '.join(left_out)} (nothing of theirs is shown)."]
    if collection is not None:
        from tasks.ingest import collection_line

        lines += ["", f"**ingest**: the collection follows the source: {collection_line(collection)}"]
    if clean:
        lines += [
            "",
            f"**clean**{origin('clean')}: {clean['files']} files, {clean['kept']} kept, "
            f"{clean['rejected']} rejected " + ", ".join(f"{k} {v}" for k, v in clean["per_reason"].items()),
        ]
    if audit:
        flag = "**QUARANTINED**: " if audit["tripped"] and stages["audit"].startswith("ran") else ""
        lines += [f"**label audit**{origin('audit')}: {flag}{audit['reason']}"]
    if dedup:
        lines += [
            f"**dedup**{origin('dedup')}: {dedup['exact_duplicates']} exact and {dedup['near_duplicates']} "
            f"near duplicates, {dedup['conflict']} photos in label conflicts, {dedup['excluded']} excluded "
            f"by you, {dedup['quarantined']} held in quarantine"
        ]
    if shard:
        lines += [
            "",
            f"**shard**{origin('shard')}:",
            "",
            "| split | " + " | ".join(shard["class_names"]) + " |",
            "|---|" + "---|" * len(shard["class_names"]),
        ]
        lines += [
            f"| {s} | " + " | ".join(str(c[n]) for n in shard["class_names"]) + " |"
            for s, c in shard["counts"].items()
        ]
    if "train" in stages:
        lines += warm_start_markdown(reports, origin("train"))
    if metrics:
        lines += [
            "",
            f"**test accuracy**{origin('evaluate')} {metrics['accuracy']:.4f}, F1 {metrics['f1_macro']:.4f}, "
            f"ROC AUC {metrics['roc_auc']}, ECE {metrics['ece']:.4f} on {metrics['examples']} photos",
        ]
        if "robust_accuracy" in metrics:
            lines += [
                f"**robustness slice** (test photos as web photos arrive) {metrics['robust_accuracy']:.4f}"
            ]
    if gate:
        lines += [f"**gate**{origin('evaluate')}: {gate['decision']} (p={gate['p_value']}): {gate['reason']}"]
    return "\n".join(lines)


def why_stage_runs(changed: list | dict, most: int = 4) -> str:
    """`dvc status` of one stage as one readable line: "changed deps: params.yaml (ingest.source
    modified), ../photos (modified); changed outs: data/raw (deleted)", at most `most` paths per kind."""
    items = changed if isinstance(changed, list) else [changed]
    parts = []
    for item in items:
        if isinstance(item, str):  # "always changed"
            parts.append(item)
            continue
        for kind, entries in item.items():
            shown = []
            for path, state in entries.items():
                if isinstance(state, dict):  # params: {key: state}
                    keys = ", ".join(f"{k} {v}" for k, v in state.items())
                    shown.append(f"{path} ({keys})")
                else:
                    shown.append(f"{path} ({state})")
            more = f" and {len(shown) - most} more" if len(shown) > most else ""
            parts.append(f"{kind}: {', '.join(shown[:most])}{more}")
    return "; ".join(parts)
