"""`pawflow data` (make data): the photos for a workspace that has none.

params.yaml `data:` names the archive (Microsoft's PetImages, the Keras example's cats and dogs), its
sha256 and where to keep it. It is fetched through ingest's own download path (tasks/photos/download.py:
a partial download is resumed with an HTTP Range request, failures are retried with backoff, and the
sha256 is checked before the file gets its final name), then ingest.source points at it.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.core.errors import PawflowError
from tasks.core.fileio import atomic_path, sha256_file
from tasks.photos.download import download

if TYPE_CHECKING:
    from tasks.core.params import Data, Ingest


@dataclass(frozen=True)
class Fetched:
    path: Path
    downloaded: bool  # False: data.archive was already there with data.sha256
    bytes: int


def place(src: Path, dest: Path) -> None:
    """Move a finished download to its final name in one rename (a copy, then a rename, across disks)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        src.unlink()


def fetch(data: Data, downloads: Path, ingest: Ingest, progress: bool = True) -> Fetched:
    """data.archive, downloaded (resumed, retried, sha256-checked) unless it is there with data.sha256.

    downloads is ingest's download folder (a partial download there is resumed, whoever started it);
    ingest: its retries, timeouts, deadline and size cap apply as they do to an ingest.source URL.
    Raises PawflowError when the download fails or its sha256 differs (nothing gets the final name)."""
    if data.archive.is_file() and sha256_file(data.archive) == data.sha256:
        return Fetched(data.archive, False, data.archive.stat().st_size)
    got = download(
        data.url,
        downloads,
        ingest.download_retries,
        ingest.download_timeout_s,
        None,
        deadline_s=ingest.download_deadline_s,
        max_bytes=ingest.max_download_bytes,
        progress=progress,
    )
    if got.sha256 != data.sha256:
        got.path.unlink()  # so that the next run downloads it again instead of revalidating this copy
        raise PawflowError(
            f"{data.url}: the download's sha256 is {got.sha256}, but params.yaml data.sha256 expects "
            f"{data.sha256}; it was deleted and nothing else changed.",
            "Run again (a download damaged on the way is fetched anew). If it differs again, the archive "
            "changed on the server: check it, then update data.sha256.",
        )
    place(got.path, data.archive)
    return Fetched(data.archive, True, got.bytes)
