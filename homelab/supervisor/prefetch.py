"""Read a model's files into the page cache while a swap is still draining and stopping.

When a request needs a model that is not running, the outgoing model still has to finish its
requests, save its slots and exit before the new one starts; the new backend then reads gigabytes
of weights through page faults. Reading them ahead in the meantime overlaps the two.

The files are read in chunks with ``madvise(MADV_POPULATE_READ)`` on a private read-only mapping
(Linux 5.14+): the same sequential read the loader's page faults would do, waited for chunk by
chunk in a thread (ctypes lets the event loop run meanwhile), so the read stops between two
chunks when it is cancelled or its budget is spent. Not ``posix_fadvise(WILLNEED)``, which this
module used first: it queues the whole file's reads at once and returns, and a loader that starts
while they are queued competes with them. Measured on this project's VM (a 690 MiB file, cold
loader ~300 ms): WILLNEED then an immediate load 415-570 ms, against 280-360 ms with the
populating read under way. Kernels without it fall back to WILLNEED.

RAM is only borrowed where it is free: the budget is ``MemAvailable`` less what the models that
stay resident map (their pages count as reclaimable cache, but evicting them would make them
fault back in) and a reserve. When the files do not fit, only the first part is read (the
loader reads the file front to back) or, with no budget, nothing.

Pure core: :func:`model_files`, :func:`prefetch_budget`, :func:`mem_available`; thin edge:
:class:`Prefetcher` (threads).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import mmap
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from .admission import AdmissionError, evictions
from .config import Config
from .promptcache import flag_value

log = logging.getLogger("homelab.supervisor")

CHUNK = 64 << 20
"""Bytes read per call: large enough for sequential reads, small enough to stop promptly (~30 ms
at 2 GB/s). A multiple of the page size, so every chunk's offset can be mapped."""
MADV_POPULATE_READ = 22
"""linux/mman.h; the mmap module does not export it."""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value
FILE_FLAGS = (("-m", "--model"), ("-mm", "--mmproj"), ("-md", "--model-draft", "--spec-draft-model"))
SPLIT = re.compile(r"^(?P<stem>.*)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$")


def model_files(cmd: Sequence[str]) -> list[Path]:
    """The files a backend reads at start: the model (every part of a split GGUF: llama.cpp is
    given the first and finds the rest beside it), the multimodal projector, a draft model."""
    files: list[Path] = []
    for names in FILE_FLAGS:
        value = flag_value(cmd, names)
        if value is None:
            continue
        path = Path(value)
        match = SPLIT.match(path.name)
        if match:
            count = int(match["count"])
            files += [path.with_name(f"{match['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
        else:
            files.append(path)
    return [f for f in files if f.is_file()]


def mem_available(meminfo: str) -> int | None:
    """``MemAvailable`` in bytes from /proc/meminfo text."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def read_mem_available() -> int | None:
    try:
        return mem_available(Path("/proc/meminfo").read_text())
    except (OSError, ValueError, IndexError):
        return None


def prefetch_budget(available: int | None, staying_bytes: int, reserve_bytes: int) -> int:
    """Bytes that may be read ahead without pushing out what resident models need."""
    if available is None:
        return 0
    return max(0, available - staying_bytes - reserve_bytes)


def files_size(files: Iterable[Path]) -> int:
    total = 0
    for path in files:
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total


def swap_plan(
    config: Config, target: str, resident: Sequence[str], busy: Iterable[str], available: int | None
) -> tuple[list[Path], int]:
    """(files of ``target``, bytes to read ahead) for a swap to ``target`` while ``resident``
    (least recently used first) run: what the models that stay resident map is kept."""
    model = config.models.get(target)
    if model is None:
        return [], 0
    files = model_files(model.cmd)
    try:
        victims = evictions(config, target, resident, set(busy))
    except AdmissionError:
        return [], 0  # it will not start now anyway
    staying = [m for m in resident if m not in victims and m != target and m in config.models]
    staying_bytes = sum(files_size(model_files(config.models[m].cmd)) for m in staying)
    budget = prefetch_budget(available, staying_bytes, config.prefetch.reserve_mib << 20)
    return files, min(budget, files_size(files))


@contextlib.contextmanager
def mapped(fd: int, offset: int, length: int) -> Iterator[int]:
    """A private read-only mapping of ``length`` bytes of the open file at ``offset`` (a multiple
    of the page size), for the ``with`` block; yields its address (for madvise(2), mincore(2)).
    Not the mmap module's: its ``madvise`` holds the GIL while the kernel reads."""
    address = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, offset)
    if address is None or address == _MAP_FAILED:
        code = ctypes.get_errno()
        raise OSError(code, f"mmap: {os.strerror(code)}")
    try:
        yield address
    finally:
        _libc.munmap(address, length)


def populate(fd: int, offset: int, length: int) -> bool:
    """Read ``length`` bytes of the open file at ``offset`` (a multiple of the page size) into the
    page cache, and wait for them; False where the kernel cannot (before 5.14: EINVAL)."""
    with mapped(fd, offset, length) as address:
        if _libc.madvise(address, length, MADV_POPULATE_READ) == 0:
            return True
        code = ctypes.get_errno()  # before munmap can touch it
    if code == errno.EINVAL:
        return False
    raise OSError(code, f"madvise: {os.strerror(code)}")


def read_ahead(files: Sequence[Path], budget: int, cancelled: threading.Event) -> int:
    """Read the files into the page cache in order, up to ``budget`` bytes, a chunk at a time
    until ``cancelled``; returns the bytes read (or, on a kernel without MADV_POPULATE_READ,
    asked for with WILLNEED)."""
    done = 0
    can_populate = True
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            offset = 0
            while offset < size and done < budget and not cancelled.is_set():
                length = min(CHUNK, size - offset, budget - done)
                can_populate = can_populate and populate(fd, offset, length)
                if not can_populate:
                    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
                offset += length
                done += length
        finally:
            os.close(fd)
    return done


class Prefetcher:
    """One read-ahead thread per model at a time."""

    def __init__(self, on_done: Callable[[str, int], None] | None = None) -> None:
        self.on_done = on_done
        self._running: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._lock = threading.Lock()

    def warm(self, model_id: str, files: Sequence[Path], budget: int) -> bool:
        """Start reading ``files`` ahead (up to ``budget`` bytes) unless already under way."""
        if budget <= 0 or not files:
            return False
        with self._lock:
            current = self._running.get(model_id)
            if current is not None and current[0].is_alive():
                return False
            cancelled = threading.Event()
            thread = threading.Thread(
                target=self._run,
                args=(model_id, list(files), budget, cancelled),
                name=f"prefetch-{model_id}",
                daemon=True,
            )
            self._running[model_id] = (thread, cancelled)
        thread.start()
        return True

    def _run(self, model_id: str, files: list[Path], budget: int, cancelled: threading.Event) -> None:
        try:
            done = read_ahead(files, budget, cancelled)
        except OSError as exc:
            log.warning("prefetch of %s failed: %s", model_id, exc)
            return
        log.debug("prefetch: read %d MiB of %s ahead", done >> 20, model_id)
        if self.on_done is not None:
            self.on_done(model_id, done)

    def close(self) -> None:
        with self._lock:
            running = list(self._running.values())
            self._running.clear()
        for thread, cancelled in running:
            cancelled.set()
            thread.join(timeout=5)
