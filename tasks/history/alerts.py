"""Alerts: a JSON message POSTed to pipeline.alert_url when a run needs a person.

Three events: `run_failed` (the run failed; its one-line reason), `champion_kept` (the gate kept the
champion: the gate's sentence) and `data_quality` (more of a night's new files rejected than
pipeline.alert_reject_fraction, or the label audit tripped). A quiet "no new data" night sends nothing.
The message carries `text` too, so a Slack-compatible incoming webhook shows it as it is. Sending never
fails the run: errors are returned (and logged by the caller), with a timeout.
"""

from __future__ import annotations

from typing import Any

from tasks.core.status import ran
from tasks.history import runs

EVENTS = ("run_failed", "champion_kept", "data_quality")


def events(facts: dict, previous: dict | None, reject_fraction: float) -> list[tuple[str, str]]:
    """(event, one-line reason) for each reason this run has to alert; [] for a quiet night."""
    if facts.get("outcome") == "failed":
        return [("run_failed", f"the run failed: {facts.get('error') or 'see its log'}")]
    found: list[tuple[str, str]] = []
    new_files = facts.get("new_files") or 0
    rejected = facts.get("rejected_new_count") or 0
    if new_files and rejected / new_files > reject_fraction:
        reasons = reasons_text(facts.get("rejected_new") or [])
        found.append(
            (
                "data_quality",
                f"{rejected} of the {new_files} new files were rejected ({reasons}), above "
                f"pipeline.alert_reject_fraction {reject_fraction}",
            )
        )
    audit = facts.get("audit")
    if audit and audit.get("tripped") and audit != (previous or {}).get("audit"):
        found.append(("data_quality", f"the label audit tripped: {audit.get('reason')}"))
    if ran(facts.get("stages") or {}, "evaluate") and facts.get("gate") == "rejected":
        found.append(("champion_kept", runs.gate_sentence(facts)))
    return found


def reasons_text(rejected: list[dict]) -> str:
    """'not_an_image 3, truncated 1' from listed rejections (the first few of the run's)."""
    counts: dict[str, int] = {}
    for r in rejected:
        counts[r["reason"]] = counts.get(r["reason"], 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no reasons listed"


def payload(event: str, reason: str, facts: dict) -> dict[str, Any]:
    """The message: event, run id, one-line reason, link to the run (and `text` for Slack)."""
    link = facts.get("flow_run_url")
    text = f"pawflow {event.replace('_', ' ')} (run {facts.get('id')}, {facts.get('entry')}): {reason}"
    if link:
        text += f" <{link}|open the run>"
    return {
        "event": event,
        "run_id": facts.get("id"),
        "entry": facts.get("entry"),
        "reason": " ".join(reason.split()),
        "link": link,
        "text": text,
    }


def post(url: str, message: dict[str, Any], timeout_s: float) -> str | None:
    """POST the message as JSON; None when the server took it, else why not (never raises)."""
    import requests

    try:
        resp = requests.post(url, json=message, timeout=timeout_s)
    except requests.RequestException as err:
        return f"{type(err).__name__}: {err}"
    if not resp.ok:
        return f"HTTP {resp.status_code} {resp.reason}"
    return None
