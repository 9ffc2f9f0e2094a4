"""Every Markdown artifact pawflow publishes to Prefect, in one place: the pipeline run's summary (from
the stage reports in reports/), the evaluation and the data-quality artifacts.

Numbers and pawflow's own words come as plain text from tasks.reports.present; every name that comes from the
user's photos (class folders, file paths, and the captions and titles that hold them) goes through
tasks.core.text.md, the one Markdown escaping, so that it shows as written; pictures are inlined as
data: URIs, which the Prefect UI shows (a file:// link to a report it cannot open). Pictures are
capped so that an artifact stays well under a megabyte: the server keeps one per run.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tasks.core.status import ran
from tasks.core.text import md
from tasks.reports import present
from tasks.reports.reports import AUDIT, CLEAN, DEDUP, GATE, METRICS, SHARD, TRAIN, Report

# The data-quality and evaluation builders take tasks.datareport's and tasks.evaluate's objects without
# importing those modules (not even for type checking): every reader of this module would then depend on
# the stage code, as tests/test_dvc_yaml.py counts imports.
T = TypeVar("T")
MARKDOWN_LINES = 50  # per list (duplicate groups, conflicts): the UI shows an artifact in one scroll
MARKDOWN_PICTURES = 4  # thumbnails per section of the data-quality artifact (~5 KB each)
MARKDOWN_MISTAKES = 8  # thumbnails of the evaluation artifact's mistakes (~7 KB each)


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
    return ["", f"**train**{origin}: {start}: {md(rep['start_reason'])}"]


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
        return "" if ran(stages, stage) else " (from an earlier run: up to date in dvc.lock)"

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
        changes = present.collection_line(collection, md)  # class names are the user's folders
        lines += ["", f"**ingest**: the collection follows the source: {changes}"]
    if clean:
        rejected = f"{present.count(clean['rejected'])} rejected"
        if clean["rejected"]:
            rejected += f" ({present.tally(clean['per_reason'])})"
        flagged = f"{present.count(clean['flagged'])} flagged"
        if clean["flagged"]:
            flagged += f" ({present.tally(clean['per_flag'])})"
        lines += [
            "",
            f"**clean**{origin('clean')}: {present.count(clean['files'])} files: "
            f"{present.count(clean['kept'])} kept, {rejected}; of the kept, {flagged}",
        ]
    if audit:
        flag = "**QUARANTINED**: " if audit["tripped"] and ran(stages, "audit") else ""
        lines += ["", f"**label audit**{origin('audit')}: {flag}{md(audit['reason'])}"]
    if dedup:
        lines += [
            "",
            f"**dedup**{origin('dedup')}: {present.count(dedup['exact_duplicates'])} exact and "
            f"{present.count(dedup['near_duplicates'])} near duplicates removed, "
            f"{present.count(dedup['conflict'])} photos in label conflicts dropped, "
            f"{present.count(dedup['excluded'])} excluded by you, "
            f"{present.count(dedup['quarantined'])} held in quarantine",
        ]
    if shard:
        lines += [
            "",
            f"**shard**{origin('shard')}:",
            "",
            "| split | " + " | ".join(md(n) for n in shard["class_names"]) + " |",
            "|---|" + "---|" * len(shard["class_names"]),
        ]
        lines += [
            f"| {md(s)} | " + " | ".join(present.count(c[n]) for n in shard["class_names"]) + " |"
            for s, c in shard["counts"].items()
        ]
    if "train" in stages:
        lines += warm_start_markdown(reports, origin("train"))
    if metrics:
        lines += [
            "",
            f"**test accuracy**{origin('evaluate')} {present.percent(metrics['accuracy'])} on "
            f"{present.count(metrics['examples'])} photos: F1 {present.percent(metrics['f1_macro'])}, "
            f"ROC AUC {present.decimal(metrics['roc_auc'])}, ECE {present.decimal(metrics['ece'])}",
        ]
        if "robust_accuracy" in metrics:
            lines += [
                "",
                f"**robustness slice** (the test photos as web photos arrive) "
                f"{present.percent(metrics['robust_accuracy'])}",
            ]
    if gate:
        lines += [
            "",
            f"**gate**{origin('evaluate')}: {present.gate_sentence(gate)}",
        ]
    if metrics or clean:
        lines += [
            "",
            "Pictures: the evaluation-report and data-quality artifacts; the full reports are "
            "reports/evaluation.html and reports/data.html in the workspace (they open offline).",
        ]
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


# --------------------------------------------------------------------------- pictures in Markdown


def picture(data: bytes, alt: str, kind: str = "png") -> str:
    """A picture inlined in Markdown (the Prefect UI draws data: URIs: no file or server needed)."""
    return f"![{md(alt)}](data:image/{kind};base64,{base64.b64encode(data).decode('ascii')})"


def picture_table(pictures: Sequence[tuple[str, str]], columns: int = 4) -> list[str]:
    """(caption, Markdown picture) as table rows: captions over their pictures, `columns` per row."""
    lines: list[str] = []
    for start in range(0, len(pictures), columns):
        row = pictures[start : start + columns]
        lines += [
            "| " + " | ".join(caption for caption, _ in row) + " |",
            "|" + "---|" * len(row),
            "| " + " | ".join(pic for _, pic in row) + " |",
            "",
        ]
    return lines


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: int = 0) -> list[str]:
    """A Markdown table; the last `right` columns are right-aligned (numbers)."""
    align = ["---"] * (len(header) - right) + ["---:"] * right
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


# --------------------------------------------------------------------------- evaluate


def evaluation_markdown(
    m: Mapping[str, Any],
    gate: Mapping[str, Any],
    tta: bool,
    pngs: Mapping[str, bytes],
    mistakes: Sequence[Any],
    scored: Any,
    run: Mapping[str, str],
) -> str:
    """The evaluate stage's artifact: the gate's decision, the key figures, what was scored (and, unlike
    the tracked report, when and by which commit: `run`), the plots and the worst mistakes
    (tasks.evaluate's Mistake and Scored)."""
    decision = "promoted" if gate["promoted"] else "not promoted"
    right = round(m["accuracy"] * m["examples"])
    of = f" ({present.count(right)} of {present.count(m['examples'])} photos)"
    accuracy = present.METRICS["accuracy"][0]
    figures = [
        (label, value + of if label == accuracy else value) for label, value, _ in present.metric_rows(m)
    ]
    lines = [f"## Evaluation: {decision}", "", present.gate_sentence(gate), ""]
    lines += _table(["", "test split"], figures, right=1)
    lines += ["**Gate**", ""]
    lines += _table(["check", "needs", "this model", "result"], present.gate_checks(gate))
    lines += ["**Per class**", ""]
    lines += _table(
        ["class", "precision", "recall", "F1", "test photos"],
        [
            (
                md(c),
                present.percent(v["precision"]),
                present.percent(v["recall"]),
                present.percent(v["f1"]),
                present.count(v["support"]),
            )
            for c, v in m["per_class"].items()
        ],
        right=4,
    )
    how = "each photo and its mirror image averaged" if tta else "each photo classified once"
    lines += [
        f"**Scored**: model sha256 `{scored.model_sha256}`; dataset_info.json sha256 "
        f"`{scored.dataset_sha256}`; {how} (evaluate.tta). " + ", ".join(f"{k} {v}" for k, v in run.items()),
        "",
        "Full report: reports/evaluation.html in the workspace (self-contained, opens offline).",
        "",
    ]
    lines += [picture(pngs[k], k) for k in ("training", "confusion", "roc", "calibration") if k in pngs]
    shown = mistakes[:MARKDOWN_MISTAKES]
    more = (
        f"{len(shown)} of {len(mistakes)}; the report shows all" if len(shown) < len(mistakes) else len(shown)
    )
    lines += ["", f"**Most confident mistakes** ({more})", ""]
    lines += picture_table(
        [
            (
                f"{md(x.path)}: {md(x.true)}, taken for {md(x.predicted)} "
                f"({present.percent(x.confidence, 0)} sure)",
                picture(x.thumbnail, x.path, "jpeg"),
            )
            for x in shown
        ],
        columns=3,
    ) or ["No mistakes: every test photo was classified right.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- data quality


def data_quality_markdown(r: Any, page: str) -> str:
    """The dedup stage's artifact: the counts and lists of reports/data.html (r: a
    tasks.reports.datareport.DataReport) and a few of its pictures (page: where the full report is, as
    text)."""

    def tiles(tiles: Sequence, caption) -> list[str]:
        drawn = [t for t in tiles if t.image][:MARKDOWN_PICTURES]
        return picture_table([(caption(t), f"![{md(t.path)}]({t.image})") for t in drawn])

    lines = ["## Data quality", ""]
    lines += _table(["", "files"], [(name, present.count(n)) for name, n in r.counts], right=1)
    if r.reasons:
        lines += ["**Rejected by clean**", ""]
        lines += _table(
            ["reason", "files", "what it means"],
            [(k, present.count(n), why) for k, n, why in r.reasons],
        )
        for g in r.rejected.groups:
            lines += tiles(g.tiles, lambda t: f"{md(t.path)}: {md(t.lines[0])}")
    lines += [f"**Kept, but worth a look**: {present.count(r.flagged_photos)} photos (never rejected)", ""]
    lines += _table(
        ["flag", "photos", "share of kept", "limit"],
        [(f.flag, present.count(f.total), present.share(f.total, r.kept), f.limit) for f in r.flagged],
    )
    for f in r.flagged:
        if f.total:
            lines += [f"*{f.flag}*: {f.meaning}", ""]
            lines += tiles(f.tiles, lambda t: f"{md(t.path)}: {md(t.lines[0])}")
    for title, section in (("Duplicate groups", r.duplicates), ("Label conflicts", r.conflicts)):
        lines += [f"**{title}**: {present.count(section.total)}", ""]
        groups = section.groups[:MARKDOWN_LINES]
        for g in groups:
            copies = ", ".join(f"{md(t.path)} ({md(t.lines[0])})" for t in g.tiles)
            lines.append(f"- {md(g.title)}: {copies}" + (f". {md(g.note)}" if g.note else ""))
        if section.total > len(groups):
            lines.append(f"- and {present.count(section.total - len(groups))} more")
        lines.append("")
    lines += [f"**Excluded by you** (in {r.exclude_file}): {present.count(r.excluded.total)}", ""]
    for g in r.excluded.groups:
        lines += [f"- {md(t.path)}: {md(t.lines[0])}" for t in g.tiles[:MARKDOWN_LINES]]
    lines += [f"- line {e.line} names no photo: {md(e.key)}" for e in r.unmatched[:MARKDOWN_LINES]]
    lines += [
        "",
        f"**Label audit**: {r.audit_reason or 'no audit yet'} "
        f"({present.count(r.contradicted.total)} photos confidently contradicted)",
        "",
        f"**Quarantine**: {present.count(r.quarantine.total)} batches held",
    ]
    lines += [f"- {md(g.title)}" for g in r.quarantine.groups[:MARKDOWN_LINES]]
    lines.append("")
    lines.append(
        "Every picture (rejected files, flagged photos, duplicate groups, conflicts, held-out photos): "
        f"{page} in the workspace (self-contained, opens offline)."
    )
    return "\n".join(lines)
