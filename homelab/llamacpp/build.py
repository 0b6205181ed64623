"""Compile llama-server once per build key and install it atomically.

The build key is the sha256 of everything that shapes the binary: the llama.cpp commit, the
patch contents in order, the backend, the cmake ``-D`` options and configure environment, and
the targets. An existing ``HOMELAB_STATE/builds/<key>/`` means there is nothing to do.

Otherwise: a fresh worktree (``worktrees/<key16>``) gets the patch series, cmake configures and
builds inside it (``<worktree>/build``, so ccache's ``CCACHE_BASEDIR`` makes every worktree look
the same to the cache and a re-keyed build reuses the objects it can), output goes to a log
file and progress to a tqdm bar, and the binaries are copied aside and renamed into
``builds/<key>`` in one step. ``builds/current/<host>`` then points at it; earlier builds are
kept for rollback, up to a cap. After a build, ``llama-server --help`` is parsed into
``flags.json`` beside the binary (see :mod:`homelab.llamacpp.flags`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from ..errors import HomelabError
from ..files import atomic_symlink, atomic_write_text
from .configure import (
    CMAKE_FILES,
    RPC_CMAKE_FILES,
    RPC_SERVER,
    Backend,
    CMakePlan,
    Toolchain,
    cmake_target_in,
    declared_in,
    plan_cmake,
    probe_toolchain,
    require_toolchain,
)
from .flags import AcceptedFlags, mtp_architectures_in, parse_help
from .gitrepo import git
from .patches import ApplyHistory, Patch, apply_series, precheck_series
from .source import SourceCache, SourceSpec, remove_worktree

log = logging.getLogger(__name__)

KEEP_BUILDS = 5
"""Finished builds kept for rollback (those a host's ``current`` points at are always kept)."""
LOG_TAIL = 40


class BuildError(HomelabError):
    pass


@dataclass(frozen=True)
class BuildRequest:
    """Everything one build needs, resolved (the lock's commit, the patch files)."""

    host: str
    source: SourceSpec
    commit: str
    build_number: int
    label: str
    """How people name this pin in messages: ``b11434`` or the ref."""
    backend: Backend
    patches: tuple[Patch, ...] = ()
    gpu_archs: tuple[str, ...] = ()
    cmake_extra: Mapping[str, str | int | bool] = field(default_factory=dict)
    kv_pairs: frozenset[tuple[str, str]] = frozenset()
    targets: tuple[str, ...] = ()
    jobs: int | None = None


@dataclass(frozen=True)
class Build:
    """An installed build."""

    key: str
    root: Path

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def server(self) -> Path:
        return self.bin_dir / "llama-server"

    @property
    def flags_file(self) -> Path:
        return self.root / "flags.json"

    def flags(self) -> AcceptedFlags:
        return AcceptedFlags.read(self.flags_file)

    def manifest(self) -> dict:
        return json.loads((self.root / "build.json").read_text())

    def mtp_architectures(self) -> frozenset[str] | None:
        """Architectures this build runs MTP for (None: a build from before this was recorded)."""
        archs = self.manifest().get("mtp_architectures")
        return frozenset(archs) if archs else None


@dataclass(frozen=True)
class Planned:
    """A request with its cmake plan and key, computed without touching a worktree."""

    request: BuildRequest
    plan: CMakePlan
    key: str
    git_dir: Path
    tools: Toolchain


def build_key(commit: str, patch_hashes: Sequence[str], backend: str, plan: CMakePlan) -> str:
    material = {"commit": commit, "patches": list(patch_hashes), "backend": backend, **plan.key_material()}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class Builder:
    """Builds under one state directory (``HOMELAB_STATE``)."""

    def __init__(self, state: Path, *, keep: int = KEEP_BUILDS) -> None:
        self.state = state
        self.sources = SourceCache(state / "sources")
        self.builds = state / "builds"
        self.keep = keep
        self.history = ApplyHistory(state / "patches" / "applied.json")

    # ------------------------------------------------------------------------------ planning

    def plan(self, request: BuildRequest, *, tools: Toolchain | None = None, check_tools: bool = True) -> Planned:
        """The cmake plan and build key; fails first when a needed tool is missing."""
        tools = tools or probe_toolchain(request.backend)
        if check_tools:
            require_toolchain(request.backend, tools, request.host, request.cmake_extra)
        git_dir = self.sources.ensure_commit(request.source, request.commit)
        plan = plan_cmake(
            backend=request.backend,
            gpu_archs=request.gpu_archs,
            build_number=request.build_number,
            commit=request.commit,
            cmake_extra=request.cmake_extra,
            kv_pairs=request.kv_pairs,
            targets=request.targets,
            jobs=request.jobs,
            tools=tools,
            declared=_declared_at(git_dir, request.commit),
            cmake_targets=_renamed_targets_at(git_dir, request.commit, request.targets),
        )
        key = build_key(request.commit, [p.sha256 for p in request.patches], request.backend, plan)
        return Planned(request, plan, key, git_dir, tools)

    def installed(self, key: str) -> Build | None:
        build = Build(key, self.builds / key)
        return build if (build.root / "build.json").is_file() and build.server.is_file() else None

    def current(self, host: str) -> Build | None:
        link = self.builds / "current" / host
        try:
            key = os.readlink(link).rstrip("/").rsplit("/", 1)[-1]
        except OSError:
            return None
        return self.installed(key)

    # ------------------------------------------------------------------------------ building

    def build(
        self, request: BuildRequest, *, progress: bool = True, tools: Toolchain | None = None
    ) -> tuple[Build, bool]:
        """Build (or find) the binary for ``request``; returns it and whether it was built now."""
        planned = self.plan(request, tools=tools)
        done = self.installed(planned.key)
        if done is None:
            with file_lock(self.builds / f".{planned.key[:16]}.lock"):
                done = self.installed(planned.key)  # another process may have finished it meanwhile
                if done is None:
                    done = self._compile(planned, progress=progress)
                    built = True
                else:
                    built = False
        else:
            built = False
        self.set_current(request.host, done)
        self.prune()
        return done, built

    def worktree_of(self, key: str) -> Path:
        return self.state / "worktrees" / key[:16]

    def prepared(self, key: str) -> bool:
        """Whether the worktree for this build key exists with its patches applied."""
        return (self.worktree_of(key).parent / f"{key[:16]}.ready").is_file()

    def prepare(self, planned: Planned) -> Path:
        """A clean worktree of the pinned commit with the patch series applied (idempotent).

        A patch that does not apply raises :class:`~homelab.llamacpp.patches.PatchConflict`
        here, before any compiler runs.
        """
        worktree = self.worktree_of(planned.key)
        ready = worktree.parent / f"{planned.key[:16]}.ready"
        if ready.is_file() and worktree.is_dir():
            return worktree
        ready.unlink(missing_ok=True)
        request = planned.request
        precheck_series(
            planned.git_dir,
            request.patches,
            base_commit=request.commit,
            base_label=request.label,
            history=self.history,
        )
        self.sources.worktree(planned.git_dir, request.commit, worktree)
        head = apply_series(
            worktree,
            request.patches,
            base_commit=request.commit,
            base_label=request.label,
            history=self.history,
        )
        ready.write_text(json.dumps({"key": planned.key, "head": head}) + "\n")
        return worktree

    def discard_worktree(self, planned: Planned) -> None:
        worktree = self.worktree_of(planned.key)
        (worktree.parent / f"{planned.key[:16]}.ready").unlink(missing_ok=True)
        remove_worktree(planned.git_dir, worktree)

    def _compile(self, planned: Planned, *, progress: bool) -> Build:
        request, plan, key = planned.request, planned.plan, planned.key
        worktree = self.worktree_of(key)
        logs = self.state / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"build-{request.host}-{key[:16]}.log"
        for note in plan.notes:
            log.info("llama.cpp %s: %s", request.host, note)

        self.prepare(planned)
        build_dir = worktree / "build"
        env = {**os.environ, **compile_env(plan, worktree)}
        started = time.monotonic()
        with log_path.open("w") as log_file:
            log_file.write(f"# homelab build {key} for {request.host} ({request.label}, {request.commit})\n")
            for note in plan.notes:
                log_file.write(f"# note: {note}\n")
            _run_logged(plan.configure_command(worktree, build_dir), env, log_file, log_path, "configure", None)
            bar = _Progress(f"building llama.cpp {request.label} for {request.host}", progress)
            try:
                _run_logged(plan.build_command(build_dir), env, log_file, log_path, "build", bar)
            finally:
                bar.close()
        seconds = time.monotonic() - started
        build = self._install(planned, build_dir, log_path, seconds)
        self.discard_worktree(planned)  # hundreds of MB; ccache keeps what a rebuild needs
        return build

    def dry_run(self, planned: Planned) -> str:
        """What :meth:`build` would run for ``planned``: environment and cmake commands."""
        worktree = self.worktree_of(planned.key)
        env = compile_env(planned.plan, worktree)
        head = [
            f"# llama.cpp {planned.request.label} ({planned.request.commit[:12]}) for {planned.request.host}, "
            f"key {planned.key[:12]}; source checked out to {worktree}",
        ]
        plan = planned.plan
        shown = dataclasses.replace(plan, env=env)
        return "\n".join([*head, shown.dry_run(worktree, worktree / "build")])

    def _install(self, planned: Planned, build_dir: Path, log_path: Path, seconds: float) -> Build:
        request, plan, key = planned.request, planned.plan, planned.key
        final = self.builds / key
        tmp = self.builds / f".tmp-{key[:16]}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "bin").mkdir(parents=True)
        out = build_dir / "bin"
        for target in plan.targets:
            built = out / plan.cmake_target(target)
            if not built.is_file():
                raise BuildError(f"the build finished but {built} is missing; see {log_path}")
            shutil.copy2(built, tmp / "bin" / target)
        for item in out.iterdir():
            # shared libraries, when the host turned BUILD_SHARED_LIBS on
            if ".so" in item.name or item.suffix == ".dylib":
                shutil.copy2(item, tmp / "bin" / item.name)
        shutil.copy2(log_path, tmp / "build.log")
        label = f"{request.label} (commit {request.commit[:7]}, key {key[:12]})"
        flags = read_flags(tmp / "bin" / "llama-server", label)
        flags.write(tmp / "flags.json")
        manifest = {
            "key": key,
            "host": request.host,
            "label": request.label,
            "source": request.source.describe(),
            "commit": request.commit,
            "build_number": request.build_number,
            "patches": [{"ref": p.ref, "sha256": p.sha256} for p in request.patches],
            "backend": request.backend,
            "cmake": plan.configure_command(Path("<src>"), Path("<build>")),
            "env": plan.env,
            "targets": list(plan.targets),
            # the patched tree's own answer to "which architectures can run MTP" (render asks it)
            "mtp_architectures": sorted(mtp_architectures_in(build_dir.parent) or ()),
            "seconds": round(seconds, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / "build.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            if self.installed(key) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # an identical build landed first
        return Build(key, final)

    # ------------------------------------------------------------------------ pointers, pruning

    def set_current(self, host: str, build: Build) -> None:
        pointers = self.builds / "current"
        pointers.mkdir(parents=True, exist_ok=True)
        link = pointers / host
        target = f"../{build.key}"
        with contextlib.suppress(OSError):
            if os.readlink(link) == target:
                return
        atomic_symlink(link, target)

    def prune(self) -> list[str]:
        """Remove the oldest builds beyond the cap; never one a host's ``current`` points at."""
        if not self.builds.is_dir():
            return []
        in_use = set()
        pointers = self.builds / "current"
        if pointers.is_dir():
            for link in pointers.iterdir():
                with contextlib.suppress(OSError):
                    in_use.add(os.readlink(link).rstrip("/").rsplit("/", 1)[-1])
        finished = [
            p for p in self.builds.iterdir() if re.fullmatch(r"[0-9a-f]{64}", p.name) and (p / "build.json").is_file()
        ]
        finished.sort(key=lambda p: (p / "build.json").stat().st_mtime, reverse=True)
        removed = []
        for old in finished[self.keep :]:
            if old.name in in_use:
                continue
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old.name)
        return removed


# ------------------------------------------------------------------------------------ helpers


def compile_env(plan: CMakePlan, worktree: Path) -> dict[str, str]:
    """What configure and build get on top of the caller's environment."""
    return {
        **plan.env,
        # every worktree looks the same to ccache: paths below it are hashed relative
        "CCACHE_BASEDIR": str(worktree),
        "CCACHE_NOHASHDIR": "1",
    }


def _read_cache(cache: Path) -> object | None:
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        return None


def _write_cache(cache: Path, value: object) -> None:
    """Facts of a commit's tree never change: kept beside the git dir (atomically), so a no-op
    build check (doit's uptodate) runs no git."""
    cache.parent.mkdir(exist_ok=True)
    atomic_write_text(cache, json.dumps(value))


def _declared_at(git_dir: Path, commit: str) -> frozenset[str] | None:
    """The cmake options the pinned tree declares, read from git without a checkout (cached)."""
    cache = git_dir / "homelab-options" / f"{commit}.json"
    cached = _read_cache(cache)
    if cached is not None:
        return frozenset(cast("list[str]", cached))  # the cache holds a JSON list of names
    texts = []
    for rel in CMAKE_FILES:
        result = git(["--git-dir", str(git_dir), "show", f"{commit}:{rel}"], check=False, safe=[git_dir])
        if result.ok:
            texts.append(result.stdout)
    if not texts:
        return None
    declared = declared_in(texts)
    _write_cache(cache, sorted(declared))
    return declared


def _renamed_targets_at(git_dir: Path, commit: str, targets: tuple[str, ...]) -> dict[str, str]:
    """Our program names -> the pinned tree's cmake targets, where a tree renamed one (cached
    like :func:`_declared_at`)."""
    if RPC_SERVER not in targets:
        return {}
    cache = git_dir / "homelab-options" / f"{commit}.{RPC_SERVER}.json"
    cached = _read_cache(cache)
    if isinstance(cached, dict):
        return cached
    for rel in RPC_CMAKE_FILES:
        result = git(["--git-dir", str(git_dir), "show", f"{commit}:{rel}"], check=False, safe=[git_dir])
        if result.ok and (name := cmake_target_in(result.stdout)):
            _write_cache(cache, {RPC_SERVER: name})
            return {RPC_SERVER: name}
    return {}


def read_flags(server: Path, label: str) -> AcceptedFlags:
    """Run ``llama-server --help`` and parse the flags it accepts."""
    try:
        result = subprocess.run([str(server), "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{server} --help failed to run ({exc}); the build is unusable") from None
    text = result.stdout + result.stderr
    flags = parse_help(text, label)
    if not flags.flags:
        raise BuildError(f"{server} --help printed no flags (exit {result.returncode}): {text.strip()[-300:]}")
    return flags


_PERCENT = re.compile(r"^\[\s*(\d+)%\]")
_STEPS = re.compile(r"^\[(\d+)/(\d+)\]")


def parse_progress(line: str) -> tuple[int, int] | None:
    """``[ 45%] Building ...`` (make) -> (45, 100); ``[12/345] ...`` (ninja) -> (12, 345)."""
    if m := _STEPS.match(line):
        return int(m[1]), int(m[2])
    if m := _PERCENT.match(line):
        return int(m[1]), 100
    return None


class _Progress:
    def __init__(self, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            return
        if self.bar.total != total:
            self.bar.total = total
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_logged(
    cmd: list[str], env: Mapping[str, str], log_file, log_path: Path, step: str, bar: _Progress | None
) -> None:
    log_file.write(f"$ {' '.join(cmd)}\n")
    log_file.flush()
    proc = subprocess.Popen(
        cmd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        log_file.write(line)
        if bar is not None and (p := parse_progress(line)):
            bar.update(*p)
    code = proc.wait()
    log_file.flush()
    if code != 0:
        raise BuildError(
            f"llama.cpp {step} failed (exit {code}); last lines of {log_path}:\n{tail(log_path)}\nfull log: {log_path}"
        )


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock held across processes (concurrent builders of one key build once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
