"""Tiny generated photos for tests: valid ones of every awkward kind, and every defect clean knows."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

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


def metadata_exif(orientation: int = 6) -> Image.Exif:
    """A small camera-like EXIF block: orientation plus text and rational tags (what phones write)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Camera"  # Make
    exif[0x0110] = "Model X"  # Model
    exif[0x0131] = "pawflow"  # Software
    exif[0x011A] = 72.0  # XResolution
    return exif


XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/>'
    b"</rdf:RDF></x:xmpmeta>"
)


def icc_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def jpeg_with_metadata(seed: int, orientation: int = 6) -> bytes:
    """A small JPEG carrying every metadata segment a camera or editor writes: EXIF (APP1), XMP (APP1),
    an ICC profile (APP2) and a comment (COM)."""
    return encode(
        photo(seed, (60, 40)),
        "JPEG",
        quality=92,
        exif=metadata_exif(orientation),
        xmp=XMP,
        icc_profile=icc_profile(),
        comment=b"taken by pawflow's tests",
    )


def png_with_metadata(seed: int) -> bytes:
    """A small PNG with text chunks (tEXt, zTXt, iTXt), an ICC profile (iCCP) and EXIF (eXIf)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "taken by pawflow's tests")
    info.add_text("Description", "a compressed text chunk " * 4, zip=True)
    info.add_itxt("XML:com.adobe.xmp", XMP.decode(), lang="en", tkey="xmp")
    return encode(photo(seed, (60, 40)), "PNG", pnginfo=info, icc_profile=icc_profile(), exif=metadata_exif())


def jpeg_segments(data: bytes) -> list[tuple[str, int, int]]:
    """(kind, start, end) of the payload of each metadata segment before a JPEG's scan: exif, xmp, icc,
    comment (other APPn segments as app<n>)."""
    found, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] != 0xDA:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
        start, end = pos + 4, pos + 2 + length
        body = data[start:end]
        if marker == 0xE1 and body.startswith(b"Exif\0\0"):
            found.append(("exif", start + 6, end))
        elif marker == 0xE1 and body.startswith(b"http://ns.adobe.com/xap/1.0/\0"):
            found.append(("xmp", start + 29, end))
        elif marker == 0xE2 and body.startswith(b"ICC_PROFILE\0"):
            found.append(("icc", start + 14, end))
        elif marker == 0xFE:
            found.append(("comment", start, end))
        elif 0xE0 <= marker <= 0xEF:
            found.append((f"app{marker - 0xE0}", start, end))
        pos = end
    return found


def png_chunks(data: bytes) -> list[tuple[str, int, int]]:
    """(type, start, end) of the data of each chunk of a PNG."""
    found, pos = [], 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        found.append((data[pos + 4 : pos + 8].decode("latin-1"), pos + 8, pos + 8 + length))
        pos += 12 + length
    return found


def with_png_crcs(data: bytes) -> bytes:
    """The PNG with every chunk's CRC recomputed: a changed chunk reaches its parser instead of being
    refused at the CRC (what a tool that rewrites metadata carelessly produces)."""
    out = bytearray(data)
    for kind, start, end in png_chunks(data):
        crc = zlib.crc32(kind.encode("latin-1") + bytes(out[start:end]))
        out[end : end + 4] = struct.pack(">I", crc)
    return bytes(out)


def changed_bytes(data: bytes, start: int, end: int, seed: int) -> bytes:
    """1-4 random bytes of data[start:end] set to random values (seeded)."""
    import random

    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(start, end)] = rng.randrange(256)
    return bytes(out)


# Seeds of changed_bytes on jpeg_with_metadata(7)'s EXIF block that make ImageOps.exif_transpose raise
# while Pillow decodes the photo normally (found by search; tests/test_images.py checks they still do).
DAMAGED_EXIF_SEEDS = {"struct.error": 3, "TypeError": 917, "AttributeError": 2837}


def damaged_exif_jpeg(seed: int) -> bytes:
    data = jpeg_with_metadata(7)
    kind, start, end = jpeg_segments(data)[1]
    assert kind == "exif"
    return changed_bytes(data, start, end, seed)


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


def textured(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A photo with fine detail (blobs plus pixel noise): sharp, mid-toned, many grey levels; photo()'s
    smooth blobs alone read as blurry to clean's quality flags."""
    rng = np.random.default_rng(seed)
    blobs = np.asarray(photo(seed, size), dtype=np.int16)
    noise = rng.integers(-60, 61, size=blobs.shape, dtype=np.int16)
    return Image.fromarray(np.clip(blobs // 2 + 64 + noise, 0, 255).astype(np.uint8), "RGB")


def quality_issues(seed: int = 3000, size: tuple[int, int] = (160, 120)) -> dict[str, tuple[bytes, str]]:
    """Valid photos that clean keeps but flags: file name -> (PNG bytes, its flag). A flat picture is
    also blurry and low in information; each of the others has only its own flag. PNG, so that JPEG
    noise does not soften the made-up cases; a picture of its own each (one picture darkened and
    lightened would be near duplicates)."""

    def base(k: int) -> np.ndarray:
        return np.asarray(textured(seed + k, size), dtype=np.float64)

    def png(pixels: np.ndarray) -> bytes:
        return encode(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"), "PNG")

    flat = 128 + np.random.default_rng(seed).normal(0, 2, size=(size[1], size[0], 3))
    logo = np.full((size[1], size[0], 3), 128.0)
    ph, pw = size[1] // 3, size[0] // 3
    logo[:ph, :pw] = base(4)[:ph, :pw]  # a small picture on a plain background
    return {
        "flat.png": (png(flat), "near_blank"),
        "night.png": (png(base(1) * 0.3), "dark"),
        "washed.png": (png(255 - (255 - base(2)) * 0.4), "bright"),
        "soft.png": (encode(textured(seed + 3, size).filter(ImageFilter.GaussianBlur(3)), "PNG"), "blurry"),
        "logo.png": (png(logo), "low_information"),
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
