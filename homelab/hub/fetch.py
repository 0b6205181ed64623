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

import hashlib
import http.client
import json
import logging
import os
import shutil
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..inventory import ResolvedHost
from ..inventory.schema import LocalFile
from ..lock import Lock, PinnedFile, PinnedModel
from ..privilege import refuse_root
from ..settings import hf_cache_dir, hf_endpoint, hf_token, state_dir
from .errors import ChecksumMismatch, HubError, explain_hub_error
from .hashing import sha256_file
from .resolve import load_lock, local_source_path

LOG = logging.getLogger(__name__)
ATTEMPTS = 4
"""Attempts in a row that bring no new byte before a download gives up (progress resets it)."""
RETRY_DELAY_S = 1.0


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


def _write_manifest(host: str, model_id: str, pinned: PinnedModel, verified: list[Verified]) -> Path:
    path = manifest_path(host, model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "host": host,
        "model": model_id,
        "pins": _pins_key(pinned),
        "files": [v.__dict__ for v in verified],
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _stat_matches(v: dict[str, Any], path: Path, sha256: str) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return v.get("local") == str(path) and v.get("sha256") == sha256 and v.get("size") == st.st_size and v.get(
        "mtime_ns"
    ) == st.st_mtime_ns


def is_fetched(host: ResolvedHost, model_id: str, pinned: PinnedModel) -> bool:
    """True when the manifest matches the pins and every file is as it was verified (no I/O beyond stat)."""
    doc = read_manifest(host.name, model_id)
    if not doc or doc.get("pins") != _pins_key(pinned):
        return False
    entries = doc.get("files", [])
    if len(entries) != len(pinned.files):
        return False
    return all(
        _stat_matches(v, local_path(pf, host.inventory), pf.sha256) for v, pf in zip(entries, pinned.files, strict=True)
    )


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
    with tqdm(
        total=todo, unit="B", unit_scale=True, unit_divisor=1024, desc=f"fetch {model_id}",
        disable=not progress or todo == 0,
    ) as overall:
        for pf in pinned.files:
            path = local_path(pf, host.inventory)
            entry = old_entries.get(str(path))
            if entry and _stat_matches(entry, path, pf.sha256):
                verified.append(Verified(**entry))
                continue
            verified.append(_fetch_file(pf, path, host.inventory, overall, progress))
    return _write_manifest(host.name, model_id, pinned, verified)


def _fetch_file(pf: PinnedFile, path: Path, inventory: Path, overall: tqdm, progress: bool) -> Verified:
    if pf.source == "hf":
        path, streamed = _fetch_hf(pf, overall, progress)
    elif pf.source == "url":
        path, streamed = _fetch_url(pf, overall, progress)
    else:
        if not path.is_file():
            raise HubError(f"source path {pf.path}: no such file ({path}); restore it or re-lock with a new path")
        streamed = None
    actual = streamed or sha256_file(path, desc=f"verify {path.name}", progress=progress)
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
        partial = _url_partial(pf.path)
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
    from huggingface_hub import hf_hub_download

    return Path(
        _hf_call(
            pf,
            lambda: hf_hub_download(
                pf.repo,  # type: ignore[arg-type]
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
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(pf.repo, pf.path, revision=pf.revision, endpoint=hf_endpoint())  # type: ignore[arg-type]
    meta = _hf_call(pf, lambda: get_hf_file_metadata(url, token=hf_token()))
    if meta.xet_file_data is not None or not meta.location or meta.location == url or meta.etag != pf.sha256:
        return None
    return meta.location


def _stream_blob(pf: PinnedFile, location: str, blob: Path, overall: tqdm, progress: bool) -> str:
    """Download into ``blobs/<sha>.incomplete`` (resuming what is there), verify, rename to the blob."""
    from filelock import FileLock

    partial = blob.with_name(blob.name + ".incomplete")
    partial.parent.mkdir(parents=True, exist_ok=True)
    # the lock huggingface_hub takes for this blob: no two downloads append to one file
    lock_path = blob.parent.parent.parent / ".locks" / blob.parent.parent.name / f"{pf.sha256}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    headers = {"Accept-Encoding": "identity"}
    token = hf_token()
    if token and urllib.parse.urlsplit(location).netloc == urllib.parse.urlsplit(hf_endpoint()).netloc:
        headers["Authorization"] = f"Bearer {token}"
    with FileLock(str(lock_path)):
        if blob.exists():  # another process finished it meanwhile
            return sha256_file(blob)
        sha = _stream_to(location, partial, pf.size, headers, overall, progress, what=f"{pf.repo}/{pf.path}")
        if sha != pf.sha256:
            _reject(pf, partial, sha)
        os.replace(partial, blob)
    return sha


class _Hasher(threading.Thread):
    """sha256 of what the download loop writes, on another thread (hashlib releases the GIL).

    The loop reads into a ring of preallocated buffers (:meth:`buffer`); a buffer goes back to
    the ring once hashed, so bytes are neither copied nor allocated per read.
    """

    RING = 6
    """Buffers in flight between the reading loop and the hashing thread."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        import queue

        self.digest = hashlib.sha256()
        self.count = 0
        self.queue: queue.Queue[tuple[Any, bytearray | None] | None] = queue.Queue()
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(self.RING):
            self.free.put(bytearray(STREAM_CHUNK))

    def run(self) -> None:
        while (item := self.queue.get()) is not None:
            data, buf = item
            self.digest.update(data)
            self.count += len(data)
            if buf is not None:
                self.free.put(buf)

    def buffer(self) -> bytearray:
        return self.free.get()

    def feed(self, data: Any, buf: bytearray | None = None) -> None:
        self.queue.put((data, buf))

    def hexdigest(self) -> str:
        self.queue.put(None)
        self.join()
        return self.digest.hexdigest()


def _stream_to(
    url: str,
    partial: Path,
    size: int,
    headers: dict[str, str],
    overall: tqdm,
    progress: bool,
    *,
    what: str,
) -> str:
    """Fill ``partial`` up to ``size`` bytes from ``url`` with Range resumes; returns its sha256."""
    hasher = _Hasher()
    hasher.start()
    try:
        return _fill(url, partial, size, headers, overall, progress, what, hasher)
    except BaseException:
        hasher.queue.put(None)  # let the hashing thread end
        raise


def _fill(
    url: str, partial: Path, size: int, headers: dict[str, str], overall: tqdm, progress: bool, what: str,
    hasher: _Hasher,
) -> str:
    have = partial.stat().st_size if partial.exists() else 0
    if have > size:
        partial.unlink()
        have = 0
    if have:  # bytes from an earlier, interrupted run
        with partial.open("rb") as old:
            while chunk := old.read(STREAM_CHUNK):
                hasher.feed(chunk)
    last: Exception | None = None
    attempts = 0
    with tqdm(
        total=size, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
        desc=Path(what).name, disable=not progress, leave=False,
    ) as bar:
        while have < size:
            attempts += 1
            if attempts > ATTEMPTS:
                raise HubError(
                    f"{what}: download failed {ATTEMPTS} times ({last}); {have} of {size} bytes are kept in "
                    f"{partial}. Run the fetch again to resume there."
                )
            try:
                restarted = _stream_once(url, partial, have, headers, hasher, (bar, overall), size)
                problem: Exception | None = None
            except (http.client.HTTPException, OSError) as exc:
                restarted, problem = False, exc
            if restarted:  # the server ignored Range and sent everything again: hash from zero
                hasher.hexdigest()
                hasher = _Hasher()
                hasher.start()
                with partial.open("rb") as again:
                    while chunk := again.read(STREAM_CHUNK):
                        hasher.feed(chunk)
            now = partial.stat().st_size if partial.exists() else 0
            if now >= size:
                break
            # http.client ends a body cut short quietly (no IncompleteRead): both mean the link dropped
            last = problem or OSError(f"the connection closed after {now} of {size} bytes")
            LOG.warning("%s: connection lost at %d of %d bytes (%s); resuming", what, now, size, last)
            if now > have:
                attempts = 0  # progress was made: keep going as long as it moves
            have = now
            time.sleep(RETRY_DELAY_S)
    return hasher.hexdigest()


STREAM_CHUNK = 512 << 10
"""Bytes per read. Small enough that a buffer is still in the CPU's L2 cache when it is written
out and hashed: 4 MiB buffers cost twice the CPU per byte (measured: 1.9 s vs 0.8 s per 512 MiB)."""
REDIRECTS = 5


def _open(url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    """GET ``url`` with http.client, following redirects (Authorization only to the same host).

    http.client rather than requests: its ``readinto`` fills our buffers straight from the
    socket, three times faster than requests' ``raw.read`` on the same loopback stream. Proxy
    variables (HTTPS_PROXY...) are honoured with a CONNECT tunnel.
    """
    import ssl
    import urllib.request

    for _ in range(REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port
        proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(parts.scheme)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=os.environ.get("REQUESTS_CA_BUNDLE") or None)
            if proxy:
                p = urllib.parse.urlsplit(proxy)
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    p.hostname or "", p.port, timeout=120, context=context
                )
                conn.set_tunnel(host, port)
            else:
                conn = http.client.HTTPSConnection(host, port, timeout=120, context=context)
        elif proxy:
            p = urllib.parse.urlsplit(proxy)
            conn = http.client.HTTPConnection(p.hostname or "", p.port, timeout=120)
            target = url
        else:
            conn = http.client.HTTPConnection(host, port, timeout=120)
        conn.request("GET", target or "/", headers=headers)
        resp = conn.getresponse()
        location = resp.getheader("Location")
        if resp.status in (301, 302, 303, 307, 308) and location:
            resp.read()
            conn.close()
            new = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(new).netloc != parts.netloc:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = new
            continue
        return resp
    raise OSError(f"more than {REDIRECTS} redirects")


def _stream_once(
    url: str, partial: Path, have: int, headers: dict[str, str], hasher: _Hasher, bars: tuple[tqdm, tqdm],
    size: int,
) -> bool:
    """One GET from ``have`` on; True when the server ignored Range (the file was rewritten).

    Never more than the pinned ``size`` bytes reach the disk: a host that sends more (a wrong
    or hostile server, an endless body) is refused before it fills the disk."""
    request_headers = {**headers, "Range": f"bytes={have}-"} if have else headers
    resp = _open(url, request_headers)
    try:
        if resp.status in (401, 403, 404):
            raise HubError(f"{url}: the download host answered HTTP {resp.status}; run the fetch again")
        if resp.status not in (200, 206):
            raise OSError(f"HTTP {resp.status} from the download host")
        restarted = bool(have) and resp.status == 200
        written = 0 if restarted else have
        with partial.open("wb" if restarted or not have else "ab", buffering=0) as out:
            if restarted:
                for bar in bars:
                    bar.update(-have)
            while True:
                buf = hasher.buffer()
                n = resp.readinto(buf)
                if not n:
                    hasher.free.put(buf)
                    break
                written += n
                if written > size:
                    hasher.free.put(buf)
                    raise HubError(
                        f"{url}: the download host sends more than the {size} bytes the lock pins; "
                        "nothing beyond them was kept. Check the URL, or re-lock if the file changed upstream"
                    )
                view = memoryview(buf)[:n]
                out.write(view)
                hasher.feed(view, buf)
                for bar in bars:
                    bar.update(n)
        return restarted
    finally:
        resp.close()


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
    class FileBar(tqdm):  # type: ignore[misc]
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


def _url_partial(url: str) -> Path:
    return state_dir() / "files" / ".partial" / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".part")


def _fetch_url(pf: PinnedFile, overall: tqdm, progress: bool) -> tuple[Path, str | None]:
    target = url_file_path(pf)
    if target.exists():
        return target, None
    path, sha, _ = download_url(pf.path, pf.sha256, overall=overall, progress=progress, size=pf.size)
    return path, sha


def download_url(
    url: str,
    expected_sha256: str | None,
    *,
    overall: tqdm | None = None,
    progress: bool = True,
    size: int | None = None,
) -> tuple[Path, str, int]:
    """Stream ``url`` into ``files/<sha256>/<name>``, hashing as it goes, resuming with Range.

    Returns (path, sha256, size). With ``expected_sha256`` a mismatch moves the bytes aside
    and raises :class:`ChecksumMismatch`.
    """
    size = size if size is not None else url_size(url)
    partial = _url_partial(url)
    partial.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(disable=True) as no_bar:
        sha = _stream_to(url, partial, size, {"Accept-Encoding": "identity"}, overall or no_bar, progress, what=url)
    if expected_sha256 and sha != expected_sha256:
        aside = partial.with_name(partial.name + ".bad")
        os.replace(partial, aside)
        raise ChecksumMismatch(
            f"{url}: sha256 mismatch: expected {expected_sha256} (lock), got {sha}; the download was moved "
            f"aside to {aside}. If the file changed upstream, update the recipe's sha256."
        )
    target = state_dir() / "files" / sha / (Path(urllib.parse.urlsplit(url).path).name or "model.gguf")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, target)
    return target, sha, size


def url_size(url: str) -> int:
    """The size of the file at ``url`` from a HEAD request (redirects followed)."""
    import requests

    try:
        resp = requests.head(url, allow_redirects=True, timeout=60, headers={"Accept-Encoding": "identity"})
    except requests.RequestException as exc:
        raise HubError(f"{url}: cannot reach it ({exc}); check the URL and the network") from None
    if resp.status_code == 404:
        raise HubError(f"{url}: HTTP 404 (not found); fix `url:` in the recipe")
    if resp.status_code in (401, 403):
        raise HubError(
            f"{url}: HTTP {resp.status_code} (access denied); homelab sends no credentials to plain URLs: "
            "download it yourself and use a `path:` source"
        )
    if resp.status_code != 200 or "Content-Length" not in resp.headers:
        raise HubError(f"{url}: HEAD answered HTTP {resp.status_code} without a size; check the URL")
    return int(resp.headers["Content-Length"])
