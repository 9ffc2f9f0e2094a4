"""The data-quality report: what clean rejected or flagged, dedup removed, and what is held out of the split
(the exclude list's photos, the label audit's contradicted photos and quarantined batches), with the photos.

`reports/data.html` is one self-contained file (thumbnails inlined as data: URIs, no scripts, no links
outside it), so it opens offline like reports/evaluation.html; a Markdown summary of the same facts
(tasks.reports.summary.data_quality_markdown) goes to a Prefect artifact. Same inputs -> byte-identical page:
everything is sorted, nothing about the run (time, host) is written, and thumbnails are baseline JPEGs
(libjpeg is deterministic).
"""

from __future__ import annotations

import base64
import io
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from PIL import Image, ImageFile

from tasks.core.status import Status
from tasks.dedup import HELD_COLUMNS, distances, hash_bits
from tasks.photos.exclude import Entry
from tasks.photos.images import FLAGS, REASONS, encode_jpeg, orient, to_rgb
from tasks.photos.quarantine import Batch
from tasks.reports import present
from tasks.reports.reports import AuditReport

# Bounds that keep the page small on a big collection. A 128 px thumbnail of a PetImages photo is
# ~5.5 KB in base64 (measured: 1,000 duplicate groups + 1,000 rejected photos -> 200 thumbnails,
# a 1.1 MB page, built in 1.5 s), so 100 per section keep the page under ~1.7 MB, in the range of
# evaluation.html (~1 MB), while showing more examples than anyone checks by eye; past the caps the
# page says "and N more" and points at the JSON reports, which list everything.
THUMB_SIDE = 128
THUMB_QUALITY = 80
MAX_THUMBNAILS = 100  # per section: rejected files, duplicate groups, label conflicts
MAX_COPIES = 8  # pictures per duplicate or conflict group (one row on the page)
MAX_LISTED = 500  # rows of text (files that cannot be drawn); each ~150 bytes
MAX_FLAGGED = 40  # pictures per quality flag: the most marked photos (flags hit ~0.1 % of real photos)

# Rejections whose bytes a decoder accepted (format listed in clean.formats, pixels below
# clean.max_pixels) before it judged them: these can still be drawn, at least in part. The others
# (no bytes, not an image, a bomb, an unlisted format, changed on disk, too slow) are listed only.
DRAWABLE = ("too_small", "odd_aspect_ratio", "truncated", "corrupt_jpeg_data", "corrupt")

# Pillow's switch for drawing a truncated file (the missing part grey) is module-wide.
_TRUNCATED_LOCK = threading.Lock()


@contextmanager
def _allow_truncated() -> Iterator[None]:
    with _TRUNCATED_LOCK:
        before = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before


def thumbnail(path: Path, formats: tuple[str, ...], max_pixels: int) -> tuple[bytes | None, str]:
    """A JPEG of at most THUMB_SIDE px of the file at path, or (None, why it cannot be drawn).

    Only decoders in `formats` are tried and nothing above `max_pixels` is decoded (clean's limits),
    so a hostile file costs no more here than it did in clean.
    """
    Image.init()
    decoders = [f for f in formats if f in Image.OPEN]  # MPO is opened by the JPEG decoder
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, f"cannot be read: {err.strerror or err}"
    try:
        with warnings.catch_warnings(), _allow_truncated():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data), formats=decoders)
            width, height = im.size
            if width * height > max_pixels:
                return None, f"{width}x{height} pixels is above clean.max_pixels"
            if im.format in ("JPEG", "MPO"):
                im.draft(im.mode, (THUMB_SIDE, THUMB_SIDE))  # DCT scaling: decode at ~thumbnail size
            im.load()
            oriented, _ = orient(im)  # as clean turned it (tasks.photos.images.orient)
            rgb, _ = to_rgb(oriented)
    except Exception as err:  # any decoder failure on a rejected file means "cannot be drawn"
        return None, f"cannot be decoded: {type(err).__name__}: {err}"
    rgb.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return encode_jpeg(rgb, THUMB_QUALITY), ""


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


@dataclass(frozen=True)
class Tile:
    """One picture on the page: the file, its caption lines, and the image (or why there is none)."""

    path: str
    lines: tuple[str, ...]
    image: str = ""  # data: URI
    why_not: str = ""
    badge: str = ""  # a word on the picture: kept / removed, or the label in a conflict
    badge_class: str = ""


@dataclass(frozen=True)
class Group:
    title: str
    tiles: tuple[Tile, ...]
    more: int = 0  # copies in the group beyond MAX_COPIES
    note: str = ""  # a sentence under the title: which copy was kept and why


@dataclass(frozen=True)
class Section:
    """Groups (or single tiles) drawn, and how many more there were past the cap."""

    groups: tuple[Group, ...] = ()
    more: int = 0
    total: int = 0


@dataclass(frozen=True)
class Flagged:
    """The kept photos one quality flag marks: what it means, its limit, the most marked ones drawn."""

    flag: str
    meaning: str
    limit: str  # the clean.flags key and its value
    total: int
    tiles: tuple[Tile, ...] = ()
    more: int = 0


@dataclass(frozen=True)
class HeldOut:
    """What keeps photos out of the split besides clean and dedup: the exclude list and the label audit."""

    held: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=HELD_COLUMNS))  # dedup.held_out
    unmatched: tuple[Entry, ...] = ()  # exclude list entries that name no photo
    # How the page names the exclude list: the params key, not a path (same inputs, same page, anywhere).
    exclude_file: str = "the exclude list (params.yaml paths.exclude)"
    audit: AuditReport | None = None  # reports/audit.json
    batches: tuple[Batch, ...] = ()  # quarantine batches still held


@dataclass(frozen=True)
class DataReport:
    counts: tuple[tuple[str, int], ...]
    reasons: tuple[tuple[str, int, str], ...]  # reason, files, what it means
    rejected: Section
    undrawn: tuple[tuple[str, str, str], ...]  # path, reason, why it is not drawn
    undrawn_more: int
    duplicates: Section
    conflicts: Section
    flagged: tuple[Flagged, ...]  # every flag, in tasks.photos.images.FLAGS order (those with no photo too)
    flagged_photos: int  # kept photos with at least one flag
    kept: int  # photos clean kept (what the flags' shares are of)
    max_distance: int
    limits: dict = field(default_factory=dict)
    excluded: Section = Section()
    unmatched: tuple[Entry, ...] = ()
    exclude_file: str = ""
    audit_reason: str = ""
    contradicted: Section = Section()
    quarantine: Section = Section()


def _size(row: pd.Series) -> str:
    return f"{int(row['width'])}x{int(row['height'])}, {int(row['bytes']):,} bytes"


def _rejected(
    rejected: pd.DataFrame, raw: Path, formats: tuple[str, ...], max_pixels: int
) -> tuple[Section, list[tuple[str, str, str]]]:
    """Thumbnails of rejected files that can be drawn (up to the cap); the rest listed with why not."""
    tiles: list[Tile] = []
    undrawn: list[tuple[str, str, str]] = []
    not_tried = 0
    for r in rejected.sort_values(["reason", "path"], kind="stable").itertuples():
        if r.reason not in DRAWABLE:
            meaning = REASONS.get(r.reason, r.reason)
            undrawn.append((r.path, r.reason, f"{meaning}: {r.detail}" if r.detail else meaning))
        elif len(tiles) >= MAX_THUMBNAILS:
            not_tried += 1
        else:
            jpeg, why = thumbnail(raw / r.path, formats, max_pixels)
            if jpeg is None:
                undrawn.append((r.path, r.reason, why))
            else:
                lines = (r.reason, r.detail) if r.detail else (r.reason,)
                tiles.append(Tile(path=r.path, lines=lines, image=data_uri(jpeg)))
    groups = (Group(title="", tiles=tuple(tiles)),) if tiles else ()
    return Section(groups=groups, more=not_tried, total=len(rejected)), undrawn


def why_kept(keeper: pd.Series, others: pd.DataFrame) -> tuple[str, str]:
    """Why dedup kept `keeper` (clean.parquet rows, indexed by path) over the other copies of its group,
    by its rule (tasks.dedup: the most pixels, then the most bytes, then the first path): a short
    caption and a sentence."""
    ranked = others.assign(pixels=others["width"] * others["height"]).sort_values(
        ["pixels", "bytes"], ascending=False, kind="stable"
    )
    runner = ranked.iloc[0]
    size, other_size = (
        f"{int(keeper['width'])}x{int(keeper['height'])}",
        f"{int(runner['width'])}x{int(runner['height'])}",
    )
    if keeper["width"] * keeper["height"] > runner["pixels"]:
        return "the most pixels", f"the most pixels: {size}, the next largest copy {other_size}"
    if keeper["bytes"] > runner["bytes"]:
        return "the most bytes", (
            f"as many pixels as the next copy ({size}) and the most bytes ({int(keeper['bytes']):,} vs "
            f"{int(runner['bytes']):,}): the least compressed"
        )
    return "first by name", (
        f"the copies have the same pixels and bytes ({size}, {int(keeper['bytes']):,} bytes): "
        "the first by name"
    )


def _draw(path: str, raw: Path, formats: tuple[str, ...], max_pixels: int) -> tuple[str, str]:
    jpeg, why = thumbnail(raw / path, formats, max_pixels)
    return (data_uri(jpeg), "") if jpeg is not None else ("", why)


def _groups(
    dd: pd.DataFrame,
    photos: pd.DataFrame,
    status: Status,
    raw: Path,
    formats: tuple[str, ...],
    max_pixels: int,
) -> Section:
    """Duplicate groups (kept copy first, then each copy with its distance to it) or conflict groups."""
    members = dd[dd["status"] == status]
    group_ids = sorted(members["group"].unique())
    groups: list[Group] = []
    drawn = 0
    for gid in group_ids:
        g = dd[dd["group"] == gid]
        if status == Status.DUPLICATE:
            keeper = g[g["status"] == Status.KEPT].iloc[0]
            copies = g[g["status"] == Status.DUPLICATE].sort_values(["distance", "path"], kind="stable")
            ordered = [keeper.path, *copies["path"]]
        else:
            ordered = sorted(g["path"])
        shown = ordered[:MAX_COPIES]
        if drawn and drawn + len(shown) > MAX_THUMBNAILS:
            break
        info = photos.loc[shown]
        kind = g.set_index("path")["kind"]
        bits = hash_bits(info["phash"].tolist())
        dist = distances(bits, np.zeros(len(shown), dtype=int), np.arange(len(shown)))
        tiles = []
        note = ""
        if status == Status.DUPLICATE:
            short, sentence = why_kept(photos.loc[ordered[0]], photos.loc[ordered[1:]])
            note = f"Kept {ordered[0]}: {sentence}."
        for k, path in enumerate(shown):
            row = info.loc[path]
            image, why = _draw(path, raw, formats, max_pixels)
            if status == Status.DUPLICATE:
                badge = "kept" if k == 0 else "removed"
                first = short if k == 0 else f"{kind[path]} copy, pHash distance {int(dist[k])}"
            else:
                badge = str(row["label"])
                first = f"label {badge}" + ("" if k == 0 else f", pHash distance {int(dist[k])}")
            tiles.append(
                Tile(
                    path=path,
                    lines=(first, _size(row)),
                    image=image,
                    why_not=why,
                    badge=badge,
                    badge_class=badge if status == Status.DUPLICATE else "label",
                )
            )
        drawn += len(shown)
        title = (
            f"{g['label'].iloc[0]}: {ordered[0]} kept, {len(ordered) - 1} "
            f"cop{'y' if len(ordered) == 2 else 'ies'} removed"
            if status == Status.DUPLICATE
            else f"{len(ordered)} copies under {', '.join(sorted(g['label'].unique()))}: all dropped"
        )
        groups.append(Group(title=title, tiles=tuple(tiles), more=len(ordered) - len(shown), note=note))
    return Section(groups=tuple(groups), more=len(group_ids) - len(groups), total=len(group_ids))


# How the page shows each quality flag: the clean.parquet measure behind it, whether its lowest values
# are the most marked (drawn first), the clean.flags key of its limit, and a caption of the value.
FLAG_MEASURES: dict[str, tuple[str, bool, str, str]] = {
    "near_blank": ("grey_std", True, "near_blank_contrast", "grey-level std {v:.1f}"),
    "dark": ("grey_p99", True, "dark_level", "99th percentile grey {v:.0f}"),
    "bright": ("grey_p05", False, "bright_level", "5th percentile grey {v:.0f}"),
    "blurry": ("sharpness", True, "blurry_sharpness", "sharpness {v:.1f}"),
    "low_information": ("entropy", True, "low_information_bits", "entropy {v:.2f} bits"),
}


def _flagged(
    clean_df: pd.DataFrame, raw: Path, formats: tuple[str, ...], max_pixels: int, limits: Any
) -> tuple[Flagged, ...]:
    """Per quality flag (clean.parquet's `flags`, tasks.photos.images.FLAGS): how many kept photos it marks,
    and thumbnails of the most marked ones (up to MAX_FLAGGED; ties by path)."""
    kept = clean_df[clean_df["status"] == Status.KEPT]
    marks = kept["flags"].str.split(";")
    out = []
    for flag, meaning in FLAGS.items():
        column, lowest_first, key, caption = FLAG_MEASURES[flag]
        # A boolean mask even when nothing is kept (an empty object Series would select columns).
        hit = kept[marks.map(lambda fs, flag=flag: flag in fs).astype(bool).to_numpy()]
        hit = hit.sort_values([column, "path"], ascending=[lowest_first, True], kind="stable")
        tiles = []
        for r in hit.head(MAX_FLAGGED).itertuples():
            image, why = _draw(r.path, raw, formats, max_pixels)
            lines = (caption.format(v=getattr(r, column)), f"{int(r.width)}x{int(r.height)}")
            tiles.append(Tile(path=r.path, lines=lines, image=image, why_not=why))
        out.append(
            Flagged(
                flag=flag,
                meaning=meaning,
                limit=f"clean.flags.{key}: {getattr(limits, key):g}",
                total=len(hit),
                tiles=tuple(tiles),
                more=max(0, len(hit) - MAX_FLAGGED),
            )
        )
    return tuple(out)


def _tiles(
    items: Sequence[tuple[str, tuple[str, ...], str]], raw: Path, formats: tuple[str, ...], max_pixels: int
) -> tuple[tuple[Tile, ...], int]:
    """Tiles of (path, caption lines, badge), at most MAX_THUMBNAILS drawn; and how many were left out."""
    tiles = []
    for path, lines, badge in items[:MAX_THUMBNAILS]:
        image, why = _draw(path, raw, formats, max_pixels)
        tiles.append(
            Tile(path=path, lines=lines, image=image, why_not=why, badge=badge, badge_class="removed")
        )
    return tuple(tiles), max(0, len(items) - MAX_THUMBNAILS)


def _excluded(held: pd.DataFrame, raw: Path, formats: tuple[str, ...], max_pixels: int) -> Section:
    part = held[held["status"] == Status.EXCLUDED]
    items = [(p, (r,), "excluded") for p, r in zip(part["path"], part["reason"], strict=True)]
    tiles, more = _tiles(items, raw, formats, max_pixels)
    return Section(groups=(Group(title="", tiles=tiles),) if tiles else (), more=more, total=len(items))


def _contradicted(
    audit: AuditReport | None, present: set[str], raw: Path, formats: tuple[str, ...], max_pixels: int
) -> Section:
    """The audit's confidently contradicted photos that are still in the collection at their path."""
    listed = [c for c in (audit.get("contradicted_photos", []) if audit else []) if c["path"] in present]
    items = [
        (c["path"], (f"labelled {c['label']}", f"champion: {c['predicted']} ({c['confidence']:.1%})"), "")
        for c in listed
    ]
    tiles, more = _tiles(items, raw, formats, max_pixels)
    total = audit.get("contradicted", 0) if audit else 0
    return Section(groups=(Group(title="", tiles=tiles),) if tiles else (), more=more, total=total)


def _quarantine(
    batches: tuple[Batch, ...], held: pd.DataFrame, raw: Path, formats: tuple[str, ...], max_pixels: int
) -> Section:
    """One group per held batch: its photos where they are now (a moved photo is still held)."""
    where = dict(zip(held["sha256"], held["path"], strict=True))
    groups, drawn = [], 0
    for b in batches:
        paths = sorted(where[p.sha256] for p in b.photos if p.sha256 in where)
        shown = paths[: max(0, min(MAX_COPIES * 2, MAX_THUMBNAILS - drawn))]
        tiles, _ = _tiles([(p, (), "held") for p in shown], raw, formats, max_pixels)
        drawn += len(tiles)
        title = f"batch {b.id}: {len(b.photos)} photos held. {b.reason}"
        groups.append(Group(title=title, tiles=tiles, more=len(paths) - len(shown)))
    return Section(groups=tuple(groups), total=len(batches))


def build(
    clean_df: pd.DataFrame,
    dedup_df: pd.DataFrame,
    raw: Path,
    formats: tuple[str, ...],
    max_pixels: int,
    max_distance: int,
    limits: Any,
    held_out: HeldOut | None = None,
) -> DataReport:
    """Everything the page and the artifact show, with the thumbnails drawn from raw (bounded work).

    clean_df is clean.parquet (every ingested file, its verdict and quality flags), dedup_df is
    dedup.parquet; limits are the clean.flags the flags were set with (shown beside each flag); held_out:
    the exclude list's and the label audit's photos (dedup.held_out, reports/audit.json, the quarantine).
    """
    h = held_out or HeldOut()
    rejected = clean_df[clean_df["status"] == Status.REJECTED]
    photos = clean_df.set_index("path")
    rejected_section, undrawn = _rejected(rejected, raw, formats, max_pixels)
    per_reason = rejected["reason"].value_counts()
    reasons = tuple((str(k), int(per_reason[k]), REASONS.get(str(k), "")) for k in sorted(per_reason.index))
    status = dedup_df["status"]
    kept = clean_df[clean_df["status"] == Status.KEPT]
    flagged_photos = int((kept["flags"] != "").sum())
    counts = (
        ("files ingested", len(clean_df)),
        ("rejected by clean", len(rejected)),
        ("kept but flagged, worth a look", flagged_photos),
        ("exact duplicates removed", int((dedup_df["kind"] == "exact").sum())),
        ("near duplicates removed", int((dedup_df["kind"] == "near").sum())),
        ("photos in label conflicts (dropped)", int((status == Status.CONFLICT).sum())),
        ("photos excluded by you", int((status == Status.EXCLUDED).sum())),
        ("photos held in quarantine by the label audit", int((status == Status.QUARANTINED).sum())),
        ("photos kept for training", int((status == Status.KEPT).sum())),
    )
    return DataReport(
        counts=counts,
        reasons=reasons,
        rejected=rejected_section,
        undrawn=tuple(undrawn[:MAX_LISTED]),
        undrawn_more=max(0, len(undrawn) - MAX_LISTED),
        duplicates=_groups(dedup_df, photos, Status.DUPLICATE, raw, formats, max_pixels),
        conflicts=_groups(dedup_df, photos, Status.CONFLICT, raw, formats, max_pixels),
        flagged=_flagged(clean_df, raw, formats, max_pixels, limits),
        flagged_photos=flagged_photos,
        kept=len(kept),
        max_distance=max_distance,
        limits={
            "thumbnails": MAX_THUMBNAILS,
            "copies": MAX_COPIES,
            "listed": MAX_LISTED,
            "flagged": MAX_FLAGGED,
        },
        excluded=_excluded(h.held, raw, formats, max_pixels),
        unmatched=h.unmatched,
        exclude_file=h.exclude_file,
        audit_reason=h.audit["reason"] if h.audit else "",
        contradicted=_contradicted(h.audit, set(clean_df["path"]), raw, formats, max_pixels),
        quarantine=_quarantine(h.batches, h.held, raw, formats, max_pixels),
    )


# --------------------------------------------------------------------------- rendering

_ENV = jinja2.Environment(
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)

HTML_TEMPLATE = """{% macro tile(t) %}
<figure>{% if t.image %}<img alt="{{ t.path }}" src="{{ t.image }}">{% else %}<div class="none">no picture:
{{ t.why_not }}</div>{% endif %}
<figcaption>{% if t.badge %}<span class="badge {{ t.badge_class }}">{{ t.badge }}</span> {% endif %}
{{- t.path }}
{% for line in t.lines %}<br>{{ line }}{% endfor %}</figcaption></figure>
{% endmacro %}
{% macro section(s, what) %}
{% if not s.groups %}
<p>None.</p>
{% endif %}
{% for g in s.groups %}
<h3>{{ g.title }}</h3>
{% if g.note %}
<p class="why">{{ g.note }}</p>
{% endif %}
<div class="row">
{% for t in g.tiles %}{{ tile(t) }}{% endfor %}
{% if g.more %}<p class="more">and {{ "{:,}".format(g.more) }} more copies</p>{% endif %}
</div>
{% endfor %}
{% if s.more %}
<p class="more">and {{ "{:,}".format(s.more) }} more {{ what }} (the page shows at most
{{ r.limits.thumbnails }} pictures per section); reports/dedup.json lists them all.</p>
{% endif %}
{% endmacro %}
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pawflow data quality</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#111}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
td.n{text-align:right}
.grid,.row{display:flex;flex-wrap:wrap;gap:.6em;align-items:flex-start}
.row{padding:.5em;border:1px solid #ddd;border-radius:4px;margin:.4em 0 1em}
figure{margin:0;width:{{ side + 12 }}px;font-size:.85em;overflow-wrap:anywhere}
figure img{display:block;width:auto;height:auto;max-width:{{ side }}px;max-height:{{ side }}px;
  min-width:32px;min-height:32px;image-rendering:pixelated;border:1px solid #999;background:#eee}
figure .none{width:{{ side }}px;height:{{ side // 2 }}px;display:flex;align-items:center;
  justify-content:center;background:#eee;color:#555;text-align:center}
.badge{display:inline-block;padding:0 .4em;border-radius:3px;background:#ddd;font-weight:bold}
.badge.kept{background:#bfe5bf}.badge.removed{background:#f3c4c4}
.more{font-style:italic;color:#555}
.why{margin:.2em 0}
</style>
</head><body>
<h1>pawflow data quality</h1>
<p>What clean rejected, which kept photos look unusual, and what dedup removed before the photos were
split and trained on.</p>
<table>
{% for name, n in r.counts %}
<tr><th>{{ name }}</th><td class="n">{{ "{:,}".format(n) }}</td></tr>
{% endfor %}
</table>

<h2 id="rejected">Rejected files ({{ "{:,}".format(r.rejected.total) }})</h2>
{% if r.reasons %}
<table><tr><th>reason</th><th>files</th><th>what it means</th></tr>
{% for reason, n, meaning in r.reasons %}
<tr><td>{{ reason }}</td><td class="n">{{ "{:,}".format(n) }}</td><td>{{ meaning }}</td></tr>
{% endfor %}
</table>
{% else %}
<p>None: every ingested file decoded and passed the checks.</p>
{% endif %}
{% for g in r.rejected.groups %}
<div class="grid">
{% for t in g.tiles %}{{ tile(t) }}{% endfor %}
</div>
{% endfor %}
{% if r.rejected.more %}
<p class="more">and {{ "{:,}".format(r.rejected.more) }} more that can be drawn (the page shows at most
{{ r.limits.thumbnails }}); reports/clean.json lists every rejected file.</p>
{% endif %}
{% if r.undrawn %}
<h3>Rejected files that cannot be drawn</h3>
<table><tr><th>file</th><th>reason</th><th>why there is no picture</th></tr>
{% for path, reason, why in r.undrawn %}
<tr><td>{{ path }}</td><td>{{ reason }}</td><td>{{ why }}</td></tr>
{% endfor %}
</table>
{% if r.undrawn_more %}
<p class="more">and {{ "{:,}".format(r.undrawn_more) }} more; reports/clean.json lists them all.</p>
{% endif %}
{% endif %}

<h2 id="flagged">Kept, but worth a look ({{ "{:,}".format(r.flagged_photos) }})</h2>
<p>Photos clean kept and the model trains on, but that a person may want to remove or relabel: each flag
is judged on its own (a photo can carry several), from the photo at shard size in grey levels 0-255.
The limits are params.yaml's clean.flags; a flag never rejects a photo.</p>
<table><tr><th>flag</th><th>photos</th><th>share of kept</th><th>what it means</th><th>limit</th></tr>
{% for f in r.flagged %}
<tr><td>{% if f.total %}<a href="#flag-{{ f.flag }}">{{ f.flag }}</a>{% else %}{{ f.flag }}{% endif %}</td>
<td class="n">{{ "{:,}".format(f.total) }}</td><td class="n">{{ pct(f.total, r.kept) }}</td>
<td>{{ f.meaning }}</td><td>{{ f.limit }}</td></tr>
{% endfor %}
</table>
{% for f in r.flagged if f.total %}
<h3 id="flag-{{ f.flag }}">{{ f.flag }} ({{ "{:,}".format(f.total) }})</h3>
<div class="grid">
{% for t in f.tiles %}{{ tile(t) }}{% endfor %}
</div>
{% if f.more %}
<p class="more">and {{ "{:,}".format(f.more) }} more (the page shows the {{ r.limits.flagged }} most marked);
clean.parquet's <code>flags</code> column lists them all.</p>
{% endif %}
{% endfor %}

<h2 id="duplicates">Duplicate groups ({{ "{:,}".format(r.duplicates.total) }})</h2>
<p>Copies of one photo under one label: one copy is kept, by dedup's rule: the most pixels, then (same
size) the most bytes, the least compressed copy, then the first file name. Exact copies have the same
bytes; near copies are within pHash distance {{ r.max_distance }} (dedup.max_distance) of the kept one.
Each distance below is to the kept copy.</p>
{{ section(r.duplicates, "duplicate groups") }}

<h2 id="conflicts">Label conflicts ({{ "{:,}".format(r.conflicts.total) }})</h2>
<p>One photo (same bytes, or within pHash distance {{ r.max_distance }}) under more than one label: every
copy is dropped, since its label cannot be trusted. Distances are to the first copy shown.</p>
{{ section(r.conflicts, "label conflicts") }}

<h2 id="excluded">Excluded by you ({{ "{:,}".format(r.excluded.total) }})</h2>
<p>Named in {{ r.exclude_file }}, with the reason shown: never split, trained or tested on, while the source
keeps them. Remove the line to bring a photo back (it returns to its old split).</p>
{{ section(r.excluded, "excluded photos") }}
{% if r.unmatched %}
<h3>Entries that name no photo of the collection</h3>
<p>A typo, or a photo that left the source (a path no longer matches a moved photo: its sha256 does).</p>
<table><tr><th>line</th><th>entry</th><th>reason</th></tr>
{% for e in r.unmatched %}
<tr><td class="n">{{ e.line }}</td><td>{{ e.key }}</td><td>{{ e.reason }}</td></tr>
{% endfor %}
</table>
{% endif %}

<h2 id="audit">Label audit</h2>
<p>{{ r.audit_reason or "No audit yet." }}</p>
<h3>Photos the champion confidently contradicts ({{ "{:,}".format(r.contradicted.total) }})</h3>
<p>New photos of the last audited run whose label the champion contradicts with at least audit.confidence:
check them; move a mislabelled one to its class folder in the source, or exclude it.</p>
{{ section(r.contradicted, "contradicted photos") }}

<h2 id="quarantine">Quarantine ({{ "{:,}".format(r.quarantine.total) }} batches held)</h2>
<p>Batches of new photos that the champion contradicted far more often than its test error allows: held out
of the split, not trained or tested on, until you release them. Check them (fix labels in the source, or
exclude photos), then <code>pawflow quarantine release BATCH</code>; the next run trains on them.</p>
{{ section(r.quarantine, "batches") }}
</body></html>
"""


def render_html(report: DataReport) -> str:
    """reports/data.html: one file with every picture inlined."""
    return _ENV.from_string(HTML_TEMPLATE).render(r=report, side=THUMB_SIDE, pct=present.share)
