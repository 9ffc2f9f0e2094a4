"""The per-photo check: every defect gets its reason; every awkward but valid photo is normalised."""

from __future__ import annotations

import io
import os
import tracemalloc

import imagegen
import numpy as np
import pytest
from PIL import Image

from tasks.photos import images
from tasks.photos.images import REASONS, CheckSettings, ScanEnd, check_bytes, check_file, jpeg_scan_end

SETTINGS = CheckSettings(
    min_side=32,
    max_aspect_ratio=4.0,
    max_pixels=89_478_485,
    formats=("BMP", "GIF", "JPEG", "MPO", "PNG", "TIFF", "WEBP"),
    max_side=256,
    jpeg_quality=90,
    hash_size=8,
)


@pytest.mark.parametrize("name", sorted(imagegen.defects()))
def test_each_defect_is_rejected_with_its_reason(name: str):
    data, reason = imagegen.defects()[name]
    check, thumb = check_bytes(data, SETTINGS)
    assert (check.status, check.reason) == ("rejected", reason)
    assert reason in REASONS
    assert thumb is None


@pytest.mark.parametrize("name", sorted(imagegen.awkward_valid()))
def test_awkward_valid_photos_are_kept_and_normalised(name: str):
    data, step = imagegen.awkward_valid()[name]
    check, thumb = check_bytes(data, SETTINGS)
    assert check.status == "kept", check.detail
    assert step in check.normalised.split(";")
    img = Image.open(io.BytesIO(thumb))
    assert (img.format, img.mode) == ("JPEG", "RGB")
    assert len(check.phash) == 16


def test_exif_rotation_is_applied_to_pixels_and_size():
    data, _ = imagegen.awkward_valid()["rotated.jpg"]
    check, thumb = check_bytes(data, SETTINGS)
    # stored 60x40 with orientation 6 (rotate 90 clockwise to display): shown 40 wide, 60 high
    assert (check.width, check.height) == (40, 60)
    assert Image.open(io.BytesIO(thumb)).size == (40, 60)


def test_transparency_becomes_white():
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    _, thumb = check_bytes(imagegen.encode(img, "PNG"), SETTINGS)
    pixels = np.asarray(Image.open(io.BytesIO(thumb)))
    assert pixels.min() > 240


def test_large_photo_is_reduced_to_max_side_keeping_aspect():
    data = imagegen.jpeg(3, (640, 480))
    check, thumb = check_bytes(data, SETTINGS)
    assert (check.width, check.height) == (640, 480)
    assert Image.open(io.BytesIO(thumb)).size == (256, 192)


def test_bomb_limit_is_a_parameter():
    data = imagegen.jpeg(4, (200, 200))
    small = CheckSettings(**{**SETTINGS.__dict__, "max_pixels": 10_000})
    check, _ = check_bytes(data, small)
    assert check.reason == "decompression_bomb"


def test_format_allow_list_is_a_parameter():
    only_jpeg = CheckSettings(**{**SETTINGS.__dict__, "formats": ("JPEG",)})
    data, _ = imagegen.awkward_valid()["png_named.jpg"]
    assert check_bytes(data, only_jpeg)[0].reason == "unsupported_format"


def test_same_bytes_same_verdict_and_thumbnail():
    data = imagegen.jpeg(5, (300, 200))
    a, b = check_bytes(data, SETTINGS), check_bytes(data, SETTINGS)
    assert a[0] == b[0] and a[1] == b[1]


def test_file_level_reasons(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(imagegen.jpeg(6))
    assert check_file(tmp_path / "gone.jpg", "0" * 64, SETTINGS)[0].reason == "missing"
    assert check_file(good, "0" * 64, SETTINGS)[0].reason == "changed_since_ingest"
    (tmp_path / "dir.jpg").mkdir()
    assert check_file(tmp_path / "dir.jpg", None, SETTINGS)[0].reason == "unreadable"


def grey_rows(data: bytes) -> int:
    """How many bottom rows Pillow fills with libjpeg's flat grey when it decodes `data` without error."""
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    flat = np.all(arr == 128, axis=1)
    return int(np.argmin(flat[::-1])) if not flat.all() else len(flat)


@pytest.mark.parametrize(
    ("make", "reason", "detail"),
    [
        (imagegen.cut_jpeg_closed, "truncated", "premature end of data segment"),
        (imagegen.zero_tail_jpeg, "truncated", "premature end of data segment"),
        (imagegen.flipped_jpeg, "corrupt_jpeg_data", "extraneous bytes"),
    ],
)
def test_damaged_jpeg_data_that_libjpeg_only_warns_about_is_rejected(make, reason: str, detail: str):
    data = make(1005)
    Image.open(io.BytesIO(data)).load()  # Pillow alone decodes every one of them without an error
    check, thumb = check_bytes(data, SETTINGS)
    assert (check.status, check.reason) == ("rejected", reason)
    assert detail in check.detail
    assert reason in REASONS and thumb is None


def test_a_jpeg_cut_and_closed_early_really_has_a_grey_bottom():
    assert grey_rows(imagegen.cut_jpeg_closed(1005)) >= 120 * 3 // 10
    assert grey_rows(imagegen.jpeg(1005, (160, 120))) == 0


def test_bytes_left_over_after_a_complete_scan_are_damage():
    data = imagegen.jpeg(7, (96, 80))
    _, end = imagegen.scan_data(data)
    padded = data[:end] + bytes(16) + data[end:]
    check, _ = check_bytes(padded, SETTINGS)
    assert check.reason == "corrupt_jpeg_data" and "extraneous bytes" in check.detail
    unknown_marker = data[:end] + b"\xff\x17" + data[end:]
    assert check_bytes(unknown_marker, SETTINGS)[0].reason == "corrupt_jpeg_data"


@pytest.mark.parametrize(
    "options",
    [
        {"quality": 95},
        {"quality": 40, "optimize": True},  # optimised Huffman tables: all-zero codes are common
        {"quality": 90, "subsampling": 0},
        {"quality": 90, "progressive": True},
        {"quality": 90, "restart_marker_blocks": 3},
        {"quality": 90, "restart_marker_rows": 1},
    ],
)
@pytest.mark.parametrize("size", [(33, 33), (160, 120), (241, 97)])
def test_intact_jpegs_of_every_kind_pass_the_scan_check(options: dict, size: tuple[int, int]):
    for seed in range(5):
        img = imagegen.photo(seed, size)
        for mode in ("RGB", "L", "CMYK"):
            data = imagegen.encode(img.convert(mode), "JPEG", **options)
            check, thumb = check_bytes(data, SETTINGS)
            assert check.status == "kept", (options, size, seed, mode, check.reason, check.detail)
            # Trailing bytes after the end marker are no damage to the picture.
            assert check_bytes(data + b"trailer", SETTINGS)[1] == thumb


def test_scan_end_is_found_only_for_single_scan_sequential_jpegs():
    data = imagegen.jpeg(3, (64, 48))
    assert jpeg_scan_end(data) == ScanEnd(imagegen.scan_data(data)[1], 0xD9)
    assert jpeg_scan_end(imagegen.encode(imagegen.photo(3), "JPEG", progressive=True)) is None
    assert jpeg_scan_end(imagegen.encode(imagegen.photo(3), "PNG")) is None
    assert jpeg_scan_end(data[:100]) is None


@pytest.mark.timeout(20)
def test_a_named_pipe_is_unreadable_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)  # opening it for reading the usual way would wait for a writer forever
    check, thumb = check_file(fifo, None, SETTINGS)
    assert (check.reason, thumb) == ("unreadable", None)
    assert "not a regular file" in check.detail


def test_large_files_are_never_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "IN_MEMORY_BYTES", 1 << 20)
    big = tmp_path / "Thumbs.db"
    with big.open("wb") as f:
        f.write(imagegen.OLE2_MAGIC)
        f.truncate(64 << 20)
    photo = tmp_path / "big.jpg"
    photo.write_bytes(imagegen.jpeg(8, (160, 120)) + bytes(2 << 20))  # a photo with a 2 MiB trailer
    check_bytes(imagegen.jpeg(8), SETTINGS)  # imports what judging a photo needs before counting
    tracemalloc.start()
    try:
        junk, _ = check_file(big, None, SETTINGS)
        kept, thumb = check_file(photo, None, SETTINGS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (junk.reason, junk.bytes) == ("not_an_image", 64 << 20)
    assert kept.status == "kept" and thumb == check_bytes(photo.read_bytes(), SETTINGS)[1]
    assert peak < 1 << 20


@pytest.mark.parametrize("stage", ["open", "load"])
def test_a_failure_of_the_machine_is_never_a_verdict(tmp_path, monkeypatch, stage: str):
    """Out of memory, or an I/O error while a decoder reads a large file, says nothing about the photo:
    no verdict (verdicts are cached by the bytes' sha256). An I/O error makes the file `unreadable`,
    which is never cached (tasks.clean.UNCACHEABLE); running out of memory fails the run."""
    import errno

    monkeypatch.setattr(images, "IN_MEMORY_BYTES", 1 << 10)  # decoded from the open file
    photo = tmp_path / "big.jpg"
    photo.write_bytes(imagegen.jpeg(8, (160, 120)))
    real = Image.open if stage == "open" else Image.Image.load

    def fails(error: BaseException):
        def call(*args, **kwargs):
            raise error

        return call

    target = (Image, "open") if stage == "open" else (Image.Image, "load")
    monkeypatch.setattr(*target, fails(OSError(errno.EIO, "Input/output error")))
    check, thumb = check_file(photo, None, SETTINGS)
    assert (check.reason, thumb) == ("unreadable", None) and "Input/output error" in check.detail
    monkeypatch.setattr(*target, fails(MemoryError()))
    with pytest.raises(MemoryError):
        check_file(photo, None, SETTINGS)
    monkeypatch.setattr(*target, fails(OSError("decoder error -2")))  # Pillow's own: the bytes are bad
    assert check_file(photo, None, SETTINGS)[0].reason == "corrupt"
    monkeypatch.setattr(*target, real)
    assert check_file(photo, None, SETTINGS)[0].status == "kept"


# --------------------------------------------------------------------------- quality measures


def test_quality_measures_of_hand_made_pictures():
    flat = images.measure_quality(Image.new("RGB", (20, 20), (100, 100, 100)))
    assert flat == {"grey_std": 0.0, "grey_p05": 100, "grey_p99": 100, "sharpness": 0.0, "entropy": 0.0}
    # Black left half, white right half, 40x40: grey levels 0 and 255 half each (std 127.5, 1 bit).
    # Reduced 2x to 20x20 (columns 0-9 black), the Laplacian of the 18x18 inner pixels is +255 in
    # column 9 and -255 in column 10, 0 elsewhere: mean 0, variance 36 * 255**2 / 324 = 7225.
    halves = np.zeros((40, 40, 3), np.uint8)
    halves[:, 20:] = 255
    assert images.measure_quality(Image.fromarray(halves)) == {
        "grey_std": 127.5,
        "grey_p05": 0,
        "grey_p99": 255,
        "sharpness": 7225.0,
        "entropy": 1.0,
    }


def test_a_kept_photo_carries_its_measures_and_a_rejected_file_none():
    check, _ = check_bytes(imagegen.jpeg(1, (160, 120)), SETTINGS)
    record = check.record()
    assert all(isinstance(record[k], int | float) for k in images.QUALITY_COLUMNS)
    assert record["grey_p05"] <= record["grey_p99"] and 0 < record["entropy"] <= 8
    rejected, _ = check_bytes(b"not an image", SETTINGS)
    assert all(rejected.record()[k] is None for k in images.QUALITY_COLUMNS)


@pytest.mark.parametrize("error", sorted(imagegen.DAMAGED_EXIF_SEEDS))
def test_a_photo_whose_exif_pillow_cannot_rewrite_is_turned_like_its_undamaged_twin(error: str):
    """A few changed bytes in the EXIF block make ImageOps.exif_transpose raise (it rewrites the block
    after turning the photo) though the photo decodes: clean keeps it, turned as its tag says."""
    import warnings

    from PIL import ImageOps

    data = imagegen.damaged_exif_jpeg(imagegen.DAMAGED_EXIF_SEEDS[error])
    im = Image.open(io.BytesIO(data))
    im.load()
    with pytest.raises(Exception) as raised, warnings.catch_warnings():  # the sample still is one
        warnings.simplefilter("ignore")
        ImageOps.exif_transpose(im)
    assert f"{type(raised.value).__module__}.{type(raised.value).__name__}".endswith(error)
    check, thumb = check_bytes(data, SETTINGS)
    twin, twin_thumb = check_bytes(imagegen.jpeg_with_metadata(7), SETTINGS)
    assert check.status == "kept" and check.normalised == twin.normalised == "exif_orientation:6"
    assert (check.width, check.height) == (twin.width, twin.height) == (40, 60)
    assert thumb == twin_thumb  # the same pixels, turned the same way


@pytest.mark.parametrize(
    ("value", "step"), [(9, "exif_orientation_invalid"), (0, "exif_orientation_invalid"), (1, "")]
)
def test_an_orientation_tag_outside_1_to_8_keeps_the_photo_as_stored_and_says_so(value: int, step: str):
    check, thumb = check_bytes(imagegen.jpeg_with_metadata(7, orientation=value), SETTINGS)
    assert check.status == "kept" and check.normalised == step
    assert (check.width, check.height) == Image.open(io.BytesIO(thumb)).size == (60, 40)


# Seeded changes per metadata segment: no exception may escape the check, every verdict is a known one.
FUZZ_CHANGES = {"exif": 1000, "xmp": 150, "icc": 150, "comment": 50}
PNG_FUZZ_CHANGES = {"tEXt": 100, "zTXt": 100, "iTXt": 150, "iCCP": 150, "eXIf": 500}


def _assert_judged(data: bytes, what: str) -> str:
    try:
        check, thumb = check_bytes(data, SETTINGS)
    except Exception as err:  # pragma: no cover - the failure this test looks for
        pytest.fail(f"{what}: {type(err).__name__}: {err} escaped the check")
    assert check.status in ("kept", "rejected"), what
    if check.status == "rejected":
        assert check.reason in REASONS and thumb is None, what
    else:
        assert Image.open(io.BytesIO(thumb)).mode == "RGB", what
    return check.status


def test_damaged_metadata_in_jpegs_and_pngs_never_escapes_the_check():
    import warnings

    verdicts: dict[str, set[str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data" and friends
        jpeg = imagegen.jpeg_with_metadata(7)
        for kind, start, end in imagegen.jpeg_segments(jpeg):
            for seed in range(FUZZ_CHANGES.get(kind, 0)):
                changed = imagegen.changed_bytes(jpeg, start, end, seed)
                verdicts.setdefault(kind, set()).add(_assert_judged(changed, f"JPEG {kind} seed {seed}"))
        png = imagegen.png_with_metadata(7)
        for kind, start, end in imagegen.png_chunks(png):
            for seed in range(PNG_FUZZ_CHANGES.get(kind, 0)):
                changed = imagegen.with_png_crcs(imagegen.changed_bytes(png, start, end, seed))
                verdicts.setdefault(kind, set()).add(_assert_judged(changed, f"PNG {kind} seed {seed}"))
    assert set(verdicts) == set(FUZZ_CHANGES) | set(PNG_FUZZ_CHANGES)  # every segment was reached
    assert all("kept" in v for v in verdicts.values())  # damaged metadata alone never costs the photo


def test_a_failure_after_decoding_is_a_corrupt_verdict_naming_it(monkeypatch):
    """Whatever a hostile file makes fail past the decoder (metadata, an exotic mode) is a verdict."""

    def broken(im):
        raise ValueError("conversion from XYZ not supported")

    monkeypatch.setattr(images, "to_rgb", broken)
    check, thumb = check_bytes(imagegen.jpeg(1), SETTINGS)
    assert (check.status, check.reason, thumb) == ("rejected", "corrupt", None)
    assert check.detail == "cannot be normalised: ValueError: conversion from XYZ not supported"
