"""tasks/history/runs.py: what arrived and left between two manifests, rejections among the new files, metric
deltas, the gate's sentence, the history table and its self-contained page."""

from __future__ import annotations

import re

import pandas as pd

from tasks.history import runs


def manifest(*rows: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["path", "label", "sha256"]).assign(bytes=1)


def test_arrivals_count_new_and_removed_photos_per_class():
    before = manifest(("Cat/1.jpg", "Cat", "a"), ("Cat/2.jpg", "Cat", "b"), ("Dog/3.jpg", "Dog", "c"))
    after = manifest(
        ("Cat/1.jpg", "Cat", "a"),  # unchanged
        ("Dog/2.jpg", "Dog", "b"),  # moved to another class folder: removed from Cat, new in Dog
        ("Dog/4.jpg", "Dog", "d"),
        ("Bird/5.jpg", "Bird", "e"),
    )
    got = runs.arrivals(before, after)
    assert got["new_photos"] == 3 and got["new_per_class"] == {"Bird": 1, "Dog": 2}
    assert got["removed_photos"] == 2 and got["removed_per_class"] == {"Cat": 1, "Dog": 1}
    assert got["new_paths"] == {"Dog/2.jpg", "Dog/4.jpg", "Bird/5.jpg"}
    assert got["new_examples"] == ["Bird/5.jpg", "Dog/2.jpg", "Dog/4.jpg"]
    first = runs.arrivals(None, after)
    assert first["new_photos"] == 4 and first["removed_photos"] == 0


def test_only_the_new_files_rejections_are_the_runs():
    rejected = [
        {"path": "Dog/old.jpg", "reason": "truncated", "detail": ""},
        {"path": "Dog/new2.jpg", "reason": "not_an_image", "detail": ""},
        {"path": "Dog/new1.jpg", "reason": "too_small", "detail": ""},
    ]
    got = runs.rejected_among(rejected, {"Dog/new1.jpg", "Dog/new2.jpg", "Dog/fine.jpg"})
    assert got == {
        "rejected_new_count": 2,
        "rejected_new": [
            {"path": "Dog/new1.jpg", "reason": "too_small"},
            {"path": "Dog/new2.jpg", "reason": "not_an_image"},
        ],
    }


def facts(id_: str, acc: float | None, promoted: bool = False, **more) -> dict:
    return {
        "id": id_,
        "test_accuracy": acc,
        "robust_accuracy": None if acc is None else acc - 0.02,
        "f1_macro": acc,
        "promoted": promoted,
        "photos": {"total": 100, "per_class": {"Cat": 50, "Dog": 50}},
        "outcome": "completed",
        **more,
    }


def test_deltas_against_the_previous_run_and_the_champion():
    now = facts("3", 0.80, champion_accuracy=0.84, photos={"total": 130})
    prev, champ = facts("2", 0.82), facts("1", 0.85, promoted=True)
    got = runs.changes(now, prev, champ)
    assert got["vs_previous"]["test_accuracy"] == -0.02 and got["vs_previous"]["photos"] == 30
    # against the champion: the gate's paired accuracy on the same photos, not the champion's old run
    assert got["vs_champion"]["test_accuracy"] == -0.04 and got["vs_champion"]["champion_run"] == "1"
    assert runs.changes(facts("1", 0.8), None, None) == {"vs_previous": {}, "vs_champion": {}}
    history = [prev, champ]
    assert runs.champion_run(history)["id"] == "1"


def test_the_gates_reason_is_one_sentence():
    ran = {"evaluate": "ran (3s)"}
    assert runs.gate_sentence({"gate": "promoted", "gate_reason": "no champion yet", "stages": ran}) == (
        "The new model became champion: no champion yet."
    )
    assert runs.gate_sentence({"gate": "rejected", "gate_reason": "worse", "stages": ran}) == (
        "The champion was kept: worse."
    )
    assert "did not decide again" in runs.gate_sentence(
        {"gate": "rejected", "stages": {"evaluate": "skipped"}}
    )
    assert (
        runs.gate_sentence({"outcome": "failed", "error": "boom"})
        == "The run failed before a decision: boom."
    )


def test_history_table_lists_every_run_newest_first():
    rows = [
        facts("20261207-030000", None, outcome="failed", error="ingest.source does not exist", photos=None),
        facts("20261206-030000", 0.8, no_new_data=True, stages={"train": "skipped"}),
        facts(
            "20261205-030000",
            0.81,
            promoted=True,
            entry="retrain-nightly",
            new_per_class={"Cat": 3, "Dog": 0},
            removed_photos=1,
            removed_per_class={"Dog": 1},
            stages={"train": "ran", "evaluate": "ran"},
            trained={"warm_start": True, "count": 2, "epochs": 3},
            gate="promoted",
            champion_sha256="ab" * 32,
            wall_s=91.4,
            started="2026-12-05T03:00:00+00:00",
        ),
    ]
    text = runs.history_table(rows).splitlines()
    assert text[0].split()[:4] == ["id", "when", "entry", "photos"] and len(text) == 4
    assert "FAILED: ingest.source does not exist" in text[1]
    assert "no new data" in text[2]
    assert re.search(r"\+3 Cat; -1 Dog .* warm #2, 3 ep +81\.0% +79\.0% +promoted +abababab", text[3]), text[
        3
    ]
    assert text[3].rstrip().endswith("91s")
    assert runs.history_table([]) == "no runs recorded yet"


def test_the_history_page_is_self_contained_and_charts_the_champion():
    rows = [facts(f"2026120{i}-030000", 0.7 + i / 100, promoted=i % 2 == 1) for i in range(5, 0, -1)]
    assert runs.champion_accuracy_series(rows) == [0.75, 0.73, 0.73, 0.71, 0.71]
    page = runs.history_html(rows)
    assert "<svg" in page and page.count("<tr>") == 6
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing loaded from elsewhere
    md = runs.history_markdown(rows)
    assert md.count("\n| 2026120") == 5 and "| 75.0% |" in md
