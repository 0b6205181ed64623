"""The patch series a host applies on top of llama.cpp.

A host lists patches in order (``llama_cpp.patches``):

- ``mtp-fix.patch``: a file under ``<inventory>/patches/``, plain ``git diff`` output or
  ``git format-patch`` output (an mbox, applied with ``git am -3`` so its commits are kept);
- ``glm-mtp/``: a folder with a ``series`` file listing its patches in order (quilt style);
- ``{pr: 12345}``: an upstream pull request, downloaded once as
  ``https://github.com/<owner>/<repo>/pull/12345.patch``, pinned by sha256 in the lock and
  cached under ``HOMELAB_STATE/patches``.

Each patch is checked with ``git apply --check`` and applied with a 3-way merge in the build's
worktree, one commit per patch. A patch that does not apply stops everything in seconds with
:class:`PatchConflict`, which names the patch, the file and the hunk, and the last llama.cpp pin
it applied to (every successful application is recorded in ``HOMELAB_STATE/patches/applied.json``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import HomelabError
from ..files import atomic_write_bytes, atomic_write_text, sha256_file
from ..http_client import http_session
from ..inventory.schema import PatchRef, PullRequestPatch
from .gitrepo import IDENTITY, git

GITHUB_ENV = "HOMELAB_GITHUB_URL"
"""Where pull-request patches come from (default https://github.com; a mirror or a test server)."""

PatchFormat = Literal["diff", "mbox"]


class PatchError(HomelabError):
    pass


@dataclass(frozen=True)
class Patch:
    """One patch file, ready to apply."""

    ref: str
    """How the lock and messages name it: ``patches/<file>``, ``patches/<dir>/<file>``, ``pr:<n>``."""
    path: Path
    sha256: str

    @property
    def format(self) -> PatchFormat:
        return patch_format(self.path.read_bytes())


def patch_format(data: bytes) -> PatchFormat:
    """``git format-patch`` output starts with an mbox ``From <sha> <date>`` line."""
    return "mbox" if re.match(rb"From [0-9a-f]{40} ", data) else "diff"


def github_repo(url: str) -> str | None:
    """``https://github.com/ggml-org/llama.cpp(.git)`` -> ``ggml-org/llama.cpp``."""
    match = re.match(r"^(?:https?://|git@|ssh://git@)github\.com[/:]([^/]+)/([^/]+?)(?:\.git)?/?$", url)
    return f"{match[1]}/{match[2]}" if match else None


def pr_ref(pr: PullRequestPatch) -> str:
    return f"pr:{pr.repo}#{pr.pr}" if pr.repo else f"pr:{pr.pr}"


def pr_url(pr: PullRequestPatch, llama_repo: str) -> str:
    repo = pr.repo or github_repo(llama_repo)
    if repo is None:
        raise PatchError(
            f"patch {{pr: {pr.pr}}}: llama_cpp.repo {llama_repo} is not on GitHub; "
            "add `repo: owner/name` to the patch entry"
        )
    base = os.environ.get(GITHUB_ENV, "https://github.com").rstrip("/")
    return f"{base}/{repo}/pull/{pr.pr}.patch"


def fetch_pr(pr: PullRequestPatch, llama_repo: str, cache: Path, expected: str | None) -> Patch:
    """The PR's patch from the cache (by sha256), else downloaded and checked against ``expected``."""
    ref = pr_ref(pr)
    if expected and (cache / f"{expected}.patch").is_file():
        return Patch(ref, cache / f"{expected}.patch", expected)
    import requests  # lazily, for its errors: patches are downloaded once, then cached

    url = pr_url(pr, llama_repo)
    try:
        with http_session() as http:
            response = http.get(url, timeout=60)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise PatchError(f"patch {ref}: cannot download {url} ({exc})") from None
    data = response.content
    sha = hashlib.sha256(data).hexdigest()
    if expected and sha != expected:
        raise PatchError(
            f"patch {ref}: {url} changed since it was pinned (sha256 {sha[:12]}..., lock/host file says "
            f"{expected[:12]}...). Review the PR, then `homelab lock HOST --update` to take the new version."
        )
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{sha}.patch"
    atomic_write_bytes(target, data)
    return Patch(ref, target, sha)


def expand_local(ref: str, patches_dir: Path) -> list[Patch]:
    """A file under ``patches/``, or a folder whose ``series`` file lists patches in order."""
    path = (patches_dir / ref).resolve()
    if not path.is_relative_to(patches_dir.resolve()):
        raise PatchError(f"llama_cpp.patches: {ref!r} points outside {patches_dir}")
    if path.is_dir():
        series = path / "series"
        if not series.is_file():
            raise PatchError(
                f"llama_cpp.patches: {path} is a folder without a `series` file; list its patches "
                "in order in series (one file name a line, # comments allowed)"
            )
        out = []
        for lineno, line in enumerate(series.read_text().splitlines(), 1):
            name = line.split("#", 1)[0].strip()
            if not name:
                continue
            file = path / name
            if not file.is_file():
                raise PatchError(f"{series}:{lineno}: {name!r} is listed but {file} does not exist")
            out.append(Patch(f"patches/{ref.rstrip('/')}/{name}", file, sha256_file(file)))
        return out
    if not path.is_file():
        raise PatchError(f"llama_cpp.patches: {ref!r} not found under {patches_dir}")
    return [Patch(f"patches/{ref}", path, sha256_file(path))]


def collect(
    refs: Sequence[PatchRef],
    patches_dir: Path,
    llama_repo: str,
    cache: Path,
    pinned: dict[str, str] | None = None,
) -> list[Patch]:
    """Every patch of the host in application order. ``pinned`` maps PR refs to locked sha256s."""
    out: list[Patch] = []
    for ref in refs:
        if isinstance(ref, str):
            out += expand_local(ref, patches_dir)
        else:
            expected = ref.sha256 or (pinned or {}).get(pr_ref(ref))
            out.append(fetch_pr(ref, llama_repo, cache, expected))
    return out


# --------------------------------------------------------------------------------------------
# Applying, and explaining failures


@dataclass(frozen=True)
class Failure:
    file: str
    line: int | None
    hunk: str | None
    reason: str


class PatchConflict(PatchError):
    def __init__(self, patch: Patch, failures: list[Failure], base: str, last_good: str | None) -> None:
        self.patch = patch
        self.failures = failures
        where = (
            "; ".join(
                f"{f.file}" + (f" {f.hunk}" if f.hunk else f":{f.line}" if f.line else "") + f" ({f.reason})"
                for f in failures[:3]
            )
            or "git gave no details"
        )
        hint = (
            f" It last applied to {last_good}: pin that (llama_cpp.ref) or rebase the patch."
            if last_good
            else " Rebase the patch onto the pinned llama.cpp, or drop it if upstream merged it."
        )
        super().__init__(f"patch {patch.ref} does not apply to {base}: {where}.{hint}")


_FAILED = re.compile(r"^error: patch failed: (?P<file>.+):(?P<line>\d+)$", re.M)
_MISSING = re.compile(
    r"^error: (?P<file>[^:\n]+): (?P<reason>does not exist in index|No such file or directory|already exists in (?:index|working directory))$",
    re.M,
)
_CONFLICT = re.compile(r"^U (?P<file>.+)$", re.M)


def hunks(patch_text: str) -> dict[str, list[tuple[int, str]]]:
    """file -> [(old start line, hunk header)] for every hunk in a diff or mbox."""
    out: dict[str, list[tuple[int, str]]] = {}
    current: str | None = None
    for line in patch_text.splitlines():
        if line.startswith("--- "):
            name = line[4:].split("\t")[0]
            current = name[2:] if name.startswith(("a/", "b/")) else name
        elif line.startswith("+++ ") and current == "/dev/null":
            name = line[4:].split("\t")[0]
            current = name[2:] if name.startswith(("a/", "b/")) else name
        elif line.startswith("@@ ") and current:
            match = re.match(r"@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@", line)
            if match:
                out.setdefault(current, []).append((int(match[1]), line.strip()))
    return out


def explain(output: str, patch_text: str) -> list[Failure]:
    """git's error output -> which file and hunk failed."""
    index = hunks(patch_text)
    failures: list[Failure] = []
    for m in _FAILED.finditer(output):
        file, line = m["file"], int(m["line"])
        hunk = None
        for number, (start, header) in enumerate(index.get(file, []), 1):
            if start == line:
                hunk = f"hunk #{number} ({header})"
                break
        failures.append(Failure(file, line, hunk, "context does not match"))
    for m in _MISSING.finditer(output):
        failures.append(Failure(m["file"], None, None, m["reason"]))
    failures = list(dict.fromkeys(failures))  # --check and --3way report the same hunk
    if not failures:
        for m in _CONFLICT.finditer(output):
            failures.append(Failure(m["file"], None, None, "3-way merge conflict"))
    return failures


class ApplyHistory:
    """Where each patch applied before: ``HOMELAB_STATE/patches/applied.json``."""

    KEEP = 20

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, list[dict]]:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def record(self, patch: Patch, commit: str, label: str) -> None:
        data = self._read()
        entries = [e for e in data.get(patch.ref, []) if not (e["commit"] == commit and e["sha256"] == patch.sha256)]
        entries.append(
            {
                "sha256": patch.sha256,
                "commit": commit,
                "label": label,
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
        )
        data[patch.ref] = entries[-self.KEEP :]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")

    def last_good(self, patch: Patch, not_commit: str) -> str | None:
        """The most recent other pin this patch (same content preferred) applied to."""
        entries = [e for e in self._read().get(patch.ref, []) if e["commit"] != not_commit]
        same = [e for e in entries if e["sha256"] == patch.sha256]
        pick = (same or entries)[-1:]
        if not pick:
            return None
        e = pick[0]
        return f"{e['label']} (commit {e['commit'][:12]}, {e['at'][:10]})"


def precheck_series(
    git_dir: Path,
    patches: Sequence[Patch],
    *,
    base_commit: str,
    base_label: str,
    history: ApplyHistory | None = None,
) -> None:
    """Fail fast: apply the series to a scratch index of ``base_commit`` (no checkout, well
    under a second even for llama.cpp) and raise :class:`PatchConflict` at the first patch that
    neither applies nor merges 3-way. Anything else is left for :func:`apply_series` to decide.
    """
    if not patches:
        return
    with tempfile.TemporaryDirectory(prefix="homelab-patch-check-") as tmp:
        env = {**IDENTITY, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        base = ["--git-dir", str(git_dir)]
        if not git([*base, "read-tree", base_commit], env=env, safe=[git_dir], check=False).ok:
            return
        for patch in patches:
            plain = git([*base, "apply", "--cached", str(patch.path)], env=env, safe=[git_dir], check=False)
            if plain.ok:
                continue
            merged = git([*base, "apply", "--cached", "--3way", str(patch.path)], env=env, safe=[git_dir], check=False)
            if merged.ok:
                continue
            failures = explain(plain.stderr + merged.stderr + merged.stdout, patch.path.read_text(errors="replace"))
            if not failures:
                return  # not a conflict we understand: let the worktree application report it
            _fail(patch, failures, base_label, base_commit, history)


def apply_series(
    worktree: Path,
    patches: Sequence[Patch],
    *,
    base_commit: str,
    base_label: str,
    history: ApplyHistory | None = None,
) -> str:
    """Apply ``patches`` in order in ``worktree`` (one commit each); the resulting commit.

    Raises :class:`PatchConflict` at the first patch that does not apply, leaving the worktree
    clean at the last good commit.
    """
    env = dict(IDENTITY)
    safe = [worktree]

    def run(args: list[str], check: bool = False):
        return git(args, cwd=worktree, env=env, safe=safe, check=check)

    for patch in patches:
        text = patch.path.read_text(errors="replace")
        if patch.format == "mbox":
            result = run(["am", "--3way", "--keep-cr", "--quiet", str(patch.path)])
            if not result.ok:
                run(["am", "--abort"])
                check = run(["apply", "--check", str(patch.path)])
                output = check.stderr + result.stderr + result.stdout
                _fail(patch, explain(output, text), base_label, base_commit, history)
        else:
            check = run(["apply", "--check", str(patch.path)])
            if check.ok:
                run(["apply", "--index", str(patch.path)], check=True)
            else:
                merged = run(["apply", "--3way", "--index", str(patch.path)])
                if not merged.ok:
                    run(["reset", "--hard", "--quiet", "HEAD"])
                    run(["clean", "-fdq"])
                    output = check.stderr + merged.stderr + merged.stdout
                    _fail(patch, explain(output, text), base_label, base_commit, history)
            run(["commit", "--quiet", "--allow-empty", "-m", f"homelab: {patch.ref}"], check=True)
        if history is not None:
            history.record(patch, base_commit, base_label)
    return run(["rev-parse", "HEAD"], check=True).stdout.strip()


def _fail(patch: Patch, failures: list[Failure], label: str, commit: str, history: ApplyHistory | None) -> None:
    last = history.last_good(patch, commit) if history else None
    raise PatchConflict(patch, failures, f"{label} ({commit[:12]})", last)
