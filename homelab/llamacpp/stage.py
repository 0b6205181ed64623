"""The llama.cpp stage for one host: from the validated host and its lock to a build.

The CLI (:mod:`homelab.llamacpp.commands`) and the two stages at the end of this module
(``source`` and ``build``, which :mod:`homelab.tasks` turns into doit tasks) are thin wrappers
over these functions.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import HomelabError
from ..inventory.resolved import ResolvedHost
from ..lock import LlamaCppPin, read_lock
from ..privilege import refuse_root
from ..settings import state_dir
from ..stage import Stage, digest, read_record, tree_files, write_record
from .build import Build, Builder, BuildRequest, Planned
from .configure import (
    RPC_SERVER,
    Toolchain,
    kv_pairs_of,
    missing_tools,
    probe_toolchain,
    require_toolchain,
)
from .flags import AcceptedFlags, FlagProblem, MtpSettings, check_flags, mtp_flags
from .patches import collect
from .pin import resolve_llama_cpp, source_spec
from .source import SourceCache

log = logging.getLogger(__name__)


def builder() -> Builder:
    return Builder(state_dir())


def host_pin(host: ResolvedHost) -> tuple[LlamaCppPin, bool]:
    """The lock's llama.cpp pin, or one resolved now (not written); and whether it was locked."""
    lock = read_lock(host.lock_file)
    if lock is not None and lock.llama_cpp is not None:
        pin = lock.llama_cpp
        spec = source_spec(host.host.llama_cpp, host.inventory)
        if (pin.source, pin.repo, pin.ref) == (spec.kind, spec.location, spec.ref):
            return pin, True
        log.warning(
            "%s: llama_cpp changed since %s was written; using it unlocked (run `homelab lock %s`)",
            host.host_file,
            host.lock_file.name,
            host.name,
        )
    else:
        log.warning(
            "%s: no llama.cpp pin in %s yet; resolving %s now (run `homelab lock %s` to pin it)",
            host.name,
            host.lock_file.name,
            host.host.llama_cpp.ref,
            host.name,
        )
    return resolve_llama_cpp(host, None, update=False), False


def build_request(host: ResolvedHost, pin: LlamaCppPin, extra_targets: Iterable[str] = ()) -> BuildRequest:
    """What to build for ``host`` from ``pin``: local patch files are read as they are now
    (editing one rebuilds); pull-request patches come from the cache by their pinned sha256."""
    llama = host.host.llama_cpp
    spec = source_spec(llama, host.inventory)
    state = state_dir()
    commit = pin.commit
    if spec.kind == "path" or commit is None:
        # a local directory is built as it is now (a fresh snapshot; the same files, the same id)
        commit = SourceCache(state / "sources").resolve(spec).commit
    pinned_prs = {p.ref: p.sha256 for p in pin.patches if p.ref.startswith("pr:")}
    patches = collect(llama.patches, host.patches_dir, llama.repo, state / "patches", pinned_prs)
    locked = {p.ref: p.sha256 for p in pin.patches}
    now = {p.ref: p.sha256 for p in patches}
    stale = sorted(ref for ref in locked.keys() | now.keys() if locked.get(ref) != now.get(ref))
    if stale:
        log.info(
            "%s: patches changed since the lock (%s); run `homelab lock %s` to record them",
            host.name,
            ", ".join(stale),
            host.name,
        )
    label = f"b{pin.build_number}" if spec.kind != "git" or pin.ref == f"b{pin.build_number}" else pin.ref
    return BuildRequest(
        host=host.name,
        source=spec,
        commit=commit,
        build_number=pin.build_number or 0,
        label=label,
        backend=host.host.backend,
        patches=tuple(patches),
        gpu_archs=tuple(g.arch for g in host.host.gpus if g.arch),
        cmake_extra=dict(llama.cmake),
        kv_pairs=kv_pairs_of(m.server for m in host.models),
        targets=tuple(dict.fromkeys((*llama.targets, *rpc_targets(host), *extra_targets))),
        jobs=llama.jobs,
    )


def rpc_targets(host: ResolvedHost) -> tuple[str, ...]:
    """``rpc-server`` for an RPC worker (it runs it) and for a head whose models use workers:
    that target turns GGML_RPC on, without which llama-server refuses ``--rpc``."""
    if host.host.rpc_server is not None or any(m.rpc_workers for m in host.models):
        return (RPC_SERVER,)
    return ()


def check_toolchain(host: ResolvedHost) -> Toolchain:
    """The backend's tools; fails before anything is fetched or checked out when one is missing."""
    backend = host.host.backend
    tools = probe_toolchain(backend)
    require_toolchain(backend, tools, host.name, host.host.llama_cpp.cmake)
    return tools


def plan_build(host: ResolvedHost, extra_targets: Iterable[str] = (), *, tools: Toolchain | None = None) -> Planned:
    """The cmake plan and build key (``tools``: a toolchain probed already, checked again here)."""
    if tools is None:
        tools = check_toolchain(host)
    pin, _locked = host_pin(host)
    return builder().plan(build_request(host, pin, extra_targets), tools=tools)


def dry_run_host(host: ResolvedHost, extra_targets: Iterable[str] = ()) -> tuple[str, list[str]]:
    """The environment and cmake commands a build of ``host`` runs, and what the toolchain
    lacks (listed rather than refused: a dry run shows the commands either way)."""
    tools = probe_toolchain(host.host.backend)
    pin, _locked = host_pin(host)
    b = builder()
    planned = b.plan(build_request(host, pin, extra_targets), tools=tools, check_tools=False)
    return b.dry_run(planned), missing_tools(host.host.backend, tools, host.host.llama_cpp.cmake)


def prepare_host(host: ResolvedHost, extra_targets: Iterable[str] = ()) -> tuple[Planned, Path | None]:
    """Check out and patch (the ``source`` step). None when the build is already installed."""
    refuse_root("source", host.name, host.host.runtime.service)
    b = builder()
    planned = plan_build(host, extra_targets)
    if b.installed(planned.key):
        return planned, None
    return planned, b.prepare(planned)


def build_host(host: ResolvedHost, extra_targets: Iterable[str] = (), *, progress: bool = True) -> tuple[Build, bool]:
    refuse_root("build", host.name, host.host.runtime.service)
    tools = check_toolchain(host)
    b = builder()
    pin, _locked = host_pin(host)
    build, built = b.build(build_request(host, pin, extra_targets), progress=progress, tools=tools)
    write_stamp(host.name, build)
    return build, built


# --------------------------------------------------------------------------------------------
# The stamp file: a small target for doit and a file_dep for later stages


def stamp_path(host: str) -> Path:
    return state_dir() / "builds" / "stamps" / f"{host}.json"


def write_stamp(host: str, build: Build) -> None:
    write_record(stamp_path(host), {"key": build.key, "server": str(build.server), "flags": str(build.flags_file)})


def read_stamp(host: str) -> dict | None:
    return read_record(stamp_path(host))


def current_build(host: str) -> Build | None:
    """The build ``host`` uses now (what render/deploy should point at)."""
    return builder().current(host)


# --------------------------------------------------------------------------------------------
# Flag compatibility of a host's models with its build


def host_flag_problems(
    host: ResolvedHost,
    accepted: AcceptedFlags,
    has_mtp_heads: Mapping[str, bool] | None = None,
) -> list[FlagProblem]:
    """Every model's merged ``server`` flags (plus its MTP flags) checked against ``accepted``.

    ``has_mtp_heads`` maps model IDs to whether the GGUF has MTP heads (the gguf stage reads
    ``{arch}.nextn_predict_layers``); models missing from it get no MTP flags.
    """
    problems: list[FlagProblem] = []
    for model in host.models:
        server = dict(model.server)
        if model.mtp is not None:
            server.update(
                mtp_flags(
                    MtpSettings(model.mtp.draft_n_max, model.mtp.draft_n_min),
                    has_mtp_heads=(has_mtp_heads or {}).get(model.id, False),
                    accepted=accepted,
                )
            )
        name = f"{model.id} (recipe {model.recipe.name})" if model.recipe.name != model.id else model.id
        problems += check_flags(name, server, accepted, recipe_file=model.recipe_file)
    return problems


def require_flags(host: ResolvedHost, build: Build, has_mtp_heads: Mapping[str, bool] | None = None) -> None:
    problems = host_flag_problems(host, build.flags(), has_mtp_heads)
    if problems:
        raise HomelabError("; ".join(str(p) for p in problems))


# --------------------------------------------------------------------------------------------
# The source and build stages


def _build_key_memo(host: str) -> Path:
    return state_dir() / "hosts" / host / "build-key.json"


def build_fingerprint(host: ResolvedHost) -> str:
    """The build key: commit, patch contents, backend, cmake options, targets, toolchain. Recipe
    changes that do not reach it (context size, sampling) leave the build alone.

    Computing the key runs git on the source cache, so it is remembered in a record,
    ``hosts/<host>/build-key.json``, by a digest of what it is made from: the host, its locked
    llama.cpp pin, the patch files and the toolchain found now (a new compiler or ROCm is a new
    entry, never a stale one). A no-op deploy reads the record and runs no git.
    """
    tools = probe_toolchain(host.host.backend)
    pin, locked = host_pin(host)
    if host.host.llama_cpp.path or not locked:
        # a directory snapshot (not told by the files read here), or a pin resolved just now
        # (a branch may move): nothing to remember
        return builder().plan(build_request(host, pin), tools=tools).key
    made_of = digest(host.as_dict(), pin, tree_files(host.patches_dir), str(state_dir()), tools)
    memo = _build_key_memo(host.name)
    recorded = read_record(memo) or {}
    if recorded.get("made_of") == made_of and isinstance(recorded.get("key"), str):
        return recorded["key"]
    key = builder().plan(build_request(host, pin), tools=tools).key
    write_record(memo, {"made_of": made_of, "key": key})
    return key


def _source_in_place(host: ResolvedHost) -> bool:
    """Nothing to check out when the build for the key exists or its worktree is ready."""
    key = build_fingerprint(host)
    b = builder()
    return b.installed(key) is not None or b.prepared(key)


def _build_in_place(host: ResolvedHost) -> bool:
    key = build_fingerprint(host)
    stamp = read_stamp(host.name)
    return stamp is not None and stamp.get("key") == key and builder().installed(key) is not None


def _prepare(host: ResolvedHost) -> None:
    prepare_host(host)


def _build(host: ResolvedHost) -> None:
    build, built = build_host(host, progress=sys.stderr.isatty())
    print(f"{host.name}: llama-server {'built' if built else 'up to date'}: {build.server}")


SOURCE = Stage(
    name="source",
    doc="Check out llama.cpp at the pinned commit and apply the patch series",
    consumes=("the llama.cpp pin in <host>.lock.json", "patches/", "backend and cmake options"),
    produces="a patched worktree of llama.cpp (none when the build exists)",
    after=("lock",),
    fingerprint=build_fingerprint,
    run=_prepare,
    in_place=_source_in_place,
)

BUILD = Stage(
    name="build",
    doc="Configure and compile llama-server for the host's backend",
    consumes=("the build key (see source)",),
    produces="builds/<key>/ and the host's stamp builds/stamps/<host>.json",
    after=("source",),
    fingerprint=build_fingerprint,
    run=_build,
    target=lambda host: stamp_path(host.name),
    in_place=_build_in_place,
)
