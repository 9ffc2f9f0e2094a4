"""One photo: decode it fully with the decoder that builds the shards, judge it, normalise it.

Everything here is a pure function of the file's bytes and the settings, so results can be cached by
the bytes' sha256 (see tasks/store.py).
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Why each file was rejected; the keys are what clean.parquet's `reason` column holds.
REASONS: dict[str, str] = {
    "missing": "the file vanished after ingest",
    "unreadable": "the file cannot be read (permissions or an I/O error)",
    "changed_since_ingest": "the bytes differ from the sha256 ingest recorded",
    "empty_file": "zero bytes",
    "not_an_image": "no image decoder recognises it (Thumbs.db, text, HTML saved as .jpg, ...)",
    "unsupported_format": "an image format not listed in clean.formats",
    "decompression_bomb": "more pixels than clean.max_pixels",
    "truncated": "the image data ends early",
    "corrupt": "the image data cannot be decoded",
    "too_small": "the shorter side is below clean.min_side",
    "odd_aspect_ratio": "long side / short side is above clean.max_aspect_ratio",
    "timeout": "decoding took longer than clean.timeout_s",
}

KEPT = "kept"
REJECTED = "rejected"
# White is what a viewer shows behind a transparent PNG on a page.
ALPHA_BACKGROUND = (255, 255, 255)
HIGH_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


@dataclass(frozen=True)
class CheckSettings:
    """What judging and normalising a photo depends on (clean, dedup.hash_size, shard encoding)."""

    min_side: int
    max_aspect_ratio: float
    max_pixels: int
    formats: tuple[str, ...]
    max_side: int
    jpeg_quality: int
    hash_size: int
    timeout_s: float = 30.0


@dataclass
class PhotoCheck:
    """The verdict on one file's bytes; one row of clean.parquet without its path and label."""

    sha256: str
    bytes: int
    status: str = KEPT
    reason: str = ""
    detail: str = ""
    format: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    normalised: str = ""
    phash: str = ""
    extra: dict = field(default_factory=dict, repr=False)

    def record(self) -> dict:
        row = asdict(self)
        row.pop("extra")
        return row


def _reject(check: PhotoCheck, reason: str, detail: str = "") -> PhotoCheck:
    check.status, check.reason, check.detail = REJECTED, reason, detail
    return check


def _scaled_box(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size with the longer side at most max_side, aspect kept (never upscales)."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_rgb(im: Image.Image) -> tuple[Image.Image, list[str]]:
    """Any Pillow mode -> 8-bit RGB; transparency composited onto white. Returns the steps taken."""
    steps: list[str] = []
    if im.mode in HIGH_BIT_MODES:
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 or im.mode.startswith("I;16") else 255.0
        im = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
        steps.append("16bit->8bit")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        im = Image.alpha_composite(background, rgba).convert("RGB")
        steps.append("alpha->white")
    elif im.mode != "RGB":
        steps.append(f"{im.mode}->RGB")
        im = im.convert("RGB")
    return im, steps


def encode_jpeg(im: Image.Image, quality: int) -> bytes:
    """Baseline RGB JPEG; libjpeg is deterministic, so the same pixels give the same bytes."""
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=quality, optimize=False, progressive=False)
    return out.getvalue()


def _decode(data: bytes, check: PhotoCheck, s: CheckSettings) -> Image.Image | None:
    """Open and fully decode (at reduced DCT scale for JPEG); None if rejected."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's bomb warning: we apply our own limit below
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        kind = "text/HTML" if head.startswith((b"<", b"<!doctype")) or data[:256].isascii() else "binary"
        _reject(check, "not_an_image", f"{kind} data")
        return None
    except Image.DecompressionBombError as err:
        _reject(check, "decompression_bomb", str(err))
        return None
    except Exception as err:  # a plugin that chokes on hostile headers
        _reject(check, "corrupt", f"{type(err).__name__}: {err}")
        return None
    check.format = im.format or ""
    check.mode = im.mode
    width, height = im.size
    if check.format not in s.formats:
        _reject(check, "unsupported_format", check.format)
        return None
    if width * height > s.max_pixels:
        _reject(check, "decompression_bomb", f"{width}x{height} pixels")
        return None
    if check.format in ("JPEG", "MPO"):
        # DCT scaling: every entropy-coded byte is still decoded (truncation is still caught),
        # but the inverse DCT runs at the smallest scale that keeps max_side.
        im.draft(im.mode, _scaled_box(width, height, s.max_side))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the pixels are what we judge
            im.load()
    except Image.DecompressionBombError as err:
        _reject(check, "decompression_bomb", str(err))
        return None
    except OSError as err:
        reason = "truncated" if "truncated" in str(err).lower() else "corrupt"
        _reject(check, reason, f"{type(err).__name__}: {err}")
        return None
    except Exception as err:  # any decoder failure on hostile bytes is a verdict, not a crash
        _reject(check, "corrupt", f"{type(err).__name__}: {err}")
        return None
    check.extra["original_size"] = (width, height)
    return im


def check_bytes(data: bytes, s: CheckSettings) -> tuple[PhotoCheck, bytes | None]:
    """Judge one file's bytes; for a kept photo also return its normalised JPEG (max_side)."""
    started = time.monotonic()
    check = PhotoCheck(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    if not data:
        return _reject(check, "empty_file"), None
    im = _decode(data, check, s)
    if im is None:
        return check, None
    steps: list[str] = []
    if check.format not in ("JPEG", "MPO"):
        steps.append(f"format:{check.format}")
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF does not make the pixels unusable
        orientation = 1
    if orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        steps.append(f"exif_orientation:{orientation}")
    width, height = check.extra["original_size"]
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    check.width, check.height = width, height
    if min(width, height) < s.min_side:
        return _reject(check, "too_small", f"{width}x{height}"), None
    if max(width, height) / min(width, height) > s.max_aspect_ratio:
        return _reject(check, "odd_aspect_ratio", f"{width}x{height}"), None
    if getattr(im, "n_frames", 1) > 1:
        steps.append("first_frame")
    rgb, mode_steps = to_rgb(im)
    steps += mode_steps
    box = _scaled_box(width, height, s.max_side)
    if rgb.size != box:
        # After DCT scaling the ratio left is small (typically < 2x), where bilinear (antialiased in
        # Pillow) looks like Lanczos at 40% of its cost; larger ratios are box-reduced first.
        rgb = rgb.resize(box, Image.Resampling.BILINEAR, reducing_gap=2.0)
    # The hash is taken from the normalised image, box-reduced to ~4x the hash's side, so every
    # photo is hashed the same way whatever its size (phash resizes to 4 * hash_size itself).
    factor = max(1, min(rgb.size) // (8 * s.hash_size))
    check.phash = str(imagehash.phash(rgb.reduce(factor) if factor > 1 else rgb, hash_size=s.hash_size))
    check.normalised = ";".join(steps)
    if time.monotonic() - started > s.timeout_s:
        return _reject(check, "timeout", f"{time.monotonic() - started:.1f}s"), None
    return check, encode_jpeg(rgb, s.jpeg_quality)


def check_file(path: Path, expected_sha256: str | None, s: CheckSettings) -> tuple[PhotoCheck, bytes | None]:
    """Read a file and judge it; I/O problems become reasons too."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _reject(PhotoCheck(sha256=expected_sha256 or "", bytes=0), "missing", str(path)), None
    except (PermissionError, IsADirectoryError, OSError) as err:
        return _reject(
            PhotoCheck(sha256=expected_sha256 or "", bytes=0),
            "unreadable",
            f"{type(err).__name__}: {err.strerror or err}",
        ), None
    check, thumb = check_bytes(data, s)
    if expected_sha256 and check.sha256 != expected_sha256:
        return _reject(
            check, "changed_since_ingest", f"sha256 {check.sha256[:12]} != {expected_sha256[:12]}"
        ), None
    return check, thumb


def thumbnail_from_bytes(data: bytes, s: CheckSettings) -> bytes:
    """The normalised JPEG for a photo already known to be good (used when the cache lacks it)."""
    check, thumb = check_bytes(data, s)
    if thumb is None:
        raise ValueError(
            f"photo {check.sha256[:12]} no longer passes the check: {check.reason} {check.detail}"
        )
    return thumb
