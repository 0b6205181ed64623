"""``homelab serve --watch-config``: reload the config when its file changes (llama-swap's
``-watch-config``).

Like llama-swap, the file is polled with ``stat`` (every 2 s by default) rather than watched with
inotify: a config bind-mounted into a container, or a Kubernetes ConfigMap (a symlink swapped
atomically), does not raise inotify events on the path. A change is acted on once the file has
stopped changing for ``debounce`` seconds, so an editor's several writes make one reload. The
reload is the same as SIGHUP's and ``POST /x-reload``'s: only changed models restart, and a bad
edit is refused (the error names the file, line and key) while the running config goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("homelab.supervisor")

INTERVAL = 2.0
DEBOUNCE = 0.5


@dataclass(frozen=True)
class WatchTiming:
    interval: float = INTERVAL
    debounce: float = DEBOUNCE


@dataclass(frozen=True)
class Stamp:
    exists: bool
    mtime_ns: int = 0
    size: int = 0
    inode: int = 0


def stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)  # follows a symlink: a swapped ConfigMap target is a change
    except FileNotFoundError:
        return Stamp(False)
    except OSError as exc:
        log.warning("watch-config: cannot stat %s: %s", path, exc)
        return Stamp(False)
    return Stamp(True, st.st_mtime_ns, st.st_size, st.st_ino)


async def watch_file(
    path: Path,
    on_change: Callable[[], Awaitable[object]],
    interval: float = INTERVAL,
    debounce: float = DEBOUNCE,
) -> None:
    """Call ``on_change`` after each settled change of ``path``, until cancelled. A file that
    disappears is waited for (an editor's rename-and-replace); its return is a change."""
    previous = stamp(path)
    while True:
        await asyncio.sleep(interval)
        current = stamp(path)
        if current == previous:
            continue
        if not current.exists:
            previous = current
            continue
        while True:  # settle: no further change for `debounce` seconds
            await asyncio.sleep(debounce)
            again = stamp(path)
            if again == current:
                break
            current = again
        previous = current
        if current.exists:
            log.info("watch-config: %s changed, reloading", path)
            await on_change()
