"""The lockfile: every input of a host pinned (contract: ``hosts/<host>.lock.json``).

Committed by the user beside the host file, like Cargo.lock. The model stage (``hub``) fills
``models``; the llama.cpp stage fills ``llama_cpp``. Written atomically (temp file, rename),
with sorted keys so a re-lock that changes nothing leaves the bytes unchanged.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import HomelabError
from .files import atomic_write_text

LOCK_VERSION = 1


class LockError(HomelabError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def relative_path_problem(text: str) -> str | None:
    """Why ``text`` cannot be a path below a folder homelab owns (a cache, ``patches/``), or None.

    Lock fields become file names: a lockfile from someone else (a pull request, a shared repo)
    must not make a fetch write or read outside the cache, above all when run as root."""
    if "\0" in text:
        return "contains a NUL byte"
    if text.startswith("/") or PurePosixPath(text).is_absolute():
        return "is absolute"
    if ".." in PurePosixPath(text).parts or "\\" in text:
        return "steps out of its folder ('..' or a backslash)"
    if not text.strip("/"):
        return "is empty"
    return None


class PinnedFile(_Strict):
    """One file of a model, pinned by content."""

    role: Literal["model", "split", "mmproj", "draft", "draft-split"] = "model"
    """``model``: what ``-m`` gets (a split GGUF's first part), ``split``: its other parts,
    ``mmproj``: the projector, ``draft``/``draft-split``: the speculative draft model's files."""
    source: Literal["hf", "url", "path"]
    repo: str | None = None
    revision: str | None = Field(default=None, description="40-hex commit for hf")
    path: str = Field(description="path inside the repo (hf), the URL (url) or the local path (path)")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="names the cached blob: 64 lower-case hex")

    @model_validator(mode="after")
    def _safe_as_paths(self) -> PinnedFile:
        if self.source == "hf":
            if self.revision is None or not re.fullmatch(r"[0-9a-f]{40}", self.revision):
                raise ValueError(f"revision {self.revision!r} of an hf file must be a 40-hex commit")
            if self.repo is None or not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", self.repo) or ".." in self.repo:
                raise ValueError(f"repo {self.repo!r} is not a Hugging Face repo id like 'owner/name'")
            problem = relative_path_problem(self.path)
            if problem:
                raise ValueError(f"path {self.path!r} of {self.repo} {problem}")
        elif self.source == "url":
            name = PurePosixPath(urllib.parse.urlsplit(self.path).path).name
            if not re.match(r"https?://", self.path) or name in ("..", ".") or "\0" in self.path:
                raise ValueError(f"url {self.path!r} is not an http(s) URL of a file")
        elif "\0" in self.path:
            raise ValueError(f"path {self.path!r} contains a NUL byte")
        return self


class PinnedModel(_Strict):
    files: list[PinnedFile]
    """The first file is what llama-server gets with -m (split part 1), then its other parts,
    the mmproj, and the draft model's files (``--spec-draft-model`` gets the first)."""
    request: str = Field(description="what the recipe asked for, to detect a stale pin")


WEIGHT_ROLES = frozenset({"model", "split"})
DRAFT_ROLES = frozenset({"draft", "draft-split"})


class PinnedPatch(_Strict):
    """One patch file of the series, by content (written by homelab.llamacpp.pin)."""

    ref: str = Field(description="patches/<file>, patches/<dir>/<file>, pr:<number> or pr:<owner/name>#<number>")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("ref")
    @classmethod
    def _safe_ref(cls, v: str) -> str:
        problem = None if v.startswith("pr:") and "\0" not in v else relative_path_problem(v)
        if problem:
            raise ValueError(f"patch ref {v!r} {problem}")
        return v


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
