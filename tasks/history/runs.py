"""What a run did, as facts: the record `pawflow history` lists, a version's message holds and the
summary artifact and the alerts are written from. Plain functions of reports, manifests and earlier
facts (no git, no DVC, no Prefect), so that every figure is testable on its own.

A run's facts (a JSON object; every key always present, null when it does not apply):
  id, started, finished, wall_s, entry, flow_run_id, flow_run_url, outcome ("completed" | "failed"),
  error, no_new_data, stages, photos {total, per_class}, new_photos, new_per_class, new_examples,
  removed_photos, removed_per_class, rejected {total, per_reason}, rejected_new, rejected_new_count,
  new_files, duplicates {exact, near, conflict}, split_moves, trained {warm_start, count, epochs} | null,
  test_accuracy, robust_accuracy, f1_macro, examples, gate, gate_reason, p_value, champion_accuracy,
  promoted, model_sha256, champion_sha256, sha256 {path: sha256}, audit {tripped, reason} | null,
  changes {vs_previous: {...}, vs_champion: {...}}
"""

from __future__ import annotations

import html
import io
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.core.status import ran
from tasks.core.text import md

if TYPE_CHECKING:
    from tasks.history.records import StageLine

# How many photo names a record lists (per kind: new, rejected); the counts are always complete.
EXAMPLES = 10
METRICS = ("test_accuracy", "robust_accuracy", "f1_macro")


def run_id(started: datetime) -> str:
    """A run's id: its UTC start time, which sorts as the runs happened (20261205-030001)."""
    return started.strftime("%Y%m%d-%H%M%S")


def arrivals(previous: pd.DataFrame | None, current: pd.DataFrame) -> dict[str, Any]:
    """New and removed photos between two ingest manifests (columns path, label, sha256): a photo is
    new when its (path, label, sha256) was not in the previous manifest, removed when it is no longer
    in the current one (a relabelled or rewritten photo is both). No previous manifest: all are new."""
    keys = ["path", "label", "sha256"]
    cur = current[keys].drop_duplicates()
    prev = previous[keys].drop_duplicates() if previous is not None else cur.iloc[0:0]
    merged = cur.merge(prev, on=keys, how="outer", indicator=True)
    new = merged[merged["_merge"] == "left_only"]
    gone = merged[merged["_merge"] == "right_only"]
    return {
        "new_photos": len(new),
        "new_per_class": {str(k): int(v) for k, v in sorted(Counter(new["label"]).items())},
        "new_examples": sorted(new["path"].astype(str))[:EXAMPLES],
        "new_paths": set(new["path"].astype(str)),
        "removed_photos": len(gone),
        "removed_per_class": {str(k): int(v) for k, v in sorted(Counter(gone["label"]).items())},
    }


def rejected_among(rejected_files: Sequence[Mapping[str, Any]], new_paths: set[str]) -> dict[str, Any]:
    """Clean's rejections of this run's new files: how many, per reason, and the first few with reasons."""
    mine = [r for r in rejected_files if r["path"] in new_paths]
    return {
        "rejected_new_count": len(mine),
        "rejected_new": [
            {"path": r["path"], "reason": r["reason"]} for r in sorted(mine, key=lambda r: r["path"])
        ][:EXAMPLES],
    }


def stage_figures(lines: Sequence[StageLine], started: str) -> dict[str, dict]:
    """The figures of the stage lines written since `started` (ISO), latest per stage."""
    return {line.stage: line.model_dump() for line in lines if line.finished >= started}


def trained(stages: dict[str, str], train_report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """How this run trained (None when train did not run in it)."""
    if not ran(stages, "train") or train_report is None:
        return None
    warm = train_report.get("warm_start")
    return {
        "warm_start": bool(warm),
        "count": warm["count"] if warm else 0,
        "epochs": train_report.get("epochs_run"),
    }


def champion_run(history: Sequence[dict]) -> dict | None:
    """The newest earlier run whose model became champion (history newest first)."""
    return next((f for f in history if f.get("promoted")), None)


def _delta(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else round(float(a) - float(b), 6)


def changes(facts: dict, previous: dict | None, champion: dict | None) -> dict[str, dict]:
    """Metric and collection deltas against the previous run and against the champion before this run.
    Against the champion, test accuracy is the gate's own paired figure (same photos) when there is one."""
    vs_prev = {}
    if previous:
        vs_prev = {m: _delta(facts.get(m), previous.get(m)) for m in METRICS}
        vs_prev["photos"] = _delta(facts["photos"]["total"], (previous.get("photos") or {}).get("total"))
    vs_champ = {}
    if champion or facts.get("champion_accuracy") is not None:
        champ = champion or {}
        vs_champ = {m: _delta(facts.get(m), champ.get(m)) for m in METRICS}
        if facts.get("champion_accuracy") is not None:
            vs_champ["test_accuracy"] = _delta(facts.get("test_accuracy"), facts["champion_accuracy"])
        vs_champ["champion_run"] = champ.get("id")
    return {"vs_previous": vs_prev, "vs_champion": vs_champ}


def gate_sentence(facts: dict) -> str:
    """The gate's decision as one sentence a person reads."""
    if facts.get("outcome") == "failed":
        return f"The run failed before a decision: {facts.get('error') or 'see its log'}."
    if facts.get("gate") is None:
        return "No model was evaluated yet."
    if not ran(facts.get("stages") or {}, "evaluate"):
        return "Nothing was retrained, so the gate did not decide again; the champion stays."
    reason = facts.get("gate_reason") or ""
    if facts["gate"] == "promoted":
        return f"The new model became champion: {reason}."
    return f"The champion was kept: {reason}."


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}%"


def _signed_points(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):+.1f} pt"


def per_class_text(counts: dict[str, int], sign: str, name: Callable[[str], str] = str) -> str:
    """ "+3 Cat, +1 Dog"; name: how a class name is written (tasks.core.text.md in Markdown)."""
    return ", ".join(f"{sign}{n} {name(c)}" for c, n in counts.items() if n) or f"{sign}0"


def trained_text(t: dict | None) -> str:
    if not t:
        return "no"
    return f"warm #{t['count']}, {t['epochs']} ep" if t["warm_start"] else f"scratch, {t['epochs']} ep"


def history_line(f: dict) -> dict[str, str]:
    """One run as the columns of `pawflow history`."""
    photos = f.get("photos") or {}
    if f.get("outcome") == "failed":
        what = "FAILED: " + (f.get("error") or "")[:60]
    elif f.get("no_new_data"):
        what = "no new data"
    else:
        what = f"{per_class_text(f.get('new_per_class') or {}, '+')}"
        if f.get("removed_photos"):
            what += f"; {per_class_text(f['removed_per_class'], '-')}"
    return {
        "id": f["id"],
        "when": (f.get("started") or "")[:16].replace("T", " "),
        "entry": f.get("entry") or "",
        "photos": str(photos.get("total", "-")),
        "change": what,
        "rejected": str((f.get("rejected") or {}).get("total", "-")),
        "dups": str(sum((f.get("duplicates") or {}).values()) if f.get("duplicates") else "-"),
        "trained": trained_text(f.get("trained")),
        "test": _pct(f.get("test_accuracy")),
        "robust": _pct(f.get("robust_accuracy")),
        "gate": (f.get("gate") or "-") if ran(f.get("stages") or {}, "evaluate") else "-",
        "champion": (f.get("champion_sha256") or "")[:10] or "-",
        "wall": "-" if f.get("wall_s") is None else f"{f['wall_s']:.0f}s",
    }


def history_table(runs: Sequence[dict]) -> str:
    """`pawflow history`: one line per run, newest first, aligned columns."""
    rows = [history_line(f) for f in runs]
    if not rows:
        return "no runs recorded yet"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols).rstrip()]
    lines += ["  ".join(r[c].ljust(width[c]) for c in cols).rstrip() for r in rows]
    return "\n".join(lines)


def detail(f: dict) -> str:
    """`pawflow history ID`: one run in full."""
    photos = f.get("photos") or {}
    ch = f.get("changes") or {}
    lines = [
        f"run {f['id']} ({f.get('entry')}, {f.get('outcome')}): started {f.get('started')}, "
        + ("-" if f.get("wall_s") is None else f"{f['wall_s']:.0f} s"),
    ]
    if f.get("flow_run_url"):
        lines.append(f"  Prefect run: {f['flow_run_url']}")
    if f.get("version"):
        lines.append(f"  version: {f['version']} (pawflow restore {f['id']})")
    if f.get("outcome") == "failed":
        lines.append(f"  error: {f.get('error')}")
    if photos:
        per = ", ".join(f"{n} {c}" for c, n in (photos.get("per_class") or {}).items())
        lines.append(f"  photos: {photos.get('total')} ({per})")
    if f.get("no_new_data"):
        lines.append("  no new data: the source had not changed; nothing was retrained")
    lines.append(
        f"  arrived: {f.get('new_photos', 0)} ({per_class_text(f.get('new_per_class') or {}, '+')})"
        + (f", e.g. {', '.join(f['new_examples'][:3])}" if f.get("new_examples") else "")
    )
    lines.append(
        f"  removed: {f.get('removed_photos', 0)} ({per_class_text(f.get('removed_per_class') or {}, '-')})"
    )
    rej = f.get("rejected") or {}
    reasons = ", ".join(f"{k} {v}" for k, v in (rej.get("per_reason") or {}).items())
    lines.append(
        f"  rejected: {rej.get('total', 0)} in the collection ({reasons or 'none'}); "
        f"{f.get('rejected_new_count', 0)} of this run's {f.get('new_files', 0)} new files"
    )
    for r in f.get("rejected_new") or []:
        lines.append(f"    {r['path']}: {r['reason']}")
    d = f.get("duplicates") or {}
    if d:
        lines.append(
            f"  duplicates: {d.get('exact', 0)} exact, {d.get('near', 0)} near, "
            f"{d.get('conflict', 0)} in label conflicts"
        )
    lines.append(f"  split moves: {f.get('split_moves') or 0} photo(s) changed split")
    lines.append(f"  trained: {trained_text(f.get('trained'))}")
    lines.append(
        f"  test accuracy {_pct(f.get('test_accuracy'))}, robust {_pct(f.get('robust_accuracy'))}, "
        f"F1 {_pct(f.get('f1_macro'))}"
    )
    for name, key in (("previous run", "vs_previous"), ("champion", "vs_champion")):
        c = ch.get(key) or {}
        if c:
            lines.append(
                f"  vs the {name}: test {_signed_points(c.get('test_accuracy'))}, robust "
                f"{_signed_points(c.get('robust_accuracy'))}"
                + (f", photos {c['photos']:+.0f}" if c.get("photos") is not None else "")
                + (f" (champion from run {c['champion_run']})" if c.get("champion_run") else "")
            )
    lines.append(f"  gate: {gate_sentence(f)}")
    if f.get("audit"):
        tripped = "TRIPPED" if f["audit"].get("tripped") else "ok"
        lines.append(f"  label audit: {tripped}: {f['audit'].get('reason')}")
    lines.append(f"  champion: {f.get('champion_sha256') or '-'}")
    lines.append(f"  model:    {f.get('model_sha256') or '-'}")
    return "\n".join(lines)


def headline(f: dict) -> str:
    """A version's commit subject after its id."""
    if f.get("no_new_data"):
        what = "no new data"
    else:
        what = f"+{f.get('new_photos', 0)} -{f.get('removed_photos', 0)} photos"
    return f"{f.get('entry')}, {what}, test {_pct(f.get('test_accuracy'))}, gate {f.get('gate') or '-'}"


def changes_markdown(f: dict) -> str:
    """The summary artifact's part on what changed (markdown)."""
    ch = f.get("changes") or {}
    lines = ["", "### What changed", ""]
    arrived = per_class_text(f.get("new_per_class") or {}, "+", md)
    lines.append(f"- **arrived**: {f.get('new_photos', 0)} ({arrived})")
    lines.append(
        f"- **removed**: {f.get('removed_photos', 0)} "
        f"({per_class_text(f.get('removed_per_class') or {}, '-', md)})"
    )
    lines.append(
        f"- **rejected** among the new files: {f.get('rejected_new_count', 0)} of {f.get('new_files', 0)}"
    )
    for r in f.get("rejected_new") or []:
        lines.append(f"  - {md(r['path'])}: {r['reason']}")
    d = f.get("duplicates") or {}
    lines.append(
        f"- **duplicates** (collection): {d.get('exact', 0)} exact, {d.get('near', 0)} near, "
        f"{d.get('conflict', 0)} in conflicts; **split moves**: {f.get('split_moves') or 0}"
    )
    for name, key in (("previous run", "vs_previous"), ("champion", "vs_champion")):
        c = ch.get(key) or {}
        if c:
            lines.append(
                f"- **vs the {name}**: test accuracy {_signed_points(c.get('test_accuracy'))}, "
                f"robust {_signed_points(c.get('robust_accuracy'))}"
            )
    lines.append(f"- **gate**: {gate_sentence(f)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the history page


def chart_svg(runs: Sequence[dict]) -> str:
    """Test accuracy of the champion and of each run's evaluated model (the candidate) over the runs,
    oldest first, as an inline SVG (matplotlib, no external resources)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = champion_accuracy_series(runs)
    pairs = [
        (f, c)
        for f, c in zip(reversed(runs), reversed(series), strict=True)
        if f.get("test_accuracy") is not None
    ]
    done = [f for f, _ in pairs]
    champ_acc = [c for _, c in pairs]
    xs = list(range(len(done)))
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=100)
    if done:
        # a candidate only where the run evaluated a model (other runs carry the last one's figures)
        candidate = [
            f["test_accuracy"] if ran(f.get("stages") or {}, "evaluate") else float("nan") for f in done
        ]
        ax.plot(xs, candidate, "o", color="#888", label="candidate (the model the run evaluated)")
        ax.step(
            xs,
            [c if c is not None else float("nan") for c in champ_acc],
            where="post",
            color="#1f6fb2",
            linewidth=2,
            label="champion",
        )
        ax.set_xticks(xs, [f["id"][4:13] for f in done], rotation=60, fontsize=7)
    ax.set_ylabel("test accuracy")
    ax.set_title("Champion and candidate test accuracy per run", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def history_html(runs: Sequence[dict]) -> str:
    """`pawflow history --html FILE`: a self-contained page (inline SVG chart and a table)."""
    rows = [history_line(f) for f in runs]
    cols = list(rows[0]) if rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in cols) + "</tr>" for r in rows)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>pawflow run history</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}</style></head><body>"
        f"<h1>pawflow run history</h1><p>{len(runs)} run(s), newest first in the table.</p>"
        f"<figure>{chart_svg(runs)}</figure>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>\n"
    )


def history_markdown(runs_: Sequence[dict], most: int = 60) -> str:
    """The Prefect artifact `pipeline-history`: the newest runs, with the champion's and the candidate's
    test accuracy (`pawflow history --html FILE` draws them as a chart)."""
    lines = [
        "## pawflow run history (newest first)",
        "",
        "| run | entry | photos | change | trained | candidate test | champion test | gate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f, champ in list(zip(runs_, champion_accuracy_series(runs_), strict=True))[:most]:
        r = history_line(f)
        cells = [r["id"], r["entry"], r["photos"], r["change"], r["trained"], r["test"], _pct(champ)]
        cells.append(r["gate"])
        cells[3] = md(cells[3])  # the change names classes: the user's folders
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def champion_accuracy_series(runs_: Sequence[dict]) -> list[float | None]:
    """The champion's test accuracy after each run (same order as runs_, newest first)."""
    out: list[float | None] = []
    current: float | None = None
    for f in reversed(runs_):
        if f.get("promoted") and f.get("test_accuracy") is not None:
            current = f["test_accuracy"]
        elif current is None and f.get("champion_accuracy") is not None:
            current = f["champion_accuracy"]
        out.append(current)
    return list(reversed(out))
