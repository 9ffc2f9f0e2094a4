"""tasks/history/alerts.py: which runs alert, what the message says, and that delivering it never fails a
run."""

from __future__ import annotations

import time

from httpserver import Receiver

from tasks.history import alerts


def night(**changes) -> dict:
    """A completed night that retrained and promoted, with 100 new files of which 2 were rejected."""
    facts = {
        "id": "20261205-030001",
        "entry": "retrain-nightly",
        "outcome": "completed",
        "error": None,
        "no_new_data": False,
        "stages": {"ingest": "ran (3s)", "train": "ran (60s)", "evaluate": "ran (9s)"},
        "new_files": 100,
        "rejected_new_count": 2,
        "rejected_new": [
            {"path": "Dog/a.jpg", "reason": "truncated"},
            {"path": "Dog/b.jpg", "reason": "truncated"},
        ],
        "gate": "promoted",
        "gate_reason": "not significantly worse than the champion (p=0.5 >= alpha=0.05; won 3, lost 2)",
        "audit": None,
        "flow_run_url": "http://127.0.0.1:4200/runs/flow-run/abc",
    }
    return {**facts, **changes}


def test_a_good_night_and_a_quiet_night_send_nothing():
    assert alerts.events(night(), None, 0.1) == []
    quiet = night(
        no_new_data=True,
        new_files=0,
        rejected_new_count=0,
        rejected_new=[],
        stages={"ingest": "skipped (up to date)", "evaluate": "skipped (up to date)"},
        gate="rejected",
    )
    assert alerts.events(quiet, None, 0.1) == []  # an old rejection is not news


def test_a_failed_run_the_champion_kept_and_a_data_quality_trip_alert():
    (failed,) = alerts.events(
        night(outcome="failed", error="ingest.source /mnt/photos does not exist."), None, 0.1
    )
    assert failed == ("run_failed", "the run failed: ingest.source /mnt/photos does not exist.")
    kept = night(gate="rejected", gate_reason="significantly worse than the champion (p=0.01 < alpha=0.05)")
    assert alerts.events(kept, None, 0.1) == [
        (
            "champion_kept",
            "The champion was kept: significantly worse than the champion (p=0.01 < alpha=0.05).",
        )
    ]
    damaged = night(rejected_new_count=40)
    ((event, reason),) = alerts.events(damaged, None, 0.1)
    assert event == "data_quality" and reason.startswith(
        "40 of the 100 new files were rejected (truncated 2)"
    )
    assert alerts.events(night(rejected_new_count=10), None, 0.1) == []  # 10 % is not above 10 %


def test_the_label_audit_alerts_once_per_trip():
    audit = {"tripped": True, "reason": "31 % of 120 new photos contradict the champion (p=1e-9)"}
    (found,) = alerts.events(night(audit=audit), None, 0.1)
    assert found == ("data_quality", f"the label audit tripped: {audit['reason']}")
    assert alerts.events(night(audit=audit), night(audit=audit), 0.1) == []  # the same report again
    assert alerts.events(night(audit={"tripped": False, "reason": "ok"}), None, 0.1) == []


def test_the_message_is_slack_compatible_and_names_the_run():
    msg = alerts.payload("champion_kept", "The champion was kept:\n  worse.", night())
    assert msg["event"] == "champion_kept" and msg["run_id"] == "20261205-030001"
    assert msg["reason"] == "The champion was kept: worse." and msg["link"] == night()["flow_run_url"]
    assert msg["text"].startswith("pawflow champion kept (run 20261205-030001, retrain-nightly): ")
    assert "<http://127.0.0.1:4200/runs/flow-run/abc|open the run>" in msg["text"]


def test_delivery_reports_failures_instead_of_raising():
    msg = alerts.payload("run_failed", "boom", night())
    with Receiver() as hook:
        assert alerts.post(hook.url, msg, timeout_s=5) is None
        assert hook.received == [msg]
    with Receiver(status=500) as hook:
        assert alerts.post(hook.url, msg, timeout_s=5) == "HTTP 500 Internal Server Error"
    with Receiver(delay_s=3) as hook:
        started = time.monotonic()
        err = alerts.post(hook.url, msg, timeout_s=0.5)
        assert err and "Timeout" in err and time.monotonic() - started < 2.5
    closed = Receiver()
    url = closed.url  # never started: nothing listens there
    closed.httpd.server_close()
    assert "ConnectionError" in alerts.post(url, msg, timeout_s=2)
