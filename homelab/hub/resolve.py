"""Lock: pin every model file of a host (Hub commit, path, size, sha256) in ``<host>.lock.json``.

A model is re-resolved only when it has no pin, when the recipe now asks for something else
than what was pinned (``PinnedModel.request``), or on purpose (``--update``). A frozen lock
(``frozen=1``, ``--frozen``, ``CI=true``) never resolves: a missing or stale pin is an error.

Hugging Face files are resolved from the Hub's LFS metadata (one ``model_info`` request per
model, no download). Split GGUFs (``name-00001-of-0000N.gguf``) pin all N parts; ``mmproj`` is
pinned as a file of the same model, and so is a ``draft:`` model (roles ``draft``/``draft-split``,
from any repo, URL or path, after the main files). A URL source is pinned by the recipe's sha256, or by
hashing one streamed download (kept, so fetch does not download it again). A local path is
hashed once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import HomelabError
from ..http_client import http_session
from ..inventory import ResolvedHost
from ..inventory.schema import Draft, HFFile, LocalFile, Source, URLFile
from ..llamacpp.pin import resolve_llama_cpp
from ..lock import (
    LlamaCppPin,
    Lock,
    LockError,
    PinnedFile,
    PinnedModel,
    read_lock,
    write_lock,
)
from ..settings import hf_endpoint, hf_token
from .download import download_url, url_size
from .errors import HubError, explain_hub_error
from .hashing import sha256_with_progress

LOG = logging.getLogger(__name__)
SPLIT = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
LLAMA_CPP = "llama.cpp"
"""The name ``--update`` takes to move the llama.cpp pin."""


def is_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def request_of(source: Source, draft: Draft | None = None) -> str:
    """What the recipe asks for, canonical: a changed recipe source (or draft) makes the pin stale.

    Without a draft the text is the source alone, as before drafts existed: old pins stay fresh."""
    asked: dict[str, object] = source.model_dump(mode="json", exclude_none=True)
    if draft is not None:
        asked = {"source": asked, "draft": draft.model_dump(mode="json", exclude_none=True)}
    return json.dumps(asked, sort_keys=True, separators=(",", ":"))


def split_parts(file: str) -> list[str]:
    """All parts of a split GGUF named by its first part (or just ``[file]``)."""
    m = SPLIT.match(file.rsplit("/", 1)[-1])
    if not m:
        return [file]
    prefix = file[: -len("-00001-of-00000.gguf")]
    if int(m["index"]) != 1:
        raise HubError(
            f"{file}: a split GGUF is named by its first part; use file: {prefix}-00001-of-{m['count']}.gguf"
        )
    count = int(m["count"])
    return [f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


# --------------------------------------------------------------------------------------------
# Hugging Face


@dataclass(frozen=True)
class RemoteFile:
    size: int
    sha256: str | None
    """LFS sha256; None for a plain git file (hashed by streaming it once)."""


class HubClient:
    """The few Hub calls the lock needs, with ``endpoint`` and ``token`` read at call time."""

    def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
        # lazily: slow to import; a no-op deploy never locks
        from huggingface_hub import HfApi

        self.endpoint = endpoint or hf_endpoint()
        self.token = token if token is not None else hf_token()
        self.api = HfApi(endpoint=self.endpoint, token=self.token)

    def repo_files(self, repo: str, revision: str) -> tuple[str, dict[str, RemoteFile]]:
        """(commit, path -> size/sha256) of ``repo`` at ``revision``, one request."""
        try:
            info = self.api.model_info(repo, revision=revision, files_metadata=True)
        except Exception as exc:
            err = explain_hub_error(exc, repo, None, revision)
            if err is None:
                raise HubError(
                    f"{repo} at revision {revision}: cannot reach the Hub at {self.endpoint} ({exc})"
                ) from exc
            raise err from None
        files = {
            s.rfilename: RemoteFile(size=s.lfs.size if s.lfs else (s.size or 0), sha256=s.lfs.sha256 if s.lfs else None)
            for s in info.siblings or []
        }
        assert info.sha is not None
        return info.sha, files

    def hash_plain_file(self, repo: str, path: str, commit: str) -> str:
        """sha256 of a non-LFS file, by streaming it (they are small)."""
        url = f"{self.endpoint}/{repo}/resolve/{commit}/{path}"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        digest = hashlib.sha256()
        with http_session() as http, http.get(url, headers=headers, stream=True, timeout=60) as resp:
            if resp.status_code != 200:
                raise HubError(f"{repo}/{path} at {commit}: HTTP {resp.status_code} while hashing it")
            for chunk in resp.iter_content(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()


Role = Literal["model", "split", "mmproj", "draft", "draft-split"]


def resolve_hf(hf: HFFile, client: HubClient, *, draft: bool = False) -> list[PinnedFile]:
    revision = hf.revision or "main"
    commit, files = client.repo_files(hf.repo, revision)
    first: Role = "draft" if draft else "model"
    rest: Role = "draft-split" if draft else "split"
    wanted: list[tuple[str, Role]] = [(name, first if i == 0 else rest) for i, name in enumerate(split_parts(hf.file))]
    if hf.mmproj:
        wanted.append((hf.mmproj, "mmproj"))
    missing = [name for name, _ in wanted if name not in files]
    if missing:
        ggufs = sorted(p for p in files if p.endswith(".gguf"))
        raise HubError(
            f"{hf.repo} at revision {revision} ({commit[:12]}) has no "
            + ", ".join(missing)
            + (". Fix `draft.hf.file:`" if draft else ". Fix the recipe's `file:`/`mmproj:`")
            + "; GGUF files there: "
            + (", ".join(ggufs[:20]) + (" ..." if len(ggufs) > 20 else "") if ggufs else "(none)")
        )
    pins = []
    for name, role in wanted:
        remote = files[name]
        sha = remote.sha256 or client.hash_plain_file(hf.repo, name, commit)
        pins.append(
            PinnedFile(role=role, source="hf", repo=hf.repo, revision=commit, path=name, size=remote.size, sha256=sha)
        )
    if hf.sha256 and hf.sha256 != pins[0].sha256:
        raise HubError(
            f"{hf.repo}/{hf.file} at {commit[:12]}: the recipe expects sha256 {hf.sha256} but the Hub has "
            f"{pins[0].sha256}. Either the recipe's sha256 or its revision is out of date."
        )
    return pins


# --------------------------------------------------------------------------------------------
# URL and local path


def resolve_url(src: URLFile, role: Role = "model") -> list[PinnedFile]:
    if src.sha256:
        return [PinnedFile(role=role, source="url", path=src.url, size=url_size(src.url), sha256=src.sha256)]
    LOG.warning("%s: no sha256 in the recipe; downloading it once to compute it (add `sha256:` to skip this)", src.url)
    _, sha, size = download_url(src.url, None)
    return [PinnedFile(role=role, source="url", path=src.url, size=size, sha256=sha)]


def local_source_path(src: LocalFile, inventory: Path) -> Path:
    p = Path(src.path).expanduser()
    return p if p.is_absolute() else inventory / p


def resolve_path(src: LocalFile, inventory: Path, role: Role = "model") -> list[PinnedFile]:
    path = local_source_path(src, inventory)
    if not path.is_file():
        what, fix = (
            ("draft", "`draft.path.path:` in the recipe or host entry")
            if role == "draft"
            else ("source", "`path:` in the recipe")
        )
        raise HubError(f"{what} path {src.path}: no such file ({path}); fix {fix}")
    sha = src.sha256 or sha256_with_progress(path, desc=f"hash {path.name}", progress=True)
    return [PinnedFile(role=role, source="path", path=src.path, size=path.stat().st_size, sha256=sha)]


def resolve_source(
    source: Source, inventory: Path, client: Callable[[], HubClient], *, draft: bool = False
) -> list[PinnedFile]:
    """The pinned files of one source: the main model's, or (``draft``) a draft model's."""
    if source.hf:
        return resolve_hf(source.hf, client(), draft=draft)
    if source.url:
        return resolve_url(source.url, "draft" if draft else "model")
    assert source.path is not None
    return resolve_path(source.path, inventory, "draft" if draft else "model")


def resolve_model(
    source: Source, inventory: Path, client: Callable[[], HubClient], draft: Draft | None = None
) -> PinnedModel:
    files = resolve_source(source, inventory, client)
    if draft is not None:
        files += resolve_source(draft, inventory, client, draft=True)
    return PinnedModel(files=files, request=request_of(source, draft))


# --------------------------------------------------------------------------------------------
# The lock of a host


@dataclass
class LockResult:
    lock: Lock
    changes: list[str] = field(default_factory=list)
    written: bool = False
    notes: list[str] = field(default_factory=list)


def resolve_lock(
    host: ResolvedHost,
    *,
    update: Iterable[str] | bool = False,
    frozen: bool | None = None,
    client: HubClient | None = None,
) -> LockResult:
    """Resolve what is not pinned yet (or what ``update`` names; ``True`` = everything).

    ``frozen`` (default: ``CI=true``) checks instead: a missing or stale pin raises
    :class:`LockError` and nothing is written.
    """
    frozen = is_ci() if frozen is None else frozen
    previous = read_lock(host.lock_file)
    known = [m.id for m in host.models]
    if update is True:
        to_update = set(known) | {LLAMA_CPP}
    else:
        to_update = set(update or ())
        unknown = sorted(to_update - set(known) - {LLAMA_CPP})
        if unknown:
            raise LockError(
                f"--update {' '.join(unknown)}: no such model on host {host.name}; models: {', '.join(known)}"
            )
    if frozen and to_update:
        raise LockError("--update and --frozen contradict each other: a frozen lock moves no pin")

    old_models = previous.models if previous else {}
    clients: list[HubClient] = [client] if client else []

    def hub() -> HubClient:
        if not clients:
            clients.append(HubClient())
        return clients[0]

    problems: list[str] = []
    models: dict[str, PinnedModel] = {}
    for m in host.models:
        old = old_models.get(m.id)
        request = request_of(m.source, m.draft)
        if old is not None and old.request == request and m.id not in to_update:
            models[m.id] = old
            continue
        if frozen:
            problems.append(
                f"{m.id}: " + ("no pin" if old is None else "the recipe's source changed since it was pinned")
            )
            continue
        models[m.id] = resolve_model(m.source, host.inventory, hub, m.draft)
    if problems:
        raise LockError(
            f"{host.lock_file} is frozen (frozen=1, --frozen or CI=true) but out of date: "
            + "; ".join(problems)
            + f". Run `homelab lock {host.name}` and commit the lockfile."
        )

    result = LockResult(lock=Lock(host=host.name, models=models))
    old_llama = previous.llama_cpp if previous else None
    try:
        llama_cpp = _llama_cpp_pin(host, old_llama, LLAMA_CPP in to_update, frozen)
    except HomelabError as exc:
        if frozen or models == old_models:
            raise
        # keep the model pins just resolved (minutes of Hub requests for a big host), then fail
        write_lock(host.lock_file, Lock(host=host.name, models=models, llama_cpp=old_llama))
        raise LockError(f"model pins written to {host.lock_file}; the llama.cpp pin failed: {exc}") from None
    result.lock = Lock(host=host.name, models=models, llama_cpp=llama_cpp)
    result.changes = describe_changes(previous, result.lock)
    if frozen:
        if previous is None or _dump(previous) != _dump(result.lock):
            raise LockError(
                f"{host.lock_file} is frozen but would change ({'; '.join(result.changes) or 'new file'}). "
                f"Run `homelab lock {host.name}` and commit the lockfile."
            )
        return result
    result.written = write_lock(host.lock_file, result.lock)
    return result


def _llama_cpp_pin(host: ResolvedHost, previous: LlamaCppPin | None, update: bool, frozen: bool) -> LlamaCppPin:
    if frozen:
        if previous is None:
            raise LockError(
                f"{host.lock_file} is frozen (frozen=1, --frozen or CI=true) but has no llama.cpp pin. "
                f"Run `homelab lock {host.name}` and commit the lockfile."
            )
        # Ask without moving anything; a differing answer means the pin is stale.
        return resolve_llama_cpp(host, previous, False)
    return resolve_llama_cpp(host, previous, update)


def _dump(lock: Lock) -> str:
    return json.dumps(lock.model_dump(mode="json", exclude_none=True), sort_keys=True)


def describe_changes(old: Lock | None, new: Lock) -> list[str]:
    """One line per pin that moved: ``+`` new, ``-`` dropped, ``~`` changed (old -> new)."""
    lines: list[str] = []
    old_models = old.models if old else {}
    for model_id in sorted(set(old_models) | set(new.models)):
        before, after = old_models.get(model_id), new.models.get(model_id)
        if before == after:
            continue
        if before is None:
            assert after is not None
            f = after.files[0]
            extra = f" (+{len(after.files) - 1} files)" if len(after.files) > 1 else ""
            lines.append(f"+ {model_id}: {_where(f)} sha256 {f.sha256[:12]}{extra}")
            continue
        if after is None:
            lines.append(f"- {model_id}")
            continue
        count = len(lines)
        old_files = {(f.role, f.path): f for f in before.files}
        new_files = {(f.role, f.path): f for f in after.files}
        for key in sorted(set(old_files) | set(new_files)):
            a, b = old_files.get(key), new_files.get(key)
            if a == b:
                continue
            if a is None:
                assert b is not None
                lines.append(f"~ {model_id}: + {_where(b)} sha256 {b.sha256[:12]}")
            elif b is None:
                lines.append(f"~ {model_id}: - {_where(a)}")
            else:
                moved = []
                if a.revision != b.revision:
                    moved.append(f"revision {(a.revision or '-')[:12]} -> {(b.revision or '-')[:12]}")
                if a.sha256 != b.sha256:
                    moved.append(f"sha256 {a.sha256[:12]} -> {b.sha256[:12]}")
                if a.size != b.size:
                    moved.append(f"size {a.size} -> {b.size}")
                lines.append(f"~ {model_id}: {b.path}: " + (", ".join(moved) or "metadata"))
        if len(lines) == count:
            lines.append(f"~ {model_id}: the recipe's source changed, same files")
    if (old.llama_cpp if old else None) != new.llama_cpp:
        was = old.llama_cpp if old else None
        now = new.llama_cpp
        lines.append(
            f"~ llama.cpp: {(was.commit or was.ref) if was else '(none)'} -> {(now.commit or now.ref) if now else '(none)'}"
        )
    return lines


def _where(f: PinnedFile) -> str:
    if f.source == "hf":
        return f"{f.repo}/{f.path}@{(f.revision or '')[:12]}"
    return f.path


def load_lock(host: ResolvedHost) -> Lock:
    """The host's lock, or an error that says to run ``homelab lock``."""
    lock = read_lock(host.lock_file)
    if lock is None:
        raise LockError(
            f"{host.lock_file}: no lockfile yet; run `homelab lock {host.name}` (or `doit lock host={host.name}`)"
        )
    return lock
