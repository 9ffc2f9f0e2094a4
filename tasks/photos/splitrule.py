"""How shard deals duplicate groups to train/val/test, and the fewest photos a class needs for it.

Shard (tasks/shard.py) takes each label's new groups in a salted order and gives each to `next_split`:
the split furthest below its target share for that label (exact stratification). A class therefore
reaches every split whose fraction is above 0 only once it has enough groups: with the shipped
fractions (0.7/0.15/0.15) the first five go train, train, val, train, test, so a class of 2 photos
would have none in val or test. `min_per_class` finds that number by dealing groups to an empty class
with the very rule shard uses; the check stage refuses a source that cannot reach it (cheaply, counting
files: an upper bound of the photos clean and dedup leave) and shard refuses, exactly, a class that
did not reach every split. Light imports only: the check stage runs this before anything else.
"""

from __future__ import annotations

from collections.abc import Mapping

from tasks.core.errors import PawflowError

SPLITS = ("train", "val", "test")
# min_per_class deals at most this many groups: a split whose fraction is so small that a class needs
# more (below ~1/100,000) is treated as reached at that size; shard still checks the real split.
MAX_DEALT = 100_000


def next_split(counts: Mapping[str, int], fractions: Mapping[str, float]) -> str:
    """The split a label's next group goes to: the one furthest below its share of the label's groups
    once this one is counted (ties: the first in SPLITS)."""
    n = sum(counts.values()) + 1
    return max(SPLITS, key=lambda s: (fractions[s] * n - counts[s], -SPLITS.index(s)))


def min_per_class(fractions: Mapping[str, float]) -> int:
    """The fewest groups (distinct photos) a new class needs before every split with a fraction above 0
    has one of them, dealt by next_split."""
    wanted = {s for s in SPLITS if fractions[s] > 0}
    counts = dict.fromkeys(SPLITS, 0)
    for n in range(1, MAX_DEALT + 1):
        counts[next_split(counts, fractions)] += 1
        if all(counts[s] for s in wanted):
            return n
    return MAX_DEALT


def describe(fractions: Mapping[str, float]) -> str:
    return ", ".join(f"{s} {fractions[s]:g}" for s in SPLITS)


def too_few(
    short: Mapping[str, object], fractions: Mapping[str, float], counted: str, where: str
) -> PawflowError:
    """The one message for classes too small for shard.split, from the check (counting the source's files)
    or from shard (counting the photos clean and dedup kept, per split). short: label -> its count, as
    shown; counted: what was counted."""
    need = min_per_class(fractions)
    listed = "; ".join(f"{label!r} {count}" for label, count in sorted(short.items()))
    return PawflowError(
        f"{where}: {len(short)} class(es) too small for shard.split ({describe(fractions)}); {counted}: "
        f"{listed}. Every split with a fraction above 0 needs at least one photo of each class, which takes "
        f"at least {need} distinct photos per class (after clean and dedup). Nothing was written.",
        f"Add photos to those classes (at least {need} each), or remove their folders from the source; "
        "to go without a validation split, set shard.split.val: 0 in params.yaml.",
    )
