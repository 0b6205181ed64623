"""Running git for the llama.cpp stage: one place for the environment every call needs.

Every call goes through :func:`git` so that

- the user's global configuration cannot change what we produce (commit signing, autocrlf,
  hooks): our commits are made with a fixed identity and date, so the same content gives the
  same commit id on every machine;
- directories that belong to another user (an sdist extracted as root, a shared llama.cpp
  checkout) do not trip git's "dubious ownership" check: we pass ``safe.directory`` for the
  directories we were told to use, on the command line (git honours it only there or in
  global/system config).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import HomelabError

IDENTITY = {
    "GIT_AUTHOR_NAME": "homelab",
    "GIT_AUTHOR_EMAIL": "homelab@localhost",
    "GIT_COMMITTER_NAME": "homelab",
    "GIT_COMMITTER_EMAIL": "homelab@localhost",
    # fixed dates: a snapshot or a patched tree gets the same commit id everywhere
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
}

_CONFIG = (
    "-c",
    "commit.gpgsign=false",
    "-c",
    "tag.gpgsign=false",
    "-c",
    "core.autocrlf=false",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "advice.detachedHead=false",
    "-c",
    "init.defaultBranch=main",
    "-c",
    "gc.auto=0",
)


class GitError(HomelabError):
    pass


@dataclass(frozen=True)
class GitResult:
    status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0


def git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    safe: Sequence[Path] = (),
    check: bool = True,
    what: str = "",
) -> GitResult:
    """Run ``git <args>``; with ``check`` a failure raises :class:`GitError` naming ``what``."""
    command = ["git", *_CONFIG]
    for directory in safe:
        command += ["-c", f"safe.directory={directory}"]
    command += list(args)
    full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(env or {})}
    import git as gitpython  # lazily: a no-op deploy never runs git

    runner = gitpython.cmd.Git(str(cwd) if cwd else None)
    status, stdout, stderr = runner.execute(
        command,
        with_extended_output=True,
        with_exceptions=False,
        env=full_env,
        strip_newline_in_stdout=False,
    )
    result = GitResult(int(status or 0), stdout or "", stderr or "")
    if check and not result.ok:
        lines = [line.strip() for line in (result.stderr.strip() or result.stdout.strip()).splitlines() if line.strip()]
        # git's own verdict ("fatal: detected dubious ownership ...") beats its generic epilogue
        verdict = [line for line in lines if line.startswith(("fatal:", "error:"))][:2] or lines[-3:]
        raise GitError(f"{what or 'git ' + ' '.join(args[:2])} failed: {' | '.join(verdict)}")
    return result


def has_commit(git_dir: Path, commit: str) -> bool:
    """Whether ``commit`` (a full id, or any rev) is present as a commit object."""
    return git(["--git-dir", str(git_dir), "cat-file", "-e", f"{commit}^{{commit}}"], check=False, safe=[git_dir]).ok


def rev_parse(git_dir: Path, rev: str) -> str | None:
    result = git(
        ["--git-dir", str(git_dir), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        check=False,
        safe=[git_dir],
    )
    return result.stdout.strip() if result.ok else None


def init_bare(git_dir: Path) -> None:
    git_dir.parent.mkdir(parents=True, exist_ok=True)
    git(["init", "--bare", "--quiet", str(git_dir)], what=f"creating {git_dir}")


def snapshot_commit(git_dir: Path, tree: Path, message: str, *, force: bool) -> str:
    """Commit every file under ``tree`` into ``git_dir`` as one parentless commit; its id.

    The files are read in place (``GIT_WORK_TREE``), nothing is written into ``tree``. The
    commit has a fixed identity and date, so the same content always gives the same id: a
    tarball or a local directory gets a stable "commit" to pin and to key builds by.
    ``force`` adds files that the tree's own .gitignore would skip (a tarball is taken whole;
    a developer's checkout keeps its build/ directories out).
    """
    # one index per tree, kept: git's stat cache makes the next snapshot of a big tree fast
    index = git_dir / f"index-{hashlib.sha1(str(tree).encode()).hexdigest()[:12]}"
    env = {**IDENTITY, "GIT_DIR": str(git_dir), "GIT_WORK_TREE": str(tree), "GIT_INDEX_FILE": str(index)}
    safe = [git_dir, tree]
    add = ["add", "--all"] + (["--force"] if force else [])
    git([*add, "--", "."], cwd=tree, env=env, safe=safe, what=f"reading {tree} into git")
    tree_id = git(["write-tree"], cwd=tree, env=env, safe=safe).stdout.strip()
    commit = git(["commit-tree", tree_id, "-m", message], cwd=tree, env=env, safe=safe).stdout.strip()
    return commit
