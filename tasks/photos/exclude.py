"""The exclude list (params.yaml paths.exclude, data/exclude.txt): photos never trained or tested on.

A git-tracked text file that a person edits, one photo per line with the reason after ` # `:

    Cat/cat.12.jpg  # a drawing, not a photo
    "Dog/odd # name.jpg"  # quoted (JSON string syntax) when a name holds " #" or edge spaces
    9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  # this photo under any name

A path is the photo's place in the collection (`<class>/<file>`, as in data/raw and the source); a
sha256 names its bytes, so it still matches after the photo is moved or renamed. Blank lines and lines
starting with `#` are comments. The source and data/raw are never touched: the dedup stage holds the
matching photos out of the split (status `excluded`) and reports/data.html shows each one with its reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tasks.core.errors import PawflowError

if TYPE_CHECKING:
    import pandas as pd

SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# The entry, then whitespace, `#` and the reason. Lazy: the first ` #` ends the entry.
PLAIN = re.compile(r"(?P<entry>\S.*?)\s+#(?P<reason>.*)")
REASON = re.compile(r"\s+#(?P<reason>.*)")
# Malformed lines named in one message (a file pasted in the wrong format is one message, not a page).
MAX_PROBLEMS = 20
EXAMPLE = "`Cat/cat.12.jpg  # a drawing, not a photo`"


@dataclass(frozen=True)
class Entry:
    """One line of the exclude list: a photo's path or sha256 and why it is excluded."""

    line: int
    kind: Literal["path", "sha256"]
    key: str
    reason: str


def _path_problem(path: str) -> str | None:
    """Why `path` cannot name a photo of the collection (<class>/<file>), or None."""
    if "\\" in path:
        return "use / between the class folder and the file name"
    parts = path.split("/")
    if path.startswith("/") or len(parts) < 2:
        return "a photo is named by its class folder and file name, e.g. Cat/cat.12.jpg (or by its sha256)"
    if any(p in ("", ".", "..") for p in parts):
        return "empty, '.' or '..' parts do not name a photo in the collection"
    return None


def _parse_line(text: str) -> tuple[str, str]:
    """(entry, reason) of one non-comment line; ValueError saying what is wrong."""
    stripped = text.strip()
    if stripped.startswith('"'):
        try:
            entry, end = json.JSONDecoder().raw_decode(stripped)
        except json.JSONDecodeError:
            raise ValueError('a quoted name must be one JSON string: "Cat/name.jpg"') from None
        rest = REASON.fullmatch(stripped[end:])
        reason = rest["reason"] if rest else ""
    else:
        found = PLAIN.fullmatch(stripped)
        entry, reason = (found["entry"].strip(), found["reason"]) if found else (stripped, "")
    if not reason.strip():
        raise ValueError(f"give the reason after ' # ', e.g. {EXAMPLE}")
    return entry, reason.strip()


def parse(text: str, where: str) -> list[Entry]:
    """Every entry of an exclude list's text; one PawflowError naming each malformed line by number."""
    entries: list[Entry] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            key, reason = _parse_line(line)
        except ValueError as err:
            problems.append(f"  line {number}: {err}")
            continue
        kind: Literal["path", "sha256"] = "sha256" if SHA256.fullmatch(key) else "path"
        key = key.lower() if kind == "sha256" else key
        problem = _path_problem(key) if kind == "path" else None
        if problem:
            problems.append(f"  line {number}: {key!r}: {problem}")
        elif key in first_line:
            problems.append(f"  line {number}: {key!r} is listed already, at line {first_line[key]}")
        else:
            first_line[key] = number
            entries.append(Entry(number, kind, key, reason))
    if problems:
        more = f"\n  ... and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        raise PawflowError(
            f"{where}: {len(problems)} line(s) cannot be read:\n" + "\n".join(problems[:MAX_PROBLEMS]) + more,
            f"One photo per line: its path in the collection or its sha256, then ' # ' and the reason, e.g. "
            f"{EXAMPLE}; nothing was run.",
        )
    return entries


def read(path: Path) -> list[Entry]:
    """The exclude list at path ([] when there is none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:
        raise PawflowError(
            f"{path} is not UTF-8 text.", "Save the exclude list as UTF-8 text; nothing was run."
        ) from None
    except OSError as err:
        raise PawflowError(f"{path} cannot be read: {err.strerror or err}.", "Check the file.") from None
    return parse(text, str(path))


def matches(entries: list[Entry], photos: pd.DataFrame) -> pd.DataFrame:
    """The photos (rows with path and sha256) an entry names: path, sha256, reason, line (the first
    entry that names a photo gives its reason), sorted by path."""
    import pandas as pd

    by_path = {e.key: e for e in entries if e.kind == "path"}
    by_sha = {e.key: e for e in entries if e.kind == "sha256"}
    rows = []
    for path, sha in zip(photos["path"], photos["sha256"], strict=True):
        named = [e for e in (by_path.get(path), by_sha.get(sha)) if e is not None]
        if named:
            e = min(named, key=lambda x: x.line)
            rows.append({"path": path, "sha256": sha, "reason": e.reason, "line": e.line})
    out = pd.DataFrame(rows, columns=["path", "sha256", "reason", "line"])
    return out.astype({"line": "int64"}).sort_values("path", kind="stable").reset_index(drop=True)


def unmatched(entries: list[Entry], photos: pd.DataFrame) -> list[Entry]:
    """The entries that name no photo of `photos` (a typo, or a photo gone from the source)."""
    paths, shas = set(photos["path"]), set(photos["sha256"])
    return [e for e in entries if e.key not in (paths if e.kind == "path" else shas)]
