"""New photos made from the sample: random crops, flips and colour shifts that defeat perceptual-hash
matching, so dedup keeps them (P3's growth, P5's 25,000-photo collection)."""

from __future__ import annotations

import io
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from bench.common import image_files


def variant(src: Path, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    keep = rng.uniform(0.6, 0.85)
    cw, ch = int(w * keep), int(h * keep)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    if rng.random() < 0.3:
        im = im.rotate(90 * int(rng.integers(1, 4)), expand=True)
    gains = rng.uniform(0.8, 1.2, size=3)
    arr = np.clip(np.asarray(im, dtype=np.float32) * gains, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "JPEG", quality=int(rng.integers(75, 95)))
    return out.getvalue()


def _make(job: tuple[Path, Path, int]) -> None:
    src, dest, seed = job
    dest.write_bytes(variant(src, seed))


def make(sample: Path, dest: Path, count: int, seed: int, workers: int = 2) -> list[Path]:
    """`count` new photos in dest/<label>/, cycling over the sample's photos."""
    photos = image_files(sample)
    jobs = []
    for k in range(count):
        src = photos[k % len(photos)]
        folder = dest / src.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((src, folder / f"synth-{seed}-{k:05d}.jpg", seed * 1_000_003 + k))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_make, jobs, chunksize=64))
    return [j[1] for j in jobs]
