"""Weights prefetch: a request for a stopped model reads its files ahead (counted in /metrics),
likely-next models are kept warm, and nothing is read when RAM is short."""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
import threading
from pathlib import Path

import aiohttp
import pytest

from homelab.bench.supervisor_swap import drop_from_page_cache
from homelab.supervisor import prefetch
from homelab.supervisor.config import PrefetchSettings
from homelab.supervisor.prefetch import CHUNK, mapped, read_ahead

from .conftest import fake_model, make_config
from .helpers import chat


def prefetched(running, model: str) -> float:  # noqa: ANN001
    return running.sup.metrics.prefetch_bytes.values.get((("model", model),), 0.0)


async def wait_prefetched(running, model: str) -> float:  # noqa: ANN001
    for _ in range(200):
        if prefetched(running, model):
            break
        await asyncio.sleep(0.01)
    return prefetched(running, model)


def weights(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(bytes(size))
    return path


async def test_a_swap_reads_the_incoming_models_file_ahead(serve, tmp_path: Path) -> None:
    a, b = weights(tmp_path, "a", 3 << 20), weights(tmp_path, "b", 5 << 20)
    config = make_config(fake_model("a", "-m", str(a)), fake_model("b", "-m", str(b)),
                         prefetch=PrefetchSettings(reserve_mib=0))
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running.url, "a"))[0] == 200
        assert await wait_prefetched(running, "a") == 3 << 20  # a cold start reads ahead too
        assert (await chat(s, running.url, "b"))[0] == 200
        assert await wait_prefetched(running, "b") == 5 << 20
        assert (await chat(s, running.url, "b"))[0] == 200  # already running: nothing more to read
        assert prefetched(running, "b") == 5 << 20


async def test_keep_warm_reads_the_likely_next_model_after_a_swap(serve, tmp_path: Path) -> None:
    a, b = weights(tmp_path, "a", 1 << 20), weights(tmp_path, "b", 2 << 20)
    config = make_config(fake_model("a", "-m", str(a)), fake_model("b", "-m", str(b)),
                         prefetch=PrefetchSettings(keep_warm=("b",), reserve_mib=0))
    running = await serve(config)
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, running.url, "a"))[0] == 200
        assert await wait_prefetched(running, "b") == 2 << 20  # never asked for, read anyway


async def test_short_ram_or_disabled_reads_nothing(serve, tmp_path: Path) -> None:
    a = weights(tmp_path, "a", 1 << 20)
    for settings in (PrefetchSettings(reserve_mib=1 << 30), PrefetchSettings(enabled=False)):
        running = await serve(make_config(fake_model("a", "-m", str(a)), prefetch=settings))
        async with aiohttp.ClientSession() as s:
            assert (await chat(s, running.url, "a"))[0] == 200
        await asyncio.sleep(0.1)
        assert prefetched(running, "a") == 0
        await running.close()


def resident_pages(path: Path) -> int:
    """How many pages of ``path`` are in the page cache (mincore(2) on a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    size = path.stat().st_size
    vector = ctypes.create_string_buffer(-(-size // mmap.PAGESIZE))
    fd = os.open(path, os.O_RDONLY)
    try:
        with mapped(fd, 0, size) as address:
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)
    return sum(byte & 1 for byte in vector.raw)


def dropped_from_page_cache(path: Path) -> int:
    """``path`` dropped from the page cache as the benchmark drops it; the pages left there (a
    tmpfs keeps them all)."""
    drop_from_page_cache(path)
    return resident_pages(path)


def readahead_window(path: Path) -> int:
    """The kernel's readahead window for ``path``'s disk, in bytes: a page fault reads up to this
    much around it. 16 MiB where sysfs does not say (more than any common disk's setting)."""
    device = os.stat(path).st_dev
    block = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}")
    for queue in (block / "queue", block / ".." / "queue"):  # a whole disk, or a partition of one
        try:
            return int((queue / "read_ahead_kb").read_text()) << 10
        except (OSError, ValueError):
            continue
    return 16 << 20


def test_read_ahead_leaves_the_files_in_the_page_cache_up_to_the_budget(tmp_path: Path) -> None:
    # The second file's tail lies beyond the budget and beyond two of the kernel's own readahead
    # windows (8 MiB on some virtual disks), so pages there would be ours, not the kernel's.
    window = readahead_window(tmp_path)
    first = weights(tmp_path, "first", 3 * CHUNK // 2 + 1000)  # a chunk and a half, and a partial page
    second = weights(tmp_path, "second", (512 << 10) + 4 * window + (1 << 20))  # a tail even with no readahead
    pages = {f: -(-f.stat().st_size // mmap.PAGESIZE) for f in (first, second)}
    if dropped_from_page_cache(first) or dropped_from_page_cache(second):
        pytest.skip("this file system keeps files in memory (tmpfs): nothing to read ahead")
    budget = first.stat().st_size + (512 << 10)
    assert read_ahead([first, second], budget, threading.Event()) == budget
    assert resident_pages(first) == pages[first]  # all of it, the partial last page too
    # its first 512 KiB, and at most two readahead windows more
    assert 128 <= resident_pages(second) <= ((512 << 10) + 2 * window) // mmap.PAGESIZE < pages[second]


def test_read_ahead_stops_when_cancelled_and_falls_back_to_willneed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = weights(tmp_path, "m", 1 << 20)
    cancelled = threading.Event()
    cancelled.set()
    assert read_ahead([model], 1 << 30, cancelled) == 0
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(prefetch, "populate", lambda fd, offset, length: False)  # a kernel before 5.14
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: asked.append((offset, length)))
    assert read_ahead([model, tmp_path / "missing.gguf"], 1 << 30, threading.Event()) == 1 << 20
    assert asked == [(0, 1 << 20)]
