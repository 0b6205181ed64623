"""doit tasks for the lock stage (thin: the work lives in homelab.hub.resolve).

``lock:<host>`` is up to date when nothing the lock is made from changed since it last
succeeded: the merged host (host file and every recipe, as ``ResolvedHost.as_dict``), the
lockfile's own bytes and the patch files. A pin only moves when one of those changes (or with
``homelab lock --update``, which rewrites the lockfile and so re-runs this task once), so
skipping then answers exactly what the resolver would. A ``llama_cpp.path`` source is
snapshotted from a directory's files, which this digest does not read: that host always locks.
``frozen=1`` / ``CI=true`` keep their meaning: when the task runs, the lock is checked, not
written; when it is skipped, the lockfile is byte-for-byte the one a successful lock left.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from ..inventory import ResolvedHost
from .graph import each_host, flag, user_action


def lock_inputs(host: ResolvedHost) -> str | None:
    """Digest of what the lock is made from, or None when it cannot be told from files here."""
    if host.host.llama_cpp.path:
        return None
    h = hashlib.sha256()
    h.update(json.dumps(host.as_dict(), sort_keys=True, default=str).encode())
    try:
        h.update(host.lock_file.read_bytes())
    except FileNotFoundError:
        h.update(b"\0no lock")
    if host.patches_dir.is_dir():
        for path in sorted(p for p in host.patches_dir.rglob("*") if p.is_file()):
            h.update(str(path.relative_to(host.patches_dir)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _lock(host: ResolvedHost, frozen: bool) -> dict[str, Any]:
    from ..hub.resolve import is_ci, lock_host

    result = lock_host(host, frozen=frozen or is_ci())
    for line in result.changes:
        print(line)
    for note in result.notes:
        print(note)
    return {"lock_inputs": lock_inputs(host)}  # after the write: the lockfile as it is now


def _locked(host: ResolvedHost) -> Any:
    def uptodate(task: Any, values: dict[str, Any]) -> bool:
        digest = lock_inputs(host)
        return digest is not None and values.get("lock_inputs") == digest

    return uptodate


def task_lock() -> Iterator[dict[str, Any]]:
    """Pin every input of the host (model revisions, sizes, sha256) in <host>.lock.json."""
    yield {"basename": "lock", "name": None, "doc": "Pin every input of the host (model revisions, sizes, sha256) in <host>.lock.json"}
    frozen = flag("frozen")
    for host in each_host():
        yield {
            "name": host.name,
            "doc": f"Pin every input of the host (model revisions, sizes, sha256) in <host>.lock.json ({host.name})",
            "actions": [(user_action(_lock), [host, frozen])],
            "targets": [str(host.lock_file)],
            "uptodate": [_locked(host)],
            "task_dep": [],
            "verbosity": 2,
        }
