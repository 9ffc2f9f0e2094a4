"""Tiny generated photos for tests: valid ones of every awkward kind, and every defect clean knows."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

OLE2_MAGIC = bytes.fromhex("d0cf11e0a1b11ae1")


def photo(seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Image.Image:
    """A distinct picture per seed: smooth random blobs, so perceptual hashes differ between seeds."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    return img.convert(mode) if mode != "RGB" else img


def encode(img: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def jpeg(seed: int, size: tuple[int, int] = (48, 40), quality: int = 92) -> bytes:
    return encode(photo(seed, size), "JPEG", quality=quality)


def truncated_jpeg(seed: int) -> bytes:
    data = jpeg(seed, (64, 64))
    return data[: len(data) * 2 // 3]


def scan_data(data: bytes) -> tuple[int, int]:
    """(start, end) of a baseline JPEG's entropy-coded scan data: after the SOS header, before EOI."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big"), data.rindex(b"\xff\xd9")


def cut_jpeg_closed(seed: int) -> bytes:
    """Cut at 60 % and closed with an EOI marker: libjpeg only warns and fills the rest with grey."""
    data = jpeg(seed, (160, 120))
    return data[: len(data) * 6 // 10] + b"\xff\xd9"


def zero_tail_jpeg(seed: int) -> bytes:
    """The last 40 % of the scan data zero-filled, the end marker kept (a preallocated, unfinished copy)."""
    data = bytearray(jpeg(seed, (160, 120)))
    cut = len(data) * 6 // 10
    data[cut:-2] = bytes(len(data) - 2 - cut)
    return bytes(data)


def flipped_jpeg(seed: int) -> bytes:
    """Three bytes of the scan data inverted (at 30, 50 and 70 % of it).

    Huffman codes often resynchronise after a flip (libjpeg then decodes silently: a few blocks of wrong
    colour); for seed 1005 they do not, and libjpeg warns "11 extraneous bytes before marker 0xd9".
    """
    data = bytearray(jpeg(seed, (160, 120)))
    start, end = scan_data(bytes(data))
    for frac in (0.3, 0.5, 0.7):
        data[start + int((end - start) * frac)] ^= 0xFF
    return bytes(data)


def corrupt_png(seed: int) -> bytes:
    """A PNG whose header is intact but whose compressed pixel data is garbage.

    (libjpeg, like TensorFlow's decoder, decodes most garbage inside a JPEG scan with a warning;
    a broken zlib stream is an error every decoder agrees on.)
    """
    data = bytearray(encode(photo(seed, (64, 64)), "PNG"))
    idat = data.find(b"IDAT")
    for i in range(idat + 10, idat + 60):
        data[i] ^= 0x5A
    return bytes(data)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries almost no data (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def exif_rotated_jpeg(seed: int, orientation: int = 6) -> bytes:
    img = photo(seed, (60, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=92, exif=exif)


def sixteen_bit_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((40, 48)) * 65535).astype(np.uint16)
    return encode(Image.fromarray(arr), "PNG")


def palette_png_with_transparency(seed: int) -> bytes:
    img = photo(seed).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(img, "PNG", transparency=0)


# name -> (bytes, expected status, expected reason or normalisation marker)
def defects(seed: int = 1000) -> dict[str, tuple[bytes, str]]:
    """Every defect kind: file name -> (bytes, reason clean must give)."""
    return {
        "empty.jpg": (b"", "empty_file"),
        "Thumbs.db": (OLE2_MAGIC + bytes(2000), "not_an_image"),
        "notes.txt": (b"just some notes\n", "not_an_image"),
        "page.jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "not_an_image"),
        "truncated.jpg": (truncated_jpeg(seed), "truncated"),
        "cut_closed.jpg": (cut_jpeg_closed(seed + 5), "truncated"),
        "zero_tail.jpg": (zero_tail_jpeg(seed + 6), "truncated"),
        "flipped.jpg": (flipped_jpeg(seed + 5), "corrupt_jpeg_data"),
        "corrupt.png": (corrupt_png(seed + 1), "corrupt"),
        "bomb.png": (png_header_only(20_000, 20_000), "decompression_bomb"),
        "tiny.jpg": (jpeg(seed + 2, (20, 16)), "too_small"),
        "strip.jpg": (jpeg(seed + 3, (200, 36)), "odd_aspect_ratio"),
        "icon.jpg": (encode(photo(seed + 4), "ICO"), "unsupported_format"),
    }


def awkward_valid(seed: int = 2000) -> dict[str, tuple[bytes, str]]:
    """Valid photos that need normalising: file name -> (bytes, a step clean.parquet must record)."""
    return {
        "gray.jpg": (encode(photo(seed, mode="L"), "JPEG"), "L->RGB"),
        "cmyk.jpg": (encode(photo(seed + 1).convert("CMYK"), "JPEG"), "CMYK->RGB"),
        "rgba.png": (encode(photo(seed + 2, mode="RGBA"), "PNG"), "alpha->white"),
        "palette.png": (palette_png_with_transparency(seed + 3), "alpha->white"),
        "deep.png": (sixteen_bit_png(seed + 4), "16bit->8bit"),
        "png_named.jpg": (encode(photo(seed + 5), "PNG"), "format:PNG"),
        "webp_named.jpg": (encode(photo(seed + 6), "WEBP", quality=90), "format:WEBP"),
        "rotated.jpg": (exif_rotated_jpeg(seed + 7), "exif_orientation:6"),
    }


# Channel weights of tinted photos, per class index: red, blue, green casts a tiny model learns in an epoch.
TINTS = ((1.0, 0.25, 0.25), (0.25, 0.25, 1.0), (0.25, 1.0, 0.25))


def tinted_jpeg(seed: int, tint: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A distinct photo (its own blobs, so its own perceptual hash) with a strong colour cast per class:
    labels a model can learn from a few dozen photos (a champion that can contradict a wrong label)."""
    pixels = np.asarray(photo(seed, size), dtype=np.float32) * np.array(TINTS[tint], dtype=np.float32)
    return encode(Image.fromarray(pixels.astype(np.uint8), "RGB"), "JPEG", quality=92)


def make_dataset(
    root: Path,
    per_class: int = 20,
    classes: tuple[str, ...] = ("Cat", "Dog"),
    seed: int = 0,
    size: tuple[int, int] = (48, 40),
    tinted: bool = False,
) -> Path:
    """A PetImages-style folder: <class>/<class>.<n>.jpg with distinct photos (tinted: a colour cast per
    class, so that a model can learn the labels; else the classes look alike)."""
    for c_idx, cls in enumerate(classes):
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            k = seed + c_idx * 100_000 + i
            data = tinted_jpeg(k, c_idx, size) if tinted else jpeg(k, size)
            (folder / f"{cls.lower()}.{i}.jpg").write_bytes(data)
    return root
