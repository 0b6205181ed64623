"""Where fetched files live, and the manifests that record what was verified.

- Hugging Face files: the standard HF cache (``models--owner--repo/snapshots/<commit>/<path>``
  linking to ``blobs/<sha256>``), shared with other tools.
- URL files: ``$HOMELAB_STATE/files/<sha256>/<name>``; local path files stay where they are.
- The manifest ``$HOMELAB_STATE/fetch/<host>/<model>.json`` (the doit target) caches each file's
  verification: a file whose size and mtime are unchanged is not hashed again.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from ..inventory import ResolvedHost
from ..inventory.schema import LocalFile
from ..lock import Lock, PinnedFile, PinnedModel
from ..settings import hf_cache_dir, state_dir
from .errors import HubError
from .resolve import load_lock, local_source_path

# --------------------------------------------------------------------------------------------
# Where files live (pure)


def hf_cache_path(pf: PinnedFile, cache_dir: Path | None = None) -> Path:
    """The snapshot path huggingface_hub uses for a pinned file (a symlink to its blob)."""
    assert pf.repo and pf.revision
    cache = cache_dir or hf_cache_dir()
    return cache / f"models--{pf.repo.replace('/', '--')}" / "snapshots" / pf.revision / pf.path


def hf_blob_path(pf: PinnedFile, cache_dir: Path | None = None) -> Path:
    """The blob of an LFS file: named by its sha256 (huggingface_hub uses the Hub's etag)."""
    assert pf.repo
    cache = cache_dir or hf_cache_dir()
    return cache / f"models--{pf.repo.replace('/', '--')}" / "blobs" / pf.sha256


def url_file_path(pf: PinnedFile) -> Path:
    name = Path(urllib.parse.urlsplit(pf.path).path).name or "model.gguf"
    return state_dir() / "files" / pf.sha256 / name


def local_path(pf: PinnedFile, inventory: Path) -> Path:
    if pf.source == "hf":
        return hf_cache_path(pf)
    if pf.source == "url":
        return url_file_path(pf)
    return local_source_path(LocalFile(path=pf.path), inventory)


def model_files(host: ResolvedHost, lock: Lock | None = None) -> dict[str, list[Path]]:
    """model id -> local paths of its files (first: what ``-m`` gets; mmproj last).

    Pure: computes where fetch puts the files; it does not check that they are there.
    """
    lock = lock or load_lock(host)
    out: dict[str, list[Path]] = {}
    for m in host.models:
        pinned = lock.models.get(m.id)
        if pinned is None:
            raise HubError(f"{host.lock_file}: model {m.id} has no pin; run `homelab lock {host.name}`")
        out[m.id] = [local_path(pf, host.inventory) for pf in pinned.files]
    return out


def mmproj_file(host: ResolvedHost, model_id: str, lock: Lock | None = None) -> Path | None:
    lock = lock or load_lock(host)
    for pf in lock.models[model_id].files:
        if pf.role == "mmproj":
            return local_path(pf, host.inventory)
    return None


def manifest_path(host: str, model_id: str) -> Path:
    return state_dir() / "fetch" / host / f"{model_id}.json"


# --------------------------------------------------------------------------------------------
# Manifest: the doit target, and the cache of verifications


@dataclass(frozen=True)
class Verified:
    local: str
    size: int
    mtime_ns: int
    sha256: str


def _pins_key(pinned: PinnedModel) -> list[dict[str, Any]]:
    return [pf.model_dump(mode="json", exclude_none=True) for pf in pinned.files]


def read_manifest(host: str, model_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(manifest_path(host, model_id).read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_manifest(host: str, model_id: str, pinned: PinnedModel, verified: list[Verified]) -> Path:
    path = manifest_path(host, model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "host": host,
        "model": model_id,
        "pins": _pins_key(pinned),
        "files": [v.__dict__ for v in verified],
    }
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def stat_matches(v: dict[str, Any], path: Path, sha256: str) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return (
        v.get("local") == str(path)
        and v.get("sha256") == sha256
        and v.get("size") == st.st_size
        and v.get("mtime_ns") == st.st_mtime_ns
    )


def is_fetched(host: ResolvedHost, model_id: str, pinned: PinnedModel) -> bool:
    """True when the manifest matches the pins and every file is as it was verified (no I/O beyond stat)."""
    doc = read_manifest(host.name, model_id)
    if not doc or doc.get("pins") != _pins_key(pinned):
        return False
    entries = doc.get("files", [])
    if len(entries) != len(pinned.files):
        return False
    return all(
        stat_matches(v, local_path(pf, host.inventory), pf.sha256) for v, pf in zip(entries, pinned.files, strict=True)
    )
