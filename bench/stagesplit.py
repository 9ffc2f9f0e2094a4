"""Where the seconds of a `dvc repro -v` go, from its time-stamped output lines (bench.common.run_stamped).

Per stage that ran: DVC's checks before it (its dependencies hashed or looked up: data/raw, the
manifests), the stage process (interpreter and imports, Prefect: the `python -m flows.<stage>` start-up,
which includes reaching or starting the background server; then the stage's own work, which the process
prints as "pawflow <stage>: done in Xs") and DVC's bookkeeping after it (outputs hashed and cached,
dvc.lock written).
"""

from __future__ import annotations

import re

RUNNING = re.compile(r"Running stage '([a-z_]+)'")
DONE = re.compile(r"pawflow ([a-z_]+): done in ([\d.]+)s")
LOCK = re.compile(r"(Updating|Generating) lock file")
SERVER = re.compile(r"background Prefect server|Starting.*Prefect server", re.IGNORECASE)


def split(lines: list[tuple[float, str]], total_s: float) -> dict:
    """{stage: {dvc_before_s, startup_s, work_s, dvc_after_s, total_s}, plus the run's head and tail}."""
    stages: dict[str, dict] = {}
    current: str | None = None
    last_mark = 0.0  # the end of what was accounted for so far
    marks: dict[str, dict[str, float]] = {}
    for t, line in lines:
        if current and "server_line" in marks[current] and "server_next" not in marks[current]:
            marks[current]["server_next"] = t  # the first line after it: the server answered
        if m := RUNNING.search(line):
            current = m.group(1)
            marks[current] = {"before_from": last_mark, "running": t}
        elif current and (m := DONE.search(line)) and m.group(1) == current:
            marks[current].update(done=t, work=float(m.group(2)))
        elif current and SERVER.search(line) and "server_line" not in marks[current]:
            marks[current]["server_line"] = t
        elif current and LOCK.search(line) and "lock" not in marks[current]:
            marks[current]["lock"] = t
            last_mark = t
    for stage, m in marks.items():
        end = m.get("lock", total_s)
        done = m.get("done", end)
        work = m.get("work", 0.0)
        stages[stage] = {
            "dvc_before_s": round(m["running"] - m["before_from"], 1),
            "startup_s": round(done - m["running"] - work, 1),
            "work_s": round(work, 1),
            "dvc_after_s": round(end - done, 1),
            "total_s": round(end - m["before_from"], 1),
        }
        if "server_line" in m:  # part of startup_s: waiting for the background server to answer
            stages[stage]["prefect_server_start_s"] = round(m.get("server_next", done) - m["server_line"], 1)
    accounted = sum(s["total_s"] for s in stages.values())
    return {"stages": stages, "tail_s": round(total_s - accounted, 1)}


def summary(result: dict) -> dict[str, float]:
    """The run's seconds by where they went: DVC, process start-ups (incl. Prefect), the stages' work."""
    st = result["stages"].values()
    return {
        "dvc_bookkeeping_s": round(
            sum(s["dvc_before_s"] + s["dvc_after_s"] for s in st) + result["tail_s"], 1
        ),
        "process_startup_s": round(sum(s["startup_s"] for s in st), 1),
        "of_which_prefect_server_start_s": round(sum(s.get("prefect_server_start_s", 0) for s in st), 1),
        "stage_work_s": round(sum(s["work_s"] for s in st), 1),
    }


def ran_seconds(text: str | None) -> float | None:
    """A Prefect pipeline record's stage line ("ran (12.3s)", "skipped (...)") as seconds (0: skipped)."""
    if text is None:
        return None
    m = re.match(r"ran \(([\d.]+)s\)", text)
    return float(m.group(1)) if m else 0.0
