"""Patch series: files, series folders, format-patch mboxes, upstream PRs, conflicts."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from homelab.inventory.schema import PullRequestPatch
from homelab.llamacpp.gitrepo import git
from homelab.llamacpp.patches import (
    ApplyHistory,
    PatchConflict,
    PatchError,
    apply_series,
    collect,
    expand_local,
    explain,
    patch_format,
    precheck_series,
)
from homelab.llamacpp.source import SourceCache, SourceSpec

from .fakeproject import commit_all, run_git


def diff_of(repo: Path, edit: Callable[[Path], None], *, mbox: bool = False, author: str = "Patch Author") -> str:
    """The patch for ``edit`` on top of ``repo``'s HEAD (the repo is left as it was)."""
    edit(repo)
    if not mbox:
        text = run_git(repo, "diff") + "\n"
        run_git(repo, "checkout", "--", ".")
        return text
    run_git(repo, "add", "-A")
    run_git(repo, "-c", f"user.name={author}", "commit", "-qm", "a format-patch commit")
    text = run_git(repo, "format-patch", "-1", "--stdout") + "\n"
    run_git(repo, "reset", "-q", "--hard", "HEAD~1")
    return text


def replace(path: str, old: str, new: str) -> Callable[[Path], None]:
    def edit(repo: Path) -> None:
        text = (repo / path).read_text()
        assert old in text
        (repo / path).write_text(text.replace(old, new, 1))

    return edit


def worktree_at(upstream: Path, tmp_path: Path, ref: str = "b100") -> tuple[Path, str]:
    cache = SourceCache(tmp_path / "sources")
    spec = SourceSpec("git", str(upstream), ref)
    commit = cache.resolve(spec, refresh_branches=True).commit
    git_dir = cache.ensure_commit(spec, commit)
    return cache.worktree(git_dir, commit, tmp_path / f"wt-{ref}"), commit


def test_series_folder_applies_in_order_one_commit_each(upstream: Path, tmp_path: Path) -> None:
    patches_dir = tmp_path / "patches"
    (patches_dir / "mtp").mkdir(parents=True)
    first = diff_of(upstream, replace("server.c", "--port PORT", "--port PORT (patched once)"))
    (patches_dir / "mtp" / "0001-port.patch").write_text(first)
    replace("server.c", "--port PORT", "--port PORT (patched once)")(upstream)
    run_git(upstream, "add", "-A")  # the second patch is made on top of the first
    second = diff_of(upstream, replace("server.c", "(patched once)", "(patched twice)"))
    run_git(upstream, "reset", "-q", "--hard", "HEAD")
    (patches_dir / "mtp" / "0002-again.patch").write_text(second)
    (patches_dir / "mtp" / "series").write_text("# applied in this order\n0001-port.patch\n\n0002-again.patch\n")

    patches = expand_local("mtp", patches_dir)
    assert [p.ref for p in patches] == ["patches/mtp/0001-port.patch", "patches/mtp/0002-again.patch"]
    tree, commit = worktree_at(upstream, tmp_path)
    git_dir = SourceCache(tmp_path / "sources").ensure_commit(SourceSpec("git", str(upstream), "b100"), commit)
    precheck_series(git_dir, patches, base_commit=commit, base_label="b100")  # 2 sees 1's change
    head = apply_series(tree, patches, base_commit=commit, base_label="b100")
    assert "(patched twice)" in (tree / "server.c").read_text()
    assert git(["rev-list", "--count", f"{commit}..{head}"], cwd=tree).stdout.strip() == "2"
    assert git(["status", "--porcelain"], cwd=tree).stdout == ""
    # the same series gives the same commit again (fixed identity and date)
    tree2, _ = worktree_at(upstream, tmp_path / "again")
    assert apply_series(tree2, patches, base_commit=commit, base_label="b100") == head


def test_format_patch_mbox_keeps_its_commit(upstream: Path, tmp_path: Path) -> None:
    text = diff_of(upstream, replace("fit.c", "return 0", "return 7"), mbox=True, author="Upstream Dev")
    assert patch_format(text.encode()) == "mbox"
    (tmp_path / "pr.patch").write_text(text)
    patches = expand_local("pr.patch", tmp_path)
    tree, commit = worktree_at(upstream, tmp_path)
    apply_series(tree, patches, base_commit=commit, base_label="b100")
    assert "return 7" in (tree / "fit.c").read_text()
    assert git(["log", "-1", "--format=%an %s"], cwd=tree).stdout.strip() == "Upstream Dev a format-patch commit"


def test_conflict_names_patch_file_hunk_and_last_good_pin(upstream: Path, tmp_path: Path) -> None:
    patch_text = diff_of(upstream, replace("server.c", "--metrics   ", "--metrics-x "))
    (tmp_path / "metrics.patch").write_text(patch_text)
    patches = expand_local("metrics.patch", tmp_path)
    history = ApplyHistory(tmp_path / "state" / "applied.json")

    good_tree, good = worktree_at(upstream, tmp_path)
    apply_series(good_tree, patches, base_commit=good, base_label="b100", history=history)

    # upstream rewrites the same line: the patch no longer applies at b101
    replace("server.c", "--metrics   ", "--metrics-y ")(upstream)
    commit_all(upstream, "upstream changes the metrics line")
    run_git(upstream, "tag", "b101")
    tree, bad = worktree_at(upstream, tmp_path, "b101")
    with pytest.raises(PatchConflict) as exc:
        apply_series(tree, patches, base_commit=bad, base_label="b101", history=history)
    message = str(exc.value)
    assert "patch patches/metrics.patch does not apply to b101" in message
    assert "server.c hunk #1 (@@ -" in message
    assert f"last applied to b100 (commit {good[:12]}" in message
    assert exc.value.failures[0].file == "server.c" and exc.value.failures[0].line
    assert git(["status", "--porcelain"], cwd=tree).stdout == ""  # left clean

    # the same verdict without a checkout, from the object store alone
    git_dir = SourceCache(tmp_path / "sources").ensure_commit(SourceSpec("git", str(upstream), "b101"), bad)
    with pytest.raises(PatchConflict) as fast:
        precheck_series(git_dir, patches, base_commit=bad, base_label="b101", history=history)
    assert str(fast.value) == message
    precheck_series(git_dir, patches, base_commit=good, base_label="b100")  # applies: no error


def test_mbox_conflict_is_explained_too(upstream: Path, tmp_path: Path) -> None:
    text = diff_of(upstream, replace("fit.c", "return 0", "return 7"), mbox=True)
    (tmp_path / "fit.patch").write_text(text)
    replace("fit.c", "return 0", "return 3")(upstream)
    commit_all(upstream, "upstream edits fit.c")
    tree, commit = worktree_at(upstream, tmp_path, "main")
    with pytest.raises(PatchConflict, match=r"patches/fit.patch .*fit.c hunk #1"):
        apply_series(tree, expand_local("fit.patch", tmp_path), base_commit=commit, base_label="main")
    assert not (tree / ".git").is_dir() and git(["status", "--porcelain"], cwd=tree).stdout == ""


def test_explain_reads_gits_messages() -> None:
    text = "diff --git a/x.c b/x.c\n--- a/x.c\n+++ b/x.c\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n@@ -40,3 +40,3 @@ int f()\n x\n-y\n+z\n"
    out = "error: patch failed: x.c:40\nerror: x.c: patch does not apply\nerror: gone.c: does not exist in index\n"
    failures = explain(out, text)
    assert failures[0].file == "x.c" and failures[0].hunk == "hunk #2 (@@ -40,3 +40,3 @@ int f())"
    assert failures[1].file == "gone.c" and "does not exist" in failures[1].reason


def test_series_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    with pytest.raises(PatchError, match="without a `series` file"):
        expand_local("set", tmp_path)
    (tmp_path / "set" / "series").write_text("one.patch\nmissing.patch\n")
    (tmp_path / "set" / "one.patch").write_text("x")
    with pytest.raises(PatchError, match=r"series:2: 'missing.patch'"):
        expand_local("set", tmp_path)
    with pytest.raises(PatchError, match="outside"):
        expand_local("../etc.patch", tmp_path)


@pytest.fixture
def github(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bytes]]:
    """A loopback stand-in for github.com serving /<owner>/<repo>/pull/<n>.patch."""
    served: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = served.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"not found")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HOMELAB_GITHUB_URL", f"http://127.0.0.1:{server.server_address[1]}")
    yield served
    server.shutdown()


def test_pull_request_patches_are_downloaded_pinned_and_cached(
    upstream: Path, tmp_path: Path, github: dict[str, bytes]
) -> None:
    text = diff_of(upstream, replace("fit.c", "return 0", "return 9"), mbox=True)
    github["/ggml-org/llama.cpp/pull/4242.patch"] = text.encode()
    cache = tmp_path / "patch-cache"
    repo = "https://github.com/ggml-org/llama.cpp"
    [patch] = collect([PullRequestPatch(pr=4242)], tmp_path, repo, cache)
    assert patch.ref == "pr:4242" and (cache / f"{patch.sha256}.patch").is_file()
    github.clear()  # offline now: the pinned sha256 comes from the cache
    [again] = collect([PullRequestPatch(pr=4242)], tmp_path, repo, cache, {"pr:4242": patch.sha256})
    assert again.path == patch.path
    with pytest.raises(PatchError, match="cannot download"):
        collect([PullRequestPatch(pr=4242)], tmp_path, repo, cache)
    github["/other/fork/pull/5.patch"] = b"changed upstream"
    with pytest.raises(PatchError, match="changed since it was pinned"):
        collect([PullRequestPatch(pr=5, repo="other/fork", sha256="a" * 64)], tmp_path, repo, cache)
    with pytest.raises(PatchError, match="not on GitHub"):
        collect([PullRequestPatch(pr=1)], tmp_path, "https://gitlab.com/x/llama.cpp", cache)
    tree, commit = worktree_at(upstream, tmp_path)
    apply_series(tree, [patch], base_commit=commit, base_label="b100")
    assert "return 9" in (tree / "fit.c").read_text()


def test_a_patch_whose_context_moved_merges_three_way(upstream: Path, tmp_path: Path) -> None:
    text = diff_of(upstream, replace("server.c", "--metrics   ", "--metrics-x "))
    (tmp_path / "near.patch").write_text(text)
    # upstream edits a line inside the hunk's context: plain `git apply` fails, 3-way merges cleanly
    replace("server.c", "types of speculative decoding", "kinds of speculative decoding")(upstream)
    commit = commit_all(upstream, "upstream edits a neighbouring line")
    tree, commit = worktree_at(upstream, tmp_path, "main")
    patches = expand_local("near.patch", tmp_path)
    assert not git(["apply", "--check", str(patches[0].path)], cwd=tree, check=False).ok
    git_dir = SourceCache(tmp_path / "sources").ensure_commit(SourceSpec("git", str(upstream), "main"), commit)
    precheck_series(git_dir, patches, base_commit=commit, base_label="main")
    apply_series(tree, patches, base_commit=commit, base_label="main")
    text = (tree / "server.c").read_text()
    assert "--metrics-x " in text and "kinds of speculative decoding" in text
