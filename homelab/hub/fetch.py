"""Fetch: get every pinned file of a model onto the disk, verified against the lock.

- Hugging Face files go into the standard HF cache at the pinned commit, shared with other tools;
  a pinned, cached file costs zero requests (the cache is asked first). The bytes are streamed by
  us into ``blobs/<sha256>.incomplete`` (resumable across runs, hashed on the way) and
  ``hf_hub_download`` links the finished blob into the snapshot (see "Hugging Face" below).
- URL files go to ``$HOMELAB_STATE/files/<sha256>/<name>`` (the same resumable stream).
- Local path files are only verified.

Every file is sha256-verified, streaming, before the model's manifest
(``$HOMELAB_STATE/fetch/<host>/<model>.json``, the doit target) is written. The manifest also
caches the verification: a file whose size and mtime are unchanged is not hashed again. A
mismatch moves the bad blob aside (``.bad``) and fails naming repo, file and both hashes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import sha256_file
from ..inventory import ResolvedHost
from ..lock import Lock, PinnedFile, PinnedModel
from ..privilege import refuse_root
from ..settings import hf_cache_dir, hf_endpoint, hf_token, state_dir
from .cache import (
    Verified,
    hf_blob_path,
    is_fetched,
    local_path,
    manifest_path,
    read_manifest,
    stat_matches,
    url_file_path,
    write_manifest,
)
from .download import ATTEMPTS, RETRY_DELAY_S, download_url, stream_to, url_partial
from .errors import ChecksumMismatch, HubError, explain_hub_error
from .hashing import sha256_with_progress
from .progress import bar_class, progress_bar
from .resolve import load_lock

if TYPE_CHECKING:
    from tqdm import tqdm

LOG = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Fetching


@dataclass
class FetchStats:
    downloaded_bytes: int = 0
    verified_files: int = 0
    skipped_files: int = 0


def fetch_host(
    host: ResolvedHost, lock: Lock | None = None, models: Iterable[str] | None = None, *, progress: bool = True
) -> dict[str, Path]:
    """Fetch and verify the named models (default: all of the host); model id -> manifest."""
    refuse_root("fetch", host.name, host.host.runtime.service)
    lock = lock or load_lock(host)
    ids = list(models) if models else [m.id for m in host.models]
    known = {m.id for m in host.models}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise HubError(f"no model {', '.join(unknown)} on host {host.name}; models: {', '.join(sorted(known))}")
    pins = {}
    for model_id in ids:
        if model_id not in lock.models:
            raise HubError(f"{host.lock_file}: model {model_id} has no pin; run `homelab lock {host.name}`")
        pins[model_id] = lock.models[model_id]
    check_disk_space(host, [pf for p in pins.values() for pf in p.files])
    return {model_id: fetch_model(host, model_id, pinned, progress=progress) for model_id, pinned in pins.items()}


def fetch_model(host: ResolvedHost, model_id: str, pinned: PinnedModel, *, progress: bool = True) -> Path:
    """Make every file of one model present and verified; write and return its manifest."""
    if is_fetched(host, model_id, pinned):
        return manifest_path(host.name, model_id)
    old = read_manifest(host.name, model_id) or {}
    old_entries = {e.get("local"): e for e in old.get("files", [])}
    check_disk_space(host, pinned.files)
    todo = sum(_bytes_to_download(pf, host.inventory) for pf in pinned.files)
    verified: list[Verified] = []
    with progress_bar(
        total=todo,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"fetch {model_id}",
        disable=not progress or todo == 0,
    ) as overall:
        for pf in pinned.files:
            path = local_path(pf, host.inventory)
            entry = old_entries.get(str(path))
            if entry and stat_matches(entry, path, pf.sha256):
                verified.append(Verified(**entry))
                continue
            verified.append(_fetch_file(pf, path, host.inventory, overall, progress))
    return write_manifest(host.name, model_id, pinned, verified)


def _fetch_file(pf: PinnedFile, path: Path, inventory: Path, overall: tqdm, progress: bool) -> Verified:
    if pf.source == "hf":
        path, streamed = _fetch_hf(pf, overall, progress)
    elif pf.source == "url":
        path, streamed = _fetch_url(pf, overall, progress)
    else:
        if not path.is_file():
            raise HubError(f"source path {pf.path}: no such file ({path}); restore it or re-lock with a new path")
        streamed = None
    actual = streamed or sha256_with_progress(path, desc=f"verify {path.name}", progress=progress)
    if actual != pf.sha256:
        _reject(pf, path, actual)
    st = path.stat()
    return Verified(local=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=actual)


def _reject(pf: PinnedFile, path: Path, actual: str) -> None:
    """Move the bad bytes aside so they are never served, and fail with both hashes."""
    real = path.resolve()
    if pf.source == "path":
        aside_note = "left in place (it is your file)"
    else:
        aside = real.with_name(real.name.removesuffix(".incomplete") + ".bad")
        os.replace(real, aside)
        if path.is_symlink():
            path.unlink()
        aside_note = f"moved aside to {aside}"
    what = f"{pf.repo}/{pf.path}@{(pf.revision or '')[:12]}" if pf.source == "hf" else pf.path
    raise ChecksumMismatch(
        f"{what}: sha256 mismatch: expected {pf.sha256} (lock), got {actual}; the file was {aside_note}. "
        "Run the fetch again to re-download; if it persists the upstream file changed: "
        "`homelab lock HOST --update MODEL` to pin the new one on purpose."
    )


def _bytes_to_download(pf: PinnedFile, inventory: Path) -> int:
    if pf.source == "path":
        return 0
    path = local_path(pf, inventory)
    if path.exists():
        return 0
    if pf.source == "hf":
        blob = hf_blob_path(pf)
        if blob.exists():
            return 0
        partial = blob.with_name(blob.name + ".incomplete")
    else:
        partial = url_partial(pf.path)
    try:
        have = partial.stat().st_size
    except OSError:
        have = 0
    return max(pf.size - have, 0)


def check_disk_space(host: ResolvedHost, files: Iterable[PinnedFile]) -> None:
    """Fail before downloading when the disk cannot hold what is still to fetch."""
    need: dict[Path, int] = {}
    for pf in files:
        n = _bytes_to_download(pf, host.inventory)
        if n:
            target = hf_cache_dir() if pf.source == "hf" else state_dir() / "files"
            need[target] = need.get(target, 0) + n
    for target, n in need.items():
        free = shutil.disk_usage(_existing_parent(target)).free
        if n > free:
            raise HubError(
                f"not enough disk space for host {host.name}: {_gib(n)} still to download into {target}, "
                f"{_gib(free)} free. Free some space, or point "
                + ("HF_HOME (or HF_HUB_CACHE)" if target == hf_cache_dir() else "HOMELAB_STATE")
                + " at a bigger disk."
            )


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB ({n} bytes)"


# -- Hugging Face ------------------------------------------------------------------------------
#
# The bytes of an LFS file are streamed by us into ``blobs/<sha256>.incomplete`` of the standard
# cache (hashed on the way, on a second core), verified, renamed to ``blobs/<sha256>``, and then
# ``hf_hub_download`` at the pinned commit completes the cache entry (the snapshot link) as it
# does for any blob it already has. Why not let it transfer the bytes: huggingface_hub 2.x
# downloads into a per-process temp file that it deletes on failure, so an interrupted 20 GB
# download restarts from zero on the next run; and its transfer loop is several times slower
# than curl. Anything unusual (Xet storage, no redirect, an etag that is not the pinned sha256)
# goes through ``hf_hub_download`` alone and is hashed afterwards.


def _fetch_hf(pf: PinnedFile, overall: tqdm, progress: bool) -> tuple[Path, str | None]:
    """The cached file (zero requests) or a fresh download; with the sha256 when hashed on the way."""
    # lazily: slow to import, only a fetch needs it
    from huggingface_hub import try_to_load_from_cache

    assert pf.repo and pf.revision
    cache = hf_cache_dir()
    cached = try_to_load_from_cache(pf.repo, pf.path, cache_dir=cache, revision=pf.revision)
    if isinstance(cached, str):
        return Path(cached), None
    blob = hf_blob_path(pf, cache)
    streamed: str | None = None
    if not blob.exists():
        location = _lfs_location(pf)
        if location is not None:
            streamed = _stream_blob(pf, location, blob, overall, progress)
    path = _hf_hub_download(pf, _file_bar_class(overall, progress))
    return path, streamed


def _hf_call(pf: PinnedFile, call: Any) -> Any:
    """Run a huggingface_hub call with retries on connection errors and our error messages."""
    assert pf.repo and pf.revision
    last: Exception | None = None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - sorted into user errors, retries and bugs below
            err = explain_hub_error(exc, pf.repo, pf.path, pf.revision)
            if err is not None:
                raise err from None
            if not isinstance(exc, (OSError, *_transport_errors())):
                raise
            last = exc
            LOG.warning("%s/%s: request failed (%s); attempt %d of %d", pf.repo, pf.path, exc, attempt, ATTEMPTS)
            time.sleep(RETRY_DELAY_S * attempt)
    raise HubError(
        f"{pf.repo}/{pf.path}@{pf.revision[:12]}: download failed {ATTEMPTS} times ({last}). Check the network "
        f"and HF_ENDPOINT ({hf_endpoint()}); run the fetch again to resume where it stopped."
    )


def _hf_hub_download(pf: PinnedFile, bar_class: type[tqdm]) -> Path:
    # lazily: slow to import, only a fetch needs it
    from huggingface_hub import hf_hub_download

    return Path(
        _hf_call(
            pf,
            lambda: hf_hub_download(
                pf.repo,  # type: ignore[arg-type]  # repo is set for hf-source pins
                pf.path,
                revision=pf.revision,
                endpoint=hf_endpoint(),
                cache_dir=hf_cache_dir(),
                token=hf_token(),
                tqdm_class=bar_class,
            ),
        )
    )


def _lfs_location(pf: PinnedFile) -> str | None:
    """Where the Hub redirects for this file, when it is a plain LFS download of the pinned blob."""
    # lazily: slow to import
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(pf.repo, pf.path, revision=pf.revision, endpoint=hf_endpoint())  # type: ignore[arg-type]  # repo set for hf pins
    meta = _hf_call(pf, lambda: get_hf_file_metadata(url, token=hf_token()))
    if meta.xet_file_data is not None or not meta.location or meta.location == url or meta.etag != pf.sha256:
        return None
    return meta.location


def _stream_blob(pf: PinnedFile, location: str, blob: Path, overall: tqdm, progress: bool) -> str:
    """Download into ``blobs/<sha>.incomplete`` (resuming what is there), verify, rename to the blob."""
    partial = blob.with_name(blob.name + ".incomplete")
    partial.parent.mkdir(parents=True, exist_ok=True)
    # the lock huggingface_hub takes for this blob: no two downloads append to one file
    lock_path = blob.parent.parent.parent / ".locks" / blob.parent.parent.name / f"{pf.sha256}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    headers = {"Accept-Encoding": "identity"}
    token = hf_token()
    if token and urllib.parse.urlsplit(location).netloc == urllib.parse.urlsplit(hf_endpoint()).netloc:
        headers["Authorization"] = f"Bearer {token}"
    from filelock import FileLock  # lazily: only a download takes the lock; slow to import

    with FileLock(str(lock_path)):
        if blob.exists():  # another process finished it meanwhile
            return sha256_file(blob)
        sha = stream_to(location, partial, pf.size, headers, overall, progress, what=f"{pf.repo}/{pf.path}")
        if sha != pf.sha256:
            _reject(pf, partial, sha)
        os.replace(partial, blob)
    return sha


def _transport_errors() -> tuple[type[Exception], ...]:
    """Connection-level errors of whichever HTTP client this huggingface_hub uses (retryable)."""
    errors: list[type[Exception]] = []
    for name in ("httpx2", "httpx", "requests"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        errors.append(getattr(module, "TransportError", None) or module.exceptions.ConnectionError)
    return tuple(errors)


def _file_bar_class(overall: tqdm, progress: bool) -> type[tqdm]:
    class FileBar(bar_class()):  # type: ignore[misc]  # tqdm's class, imported when a fetch shows bars
        """huggingface_hub's per-file bar that also moves the overall bar."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = kwargs.get("disable", False) or not progress
            kwargs["leave"] = False
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            overall.update(n)
            return super().update(n)

    return FileBar


# -- URL ----------------------------------------------------------------------------------------


def _fetch_url(pf: PinnedFile, overall: tqdm, progress: bool) -> tuple[Path, str | None]:
    target = url_file_path(pf)
    if target.exists():
        return target, None
    path, sha, _ = download_url(pf.path, pf.sha256, overall=overall, progress=progress, size=pf.size)
    return path, sha
