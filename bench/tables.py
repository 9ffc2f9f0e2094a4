"""Every measured table in the documentation, generated from bench/results/*.json (and the committed
reports/ of the default run), so that no figure is copied by hand.

    python -m bench.tables           rewrite the tables in README.md and docs/*.md (make bench runs it)
    python -m bench.tables --check   exit 1, showing the difference, when a table there is not what the
                                     results files give (tests/test_bench_tables.py runs it)

A table sits between two markers, which Markdown does not show:

    <!-- bench.tables NAME -->
    (generated: never edit by hand)
    <!-- /bench.tables -->

Under each table a line says where its numbers were measured: the commit, the date, the load average
and the machine, as the results file records them (`measured`; marked when recovered from git log).
The `params-*` tables show params.yaml's shipped values with its own comments, so that a page never
types a parameter's value either. Only the standard library is used (and PyYAML, as pawflow reads
params.yaml), so the check runs anywhere in a second.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REPORTS = ROOT / "reports"
DOCUMENTS = ("README.md", "docs/*.md")
BLOCK = re.compile(
    r"(<!-- bench\.tables (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /bench\.tables -->)", re.S
)
STAGES = ("ingest", "clean", "dedup", "shard", "base", "train", "evaluate")

Result = dict[str, Any]


# --------------------------------------------------------------------------- reading and formatting


def result(name: str) -> Result:
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))


def report(name: str) -> Result:
    return json.loads((REPORTS / f"{name}.json").read_text(encoding="utf-8"))


def table(header: Sequence[str], rows: Iterable[Sequence[object]], right: Sequence[int] = ()) -> str:
    """A Markdown table; columns whose index is in `right` are right-aligned (numbers)."""
    rule = ["---:" if i in right else "---" for i in range(len(header))]
    lines = [header, rule, *([str(c) for c in r] for r in rows)]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def num(x: float | None, digits: int = 1, unit: str = "") -> str:
    """x with `digits` decimals and thousands separators; '-' for a missing value."""
    return "-" if x is None else f"{x:,.{digits}f}{unit}"


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f} %"


def load_of(m: Result) -> str:
    if m.get("load_average_1_5_15_min"):
        one, five, fifteen = m["load_average_1_5_15_min"]
        return f"load {one}/{five}/{fifteen}"
    return f"load {m.get('load_note', 'not recorded')}"


def where(m: Result, label: str = "") -> str:
    """One measurement's commit, date, load and machine, as the results file has them."""
    commit, _, local = m["commit"].partition(" ")
    said = (
        f"{label}commit `{commit[:7]}`{' ' + local if local else ''}, {m['date'][:10]}, {load_of(m)}, "
        f"{m['machine']}"
    )
    return said + (" (recovered from git history)" if m.get("recovered") else "")


def measurement(r: Result) -> Result:
    """Where a result was measured: its `measured` record, or the same facts from the top-level keys that
    some benchmarks write themselves (commit, date, load average at save, machine)."""
    if "measured" in r:
        return r["measured"]
    return {
        "commit": r["commit"],
        "date": r["date"],
        "load_average_1_5_15_min": r.get("load_average_1_5_15_min_at_save"),
        "machine": r["machine"],
    }


def measured_on(*labelled: tuple[str, Result]) -> str:
    """The line under a table: where each of its sources was measured."""
    parts = [where(measurement(r), f"{label}: " if label else "") for label, r in labelled]
    return "Measured: " + "; ".join(parts) + "."


def seconds(x: float | None) -> str:
    return num(x, 1, " s")


def minutes(s: float) -> str:
    m, sec = divmod(round(s), 60)
    return f"{m} min {sec:02d} s"


# --------------------------------------------------------------------------- the default run


def make_run() -> str:
    """What a run of the pipeline on the default sample finds and makes: the committed reports, which
    dvc.lock pins (any run of this commit writes the same), and the time of P8's first run."""
    ingest, clean, dedup, shard = (report(n) for n in ("ingest", "clean", "dedup", "shard"))
    train, metrics, gate = report("train"), report("metrics"), report("gate")
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(clean["per_reason"].items()))
    ex = shard["examples"]
    rows = [
        ("ingest", f"{ingest['files']:,} files copied and hashed ({ingest['bytes'] / 1e6:.1f} MB)"),
        ("clean", f"{clean['kept']:,} kept, {clean['rejected']:,} rejected ({reasons or 'none'})"),
        (
            "dedup",
            f"{dedup['exact_duplicates']} exact and {dedup['near_duplicates']} near duplicates removed, "
            f"{dedup['conflict']} label conflicts; {dedup['kept']:,} photos",
        ),
        ("shard", f"train {ex['train']:,} / val {ex['val']:,} / test {ex['test']:,}"),
        (
            "train",
            f"`{train['model']}`, {train['parameters']:,} parameters, {train['epochs_run']} epochs "
            f"(best {train['best_epoch']})",
        ),
        (
            "evaluate",
            f"test accuracy **{metrics['accuracy']:.3f}** on {metrics['examples']} photos, macro F1 "
            f"{metrics['f1_macro']:.3f}, ROC AUC {metrics['roc_auc']:.3f}, ECE {metrics['ece']:.3f}; "
            f"robustness slice {metrics['robust_accuracy']:.3f}; gate: {gate['decision']}",
        ),
    ]
    p8 = result("P8")
    first = p8["first_run"]
    return "\n".join(
        [
            table(["stage", "what it found or made"], rows),
            "",
            f"The outputs are the committed `reports/*.json`, which `dvc.lock` pins: every run of this "
            f"commit on the sample writes them byte for byte. Time: a first run with every stage from "
            f"scratch (benchmark P8 in docs/benchmarks.md) took {minutes(first['seconds'])}, "
            f"{minutes(first['stages_s']['train'])} of it training. {measured_on(('P8', p8))}",
        ]
    )


# --------------------------------------------------------------------------- P1-P9


SUMMARY = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9")


def summarised() -> list[tuple[str, str, Result]]:
    """(name, anchor on docs/benchmarks.md, results) of each benchmark the summary lists: P1-P9, the label
    audit, and P10 once its month has been run (its quick harness run proves nothing to summarise)."""
    rows = [(name, name.lower(), result(name)) for name in SUMMARY]
    rows.append(("audit", "label-audit", result("audit")))
    p10, quick = p10_result()
    if not quick:
        rows.append(("P10", "p10", p10))
    return rows


def summary() -> str:
    rows = []
    for name, anchor, r in summarised():
        m = measurement(r)
        met = {True: "yes", False: "no", None: "-"}[r["met"]]
        rows.append(
            (
                f"[{name}](#{anchor})",
                r["figure"],
                r["target"],
                met,
                "-" if r.get("bench_seconds") is None else num(r["bench_seconds"] / 60, 0),
                f"`{m['commit'][:7]}`{' (recovered)' if m.get('recovered') else ''}",
                m["date"][:10],
                load_of(m).removeprefix("load "),
            )
        )
    machines = sorted({measurement(r)["machine"] for _, _, r in summarised()})
    return "\n".join(
        [
            table(["", "figure", "target", "met", "minutes", "commit", "date", "load"], rows, right=(4,)),
            "",
            f"Machine: {'; '.join(machines)}. Each figure is the results file's own summary "
            "(`figure`); commits marked recovered are those that recorded the file (git log).",
        ]
    )


def p1() -> str:
    r = result("P1")
    tools = [
        ("pawflow (clean + dedup)", "pawflow_images_per_s", "pawflow", None),
        (
            "cleanvision `Imagelab.find_issues()`",
            "cleanvision_images_per_s",
            "cleanvision",
            "ratio_vs_cleanvision",
        ),
        (
            "imagededup `PHash.find_duplicates`",
            "imagededup_images_per_s",
            "imagededup",
            "ratio_vs_imagededup",
        ),
    ]
    rows = [
        (
            name,
            num(r[key], 0),
            ", ".join(num(x, 0) for x in r["runs"][runs]),
            "-" if ratio is None else f"{r[ratio]:.1f}x",
        )
        for name, key, runs, ratio in tools
    ]
    return "\n".join(
        [
            table(["on the sample's photos", "img/s (median)", "each run", "pawflow is"], rows, right=(1, 3)),
            "",
            f"{r['photos']:,} photos of {r['files']:,} files. {measured_on(('', r))}",
        ]
    )


def p2() -> str:
    r = result("P2")
    first = r["first_run_s"]
    rows = [
        ("first run, every stage (`dvc repro`)", seconds(first), "100 %", "-"),
        (
            "`dvc repro`, nothing changed",
            seconds(r["dvc_repro_noop_s"]),
            pct(r["dvc_repro_noop_s"] / first, 2),
            ", ".join(seconds(x) for x in r["runs"]["dvc_repro"]),
        ),
        (
            "`python -m flows.pipeline`, nothing changed",
            seconds(r["prefect_pipeline_noop_s"]),
            pct(r["prefect_pipeline_noop_s"] / first, 2),
            ", ".join(seconds(x) for x in r["runs"]["prefect_pipeline"]),
        ),
    ]
    return "\n".join(
        [
            table(["run", "wall time (median)", "of the first run", "each run"], rows, right=(1, 2)),
            "",
            f"The first run trained {r['epochs_run']} epochs at {num(r['train_images_per_s'])} img/s "
            f"(test accuracy {r['test_accuracy']:.3f}). {measured_on(('', r))}",
        ]
    )


def p3_nights() -> str:
    runs = [("run 1", result("P3-run1")), ("run 2", result("P3"))]
    first = [r["full_data_stages_s"] for _, r in runs]
    lines = [
        ("P5's first `dvc repro shard` (15,989 photos)", None),
        ("+5 %, `dvc repro shard`, no server running", "dvc_repro_no_server"),
        ("+5 %, `dvc repro shard`, the background server up", "dvc_repro_server_up"),
        ("+5 %, the Prefect pipeline `--until shard`", "prefect_pipeline"),
    ]
    rows = []
    for label, key in lines:
        secs = [f if key is None else r[key]["seconds"] for f, (_, r) in zip(first, runs, strict=True)]
        rows.append(
            (
                label,
                *(seconds(s) for s in secs),
                " / ".join(pct(s / f, 0) for s, f in zip(secs, first, strict=True)),
            )
        )
    return "\n".join(
        [
            table(["run", "run 1", "run 2", "of P5's first run (run 1 / run 2)"], rows, right=(1, 2, 3)),
            "",
            measured_on(*runs),
        ]
    )


def p3_where() -> str:
    r = result("P3")
    night = r["dvc_repro_no_server"]
    stages = night["by_stage"]["stages"]
    keys = ("dvc_before_s", "startup_s", "work_s", "dvc_after_s", "total_s")
    rows = [(name, *(num(s[k]) for k in keys)) for name, s in stages.items()]
    totals = [sum(s[k] for s in stages.values()) for k in keys]
    totals[-1] += night["by_stage"]["tail_s"]
    rows.append(("**all** (with what follows the last stage)", *(f"**{num(t)}**" for t in totals)))
    server = stages["ingest"].get("prefect_server_start_s")
    return "\n".join(
        [
            table(
                ["stage", "DVC before it", "process start-up", "its work", "DVC after it", "in all"],
                rows,
                right=(1, 2, 3, 4, 5),
            ),
            "",
            f"Run 2's night of {night['new_photos']:,} new photos on {night['photos_before']:,} "
            f"(`{night['command']}`, no server running: ingest's start-up includes starting the "
            f"background Prefect server, {seconds(server)}, overlapping its imports), in seconds, from the "
            f"time stamps of `dvc repro`'s output lines (`bench/stagesplit.py`). {measured_on(('', r))}",
        ]
    )


def p3_sizes() -> str:
    runs = [result("P3-run1"), result("P3")]

    def by_size(r: Result, kind: str, key: str, size_key: str) -> dict[int, float]:
        return {x[size_key]: x["seconds"] for x in r["by_collection_size"][kind][key]}

    firsts = [by_size(r, "sample_photos_arrive", "first_runs", "photos") for r in runs]
    nights = [by_size(r, "sample_photos_arrive", "nights", "photos_before") for r in runs]
    same = [by_size(r, "same_kind_arrive", "nights", "photos_before") for r in runs]
    sizes = sorted(firsts[1])

    def cell(values: list[dict[int, float]], size: int) -> str:
        got = [v.get(size) for v in values]
        return "-" if all(g is None for g in got) else " / ".join(num(g) for g in got) + " s"

    same_sizes = sorted(same[1])
    rows = [
        ("first run", *(cell(firsts, s) for s in sizes)),
        ("+5 % night, sample photos arrive", *(cell(nights, s) for s in sizes)),
        (
            "then +5 % more, petimages-16k photos arrive (on "
            + ", ".join(f"{s:,}" for s in same_sizes)
            + " photos)",
            *(cell(same, t) for t in same_sizes),
            *(["-"] * (len(sizes) - len(same_sizes))),
        ),
    ]
    return "\n".join(
        [
            table(
                ["photos in the collection (run 1 / run 2)", *(f"{s:,}" for s in sizes)],
                rows,
                right=tuple(range(1, len(sizes) + 1)),
            ),
            "",
            measured_on(("run 1", runs[0]), ("run 2", runs[1])),
        ]
    )


def p3_per_photo() -> str:
    runs = [result("P3-run1"), result("P3")]
    parts = ("dvc_bookkeeping_s", "stage_work_s")
    kinds = [
        ("first run", "sample_photos_arrive", "first_run"),
        ("night, sample photos arrive", "sample_photos_arrive", "night"),
        ("first run (the sizes with a petimages-16k night)", "same_kind_arrive", "first_run"),
        ("night, petimages-16k photos arrive", "same_kind_arrive", "night"),
    ]
    rows = []
    for label, kind, when in kinds:
        per = [
            [r["by_collection_size"][kind]["parts"][p][when]["per_1000_photos_s"] for p in parts]
            for r in runs
        ]
        together = [sum(p) for p in per]
        if when == "night":
            firsts = [
                sum(
                    r["by_collection_size"][kind]["parts"][p]["first_run"]["per_1000_photos_s"] for p in parts
                )
                for r in runs
            ]
            share = " / ".join(pct(t / f, 0) for t, f in zip(together, firsts, strict=True))
        else:
            share = "100 %"
        rows.append(
            (
                label,
                *(" / ".join(num(p[i], 2) for p in per) + " s" for i in range(len(parts))),
                " / ".join(num(t, 2) for t in together) + " s",
                share,
            )
        )
    once = [
        [r["by_collection_size"][kind]["night"]["once_s"] for r in runs]
        for kind in ("sample_photos_arrive", "same_kind_arrive")
    ]
    lo, hi = min(min(o) for o in once), max(max(o) for o in once)
    return "\n".join(
        [
            table(
                [
                    "per 1,000 photos in the collection (run 1 / run 2)",
                    "DVC's bookkeeping",
                    "the stages' work",
                    "together",
                    "as a share of the first run's",
                ],
                rows,
                right=(1, 2, 3, 4),
            ),
            "",
            f"Lines fitted through the sizes (`by_collection_size` in the results; process start-ups are "
            f"per process, not per photo, and left out). What a night pays once, whatever the size: "
            f"{num(lo)}-{num(hi)} s. {measured_on(('run 1', runs[0]), ('run 2', runs[1]))}",
        ]
    )


def p4() -> str:
    r = result("P4")
    rows = [
        ("pawflow's input pipeline (shards, decode, augmentation)", num(r["pawflow_images_per_s"], 0)),
        (
            "`image_dataset_from_directory` + the Keras example's augmentation",
            num(r["baseline_augmented_images_per_s"], 0),
        ),
        ("`image_dataset_from_directory`, no augmentation", num(r["baseline_plain_images_per_s"], 0)),
        ("what training consumes (the default model's step)", num(r["train_step_images_per_s"], 0)),
    ]
    return "\n".join(
        [
            table(["at " + f"{r['image_size']} px, batch {r['batch_size']}", "img/s"], rows, right=(1,)),
            "",
            f"The input pipeline runs at {r['input_over_training']:.1f}x what training consumes. "
            f"{measured_on(('', r))}",
        ]
    )


def p5() -> str:
    r = result("P5")
    w = r["where_the_seconds_went"]
    rows = [
        ("the stages' work", seconds(w["stage_work_s"])),
        ("DVC's bookkeeping (hashing the source, `data/raw`, the shards)", seconds(w["dvc_bookkeeping_s"])),
        ("process start-ups", seconds(w["process_startup_s"])),
        (
            "of which starting the background Prefect server (a new database)",
            seconds(w["of_which_prefect_server_start_s"]),
        ),
        ("**in all**", f"**{seconds(r['seconds'])}**"),
    ]
    ex = r["examples"]
    return "\n".join(
        [
            table(
                [f"`dvc repro shard`, {r['photos']:,} photos, fresh workspace", "seconds"], rows, right=(1,)
            ),
            "",
            f"Peak memory {num(r['peak_rss_mb'], 0)} MB; {r['kept_after_dedup']:,} photos kept "
            f"({r['duplicates']} duplicates): train {ex['train']:,} / val {ex['val']:,} / test "
            f"{ex['test']:,}. {measured_on(('', r))}",
        ]
    )


def p6() -> str:
    r = result("P6")
    marks = [f"{t:.2f}" for t in r["thresholds"]]
    rows = []
    for name, m in r["models"].items():
        rows.append(
            (
                f"`{name}`",
                f"{m['parameters']:,}",
                f"{m['epochs_run']} / {m['epochs']}",
                num(m["images_per_s"]),
                num(m["train_wall_time_s"] / 60),
                f"{m['test_accuracy']:.3f}",
                *(num(m["minutes_to"][t]) for t in marks),
                num(m["peak_rss_mb"] / 1024, 1),
            )
        )
    return "\n".join(
        [
            table(
                [
                    "model",
                    "parameters",
                    "epochs run / planned",
                    "img/s",
                    "training minutes",
                    "best test accuracy",
                    *(f"minutes to {t}" for t in marks),
                    "peak GB",
                ],
                rows,
                right=tuple(range(1, 7 + len(marks))),
            ),
            "",
            f"Budget {r['budget_s'] // 60} min per model; test accuracy after every epoch, measured as "
            f"evaluate does, off the training clock (the curves are in the results file). "
            f"{measured_on(('', r))}",
        ]
    )


def p7() -> str:
    r = result("P7")
    default_md5 = r["runs"][0]["model_md5"]
    rows = [
        (
            run["setting"],
            num(run["images_per_s"]),
            f"{run['ratio_to_default']:.2f}x",
            "same" if run["model_md5"] == default_md5 else "other",
            f"`{run['model_md5'][:8]}`",
        )
        for run in r["runs"]
    ]
    return "\n".join(
        [
            table(
                ["`tensorflow:` setting", "img/s", "of the default", "model bytes", "md5"], rows, right=(1, 2)
            ),
            "",
            f"{r['epochs']} epochs of the default model at {r['image_size']} px, each setting in its own "
            f"process. {measured_on(('', r))}",
        ]
    )


def p8_night() -> str:
    r = result("P8")
    runs = [("first run", r["first_run"]), ("+5 % night, warm start", r["nightly"]),
            ("full retrain, same grown data", r["full_retrain_same_data"])]  # fmt: skip
    rows = [(stage, *(num(run["stages_s"].get(stage)) for _, run in runs)) for stage in STAGES]
    rows.append(("outside the stages", *(num(run["outside_stages_s"]) for _, run in runs)))
    rows.append(("**in all**", *(f"**{num(run['seconds'])}**" for _, run in runs)))
    rows.append(("of the first run", *(pct(run["seconds"] / r["first_run"]["seconds"]) for _, run in runs)))
    night = r["nightly"]
    return "\n".join(
        [
            table(["seconds", *(label for label, _ in runs)], rows, right=(1, 2, 3)),
            "",
            f"The night: {night['new_photos']} new photos on {night['photos_before']:,} (train split "
            f"{night['train_examples_before']:,} -> {night['train_examples_after']:,}); 0.0 is a stage DVC "
            f"found up to date. {measured_on(('', r))}",
        ]
    )


def p8_models() -> str:
    r = result("P8")
    c = r["mcnemar_warm_vs_scratch"]
    disagree = c["challenger_wins"] + c["challenger_losses"]
    rows = [
        ("warm start from the champion", f"{c['warm_accuracy']:.3f}", seconds(r["nightly"]["seconds"])),
        ("from scratch", f"{c['scratch_accuracy']:.3f}", seconds(r["full_retrain_same_data"]["seconds"])),
    ]
    return "\n".join(
        [
            table(["on the grown data", "test accuracy", "wall time of the run"], rows, right=(1, 2)),
            "",
            " ".join(
                [
                    f"On the same {c['photos']} test photos they disagree on {disagree}: the warm start is",
                    f"right on {c['challenger_wins']}, the from-scratch model on {c['challenger_losses']}.",
                    f"McNemar's exact test, one-sided (warm start worse): p = {c['p_worse']:.2f};",
                    f"two-sided p = {c['p_two_sided']:.2f}. {measured_on(('', r))}",
                ]
            ),
        ]
    )


def p9() -> str:
    r = result("P9")
    marks = r["marks_s"]
    rows = []
    for name, run in r["runs"].items():
        at = {m["mark_s"]: m for m in run["marks"]}
        cells = []
        for t in marks:
            m = at.get(float(t))
            cells.append(
                "-"
                if m is None
                else f"{m['test_accuracy']:.3f} ({m['test_accuracy_apart']:.3f}), "
                f"epoch {m['epochs_done']:.2f}"
            )
        rows.append((f"`{name}`", f"{run['epochs_run']} / {run['epochs']}", num(run["images_per_s"]), *cells))
    coll = r["collection"]
    return "\n".join(
        [
            table(
                ["model / schedule", "epochs run / planned", "img/s", *(f"at {t // 60} min" for t in marks)],
                rows,
                right=(2,),
            ),
            "",
            f"Test accuracy on all {coll['test']:,} test photos (in parentheses: the sample's own test "
            f"photos, those `make run` scores) when the training clock passes each mark. Collection: "
            f"train {coll['train']:,} / val {coll['val']:,} / test {coll['test']:,}. {measured_on(('', r))}",
        ]
    )


def ablation() -> str:
    r = result("ablation")
    rows = []
    for row in r["rows"]:
        m = row["measured"]
        params = (
            ", ".join(f"`{k}: {json.dumps(v)}`" for k, v in row["params"].items())
            or "(params.yaml as committed)"
        )
        quiet = row["train_minutes_quiet"]
        quiet = "-".join(num(q) for q in quiet) if isinstance(quiet, list) else num(quiet)
        rows.append(
            (
                f"{row['change']}: {params}",
                f"{row['val_accuracy']:.4f} (epoch {row['best_epoch']}/{row['epochs']})",
                f"{row['test_accuracy']:.4f}",
                f"{row['robust_accuracy']:.4f}",
                num(100 * (row["test_accuracy"] - row["robust_accuracy"])),
                num(row["log_loss"], 3) if row["log_loss"] is not None else "-",
                num(row["ece"], 3) if row["ece"] is not None else "-",
                f"{quiet} ({row['minutes_kind']})",
                f"`{m['commit'][:7]}`, {m['date'][:10]}, {load_of(m)}",
            )
        )
    machines = sorted({row["measured"]["machine"] for row in r["rows"]})
    return "\n".join(
        [
            table(
                [
                    "change",
                    "val accuracy",
                    "test accuracy",
                    "robust accuracy",
                    "test - robust (points)",
                    "log loss",
                    "ECE",
                    "train minutes, quiet",
                    "measured",
                ],
                rows,
                right=(2, 3, 4, 5, 6),
            ),
            "",
            f"Machine: {'; '.join(machines)}. Commit, date and load recovered from the commits that recorded "
            f"each row (git log). {r['notes']}",
        ]
    )


def multiworker() -> str:
    r = result("multiworker")
    rows = [
        ("one process", num(r["single"]["train_images_per_s"]), seconds(r["single"]["wall_time_s"])),
        ("two workers on loopback (one machine)", num(r["two_workers"]["train_images_per_s"]),
         seconds(r["two_workers"]["wall_time_s"])),
    ]  # fmt: skip
    same = "identical" if r["workers_identical_weights"] else "different"
    return "\n".join(
        [
            table(
                [f"{r['epochs']} epochs of the default model", "img/s", "training wall time"],
                rows,
                right=(1, 2),
            ),
            "",
            f"Two workers run at {r['throughput_ratio']:.2f}x one process, with {same} weights on both "
            f"workers. {measured_on(('', r))}",
        ]
    )


# --------------------------------------------------------------------------- the label audit


def audit() -> str:
    r = result("audit")
    champ = r["champion"]
    rows = []
    for size, b in sorted(r["per_batch_size"].items(), key=lambda kv: -int(kv[0])):
        rows.append(
            (
                f"{int(size):,}",
                f"{b['false_alarms']} of {b['clean_batches']} (smallest p {b['clean_p_value_min']:.2f})",
                f"{b['caught']} of {b['swapped_batches']} (largest p {b['swapped_p_value_max']:.3f})",
                f"{pct(b['clean_disagreement_rate_mean'])} / {pct(b['swapped_disagreement_rate_mean'])}",
                f"{b['clean_contradicted_mean']:.1f} / {b['swapped_contradicted_mean']:.1f}",
            )
        )
    swapped = pct(r["swapped_fraction"], 0)
    s = r["audit_settings"]
    return "\n".join(
        [
            table(
                [
                    "photos per batch",
                    "clean batches tripped (false alarms)",
                    f"batches with {swapped} of labels swapped, caught",
                    "mean disagreement, clean / swapped",
                    "confidently contradicted per batch, clean / swapped",
                ],
                rows,
                right=(0,),
            ),
            "",
            f"The champion: {champ['how']}; test accuracy {champ['test_accuracy']:.3f} on "
            f"{champ['test_photos']:,} photos, so a normal disagreement rate of "
            f"{pct(champ['normal_rate'])}. {r['photos_scored']:,} photos of petimages-16k (disjoint from the "
            f"sample) scored by the audit's own scorer at {num(r['scoring_photos_per_s'], 0)} photos/s; "
            f"the audit's decision taken on disjoint batches with `audit` settings confidence "
            f"{s['confidence']}, tolerance {s['tolerance']}, alpha {s['alpha']}, min_photos "
            f"{s['min_photos']}; {minutes(r['bench_seconds'])} in all. {measured_on(('', r))}",
        ]
    )


# --------------------------------------------------------------------------- the quality flags


# flag: (its measure, clean.parquet's column, its limit in clean.flags, whether it flags above the limit)
FLAG_MEASURES = {
    "near_blank": ("standard deviation of the grey levels", "grey_std", "near_blank_contrast", False),
    "dark": ("99th percentile grey level", "grey_p99", "dark_level", False),
    "bright": ("5th percentile grey level", "grey_p05", "bright_level", True),
    "blurry": ("variance of the Laplacian of a half-size grey copy", "sharpness", "blurry_sharpness", False),
    "low_information": ("entropy of the grey levels, bits", "entropy", "low_information_bits", False),
}


def flags() -> str:
    r = result("flags")
    colls = r["collections"]
    names = sorted(colls, key=lambda n: colls[n]["kept"])  # the sample first

    def share(c: Result, n: int) -> str:
        return f"{n:,}" if not n else f"{n:,} ({pct(n / c['kept'], 2)})"

    rows = []
    for flag, (measure, column, limit, above) in FLAG_MEASURES.items():
        when = f"{'above' if above else 'below'} {r['limits'][limit]:g}"
        rows.append(
            (
                f"`{flag}`",
                f"{measure} (`{column}`)",
                f"{when} (`{limit}`)",
                *(share(colls[n], colls[n]["per_flag"][flag]) for n in names),
            )
        )
    rows.append(("any", "", "", *(share(colls[n], colls[n]["any"]) for n in names)))
    extremes = []
    for n in names:
        e = colls[n]["extremes"]
        extremes.append(
            f"{n}: the darkest photo's 99th percentile {e['grey_p99']['value']:.0f}, the brightest 5th "
            f"percentile {e['grey_p05']['value']:.0f}, the flattest photo's standard deviation "
            f"{e['grey_std']['value']:.1f}, the lowest sharpness {e['sharpness']['value']:.1f}, the lowest "
            f"entropy {e['entropy']['value']:.2f} bits (median {colls[n]['entropy_median']:.2f})"
        )
    cost = r["cost"]
    return "\n".join(
        [
            table(
                ["flag", "measure (clean.parquet column)", "flagged when (`clean.flags`)"]
                + [f"{n} ({colls[n]['kept']:,} kept)" for n in names],
                rows,
                right=tuple(range(3, 3 + len(names))),
            ),
            "",
            f"Measured on the photo as the shard stage stores it (longer side at most {r['max_side']} px). "
            f"Among the kept photos, {'; '.join(extremes)}. Cost: the measures take "
            f"{cost['measures_ms_median']:.2f} ms of CPU per photo of a whole check of "
            f"{cost['check_ms_median']:.2f} ms (medians over {cost['photos']:,} photos of the sample, one "
            f"process). `python -m bench.flags`. {measured_on(('', r))}",
        ]
    )


# --------------------------------------------------------------------------- P10, a month of nights


def p10_result() -> tuple[Result, bool]:
    """P10's results and whether they are the quick harness run: bench/results/P10.json once the month has
    been run (python -m bench.p10_month writes it), else P10-quick.json."""
    r = result("P10") if (RESULTS / "P10.json").exists() else result("P10-quick")
    return r, r["figure"].startswith("quick")


def p10_label(r: Result, quick: bool) -> str:
    if not quick:
        return f"The month: {len(r['per_night'])} nights of `python -m bench.p10_month`."
    train = r["params"]["train"]
    first = r["per_night"][0]["run"]["photos"]["total"]
    said = (
        f"**The quick harness run** (`python -m bench.p10_month --quick`: {len(r['per_night'])} nights "
        f"starting from {first:,} of the sample's photos, a {train['epochs']}-epoch model at "
        f"{train['image_size']} px): it shows that the harness works; its accuracies and times say nothing "
        "about pawflow's."
    )
    if not any(n.get("audit_present") for n in r["per_night"]):
        said += " The build it ran had no label audit (`reports/audit.json`), so the swapped night went in."
    elif not any(
        (n["run"].get("audit") or {}).get("tripped") for n in r["per_night"] if n["kind"] == "swapped"
    ):
        said += (
            " Its model guesses, so the label audit let the swapped batch in: it trips only where the "
            "champion disagrees with a batch well beyond its own test error."
        )
    return said


def p10_nights() -> str:
    r, quick = p10_result()
    rows = []
    for n in r["per_night"]:
        run = n["run"]
        t = run.get("trained")
        if t:
            trained = f"{'warm #' + str(t['count']) if t['warm_start'] else 'scratch'}, {t['epochs']} ep"
            scores = f"{run['test_accuracy']:.3f} / {run['robust_accuracy']:.3f}"
            gate = run.get("gate") or "-"
        else:
            trained, scores = "no", "-"
            audit = run.get("audit") or {}
            gate = (
                "run failed"
                if run.get("outcome") != "completed"
                else "quarantined"
                if audit.get("tripped")
                else "no new data"
                if run.get("no_new_data")
                else "-"
            )
        photos = run.get("photos") or {}
        rows.append(
            (
                n["night"],
                n["deployment"],
                n["kind"],
                "-" if not photos else f"{photos['total']:,} (+{run.get('new_photos') or 0:,})",
                "-" if run.get("rejected_new_count") is None else f"{run['rejected_new_count']:,}",
                trained,
                scores,
                gate,
                f"`{run['champion_sha256'][:8]}`" if run.get("champion_sha256") else "-",
                num(n["seconds"], 0),
                ", ".join(a["event"] for a in n["alerts"]) or "-",
            )
        )
    return "\n".join(
        [
            table(
                [
                    "night",
                    "deployment",
                    "kind",
                    "photos (+new)",
                    "new rejected",
                    "trained",
                    "test / robust accuracy",
                    "gate",
                    "champion",
                    "seconds",
                    "alerts",
                ],
                rows,
                right=(0, 3, 4, 9),
            ),
            "",
            f"{p10_label(r, quick)} Seconds: the deployment run, as `prefect deployment run --watch` waited "
            f"for it. {measured_on(('', r))}",
        ]
    )


def interpolate(points: list[dict], photos: int) -> float:
    """A from-scratch run's seconds at `photos`, between the measured points (the nearest two)."""
    pts = sorted((p["photos"], p["seconds"]) for p in points)
    if len(pts) == 1:
        return pts[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if photos <= x1 or (x1, y1) == pts[-1]:
            return y0 + (y1 - y0) * (photos - x0) / (x1 - x0) if x1 != x0 else y1
    return pts[-1][1]


def night_share(night: dict, refs: list[dict]) -> float:
    """A night's seconds against a from-scratch run on its collection (interpolated between refs)."""
    photos = (night["run"].get("photos") or {}).get("total") or 0
    return night["seconds"] / interpolate(refs, photos)


def cost_note(r: Result) -> str:
    """Where the nights' time went against the from-scratch references: warm starts, from-scratch nights
    the warm-start policy asked for, and the load the nights ran under."""
    refs = r.get("scratch_runs") or []
    nights = [
        n
        for n in r["per_night"]
        if n["night"]
        and n["kind"] == "batch"
        and n["deployment"] == "retrain-nightly"
        and n["run"].get("trained")
    ]
    if not refs or not nights:
        return ""

    warm = [night_share(n, refs) for n in nights if n["run"]["trained"]["warm_start"]]
    cold = [night_share(n, refs) for n in nights if not n["run"]["trained"]["warm_start"]]
    loads = [n["load_average"][0] for n in r["per_night"]]
    said = (
        f"Where the nights' time went: of the {len(nights)} nightly runs that trained, {len(warm)} "
        f"warm-started (mean {pct(sum(warm) / len(warm), 0)} of a from-scratch run on their collection) "
        if warm
        else ""
    )
    if cold:
        said += (
            f"and {len(cold)} trained from scratch because the warm-start policy asked for it "
            f"(`train.finetune.max_growth`, `max_warm_starts`: mean {pct(sum(cold) / len(cold), 0)}); "
        )
    return said + (
        f"the nights shared the machine with other work (1-minute load average {num(min(loads))} to "
        f"{num(max(loads))} on its 2 cores, recorded per night), the references ran alone. "
    )


def p10_targets() -> str:
    r, quick = p10_result()
    t, f = r["targets"], r["figures"]
    yes = {True: "yes", False: "no", None: "-"}
    identical = sum(1 for x in f["restored"] if x["identical"])
    acc = f["champion_sample_accuracy_by_night"]
    last = acc[max(acc, key=int)] if acc else None
    share = f["mean_night_cost_share"]
    empty = f["empty_night_s_max"]
    growth = f["cache_growth"]
    rows = [
        ("every run listed by `pawflow history`", yes[f["every_run_listed"]], yes[f["every_run_listed"]]),
        (
            f"{t['restored_runs']} runs restored byte-identical (`pawflow restore`, sha256)",
            f"{identical} of {len(f['restored'])}",
            yes[identical >= t["restored_runs"]],
        ),
        (
            f"the champion >= {t['accuracy_last_night']:.2f} on the sample's test photos, last night",
            "-" if last is None else f"{last['accuracy']:.3f} on {last['photos']:,} photos",
            yes[None if last is None else last["accuracy"] >= t["accuracy_last_night"]],
        ),
        (
            f"a night with new photos <= {pct(t['night_cost_share'], 0)} of a from-scratch run on its "
            "collection (mean)",
            pct(share),
            yes[None if share is None else share <= t["night_cost_share"]],
        ),
        (
            f"an empty night <= {seconds(t['empty_night_s'])}",
            seconds(empty),
            yes[None if empty is None else empty <= t["empty_night_s"]],
        ),
    ]
    for kind, b in f["bad_nights"].items():
        checks = (("kept", "champion_kept"), ("alerted", "alerted"), ("next normal", "next_night_normal"))
        said = ", ".join(f"{what} {yes[b[key]]}" for what, key in checks)
        ok = all(b[key] for _, key in checks)
        rows.append((f"the {kind} night: champion kept, an alert, the next night normal", said, yes[ok]))
    ratio = growth.get("ratio")
    rows += [
        (
            f"DVC cache growth <= {t['cache_growth_ratio']}x new photos + new shards + kept models",
            "-" if ratio is None else f"{ratio:.2f}x",
            yes[None if ratio is None else ratio <= t["cache_growth_ratio"]],
        ),
        ("no process left behind", ", ".join(f["left_behind"]) or "none", yes[not f["left_behind"]]),
    ]
    db, hist, rss = growth["prefect_db_bytes"], growth["runs_jsonl_bytes"], growth["serve_rss_mb"]
    nights_s = sum(n["seconds"] for n in r["per_night"])
    again = r.get("restored_again")
    restored_note = (
        f"The restores were run again after the month (`python -m bench.p10_month --restore-again`, commit "
        f"`{again['commit'][:7]}`, {again['date'][:10]}): the month's build refused them, as the benchmark "
        "had committed a new webhook port to params.yaml since the last run; restore now refuses only what "
        "it would lose. "
        if again
        else ""
    )
    refs_s = sum(x["seconds"] for x in r.get("scratch_runs") or [])
    took = f"The nights' deployment runs took {num(nights_s / 3600, 2)} h"
    took += f" and the from-scratch references {num(refs_s / 3600, 2)} h. " if refs_s else ". "
    return "\n".join(
        [
            table(["target", "measured", "met"], rows),
            "",
            took + cost_note(r) + restored_note + f"Over the {f['nights']} nights the Prefect database "
            f"grew from {num(db[0] / 1e6)} to "
            f"{num(db[1] / 1e6)} MB and `reports/runs.jsonl` from {num(hist[0] / 1e3)} to "
            f"{num(hist[1] / 1e3)} KB; the serving processes used {num(rss[0], 0)} MB at the start, "
            f"{num(rss[1], 0)} MB at most, {num(rss[2], 0)} MB at the end. {p10_label(r, quick)} "
            f"{measured_on(('', r))}",
        ]
    )


# --------------------------------------------------------------------------- parameters


PARAMS_FILE = ROOT / "params.yaml"
# The keys each page shows with their shipped value and params.yaml's own comment on them.
PARAM_TABLES: dict[str, tuple[str, ...]] = {
    "params-nightly": (
        "pipeline.schedule",
        "pipeline.full_schedule",
        "pipeline.timezone",
        "pipeline.push",
        "pipeline.keep_runs",
        "pipeline.keep_history",
        "pipeline.alert_url",
        "pipeline.alert_timeout_s",
        "pipeline.alert_reject_fraction",
        "train.finetune.epochs",
        "train.finetune.max_growth",
        "train.finetune.max_warm_starts",
    ),
    "params-collection": (
        "paths.exclude",
        "ingest.mode",
        "ingest.max_removed_fraction",
        "audit.confidence",
        "audit.tolerance",
        "audit.alpha",
        "audit.min_photos",
    ),
    "params-runner": (
        "runner.kind",
        "runner.workers",
        "runner.chunk_size",
        "runner.dask_address",
        "runner.connect_timeout_s",
        "runner.no_worker_timeout_s",
    ),
    "params-sources": (
        "ingest.source",
        "ingest.sha256",
        "ingest.download_retries",
        "ingest.download_timeout_s",
        "ingest.download_deadline_s",
        "ingest.max_download_bytes",
        "ingest.max_archive_bytes",
        "clean.max_reject_fraction",
    ),
}


def params_comments(text: str) -> dict[str, str]:
    """key.path -> its comment in params.yaml: the comment block just above the key, then the comment on
    its line and the comment lines under it that are indented further than the key."""
    comments: dict[str, list[str]] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the keys enclosing the current line
    above: list[str] = []
    last: tuple[int, str] | None = None  # the last key seen, and its indent
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if not stripped:
            above, last = [], None
            continue
        if stripped.startswith("#"):
            words = stripped.lstrip("#").strip()
            if last is not None and indent > last[0]:
                comments[last[1]].append(words)
            else:
                above.append(words)
            continue
        key = re.match(r"([A-Za-z_][\w]*):(.*)$", stripped)
        if not key:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key[1]])
        rest = key[2]
        inline = rest.split(" #", 1)[1].strip() if " #" in rest else ""
        comments[path] = [*above, *([inline] if inline else [])]
        above = []
        stack.append((indent, key[1]))
        last = (indent, path)
    return {k: " ".join(v) for k, v in comments.items()}


def yaml_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def param_table(keys: Sequence[str]) -> str:
    import yaml  # PyYAML, as pawflow reads params.yaml

    text = PARAMS_FILE.read_text(encoding="utf-8")
    shipped, comments = yaml.safe_load(text), params_comments(text)
    rows = []
    for key in keys:
        node: Any = shipped
        for part in key.split("."):
            node = node[part]
        cell = comments[key].replace("|", "\\|")
        rows.append((f"`{key}`", f"`{yaml_value(node)}`", cell))
    return "\n".join(
        [
            table(["key", "shipped", "what it does (params.yaml's comment)"], rows),
            "",
            "From `params.yaml`, as shipped.",
        ]
    )


TABLES: dict[str, Callable[[], str]] = {
    "make-run": make_run,
    "summary": summary,
    "p1": p1,
    "p2": p2,
    "p3-nights": p3_nights,
    "p3-where": p3_where,
    "p3-sizes": p3_sizes,
    "p3-per-photo": p3_per_photo,
    "p4": p4,
    "p5": p5,
    "p6": p6,
    "p7": p7,
    "p8-night": p8_night,
    "p8-models": p8_models,
    "p9": p9,
    "ablation": ablation,
    "multiworker": multiworker,
    "audit": audit,
    "flags": flags,
    "p10-nights": p10_nights,
    "p10-targets": p10_targets,
    **{name: (lambda keys=keys: param_table(keys)) for name, keys in PARAM_TABLES.items()},
}


# --------------------------------------------------------------------------- the documents


def documents() -> list[Path]:
    return sorted({p for pattern in DOCUMENTS for p in ROOT.glob(pattern)})


def render(text: str, where_from: Path) -> str:
    """text with every table between markers regenerated; an unknown name is an error."""

    def fill(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in TABLES:
            raise SystemExit(
                f"{where_from.relative_to(ROOT)}: no table named {name!r} (known: {', '.join(TABLES)})"
            )
        return f"{match[1]}{TABLES[name]()}\n{match[4]}"

    return BLOCK.sub(fill, text)


def write_text(path: Path, text: str) -> None:
    """path's new text, written to a temporary name beside it and renamed over it."""
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp"
    ) as f:
        f.write(text)
    os.replace(f.name, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs")
    args = parser.parse_args(argv)
    stale = []
    used: set[str] = set()
    for path in documents():
        old = path.read_text(encoding="utf-8")
        used |= {m["name"] for m in BLOCK.finditer(old)}
        new = render(old, path)
        if new == old:
            continue
        stale.append(path)
        rel = str(path.relative_to(ROOT))
        if args.check:
            sys.stdout.writelines(
                difflib.unified_diff(old.splitlines(True), new.splitlines(True), rel, rel + " (generated)")
            )
        else:
            write_text(path, new)
            print(f"rewrote the tables of {rel}")
    unused = sorted(set(TABLES) - used)
    if unused:
        print(f"tables shown nowhere: {', '.join(unused)} (add their markers to a document)", file=sys.stderr)
        return 1
    if args.check and stale:
        print(
            f"\n{len(stale)} document(s) hold tables that differ from bench/results/: "
            "run `python -m bench.tables`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
