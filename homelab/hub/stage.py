"""The hub's two stages: ``lock`` (pin every input in ``<host>.lock.json``) and ``fetch``
(download and verify each model's files into the Hugging Face cache).

The lock's fingerprint is what a lock is made from: the merged host (host file and every recipe),
the lockfile's own bytes and the patch files. A pin only moves when one of those changes (or with
``homelab lock --update``, which rewrites the lockfile), so skipping then answers exactly what
the resolver would. A ``llama_cpp.path`` source is snapshotted from a directory this does not
read: that host always locks. Frozen (``frozen=1`` / ``CI=true``) checks instead of writing;
skipped, the lockfile is byte for byte the one a successful lock left.

A model's fetch fingerprint is its pins in the lock; its product is in place while the fetch
manifest matches those pins and every file has the size and mtime it was verified with.
"""

from __future__ import annotations

from pathlib import Path

from ..inventory import ResolvedHost
from ..lock import read_lock
from ..stage import Stage, digest, file_bytes, tree_files
from .fetch import fetch_host, is_fetched, manifest_path
from .resolve import is_ci, resolve_lock


def lock_fingerprint(host: ResolvedHost) -> str | None:
    if host.host.llama_cpp.path:
        return None
    return digest(host.as_dict(), file_bytes(host.lock_file), tree_files(host.patches_dir))


def lock_stage(*, frozen: bool) -> Stage:
    def run(host: ResolvedHost) -> None:
        result = resolve_lock(host, frozen=frozen or is_ci())
        for line in [*result.changes, *result.notes]:
            print(line)

    return Stage(
        name="lock",
        doc="Pin every input of the host (model revisions, sizes, sha256) in <host>.lock.json",
        consumes=("host file and recipes", "<host>.lock.json", "patches/"),
        produces="<host>.lock.json",
        after=(),
        fingerprint=lock_fingerprint,
        run=run,
        target=lambda host: host.lock_file,
    )


def model_ids(host: ResolvedHost) -> tuple[str, ...]:
    return tuple(m.id for m in host.models)


def fetch_fingerprint(host: ResolvedHost, model_id: str) -> str | None:
    lock = read_lock(host.lock_file)
    pinned = lock.models.get(model_id) if lock else None
    return None if pinned is None else digest(model_id, pinned)


def _fetched(host: ResolvedHost, model_id: str) -> bool:
    lock = read_lock(host.lock_file)
    pinned = lock.models.get(model_id) if lock else None
    return pinned is not None and is_fetched(host, model_id, pinned)


def _fetch(host: ResolvedHost, model_id: str) -> None:
    fetch_host(host, models=[model_id])


def _manifest(host: ResolvedHost, model_id: str) -> Path:
    return manifest_path(host.name, model_id)


FETCH = Stage(
    name="fetch",
    doc="Download and verify the host's GGUF files into the Hugging Face cache",
    consumes=("the model's pins in <host>.lock.json",),
    produces="the model's files in the Hugging Face cache, and a fetch manifest",
    after=("lock",),
    fingerprint=fetch_fingerprint,
    run=_fetch,
    target=_manifest,
    in_place=_fetched,
    parts=model_ids,
)
