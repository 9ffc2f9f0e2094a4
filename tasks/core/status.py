"""The one vocabulary of a photo's status and of the gate's decision (values as the files hold them).

A photo is kept or rejected by clean (clean.parquet), then kept, a duplicate, in a label conflict,
excluded or quarantined after dedup (dedup.parquet, split.parquet). Both are StrEnums: a member is the
plain string it stands for (equal to it, and written as it by json and pyarrow), so the files' bytes are
those of the strings.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A photo's status: clean's verdict (KEPT, REJECTED), then dedup's (KEPT, DUPLICATE, CONFLICT)."""

    KEPT = "kept"
    REJECTED = "rejected"  # clean: the file is not a usable photo (clean.parquet's `reason` says why)
    DUPLICATE = "duplicate"  # dedup: another photo of its group is kept
    CONFLICT = "conflict"  # dedup: its group spans labels, so none of it is used
    EXCLUDED = "excluded"  # dedup: named in the exclude list (paths.exclude), never split
    QUARANTINED = "quarantined"  # dedup: in a batch the label audit holds out until it is released


class Decision(StrEnum):
    """The promotion gate's decision on a newly trained model (reports/gate.json, scores.json)."""

    PROMOTED = "promoted"
    REJECTED = "rejected"
