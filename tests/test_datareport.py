"""The data-quality report: rejected files drawn (or listed), duplicate groups, conflicts; bounded, stable."""

from __future__ import annotations

import base64
import hashlib
import io
import re
from pathlib import Path

import browser
import imagegen
import pandas as pd
import pytest
from conftest import shipped
from PIL import Image, ImageEnhance
from test_images import SETTINGS

from tasks import clean, dedup
from tasks.core.text import md
from tasks.photos.images import FLAGS
from tasks.reports import datareport, summary

DRAWN = {
    "Cat/tiny.jpg",
    "Cat/strip.jpg",
    "Cat/truncated.jpg",
    "Cat/cut_closed.jpg",
    "Cat/zero_tail.jpg",
    "Cat/flipped.jpg",
    "Cat/corrupt.png",
}
LISTED = {
    "Cat/empty.jpg": "empty_file",
    "Cat/Thumbs.db": "not_an_image",
    "Cat/notes.txt": "not_an_image",
    "Cat/page.jpg": "not_an_image",
    "Cat/bomb.png": "decompression_bomb",
    "Cat/icon.jpg": "unsupported_format",
}
# A file name that is also markup: the page must show it, not run it.
MARKUP = "Dog/cat.2 <b>misfiled.jpg"
LIMITS = shipped("clean.flags")
FLAGGED = {f"Cat/{name}" for name in imagegen.quality_issues()}


def collection(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every defect clean knows, every quality flag, three duplicate groups (kept for the most pixels,
    for the most bytes, by name), and one photo under two labels."""
    for label in ("Cat", "Dog"):
        (raw / label).mkdir(parents=True, exist_ok=True)
    for name, (data, _) in imagegen.defects().items():
        (raw / "Cat" / name).write_bytes(data)
    for name, (data, _) in imagegen.quality_issues().items():
        (raw / "Cat" / name).write_bytes(data)
    for i in range(6):  # sharp photos (imagegen.photo's smooth blobs would all be flagged blurry)
        for label, seed in (("dog", i), ("cat", 100 + i)):
            jpeg = imagegen.encode(imagegen.textured(seed), "JPEG", quality=92)
            (raw / label.title() / f"{label}.{i}.jpg").write_bytes(jpeg)
    (raw / "Dog" / "dog.0 copy.jpg").write_bytes((raw / "Dog" / "dog.0.jpg").read_bytes())
    near = ImageEnhance.Contrast(Image.open(raw / "Dog" / "dog.1.jpg")).enhance(0.9)
    edited = imagegen.encode(near.resize((150, 112)), "JPEG", quality=60)
    (raw / "Dog" / "dog.1 edited.jpg").write_bytes(edited)
    recompressed = imagegen.encode(Image.open(raw / "Dog" / "dog.3.jpg"), "JPEG", quality=40)
    (raw / "Dog" / "dog.3 small file.jpg").write_bytes(recompressed)
    (raw / MARKUP).write_bytes((raw / "Cat" / "cat.2.jpg").read_bytes())
    items = sorted(
        (p.relative_to(raw).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in raw.rglob("*")
        if p.is_file()
    )
    clean_df = clean.table(clean.check_items(raw, items, SETTINGS, None), LIMITS)
    return clean_df, dedup.find_duplicates(clean_df[clean_df["status"] == "kept"], 4)


def build(raw: Path, clean_df: pd.DataFrame, dedup_df: pd.DataFrame) -> datareport.DataReport:
    return datareport.build(clean_df, dedup_df, raw, SETTINGS.formats, SETTINGS.max_pixels, 4, LIMITS)


@pytest.fixture
def made(tmp_path: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    raw = tmp_path / "raw"
    clean_df, dedup_df = collection(raw)
    return raw, clean_df, dedup_df


def images(page: str) -> dict[str, bytes]:
    """alt -> decoded bytes of every <img> (all must be inline JPEGs)."""
    found = re.findall(r'<img alt="([^"]*)" src="([^"]*)">', page)
    assert len(found) == page.count("<img")
    out = {}
    for alt, src in found:
        assert src.startswith("data:image/jpeg;base64,"), src[:40]
        out[alt.replace("&lt;", "<").replace("&gt;", ">")] = base64.b64decode(src.split(",", 1)[1])
    return out


def test_rejected_files_are_drawn_or_listed_with_their_reason(made):
    raw, clean_df, dedup_df = made
    page = datareport.render_html(build(raw, clean_df, dedup_df))
    pictures = images(page)
    assert set(pictures) >= DRAWN
    for jpeg in pictures.values():
        im = Image.open(io.BytesIO(jpeg))
        assert im.format == "JPEG" and max(im.size) <= datareport.THUMB_SIDE
    for path, reason in LISTED.items():
        assert path not in pictures
        assert f"<tr><td>{path}</td><td>{reason}</td>" in page, path
    assert f"Rejected files ({len(imagegen.defects())})" in page
    assert "20x16" in page  # tiny.jpg's detail: why it was rejected


def test_duplicate_groups_say_which_copy_was_kept_and_why(made):
    raw, clean_df, dedup_df = made
    report = build(raw, clean_df, dedup_df)
    near = dedup_df.set_index("path").loc["Dog/dog.1 edited.jpg"]
    assert near["kind"] == "near" and near["duplicate_of"] == "Dog/dog.1.jpg"
    groups = {g.tiles[0].path: g for g in report.duplicates.groups}
    assert set(groups) == {"Dog/dog.1.jpg", "Dog/dog.0 copy.jpg", "Dog/dog.3.jpg"}
    kept, copy = groups["Dog/dog.1.jpg"].tiles
    assert (kept.badge, copy.badge, copy.path) == ("kept", "removed", "Dog/dog.1 edited.jpg")
    assert copy.lines[0] == f"near copy, pHash distance {near['distance']}"
    assert groups["Dog/dog.0 copy.jpg"].tiles[1].lines[0] == "exact copy, pHash distance 0"
    # one heading per group, naming the photo kept; the rule that chose it, with the numbers
    titles = [g.title for g in report.duplicates.groups]
    assert len(set(titles)) == len(titles) == 3
    assert groups["Dog/dog.1.jpg"].title == "Dog: Dog/dog.1.jpg kept, 1 copy removed"
    assert kept.lines[0] == "the most pixels"
    assert groups["Dog/dog.1.jpg"].note == (
        "Kept Dog/dog.1.jpg: the most pixels: 160x120, the next largest copy 150x112."
    )
    sizes = clean_df.set_index("path")["bytes"]
    assert groups["Dog/dog.3.jpg"].tiles[0].lines[0] == "the most bytes"
    assert groups["Dog/dog.3.jpg"].note == (
        f"Kept Dog/dog.3.jpg: as many pixels as the next copy (160x120) and the most bytes "
        f"({sizes['Dog/dog.3.jpg']:,} vs {sizes['Dog/dog.3 small file.jpg']:,}): the least compressed."
    )
    assert groups["Dog/dog.0 copy.jpg"].tiles[0].lines[0] == "first by name"
    assert groups["Dog/dog.0 copy.jpg"].note.endswith(
        f"{sizes['Dog/dog.0.jpg']:,} bytes): the first by name."
    )
    page = datareport.render_html(report)
    assert "Duplicate groups (3)" in page
    assert (
        '<p class="why">Kept Dog/dog.1.jpg: the most pixels: 160x120, the next largest copy 150x112.</p>'
        in page
    )
    drawn = {"Dog/dog.1.jpg", "Dog/dog.1 edited.jpg", "Dog/dog.0.jpg", "Dog/dog.0 copy.jpg"}
    assert set(images(page)) >= drawn


def test_flagged_photos_are_counted_and_drawn_most_marked_first(made):
    raw, clean_df, dedup_df = made
    report = build(raw, clean_df, dedup_df)
    by_flag = {f.flag: f for f in report.flagged}
    assert list(by_flag) == list(FLAGS)  # every flag, in one order, those with no photo too
    assert {f: x.total for f, x in by_flag.items()} == {
        "near_blank": 1,
        "dark": 1,
        "bright": 1,
        "blurry": 2,
        "low_information": 2,
    }
    assert report.flagged_photos == 5 and report.kept == len(clean_df[clean_df["status"] == "kept"])
    blurry = by_flag["blurry"]
    assert [t.path for t in blurry.tiles] == ["Cat/soft.png", "Cat/flat.png"]  # least sharp first
    assert blurry.tiles[0].lines[0].startswith("sharpness ") and blurry.tiles[0].image
    assert blurry.limit == f"clean.flags.blurry_sharpness: {LIMITS.blurry_sharpness:g}"
    page = datareport.render_html(report)
    assert "Kept, but worth a look (5)" in page
    assert '<h3 id="flag-blurry">blurry (2)</h3>' in page and 'id="flag-dark"' in page
    assert f"<td>{FLAGS['dark']}</td>" in page
    share = f"{100 * 2 / report.kept:.2f} %"
    assert f'<td class="n">2</td><td class="n">{share}</td>' in page
    assert set(images(page)) >= FLAGGED
    assert not set(images(page)) & {f"Dog/dog.{i}.jpg" for i in range(6)} - {
        "Dog/dog.0.jpg",  # drawn as duplicates, never as flagged
        "Dog/dog.1.jpg",
        "Dog/dog.3.jpg",
    }


def test_label_conflicts_show_every_copy_and_label(made):
    raw, clean_df, dedup_df = made
    report = build(raw, clean_df, dedup_df)
    (group,) = report.conflicts.groups
    assert [(t.path, t.badge) for t in group.tiles] == [("Cat/cat.2.jpg", "Cat"), (MARKUP, "Dog")]
    page = datareport.render_html(report)
    assert "<b>misfiled" not in page and "&lt;b&gt;misfiled" in page  # escaped, not markup
    assert "Label conflicts (1)" in page and "2 copies under Cat, Dog: all dropped" in page


def test_the_markdown_artifact_has_the_counts_lists_and_some_pictures(made):
    raw, clean_df, dedup_df = made
    markdown = summary.data_quality_markdown(build(raw, clean_df, dedup_df), "reports/data.html")
    assert f"{md(MARKUP)} (label Dog, pHash distance 0)" in markdown
    assert "| photos kept for training | 16 |" in markdown and "reports/data.html" in markdown
    title = md("Dog: Dog/dog.1.jpg kept, 1 copy removed")
    assert f"- {title}: {md('Dog/dog.1.jpg')} (the most pixels)" in markdown
    assert "| blurry | 2 | " in markdown and "**Kept, but worth a look**: 5 photos" in markdown
    pictures = re.findall(r"!\[([^\]]*)\]\(data:image/jpeg;base64,([^)]*)\)", markdown)
    assert {md(p) for p in ("Cat/soft.png", "Cat/night.png", "Cat/tiny.jpg")} <= {alt for alt, _ in pictures}
    assert all(base64.b64decode(b64)[:2] == b"\xff\xd8" for _, b64 in pictures)
    assert len(pictures) <= summary.MARKDOWN_PICTURES * (1 + len(FLAGS))
    assert "file://" not in markdown


def test_same_inputs_give_the_same_bytes_whatever_the_row_order(made):
    raw, clean_df, dedup_df = made
    first = datareport.render_html(build(raw, clean_df, dedup_df))
    shuffled = datareport.render_html(
        build(raw, clean_df.sample(frac=1, random_state=3), dedup_df.sample(frac=1, random_state=4))
    )
    assert first == shuffled


def test_big_collections_are_capped_with_counts_of_the_rest(made, monkeypatch: pytest.MonkeyPatch):
    raw, clean_df, dedup_df = made
    monkeypatch.setattr(datareport, "MAX_THUMBNAILS", 2)
    monkeypatch.setattr(datareport, "MAX_COPIES", 2)
    monkeypatch.setattr(datareport, "MAX_LISTED", 4)
    report = build(raw, clean_df, dedup_df)
    page = datareport.render_html(report)
    assert len(report.rejected.groups[0].tiles) == 2 and report.rejected.more == len(DRAWN) - 2
    assert f"and {len(DRAWN) - 2} more that can be drawn" in page
    assert len(report.undrawn) == 4 and "and 2 more; reports/clean.json lists them all" in page
    assert len(report.duplicates.groups) == 1 and "and 2 more duplicate groups" in page
    flagged = sum(len(f.tiles) for f in report.flagged)
    assert flagged == 7  # each flagged photo once per flag (flat.png under three)
    assert page.count("<img") == 2 + 2 + 2 + flagged


def test_a_file_that_cannot_be_decoded_is_listed_with_why(tmp_path: Path):
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    jpeg, why = datareport.thumbnail(tmp_path / "x.jpg", SETTINGS.formats, SETTINGS.max_pixels)
    assert jpeg is None and why.startswith("cannot be decoded")
    # Above clean.max_pixels, below Pillow's own bomb limit (twice as many): our limit holds.
    (tmp_path / "big.png").write_bytes(imagegen.png_header_only(10_000, 9_500))
    jpeg, why = datareport.thumbnail(tmp_path / "big.png", SETTINGS.formats, SETTINGS.max_pixels)
    assert jpeg is None and "above clean.max_pixels" in why
    jpeg, why = datareport.thumbnail(tmp_path / "gone.jpg", SETTINGS.formats, SETTINGS.max_pixels)
    assert jpeg is None and why.startswith("cannot be read")


@pytest.mark.slow
def test_every_image_of_data_html_loads_in_chromium(made, tmp_path: Path):
    raw, clean_df, dedup_df = made
    page = tmp_path / "data.html"
    page.write_text(datareport.render_html(build(raw, clean_df, dedup_df)), encoding="utf-8")
    seen = browser.image_status(page)
    # rejected, three duplicate pairs, one conflict pair, flagged (flat.png under three flags)
    assert len(seen) == len(DRAWN) + 6 + 2 + 7
    assert [alt for alt, ok in seen if not ok] == []
    assert {alt for alt, _ in seen} >= DRAWN | FLAGGED | {MARKUP}


@pytest.mark.slow
def test_the_chromium_check_sees_a_broken_image(tmp_path: Path):
    page = tmp_path / "broken.html"
    good = base64.b64encode(imagegen.jpeg(1, (8, 8))).decode()
    page.write_text(
        f'<!doctype html><html><body><img alt="good" src="data:image/jpeg;base64,{good}">'
        '<img alt="bad" src="data:image/jpeg;base64,AAAA"><img alt="gone" src="missing.png"></body></html>'
    )
    assert browser.image_status(page) == [("good", True), ("bad", False), ("gone", False)]


def test_hostile_file_and_class_names_are_text_in_the_page_and_the_artifact():
    """The page escapes HTML (jinja autoescape); the Markdown artifact escapes Markdown (tasks.core.text.md):
    a backtick used to break out of the code span the paths were in."""
    from markdown_it import MarkdownIt

    name = "Dog/x` <img src=x onerror=alert(1)> `*y* | [l](u).jpg"
    tile = datareport.Tile(path=name, lines=("label Dog", "48x40, 1,234 bytes"), badge="Dog")
    group = datareport.Group(title='2 copies under Cat, "><b>Dog</b>: all dropped', tiles=(tile,))
    report = datareport.DataReport(
        counts=(("files ingested", 2),),
        reasons=(("corrupt", 1, "the image data cannot be decoded"),),
        rejected=datareport.Section(),
        undrawn=((name, "corrupt", "cannot be decoded: <b>"),),
        undrawn_more=0,
        duplicates=datareport.Section(),
        conflicts=datareport.Section(groups=(group,), total=1),
        flagged=(),
        flagged_photos=0,
        kept=0,
        max_distance=4,
        limits={"thumbnails": 100, "copies": 8, "listed": 500},
    )
    page = datareport.render_html(report)
    assert "<img src=x" not in page and "<b>Dog</b>" not in page and "&lt;img src=x" in page
    text = summary.data_quality_markdown(report, "reports/data.html")
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(text)
    assert "<img" not in rendered and "<code>" not in rendered and "<em>" not in rendered
    assert "<b>" not in rendered and "<a " not in rendered
    assert "x` &lt;img src=x onerror=alert(1)&gt; `*y* | [l](u).jpg" in rendered


def test_excluded_contradicted_and_quarantined_photos_are_shown_with_why(made):
    from reportsamples import sample

    from tasks.photos import exclude, quarantine

    raw, clean_df, _ = made
    kept = clean_df[clean_df["status"] == "kept"]
    entries = exclude.parse("Cat/cat.0.jpg # a drawing\nCat/typo.jpg # gone\n", "x")
    excluded = exclude.matches(entries, kept)
    batch = quarantine.new_batch(kept[kept["path"].isin(["Dog/dog.3.jpg", "Dog/dog.4.jpg"])], "30 % swapped")
    held = dedup.held_out(kept, excluded, {p.sha256: f"label audit batch {batch.id}" for p in batch.photos})
    grouped = dedup.find_duplicates(kept[~kept["path"].isin(held["path"])], 4)
    dd = dedup.with_held(grouped, held, kept)
    audit = sample("audit.json")
    audit["contradicted_photos"] = [
        {"path": "Dog/dog.5.jpg", "label": "Dog", "predicted": "Cat", "confidence": 0.97},
        {"path": "Cat/gone.jpg", "label": "Cat", "predicted": "Dog", "confidence": 0.99},  # left since
    ]
    held_out = datareport.HeldOut(
        held, tuple(exclude.unmatched(entries, clean_df)), audit=audit, batches=(batch,)
    )
    report = datareport.build(clean_df, dd, raw, SETTINGS.formats, SETTINGS.max_pixels, 4, LIMITS, held_out)
    page = datareport.render_html(report)
    pictures = images(page)
    assert {"Cat/cat.0.jpg", "Dog/dog.5.jpg", "Dog/dog.3.jpg", "Dog/dog.4.jpg"} <= set(pictures)
    assert "Excluded by you (1)" in page and "a drawing" in page
    assert '<tr><td class="n">2</td><td>Cat/typo.jpg</td><td>gone</td></tr>' in page  # names nothing
    assert "labelled Dog<br>champion: Cat (97.0%)" in page and "Cat/gone.jpg" not in page
    assert "photos&#39; labels (46.7%; normal up to 26.4%" in page  # the audit's reason, escaped
    assert f"batch {batch.id}: 2 photos held. 30 % swapped" in page and "pawflow quarantine release" in page
    assert '<tr><th>photos excluded by you</th><td class="n">1</td></tr>' in page
    assert '<tr><th>photos held in quarantine by the label audit</th><td class="n">2</td></tr>' in page
    markdown = summary.data_quality_markdown(report, "reports/data.html")
    assert f"- {md('Cat/cat.0.jpg')}: a drawing" in markdown
    assert f"- line 2 names no photo: {md('Cat/typo.jpg')}" in markdown
    assert f"- {md(f'batch {batch.id}: 2 photos held')}" in markdown
    # The same inputs give the same page, and without any hold-out the sections say so.
    again = datareport.build(clean_df, dd, raw, SETTINGS.formats, SETTINGS.max_pixels, 4, LIMITS, held_out)
    assert datareport.render_html(again) == page
    plain = datareport.render_html(
        datareport.build(clean_df, dd, raw, SETTINGS.formats, SETTINGS.max_pixels, 4, LIMITS)
    )
    assert "Quarantine (0 batches held)" in plain and "No audit yet." in plain
