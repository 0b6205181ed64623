"""Gather a :class:`RenderInputs` from the other stages' outputs (the render stage's edge).

Where each input comes from:

- the binary, its flag table and build number: the llama.cpp stage's current build for the host
  (``homelab.llamacpp.stage.current_build``: ``bin/llama-server``, ``flags.json``,
  ``build.json``), or an explicit ``--server PATH`` (its ``--help`` is parsed then);
- weight files and sizes: the lock (``hosts/<host>.lock.json``) and the hub stage's
  ``model_files`` (first file = ``--model``; role ``mmproj`` = ``--mmproj``; role ``draft`` =
  ``--spec-draft-model``);
- VRAM and context sizes: the plan stage's ``HOMELAB_STATE/plans/<host>.json`` (optional);
- MTP heads: the GGUF header of the fetched file (``{arch}.nextn_predict_layers > 0``);
- ports of the installed generation: ``HOMELAB_STATE/hosts/<host>/current/manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_write_text, sha256_file
from ..gguf.facts import facts_from_file
from ..hub.cache import model_files
from ..inventory.multihost import PeerLink, load_related, secret_names
from ..inventory.resolved import ResolvedHost
from ..llamacpp.build import read_flags
from ..llamacpp.configure import RPC_SERVER
from ..llamacpp.flags import AcceptedFlags, mtp_unusable
from ..llamacpp.stage import current_build
from ..lock import DRAFT_ROLES, WEIGHT_ROLES, Lock, read_lock
from ..plan.stage import plan_path
from ..settings import state_dir
from .errors import RenderError
from .formats import env_file_value
from .generation import MANIFEST_NAME, installed_dir
from .inputs import PlannedModel, RenderInputs, StatePaths
from .keyfile import write_api_key_file

PACKAGE = Path(__file__).resolve().parent.parent


def homelab_source_hash() -> str:
    """One hash over homelab's own code and templates: a new supervisor means a restart."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in (".py", ".j2", ".txt") and "__pycache__" not in path.parts and path.is_file():
            # small files: read whole (sha256_file's chunked reads cost more than they save here)
            content = hashlib.sha256(path.read_bytes()).hexdigest()
            digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + content.encode())
    return digest.hexdigest()


def parse_plan(data: Mapping[str, Any]) -> dict[str, PlannedModel]:
    """The plan contract (``plans/<host>.json``) -> per-model VRAM and context."""
    planned: dict[str, PlannedModel] = {}
    for model_id, entry in (data.get("models") or {}).items():
        per_gpu = entry.get("vram_mib") or {}
        indices = sorted(int(k) for k in per_gpu)
        vram = tuple(int(per_gpu[str(i)]) if i in indices else 0 for i in range(max(indices) + 1)) if indices else ()
        planned[model_id] = PlannedModel(
            vram_mib=vram,
            total_mib=entry.get("vram_mib_total"),
            ctx_size=entry.get("ctx_size"),
            ram_mib=int(entry.get("ram_mib") or 0),
            # the plan's RPC split (whole layers per device, llama.cpp's device order)
            tensor_split=tuple(float(x) for x in entry.get("tensor_split") or ()),
        )
    return planned


def parse_rpc_reserved(data: Mapping[str, Any]) -> dict[int, int]:
    """The plan contract's ``devices.gpuN.rpc_reserved_mib`` (a worker's room kept for heads)."""
    reserved: dict[int, int] = {}
    for device, entry in (data.get("devices") or {}).items():
        if device.startswith("gpu") and device[3:].isdigit() and entry.get("rpc_reserved_mib"):
            reserved[int(device[3:])] = int(entry["rpc_reserved_mib"])
    return reserved


def _lock(host: ResolvedHost) -> Lock:
    lock = read_lock(host.lock_file)
    if lock is None:
        raise RenderError(f"{host.lock_file} does not exist: run `doit lock host={host.name}` first")
    return lock


@dataclass(frozen=True)
class LockedFiles:
    """Where the lock's files of every model are once fetched, by role."""

    weights: dict[str, tuple[Path, ...]]
    mmproj: dict[str, Path]
    draft: dict[str, Path]
    sizes: dict[str, int]
    """Bytes a backend reads at start (weights and draft): sizes its health timeout."""


def _files(host: ResolvedHost, lock: Lock) -> LockedFiles:
    paths = model_files(host, lock)
    out = LockedFiles({}, {}, {}, {})
    for model in host.models:
        pinned = lock.models[model.id]
        if (model.draft is None) != (not any(pf.role in DRAFT_ROLES for pf in pinned.files)):
            raise RenderError(
                f"{host.lock_file}: the pin of model {model.id} does not match its `draft:` "
                f"(the recipe changed since it was locked); run `homelab lock {host.name}`"
            )
        files = list(zip(paths[model.id], pinned.files, strict=True))
        out.weights[model.id] = tuple(p for p, pf in files if pf.role in WEIGHT_ROLES)
        out.sizes[model.id] = sum(pf.size for pf in pinned.files if pf.role in WEIGHT_ROLES | DRAFT_ROLES)
        for p, pf in files:
            if pf.role == "mmproj":
                out.mmproj[model.id] = p
            elif pf.role == "draft":
                out.draft[model.id] = p
    return out


def llama_cpp_facts(lock: Lock) -> dict[str, object]:
    """The lock's llama.cpp pin as the manifest records it."""
    pin = lock.llama_cpp
    if pin is None:
        return {}
    facts: dict[str, object] = {"source": pin.source, "repo": pin.repo, "ref": pin.ref, "commit": pin.commit}
    if pin.build_number is not None:
        facts["build_number"] = pin.build_number
    if pin.patches:
        facts["patches"] = [{"ref": p.ref, "sha256": p.sha256} for p in pin.patches]
    return {k: v for k, v in facts.items() if v not in (None, "")}


def model_pins(host: ResolvedHost, lock: Lock) -> dict[str, list[dict[str, object]]]:
    """Each served model's pinned files (role, where, size, sha256) from the lock."""
    return {
        m.id: [pf.model_dump(mode="json", exclude_none=True) for pf in lock.models[m.id].files]
        for m in host.models
        if m.id in lock.models
    }


def _mtp_heads(
    host: ResolvedHost,
    weights: Mapping[str, tuple[Path, ...]],
    mtp_archs: frozenset[str] | None,
    drafts: Mapping[str, Path] | None = None,
) -> tuple[dict[str, bool], dict[str, str]]:
    """Per model with ``mtp:``: whether MTP can take effect, and why not where it cannot.

    The heads are in the model's GGUF, or in a separate head file the model declares as its
    ``draft:`` (passed as ``--spec-draft-model``; llama.cpp runs ``--spec-type draft-mtp`` on
    that file's MTP block); the architecture must be one the build has an MTP graph for."""
    supported: dict[str, bool] = {}
    why_not: dict[str, str] = {}
    for model in host.models:
        if model.mtp is None:
            continue
        first = weights[model.id][0]
        if not first.is_file():
            raise RenderError(f"{first} (model {model.id}) is missing: run `doit fetch host={host.name}` first")
        head = (drafts or {}).get(model.id)
        if head is not None and not head.is_file():
            raise RenderError(f"{head} (draft of model {model.id}) is missing: run `doit fetch host={host.name}` first")
        facts = facts_from_file(head or first)
        reason = mtp_unusable(facts.architecture, facts.n_layer_nextn, mtp_archs)
        supported[model.id] = reason is None
        if reason:
            why_not[model.id] = reason
    return supported, why_not


def _build(
    host: ResolvedHost, server: Path | None
) -> tuple[Path, AcceptedFlags | None, int | None, str, str, list[str] | None]:
    """Binary, its flags, build number, label, key, the build's targets (None for ``--server``)."""
    if server is not None:
        server = server.resolve()
        if not server.is_file():
            raise RenderError(f"--server {server}: no such file")
        flags_file = server.parent.parent / "flags.json"
        accepted = AcceptedFlags.read(flags_file) if flags_file.is_file() else read_flags(server, str(server))
        return server, accepted, None, accepted.build or str(server), sha256_file(server), None
    build = current_build(host.name)
    if build is None:
        raise RenderError(f"host {host.name} has no llama-server build yet: run `doit build host={host.name}` first")
    manifest = build.manifest()
    flags = build.flags() if build.flags_file.is_file() else None
    label = (flags.build if flags and flags.build else None) or str(manifest.get("label") or build.key[:12])
    targets = list(manifest.get("targets") or [])
    return build.server, flags, manifest.get("build_number"), label, build.key, targets


def _mtp_archs(host: ResolvedHost, server: Path | None) -> frozenset[str] | None:
    """What the host's build recorded about MTP (None for ``--server`` or an older build)."""
    if server is not None or not any(m.mtp is not None for m in host.models):
        return None
    # lazily: the build stage loads GitPython, which a render without mtp: never needs
    from ..llamacpp.stage import current_build

    build = current_build(host.name)
    return build.mtp_architectures() if build is not None else None


def _executable() -> Path:
    beside = Path(sys.executable).parent / "homelab"
    if beside.is_file():
        return beside
    found = shutil.which("homelab")
    if found:
        return Path(found)
    raise RenderError("cannot find the `homelab` command for the service unit: install homelab (pip install -e .)")


def previous_ports(host: str, state: Path | None = None) -> dict[str, int]:
    try:
        manifest = json.loads((installed_dir(host, state) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}
    ports = manifest.get("ports") or {}
    return {str(k): int(v) for k, v in ports.items() if isinstance(v, int)}


def _rpc_support(targets: list[str] | None) -> bool | None:
    """Whether the build has the RPC backend (its manifest lists the rpc-server target, which
    turns GGML_RPC on); None when unknown (an explicit --server)."""
    return None if targets is None else RPC_SERVER in targets


def assemble(host: ResolvedHost, *, server: Path | None = None) -> RenderInputs:
    related = load_related(host)  # peers and RPC workers, checked against their own host files
    lock = _lock(host)
    files = _files(host, lock)
    binary, flags, build_number, label, build_key, targets = _build(host, server)
    mtp_supported, mtp_refused = _mtp_heads(host, files.weights, _mtp_archs(host, server), files.draft)
    plan_file = plan_path(host.name)
    plan_text = plan_file.read_text() if plan_file.is_file() else None
    plan_data = json.loads(plan_text) if plan_text else None
    plan = parse_plan(plan_data) if plan_data else None
    state = state_dir()
    hashes: dict[str, Any] = {
        "host": sha256_file(host.host_file),
        "recipes": {m.recipe.name: sha256_file(m.recipe_file) for m in host.models if m.recipe_file},
        "lock": sha256_file(host.lock_file),
        "patches": {p.ref: p.sha256 for p in (lock.llama_cpp.patches if lock.llama_cpp else [])},
        "build": build_key,
        "homelab": homelab_source_hash(),
    }
    if plan_text is not None:
        hashes["plan"] = hashlib.sha256(plan_text.encode()).hexdigest()
    if related.hosts:
        # a peer's models or a worker's address change what this host renders
        hashes["related_hosts"] = {name: sha256_file(h.host_file) for name, h in sorted(related.hosts.items())}
    uses_rpc = any(m.rpc_workers for m in host.models)
    inputs = RenderInputs(
        host=host,
        server_binary=binary,
        accepted_flags=flags,
        model_files=files.weights,
        mmproj=files.mmproj,
        draft=files.draft,
        model_bytes=files.sizes,
        paths=StatePaths(state, host.name),
        homelab_executable=_executable(),
        plan=plan,
        plan_json=plan_text,
        rpc_reserved_mib=parse_rpc_reserved(plan_data) if plan_data else {},
        mtp_supported=mtp_supported,
        mtp_refused=mtp_refused,
        build_number=build_number,
        build_label=label,
        llama_swap_binary=Path(found) if (found := shutil.which("llama-swap")) else None,
        previous_ports=previous_ports(host.name, state),
        input_hashes=hashes,
        peers=related.peers,
        rpc_workers=dict(related.workers),
        rpc_support=_rpc_support(targets) if uses_rpc else None,
        llama_cpp=llama_cpp_facts(lock),
        model_pins=model_pins(host, lock),
    )
    if host.host.rpc_server is not None:
        _check_rpc_binary(inputs)
    return inputs


def _check_rpc_binary(inputs: RenderInputs) -> None:
    """The rpc-server unit runs :attr:`RenderInputs.rpc_binary`: the build must have made it."""
    if not inputs.rpc_binary.is_file():
        name = inputs.host.name
        raise RenderError(
            f"{inputs.rpc_binary} is missing: host {name} has rpc_server: but its build has no rpc-server; rebuild "
            f"with `doit build host={name}` (hosts with rpc_server: build the rpc-server target)"
        )


def write_secrets(
    host: ResolvedHost,
    paths: StatePaths,
    environ: Mapping[str, str] | None = None,
    *,
    peers: tuple[PeerLink, ...] | None = None,
) -> Path | None:
    """Copy ``runtime.api_key_env`` and the peers' key variables from this environment into
    ``secrets.env`` (mode 0600). ``peers``: :attr:`RenderInputs.peers` when the caller has
    assembled them (default: loaded again from the inventory).

    Only when the variable is set here; an existing file is otherwise left alone (users may
    maintain it by hand). The file lives beside ``current``, outside every generation. Router
    mode and upstream llama-swap also get the keys as a key file (:mod:`homelab.render.keyfile`).
    """
    environ = os.environ if environ is None else environ
    write_api_key_file(host, paths, environ)
    if peers is None:
        peers = load_related(host).peers
    names = [n for n in secret_names(host, peers) if n in environ]
    if not names:
        return None
    path = paths.secrets_env
    lines: list[str] = []
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if not any(ln.startswith(f"{n}=") for n in names)]
    text = "\n".join([*lines, *(env_file_value(n, environ[n]) for n in names)]) + "\n"
    if path.is_file() and path.read_text() == text:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text, mode=0o600)
    return path
