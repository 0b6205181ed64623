"""Source checkout: shared clone, fetch only when missing, refs, tarballs, local directories."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from homelab.llamacpp.gitrepo import git
from homelab.llamacpp.source import SourceCache, SourceError, SourceSpec

from .fakeproject import commit_all, make_fake_llama, run_git


def test_tag_branch_and_commit_resolve_from_one_shared_clone(upstream: Path, tmp_path: Path) -> None:
    cache = SourceCache(tmp_path / "sources")
    tag = cache.resolve(SourceSpec("git", str(upstream), "b100"))
    assert tag.commit == run_git(upstream, "rev-parse", "b100") and tag.build_number == 100
    (upstream / "server.c").write_text((upstream / "server.c").read_text() + "\n/* main moves on */\n")
    head = commit_all(upstream, "second")
    branch = cache.resolve(SourceSpec("git", str(upstream), "main"), refresh_branches=True)
    assert branch.commit == head
    assert branch.build_number == 2  # no bNNNN tag: counted like upstream's build-info.cmake
    short = cache.resolve(SourceSpec("git", str(upstream), head[:10]))
    assert short.commit == head
    assert len(list((tmp_path / "sources").glob("*.git"))) == 1


def test_fetches_only_when_the_wanted_ref_is_missing(upstream: Path, tmp_path: Path) -> None:
    cache = SourceCache(tmp_path / "sources")
    first = cache.resolve(SourceSpec("git", str(upstream), "b100"))
    # take the upstream away: anything already fetched must resolve without it
    gone = upstream.rename(tmp_path / "moved")
    assert cache.resolve(SourceSpec("git", str(upstream), "b100")).commit == first.commit
    assert cache.resolve(SourceSpec("git", str(upstream), first.commit)).commit == first.commit
    assert cache.ensure_commit(SourceSpec("git", str(upstream), "b100"), first.commit).is_dir()
    with pytest.raises(SourceError, match="b200"):
        cache.resolve(SourceSpec("git", str(upstream), "b200"))  # missing -> fetch -> upstream gone
    gone.rename(upstream)
    run_git(upstream, "tag", "b200")
    assert cache.resolve(SourceSpec("git", str(upstream), "b200")).build_number == 200


def test_branches_are_refreshed_only_when_asked(upstream: Path, tmp_path: Path) -> None:
    cache = SourceCache(tmp_path / "sources")
    before = cache.resolve(SourceSpec("git", str(upstream), "main")).commit
    (upstream / "fit.c").write_text("int main(void) { return 1; }\n")
    after = commit_all(upstream, "moved")
    assert cache.resolve(SourceSpec("git", str(upstream), "main")).commit == before
    assert cache.resolve(SourceSpec("git", str(upstream), "main"), refresh_branches=True).commit == after


def test_unknown_ref_is_a_clear_error(upstream: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError) as exc:
        SourceCache(tmp_path / "sources").resolve(SourceSpec("git", str(upstream), "b99999"))
    assert "llama_cpp.ref 'b99999'" in str(exc.value) and str(upstream) in str(exc.value)


def test_worktree_is_clean_and_replaced(upstream: Path, tmp_path: Path) -> None:
    cache = SourceCache(tmp_path / "sources")
    resolved = cache.resolve(SourceSpec("git", str(upstream), "b100"))
    git_dir = cache.ensure_commit(SourceSpec("git", str(upstream), "b100"), resolved.commit)
    tree = cache.worktree(git_dir, resolved.commit, tmp_path / "wt")
    (tree / "server.c").write_text("dirty")
    (tree / "junk.o").write_text("junk")
    tree = cache.worktree(git_dir, resolved.commit, tmp_path / "wt")
    assert (tree / "server.c").read_text() != "dirty" and not (tree / "junk.o").exists()
    assert git(["status", "--porcelain"], cwd=tree).stdout == ""


def _tarball(path: Path, tree: Path, top: str) -> Path:
    """A .tar.gz whose files belong to another uid (as release tarballs and sdists do)."""
    with tarfile.open(path, "w:gz") as tar:
        for file in sorted(tree.rglob("*")):
            info = tar.gettarinfo(str(file), arcname=f"{top}/{file.relative_to(tree)}")
            info.uid, info.gid, info.uname, info.gname = 4242, 4242, "runner", "runner"
            if file.is_file():
                tar.addfile(info, io.BytesIO(file.read_bytes()))
            else:
                tar.addfile(info)
    return path


def test_tarball_is_pinned_by_sha256_and_becomes_a_stable_commit(tmp_path: Path) -> None:
    tree = make_fake_llama(tmp_path / "tree")
    archive = _tarball(tmp_path / "llama.cpp-b123.tar.gz", tree, "llama.cpp-b123")
    a = SourceCache(tmp_path / "a").resolve(SourceSpec("tarball", f"file://{archive}"))
    b = SourceCache(tmp_path / "b").resolve(SourceSpec("tarball", str(archive), sha256=a.sha256))
    assert a.commit == b.commit and a.build_number == 123 and len(a.sha256 or "") == 64
    with pytest.raises(SourceError, match="sha256"):
        SourceCache(tmp_path / "c").resolve(SourceSpec("tarball", str(archive), sha256="0" * 64))


def test_local_directory_is_snapshotted_in_place(tmp_path: Path) -> None:
    tree = make_fake_llama(tmp_path / "llama.cpp")
    (tree / "build").mkdir()
    (tree / "build" / "huge.o").write_text("object")
    cache = SourceCache(tmp_path / "sources")
    spec = SourceSpec("path", str(tree))
    first = cache.resolve(spec)
    assert cache.resolve(spec).commit == first.commit
    git_dir = cache.git_dir(spec)
    files = git(["--git-dir", str(git_dir), "ls-tree", "-r", "--name-only", first.commit]).stdout.split()
    assert "server.c" in files and not any(f.startswith("build/") for f in files)
    assert not (tree / ".git").exists()  # nothing written into the user's directory
    (tree / "fit.c").write_text("int main(void) { return 2; }\n")
    assert cache.resolve(spec).commit != first.commit


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_tree_owned_by_another_user_is_not_dubious(tmp_path: Path) -> None:
    """git refuses repositories/work trees owned by someone else ("dubious ownership")."""
    tree = make_fake_llama(tmp_path / "theirs")
    for path in [tree, *tree.rglob("*")]:
        os.chown(path, 4242, 4242)
    spec = SourceSpec("path", str(tree))
    cache = SourceCache(tmp_path / "sources")
    resolved = cache.resolve(spec)
    git_dir = cache.ensure_commit(spec, resolved.commit)
    worktree = cache.worktree(git_dir, resolved.commit, tmp_path / "wt")
    assert (worktree / "server.c").is_file()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_local_repository_owned_by_another_user_can_be_fetched(upstream: Path, tmp_path: Path) -> None:
    for path in [upstream, *upstream.rglob("*")]:
        os.chown(path, 4242, 4242, follow_symlinks=False)
    for url in (str(upstream), f"file://{upstream}"):
        resolved = SourceCache(tmp_path / "sources" / url[:4]).resolve(SourceSpec("git", url, "b100"))
        assert resolved.build_number == 100
