"""One photo: decode it fully with the decoder that builds the shards, judge it, normalise it.

Everything here is a pure function of the file's bytes and the settings, so results can be cached by
the bytes' sha256 (see tasks/photos/store.py).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import stat
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.core.status import Status

# Why each file was rejected; the keys are what clean.parquet's `reason` column holds.
REASONS: dict[str, str] = {
    "missing": "the file vanished after ingest",
    "unreadable": "the file cannot be read (permissions or an I/O error)",
    "changed_since_ingest": "the bytes differ from the sha256 ingest recorded",
    "empty_file": "zero bytes",
    "not_an_image": "no image decoder recognises it (Thumbs.db, text, HTML saved as .jpg, ...)",
    "unsupported_format": "an image format not listed in clean.formats",
    "decompression_bomb": "more pixels than clean.max_pixels",
    "truncated": "the image data ends early (cut off, zero-filled, or closed by an end marker too soon)",
    "corrupt": "the image data cannot be decoded",
    "corrupt_jpeg_data": "the JPEG compressed data is damaged (a decoder only warns and shows garbage)",
    "too_small": "the shorter side is below clean.min_side",
    "odd_aspect_ratio": "long side / short side is above clean.max_aspect_ratio",
    "timeout": "decoding took longer than clean.timeout_s",
}

# Kept photos worth a look: flagged, never rejected (clean.flags holds the limits). The keys are what
# clean.parquet's `flags` column holds; each flag is judged on its own, so a photo can carry several.
FLAGS: dict[str, str] = {
    "near_blank": "almost one flat tone: the standard deviation of its grey levels is below "
    "clean.flags.near_blank_contrast",
    "dark": "very dark: 99 % of its pixels are darker than grey level clean.flags.dark_level",
    "bright": "very bright (washed out): 95 % of its pixels are lighter than grey level "
    "clean.flags.bright_level",
    "blurry": "blurry: few sharp edges (the variance of the Laplacian of a small grey copy is below "
    "clean.flags.blurry_sharpness)",
    "low_information": "little in it (a logo, a drawing, a small picture on a plain background): the entropy "
    "of its grey levels is below clean.flags.low_information_bits",
}
# The measures behind FLAGS, taken from the normalised photo (the shard image, longer side at most
# shard.max_side) while it is in memory: grey levels are Pillow's "L" (ITU-R 601 luma, 0-255). Sharpness
# is the variance of the 4-neighbour Laplacian of a grey copy reduced QUALITY_REDUCE times (box average:
# 112 px for the default 224), where a photo's own noise and JPEG blocks weigh less than its edges. Cost:
# ~0.09 ms of CPU per photo (a resize to a fixed side cost twice that). Sums are exact integers and the
# results rounded to QUALITY_DIGITS, so the same photo gives the same numbers on any host.
QUALITY_REDUCE = 2
QUALITY_COLUMNS = ("grey_std", "grey_p05", "grey_p99", "sharpness", "entropy")
QUALITY_DIGITS = 3
LEVELS = np.arange(256, dtype=np.int64)

# White is what a viewer shows behind a transparent PNG on a page.
ALPHA_BACKGROUND = (255, 255, 255)
HIGH_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
# Files up to IN_MEMORY_BYTES are read whole (the fastest way to judge a photo; a 90-megapixel JPEG is
# ~30 MB). Larger ones are hashed in pieces and given to Pillow as an open file, which reads only the
# header to call them not_an_image / unsupported_format / decompression_bomb, and a decoder only as much as
# it decodes: a 2 GiB file is never held in memory.
IN_MEMORY_BYTES = 64 << 20

# Damaged JPEG data is where libjpeg only warns ("Corrupt JPEG data: premature end of data segment",
# "N extraneous bytes before marker") and Pillow, which silences the warnings, returns an image with a
# grey or garbled part. For a sequential JPEG (one scan holding every component) an equivalent check
# costs nothing extra: the decoder is given the scan's entropy-coded data followed by JPEG_LOOKAHEAD zero
# bytes and no end marker. libjpeg's bit reader reads at most 57 bits (8 bytes) ahead of the codes it
# decodes, so a complete scan finishes on those zeros without decoding any of them, while a scan whose
# data stops early (EOI appended to a cut file, a zero-filled tail, a desynchronised code) needs more and
# the decoder reports the file truncated. A scan that finishes before reading its own last byte has
# bytes left over: damaged. Progressive and other multi-scan JPEGs (and files over IN_MEMORY_BYTES) are
# decoded as before. Measured against djpeg's warnings: none of 8,000 real PetImages photos rejected
# (djpeg silent on all); of 501 of them damaged each way, every cut+EOI and zero-filled tail caught, and
# 243 of the 245 three-byte flips libjpeg warns about (none of the 256 it decodes silently rejected).
# Cost: ~0.1 ms of CPU per photo (1.81 -> 1.92 ms for the whole check).
JPEG_LOOKAHEAD = bytes(8)
_SCAN_DATA_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # a marker: 0xFF not stuffed (00) and not RSTn
_SEQUENTIAL_SOF = {0xC0, 0xC1}  # baseline and extended sequential, Huffman-coded
_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# What libjpeg accepts after the only scan of a sequential JPEG (anything else is an error or garbage):
# EOI, DNL, tables, restart interval, APPn, COM.
_MARKERS_AFTER_SCAN = {0xD9, 0xDC, 0xC4, 0xCC, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0)}


# EXIF orientation -> the transpose that shows the photo upright (ImageOps.exif_transpose's table).
ORIENTATION_TAG = 0x0112
TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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
    status: Status = Status.KEPT
    reason: str = ""
    detail: str = ""
    format: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    normalised: str = ""
    phash: str = ""
    # QUALITY_COLUMNS of a kept photo (measure_quality); None for a rejected file
    grey_std: float | None = None
    grey_p05: int | None = None
    grey_p99: int | None = None
    sharpness: float | None = None
    entropy: float | None = None
    extra: dict = field(default_factory=dict, repr=False)

    def record(self) -> dict:
        row = asdict(self)
        row.pop("extra")
        row["status"] = str(self.status)  # the plain string, as the cache and clean.parquet hold it
        return row


def _machine_failure(err: BaseException) -> bool:
    """An error of the machine, not of the photo's bytes: out of memory, or an I/O error while a decoder
    reads a large file (Pillow's own decoder errors carry no errno). It is re-raised, never made a verdict
    (verdicts are cached by the bytes' sha256): check_file makes an I/O error `unreadable`, which is not."""
    return isinstance(err, MemoryError) or (isinstance(err, OSError) and err.errno is not None)


def _reject(check: PhotoCheck, reason: str, detail: str = "") -> PhotoCheck:
    check.status, check.reason, check.detail = Status.REJECTED, reason, detail
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


def measure_quality(rgb: Image.Image) -> dict[str, float | int]:
    """The QUALITY_COLUMNS of a photo (see FLAGS): its grey levels' standard deviation, 5th and 99th
    percentiles (the lowest level at or below which that share of the pixels lies) and entropy (bits),
    and the sharpness of a grey copy at half its size."""
    grey = rgb.convert("L")
    hist = np.asarray(grey.histogram(), dtype=np.int64)
    n = int(hist.sum())
    total, squares = int(hist @ LEVELS), int(hist @ (LEVELS * LEVELS))
    cumulative = 100 * np.cumsum(hist)
    share = hist[hist > 0] / n
    x = np.asarray(grey.reduce(QUALITY_REDUCE), dtype=np.int64)
    if min(x.shape) < 3:  # no inner pixel: no edge to measure
        sharpness = 0.0
    else:
        lap = x[1:-1, :-2] + x[1:-1, 2:] + x[:-2, 1:-1] + x[2:, 1:-1] - 4 * x[1:-1, 1:-1]
        m, s1, s2 = lap.size, int(lap.sum()), int((lap * lap).sum())
        sharpness = (s2 - s1 * s1 / m) / m
    return {
        "grey_std": round(math.sqrt(max(0.0, squares / n - (total / n) ** 2)), QUALITY_DIGITS),
        "grey_p05": int(np.searchsorted(cumulative, 5 * n)),
        "grey_p99": int(np.searchsorted(cumulative, 99 * n)),
        "sharpness": round(sharpness, QUALITY_DIGITS),
        "entropy": round(float(-(share * np.log2(share)).sum()), QUALITY_DIGITS),
    }


def orient(im: Image.Image) -> tuple[Image.Image, list[str]]:
    """The photo turned upright as its EXIF orientation tag says, and the normalisation step taken.

    Not ImageOps.exif_transpose: after transposing, it rewrites the EXIF block without the tag, and on a
    damaged block (a tag whose type or count is wrong: about 1 in 150 random 1-4 byte changes of a small
    EXIF block) that rewrite raises TypeError, struct.error or AttributeError, though the pixels and the
    tag itself were read fine. pawflow keeps only pixels (every photo is re-encoded without metadata), so
    it transposes by the same table and never rewrites the block: a photo whose other tags are damaged
    is turned exactly like its undamaged twin ("exif_orientation:N"). When the tag cannot be used, the
    photo is kept as stored and the step says why: "exif_unreadable" (the EXIF block does not parse) or
    "exif_orientation_invalid" (the tag holds something other than 1-8)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data", "Tag data larger than file"
            value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception as err:  # a block that does not parse leaves the pixels as good as they were
        if _machine_failure(err):
            raise
        return im, ["exif_unreadable"]
    if value is None or (isinstance(value, int) and value == 1):
        return im, []
    method = TRANSPOSES.get(value) if isinstance(value, int) and not isinstance(value, bool) else None
    if method is None:
        return im, ["exif_orientation_invalid"]
    return im.transpose(method), [f"exif_orientation:{value}"]


def encode_jpeg(im: Image.Image, quality: int) -> bytes:
    """Baseline RGB JPEG; libjpeg is deterministic, so the same pixels give the same bytes."""
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=quality, optimize=False, progressive=False)
    return out.getvalue()


@dataclass(frozen=True)
class ScanEnd:
    """Where the entropy-coded data of a sequential JPEG's scan ends, and the marker found there."""

    offset: int
    marker: int | None  # None: the file ends inside the scan data


def jpeg_scan_end(data: bytes) -> ScanEnd | None:
    """For a sequential JPEG with a single scan of all components, where its scan data ends; else None."""
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, components, sof = 2, None, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker == 0xD9:
            return None
        body = pos + 4
        pos = body + int.from_bytes(data[pos + 2 : pos + 4], "big") - 2
        if marker in _SOF_MARKERS and body + 5 < len(data):
            sof, components = marker, data[body + 5]
        elif marker == 0xDA:
            if sof not in _SEQUENTIAL_SOF or body >= len(data) or data[body] != components:
                return None  # progressive, lossless, arithmetic-coded, or one scan per component
            found = _SCAN_DATA_END.search(data, pos)
            if not found:
                return ScanEnd(len(data), None)
            code = found.start() + 1
            while code < len(data) and data[code] == 0xFF:  # fill bytes: the marker is the next byte
                code += 1
            return ScanEnd(found.start(), data[code] if code < len(data) else None)
    return None


class _ScanBytes(io.BytesIO):
    """A JPEG's bytes up to the end of its scan data, then JPEG_LOOKAHEAD zeros (see above).

    The scan's last byte is handed out by a read of its own, so `read_last_byte` tells whether the
    decoder needed it (a complete, undamaged scan always does).
    """

    def __init__(self, data: bytes, end: int) -> None:
        super().__init__(data[:end] + JPEG_LOOKAHEAD)
        self._last = end - 1
        self.read_last_byte = False

    def read(self, size: int | None = -1) -> bytes:
        pos = self.tell()
        if pos < self._last:
            if size is None or size < 0 or pos + size > self._last:
                size = self._last - pos
        elif pos == self._last and size != 0:
            self.read_last_byte = True
        return super().read(size)


def _decode(content: bytes | BinaryIO, check: PhotoCheck, s: CheckSettings) -> Image.Image | None:
    """Open and fully decode (at reduced DCT scale for JPEG); None if rejected.

    `content` is the file's bytes, or for a file too large to hold (IN_MEMORY_BYTES) the open file, which
    Pillow then reads only as far as it needs (without the JPEG scan check).
    """
    scan = jpeg_scan_end(content) if isinstance(content, bytes) else None
    source: BinaryIO = (
        _ScanBytes(content, scan.offset)
        if scan and isinstance(content, bytes)
        else io.BytesIO(content)
        if isinstance(content, bytes)
        else content
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's bomb warning: we apply our own limit below
            im = Image.open(source)
    except UnidentifiedImageError:
        source.seek(0)
        data = source.read(256)
        head = data[:64].lstrip().lower()
        kind = "text/HTML" if head.startswith((b"<", b"<!doctype")) or data.isascii() else "binary"
        _reject(check, "not_an_image", f"{kind} data")
        return None
    except Image.DecompressionBombError as err:
        _reject(check, "decompression_bomb", str(err))
        return None
    except Exception as err:  # a plugin that chokes on hostile headers
        if _machine_failure(err):
            raise
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
        if _machine_failure(err):
            raise
        if "truncated" not in str(err).lower():
            _reject(check, "corrupt", f"{type(err).__name__}: {err}")
        elif scan and scan.marker is not None:
            _reject(
                check,
                "truncated",
                f"the scan data stops at byte {scan.offset} (marker 0x{scan.marker:02X}) before the picture "
                "is complete; libjpeg: 'Corrupt JPEG data: premature end of data segment'",
            )
        else:
            _reject(check, "truncated", f"{type(err).__name__}: {err}")
        return None
    except Exception as err:  # any decoder failure on hostile bytes is a verdict, not a crash
        if _machine_failure(err):
            raise
        _reject(check, "corrupt", f"{type(err).__name__}: {err}")
        return None
    if scan and isinstance(source, _ScanBytes) and not source.read_last_byte:
        _reject(
            check,
            "corrupt_jpeg_data",
            f"the picture was complete before the end of its scan data (byte {scan.offset}); libjpeg: "
            "'Corrupt JPEG data: extraneous bytes before marker'",
        )
        return None
    if scan and scan.marker is not None and scan.marker not in _MARKERS_AFTER_SCAN:
        _reject(check, "corrupt_jpeg_data", f"unexpected marker 0x{scan.marker:02X} at byte {scan.offset}")
        return None
    check.extra["original_size"] = (width, height)
    return im


def check_bytes(data: bytes, s: CheckSettings) -> tuple[PhotoCheck, bytes | None]:
    """Judge one file's bytes; for a kept photo also return its normalised JPEG (max_side)."""
    return _check(data, hashlib.sha256(data).hexdigest(), len(data), s)


def _check(
    content: bytes | BinaryIO, sha256: str, size: int, s: CheckSettings
) -> tuple[PhotoCheck, bytes | None]:
    started = time.monotonic()
    check = PhotoCheck(sha256=sha256, bytes=size)
    if not size:
        return _reject(check, "empty_file"), None
    im = _decode(content, check, s)
    if im is None:
        return check, None
    try:
        return _normalise(im, check, s, started)
    except Exception as err:  # metadata or a mode no decoder test met: a verdict, never a crash
        return _reject(check, "corrupt", f"cannot be normalised: {type(err).__name__}: {err}"), None


def _normalise(
    im: Image.Image, check: PhotoCheck, s: CheckSettings, started: float
) -> tuple[PhotoCheck, bytes | None]:
    """A decoded photo: upright, judged on its size and shape, made 8-bit RGB at max_side, hashed."""
    steps: list[str] = []
    if check.format not in ("JPEG", "MPO"):
        steps.append(f"format:{check.format}")
    stored = im.size
    im, turned = orient(im)
    steps += turned
    width, height = check.extra["original_size"]
    if im.size != stored:  # a quarter turn (orientations 5-8): the sides swap
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
    for key, value in measure_quality(rgb).items():
        setattr(check, key, value)
    check.normalised = ";".join(steps)
    if time.monotonic() - started > s.timeout_s:
        return _reject(check, "timeout", f"{time.monotonic() - started:.1f}s"), None
    return check, encode_jpeg(rgb, s.jpeg_quality)


def open_regular(path: Path) -> io.BufferedReader:
    """Open a regular file for reading; anything else (pipe, socket, device, folder) raises OSError.

    O_NONBLOCK makes opening a named pipe return at once instead of waiting for a writer.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (pipe, socket or device)"
            raise OSError(0, kind)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_file(path: Path, expected_sha256: str | None, s: CheckSettings) -> tuple[PhotoCheck, bytes | None]:
    """Judge a file, hashing it in pieces and decoding only what it needs; I/O problems become reasons."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            content: bytes | BinaryIO = f
            if size <= IN_MEMORY_BYTES:
                content = f.read()
                sha256, size = hashlib.sha256(content).hexdigest(), len(content)
            else:
                sha256 = hashlib.file_digest(f, "sha256").hexdigest()
                size = f.tell()
            if expected_sha256 and sha256 != expected_sha256:
                check = PhotoCheck(sha256=sha256, bytes=size)
                detail = f"sha256 {sha256[:12]} != {expected_sha256[:12]}"
                return _reject(check, "changed_since_ingest", detail), None
            return _check(content, sha256, size, s)
    except FileNotFoundError:
        return _reject(PhotoCheck(sha256=expected_sha256 or "", bytes=0), "missing", str(path)), None
    except OSError as err:
        return _reject(
            PhotoCheck(sha256=expected_sha256 or "", bytes=0),
            "unreadable",
            f"{type(err).__name__}: {err.strerror or err}",
        ), None
