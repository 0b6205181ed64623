"""Files on disk: atomic, durable writes and symlink switches (fsync of files and folders) and
the sha256 of a file.

Standard library only, so every stage and the supervisor can use it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

CHUNK = 8 << 20
"""Bytes per read when hashing: big enough that syscalls do not matter, constant memory."""


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old file or the new one, never a part.

    A temp file in the same directory (the rename must not cross filesystems) is written and
    fsync'ed, renamed over ``path``, and the directory fsync'ed so the rename survives a crash.
    ``mode`` is set before any byte is written: a secret (``0o600``) is never readable by others.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_symlink(path: Path, target: str) -> None:
    """Point the symlink ``path`` at ``target`` (relative to its folder, as symlinks are) so a
    reader follows the old target or the new one, never nothing: a new link under a temp name
    renamed over it, then the folder fsync'ed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename or a new file inside it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def sha256_file(path: Path, on_read: Callable[[int], object] | None = None) -> str:
    """Hex sha256 of ``path``, read in chunks (constant memory); ``on_read(n)`` after each chunk
    (a progress bar's ``update``)."""
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as f:
        # no bigger than the file: many small files (source hashes) must not each zero 8 MiB
        buf = bytearray(min(CHUNK, os.fstat(f.fileno()).st_size + 1))
        view = memoryview(buf)
        while n := f.readinto(buf):
            digest.update(view[:n])
            if on_read is not None:
                on_read(n)
    return digest.hexdigest()


def fsync_tree(root: Path) -> None:
    """Flush every file below ``root``, then every folder (deepest first), ``root`` included."""
    folders = [root]
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            continue
        if path.is_dir():
            folders.append(path)
        elif path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)
