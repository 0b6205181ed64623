"""sha256 of a big file with a progress bar (the hashing itself is :func:`homelab.files.sha256_file`)."""

from __future__ import annotations

from pathlib import Path

from ..files import sha256_file
from .progress import progress_bar


def sha256_with_progress(path: Path, *, desc: str, progress: bool) -> str:
    """:func:`sha256_file` under a tqdm bar named ``desc`` (hidden unless ``progress``)."""
    with progress_bar(
        total=path.stat().st_size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not progress,
        leave=False,
    ) as bar:
        return sha256_file(path, bar.update)
