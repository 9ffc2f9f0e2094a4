"""The per-photo check: every defect gets its reason; every awkward but valid photo is normalised."""

from __future__ import annotations

import io

import imagegen
import numpy as np
import pytest
from PIL import Image

from tasks.images import REASONS, CheckSettings, check_bytes, check_file

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
