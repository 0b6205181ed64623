"""Process helpers shared by the end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def stop_group(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the process group a test started with ``start_new_session=True`` (the process and
    every child it spawned), SIGKILL it after ``grace`` seconds; a group already gone is fine."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


def _stat(pid: str) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1])


def descendants(root: int) -> set[int]:
    """The live processes below ``root`` (its children, theirs, ...; zombies left out).

    Tests that look for the processes they started ask here rather than scanning the machine,
    so another test run on the same machine, with the same binary and model names, is not
    counted."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and (stat := _stat(proc.name)) is not None and stat[0] != "Z":
            children.setdefault(stat[1], []).append(int(proc.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def argv(pid: int) -> list[bytes]:
    """A process's command line (empty when it is gone)."""
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0")).split(b"\0")
    except OSError:
        return []


def executable(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
