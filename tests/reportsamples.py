"""Complete stage reports, as tasks/reports/reports.py's contracts describe them, for tests of their
readers."""

from __future__ import annotations

import copy

from tasks.core.fileio import write_json

SAMPLES: dict[str, dict] = {
    "ingest.json": {
        "source": {"kind": "folder", "location": "/photos", "archive_sha256": None},
        "mode": "mirror",
        "files": 40,
        "bytes": 40_000,
        "per_label": {"Cat": 20, "Dog": 20},
        "skipped": [{"path": "notes.txt", "reason": "not inside a class folder"}],
        "ignored_folders": [{"path": "__MACOSX", "reason": "folder added by an archiver", "files": 3}],
        "not_in_source": [],
    },
    "clean.json": {
        "files": 40,
        "kept": 38,
        "rejected": 2,
        "per_reason": {"truncated": 2},
        "per_label": {"Cat": {"kept": 18, "rejected": 2}, "Dog": {"kept": 20, "rejected": 0}},
        "normalised": {"exif_transpose": 1},
        "flagged": 2,
        "per_flag": {"near_blank": 0, "dark": 1, "bright": 0, "blurry": 1, "low_information": 1},
        "reasons": {"truncated": "the image data ends early"},
        "rejected_files": [
            {"path": "Cat/a.jpg", "reason": "truncated", "detail": "image file is truncated"},
            {"path": "Cat/b.jpg", "reason": "truncated", "detail": ""},
        ],
    },
    "audit.json": {
        "tripped": True,
        "reason": "the champion disagrees with 14 of 30 new photos' labels (46.7%; normal up to 26.4%, its "
        "test error 15.0% + audit.tolerance), p=0.0123 < audit.alpha 0.05: batch 0123456789ab quarantined, "
        "not trained on",
        "batch": "0123456789ab",
        "champion_sha256": "ab" * 32,
        "new_photos": 30,
        "scored": 30,
        "disagreements": 14,
        "contradicted": 1,
        "disagreement_rate": 14 / 30,
        "champion_test_error": 0.15,
        "champion_test_photos": 600,
        "normal_rate": 0.264,
        "p_value": 0.0123,
        "quarantined": 30,
        "settings": {"confidence": 0.9, "tolerance": 0.05, "alpha": 0.05, "min_photos": 20},
        "contradicted_photos": [
            {"path": "Cat/new.1.jpg", "label": "Cat", "predicted": "Dog", "confidence": 0.97}
        ],
    },
    "dedup.json": {
        "photos": 38,
        "kept": 36,
        "duplicate": 1,
        "conflict": 0,
        "excluded": 1,
        "quarantined": 0,
        "excluded_photos": [{"path": "Cat/drawing.jpg", "reason": "a drawing, not a photo"}],
        "quarantined_photos": [],
        "exact_duplicates": 1,
        "near_duplicates": 0,
        "duplicate_groups": 1,
        "conflict_groups": 0,
        "kept_per_label": {"Cat": 17, "Dog": 19},
        "groups": [
            {
                "group": "0123456789abcdef",
                "label": "Dog",
                "kept": "Dog/1.jpg",
                "duplicates": [{"path": "Dog/copy of 1.jpg", "kind": "exact", "distance": 0}],
            }
        ],
        "conflicts": [],
    },
    "shard.json": {
        "class_names": ["Cat", "Dog"],
        "counts": {
            "train": {"Cat": 15, "Dog": 15},
            "val": {"Cat": 2, "Dog": 2},
            "test": {"Cat": 1, "Dog": 2},
        },
        "examples": {"train": 30, "val": 4, "test": 3},
        "shards": {"train": 1, "val": 1, "test": 1},
    },
    "train.json": {
        "model": "pawnet",
        "parameters": 12345,
        "epochs_run": 2,
        "best_epoch": 2,
        "best": {"loss": 0.6, "val_loss": 0.65, "val_accuracy": 0.7},
        "history": {"loss": [0.7, 0.6], "val_loss": [0.7, 0.65], "val_accuracy": [0.5, 0.7]},
        "device": "CPU",
        "precision": "float32",
        "replicas": 1,
        "worker": 0,
        "workers": 1,
        "global_batch_size": 32,
        "examples": {"train": 30, "val": 4},
        "tensorflow": {"onednn": True, "onednn_max_isa": None, "threads": 2, "deterministic_ops": True},
        "warm_start": None,
        "start_reason": "no champion",
    },
    "metrics.json": {
        "examples": 600,
        "accuracy": 0.8433,
        "precision_macro": 0.84,
        "recall_macro": 0.84,
        "f1_macro": 0.84,
        "roc_auc": 0.9,
        "log_loss": 0.4,
        "ece": 0.01,
        "robust_accuracy": 0.8,
        "robust_examples": 600,
        "per_class": {
            "Cat": {"precision": 0.84, "recall": 0.84, "f1": 0.84, "support": 300},
            "Dog": {"precision": 0.84, "recall": 0.84, "f1": 0.84, "support": 300},
        },
        "confusion_matrix": [[252, 48], [46, 254]],
    },
    "gate.json": {
        "challenger_accuracy": 0.8433,
        "min_accuracy": 0.8,
        "alpha": 0.05,
        "test": "McNemar exact (one-sided: challenger worse)",
        "champion_accuracy": None,
        "p_value": 1.0,
        "promoted": True,
        "decision": "promoted",
        "reason": "first model",
        "model_sha256": "ab" * 32,
    },
    "scores.json": {"accuracy": 0.8433, "f1_macro": 0.84, "roc_auc": 0.9, "ece": 0.01, "gate": "promoted"},
}


def sample(name: str, **changes: object) -> dict:
    """A fresh copy of the sample report `name` (e.g. "clean.json") with top-level keys changed."""
    return {**copy.deepcopy(SAMPLES[name]), **changes}


def write_samples(reports, **changed: dict) -> None:
    """Every sample report into the folder; `changed` maps a stem ("clean") to top-level changes."""
    reports.mkdir(parents=True, exist_ok=True)
    for name in SAMPLES:
        write_json(reports / name, sample(name, **changed.get(name.removesuffix(".json"), {})))
