"""Ingest sources for tests: limits, one ingest run, and archives made to order (good or hostile)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import imagegen
from conftest import shipped

from tasks import ingest
from tasks.core.params import Ingest

MAX = 10**9


def limits(source: str | Path = "unused", **kw) -> Ingest:
    """The ingest section with generous limits, and any of them overridden by keyword."""
    values = {"max_archive_bytes": MAX, "download_retries": 3, "download_timeout_s": 5.0, **kw}
    return shipped("ingest", source=str(source), **values)


def run_ingest(
    source: str | Path,
    raw: Path,
    known: dict | None = None,
    accept_all: bool = False,
    accept_count: int | None = None,
    **kw,
):
    """One ingest of source into raw (ingest.mode and the other limits as shipped, or as given)."""
    cfg = limits(source, **kw)
    listing = ingest.resolve(cfg, raw.parent / "downloads", progress=False)
    known = {} if known is None else known
    result = ingest.update(
        listing, raw, known, cfg.mode, cfg.max_removed_fraction, accept_all, accept_count, progress=False
    )
    known.update(result.hashes)
    df, fresh = ingest.manifest(raw, known, progress=False)
    known.update(fresh)
    return listing, result, df


# --------------------------------------------------------------------------- archives


def zip_of(folder: Path, dest: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return dest


def hostile_zip(path: Path, name: str, data: bytes = b"x", symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("Cat/ok.jpg", imagegen.jpeg(1))
        zf.writestr("Dog/ok.jpg", imagegen.jpeg(2))
        info = zipfile.ZipInfo(name)
        if symlink:
            info.external_attr = 0o120777 << 16
        zf.writestr(info, data)
    return path


def tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tf:
        for name, seed in (("Cat/ok.jpg", 1), ("Dog/ok.jpg", 2)):
            body = imagegen.jpeg(seed)
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tf.addfile(info, io.BytesIO(body))
        tf.addfile(member, io.BytesIO(data) if data else None)
    return path


# --------------------------------------------------------------------------- damaged archives write nothing


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder with its bytes (an empty dict when the folder does not exist)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def ten_photos(folder: Path) -> Path:
    return imagegen.make_dataset(folder, per_class=5)


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def central_entry(data: bytes, name: str) -> int:
    """Offset of the central-directory record of `name` in a zip's bytes."""
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        n = int.from_bytes(data[at + 28 : at + 30], "little")
        if data[at + 46 : at + 46 + n] == name.encode():
            return at
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(name)


# --------------------------------------------------------------------------- zip bombs by ratio


def photos_and(path: Path, name: str, data: bytes, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("Cat/ok.jpg", imagegen.jpeg(1))
        zf.writestr("Dog/ok.jpg", imagegen.jpeg(2))
        zf.writestr(name, data)
    return path
