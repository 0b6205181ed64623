"""The lockfile: every input of a host pinned (contract: ``hosts/<host>.lock.json``).

Committed by the user beside the host file, like Cargo.lock. The model stage (``hub``) fills
``models``; the llama.cpp stage fills ``llama_cpp``. Written atomically (temp file, rename),
with sorted keys so a re-lock that changes nothing leaves the bytes unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import HomelabError
from .files import atomic_write_text

LOCK_VERSION = 1


class LockError(HomelabError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PinnedFile(_Strict):
    """One file of a model, pinned by content."""

    role: Literal["model", "split", "mmproj"] = "model"
    source: Literal["hf", "url", "path"]
    repo: str | None = None
    revision: str | None = Field(default=None, description="40-hex commit for hf")
    path: str = Field(description="path inside the repo (hf), the URL (url) or the local path (path)")
    size: int
    sha256: str


class PinnedModel(_Strict):
    files: list[PinnedFile]
    """The first file is what llama-server gets with -m (split part 1); mmproj last."""
    request: str = Field(description="what the recipe asked for, to detect a stale pin")


class PinnedPatch(_Strict):
    """One patch file of the series, by content (written by homelab.llamacpp.pin)."""

    ref: str = Field(description="patches/<file>, patches/<dir>/<file>, pr:<number> or pr:<owner/name>#<number>")
    sha256: str


class LlamaCppPin(_Strict):
    """The llama.cpp source of a host, pinned (written by homelab.llamacpp.pin.resolve_llama_cpp).

    ``commit`` is a real git commit for ``git``; for ``tarball`` and ``path`` it is the id of
    homelab's snapshot commit of the files (fixed identity and date: same files, same id).
    """

    source: Literal["git", "tarball", "path"] = "git"
    repo: str = Field(description="git URL, tarball URL or local directory")
    ref: str = Field(default="", description="what the host asked for (tag, branch, commit); empty for tarball/path")
    commit: str | None = None
    build_number: int | None = None
    tarball_sha256: str | None = None
    patches: list[PinnedPatch] = Field(default_factory=list)


class Lock(_Strict):
    version: int = LOCK_VERSION
    host: str
    llama_cpp: LlamaCppPin | None = None
    models: dict[str, PinnedModel] = Field(default_factory=dict)


def read_lock(path: Path) -> Lock | None:
    """The lock at ``path``, or None when there is none yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return Lock.model_validate_json(text)
    except ValidationError as exc:
        raise LockError(
            f"{path}: not a valid homelab lockfile ({exc.error_count()} problems, first: "
            f"{exc.errors()[0]['msg']} at {'.'.join(map(str, exc.errors()[0]['loc']))}). "
            "Delete it and run `homelab lock HOST` to re-resolve."
        ) from None


def write_lock(path: Path, lock: Lock) -> bool:
    """Write atomically. Returns False (and writes nothing) when the content is unchanged."""
    text = json.dumps(lock.model_dump(mode="json", exclude_none=True), indent=2, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    atomic_write_text(path, text)
    return True
