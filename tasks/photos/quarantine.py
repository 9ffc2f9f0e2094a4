"""The quarantine: batches of new photos the label audit held out of the split, until a person releases them.

`<paths.interim>/quarantine.json` (an output of the audit stage, recorded in dvc.lock) lists every batch
the audit ever tripped on: its id, why, its photos (by sha256, with the path and label they had), and
whether it was released. The dedup stage holds the photos of unreleased batches out of the split (status
`quarantined`) and reports/data.html shows them; `pawflow quarantine release ID` marks a batch released,
so that the next run splits and trains on its photos (as they are then: moved or excluded ones follow
the source and data/exclude.txt). A photo of any batch, released or not, is never audited again.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, ValidationError

from tasks.core.errors import PawflowError
from tasks.core.fileio import dumps_json, fingerprint, write_bytes

if TYPE_CHECKING:
    import pandas as pd

FILE = "quarantine.json"


class Photo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str
    path: str  # where it was when the audit held it
    label: str


class Batch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    reason: str
    released: bool
    photos: tuple[Photo, ...]


class Quarantine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    batches: tuple[Batch, ...] = ()

    def held(self) -> set[str]:
        """sha256 of the photos held out of the split (in a batch not released)."""
        return {p.sha256 for b in self.batches if not b.released for p in b.photos}

    def seen(self) -> set[str]:
        """sha256 of every photo of every batch, released or not (never audited again)."""
        return {p.sha256 for b in self.batches for p in b.photos}

    def held_batches(self) -> list[Batch]:
        return [b for b in self.batches if not b.released]


def path(interim: Path) -> Path:
    return interim / FILE


def read(interim: Path) -> Quarantine:
    """The quarantine in interim (empty when there is none yet)."""
    file = path(interim)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Quarantine()
    try:
        return Quarantine.model_validate_json(text)
    except ValidationError as err:
        raise PawflowError(
            f"{file} is not a quarantine list pawflow wrote ({err.error_count()} problem(s)).",
            "Restore it: `dvc checkout data/interim/quarantine.json` (or delete it: every batch held "
            "there is then trained on at the next run).",
        ) from None


def write(interim: Path, q: Quarantine) -> None:
    """Atomically, as deterministic JSON."""
    write_bytes(path(interim), dumps_json(q.model_dump(mode="json")).encode("utf-8"))


def batch_id(shas: list[str]) -> str:
    """A batch's name: a short hash of its photos' bytes (the same photos, the same name)."""
    return fingerprint(sorted(shas))[:12]


def new_batch(photos: pd.DataFrame, reason: str) -> Batch:
    """A held batch of photos (rows with sha256, path, label)."""
    rows = photos.sort_values("path", kind="stable")
    return Batch(
        id=batch_id(rows["sha256"].tolist()),
        reason=reason,
        released=False,
        photos=tuple(
            Photo(sha256=s, path=p, label=lbl)
            for s, p, lbl in zip(rows["sha256"], rows["path"], rows["label"], strict=True)
        ),
    )


def add(q: Quarantine, batch: Batch) -> Quarantine:
    """q with batch held (a batch of the same id already there is left as it is)."""
    if any(b.id == batch.id for b in q.batches):
        return q
    return Quarantine(batches=(*q.batches, batch))


def release(q: Quarantine, ids: list[str], everything: bool = False) -> tuple[Quarantine, list[Batch]]:
    """q with the named held batches (a unique prefix of the id is enough; everything: all held) released;
    and those batches. PawflowError naming an id that matches no held batch."""
    held = q.held_batches()
    chosen: dict[str, Batch] = {b.id: b for b in held} if everything else {}
    for wanted in ids:
        found = [b for b in held if b.id.startswith(wanted)]
        if len(found) != 1:
            names = ", ".join(b.id for b in held) or "none"
            what = "matches no" if not found else "matches more than one"
            raise PawflowError(
                f"{wanted!r} {what} batch held in quarantine (held: {names}).",
                "Name a batch as `pawflow quarantine list` shows it; nothing was released.",
            )
        chosen[found[0].id] = found[0]
    batches = tuple(b.model_copy(update={"released": True}) if b.id in chosen else b for b in q.batches)
    return Quarantine(batches=batches), [b for b in held if b.id in chosen]
