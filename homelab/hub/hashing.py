"""Streaming sha256 of big files, with an optional progress bar."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tqdm import tqdm

CHUNK = 8 << 20


def sha256_file(path: Path, *, desc: str | None = None, progress: bool = False) -> str:
    """Hash ``path`` in 8 MiB chunks (constant memory); a tqdm bar when ``progress``."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb", buffering=0) as f, tqdm(
        total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=desc or f"verify {path.name}",
        disable=not progress, leave=False,
    ) as bar:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            digest.update(view[:n])
            bar.update(n)
    return digest.hexdigest()
