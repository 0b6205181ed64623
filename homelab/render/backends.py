"""One llama-server backend per host model: its flags, environment, port and sizes.

This is the shared middle of every output: the llama-swap ``cmd``, the router preset section
and the checks against the pinned binary all come from the :class:`Backend` built here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..address import split_host_port
from ..gpuarch import runtime_env
from ..inventory.resolved import ResolvedHost, ResolvedModel
from ..inventory.schema import GPU, FlagValue
from ..llamacpp.flags import DRAFT_SIMPLE, AcceptedFlags, MtpSettings, check_flags, mtp_flags
from ..suggest import did_you_mean
from .errors import RenderError
from .inputs import PlannedModel, RenderInputs
from .ports import assign_ports

BACKEND_HOST = "127.0.0.1"
GIB = 1024**3

HEALTH_BASE_S = 60
HEALTH_PER_GIB_S = 10
HEALTH_CAP_S = 900
"""``healthCheckTimeout`` = 60 s + 10 s per GiB of weights, at most 15 minutes: a 20 GiB model
read from a slow disk at ~200 MB/s needs ~100 s, and a cold ROCm start adds its own half minute."""

MANAGED_FLAGS = {
    "model": "homelab passes the model file from the lock (set `source:` in the recipe)",
    "port": "homelab assigns each backend its port (pin one with the model entry's `port:`)",
    "host": "backends listen on 127.0.0.1 behind the supervisor (set runtime.listen instead)",
    "mmproj": "homelab passes the projector from the lock (set `source.hf.mmproj`)",
    "alias": "set `aliases:` on the recipe or host model instead",
    "spec-draft-model": "homelab passes the draft model from the lock (set `draft:` on the recipe or host model)",
    "model-draft": "homelab passes the draft model from the lock (set `draft:` on the recipe or host model)",
}
"""Flags homelab writes itself: a recipe that sets one would fight the render."""

VISIBLE_DEVICES = {"cuda": "CUDA_VISIBLE_DEVICES", "hip": "HIP_VISIBLE_DEVICES", "vulkan": "GGML_VK_VISIBLE_DEVICES"}


@dataclass(frozen=True)
class Backend:
    id: str
    model: ResolvedModel
    port: int
    flags: tuple[tuple[str, FlagValue], ...]
    """Long flag name (no dashes) -> value (``True`` for a bare switch), in command order,
    ``model``/``port``/``host`` included."""
    env: dict[str, str]
    ttl: int | None
    aliases: tuple[str, ...]
    profiles: dict[str, dict[str, Any]]
    """setParamsByID ID (``<id>:<profile>``) -> request parameters."""
    health_timeout: int
    plan: PlannedModel | None
    preload: bool
    notes: tuple[str, ...] = field(default=())
    """One-line remarks written as comments beside the model (why MTP is off, ...)."""

    @property
    def model_file(self) -> str:
        return str(dict(self.flags)["model"])

    def server_flags(self) -> list[tuple[str, FlagValue]]:
        """Flags other than the ones every backend gets (``model``, ``port``, ``host``)."""
        return [(k, v) for k, v in self.flags if k not in ("model", "port", "host")]


def health_timeout(size_bytes: int | None, override: int | None) -> int:
    if override is not None:
        return override
    gib = math.ceil((size_bytes or 0) / GIB)
    return min(HEALTH_CAP_S, HEALTH_BASE_S + HEALTH_PER_GIB_S * gib)


def _arch_env(host: ResolvedHost, used: list[GPU], what: str) -> dict[str, str]:
    """The runtime environment the cards' architectures need, from the same table the build
    targets come from (an RDNA2 card runs as gfx1030 under the override the build compiled for)."""
    try:
        return runtime_env(host.host.backend, [g.arch or "" for g in used])
    except ValueError:
        raise RenderError(
            f"{host.host_file}: {what} spans GPUs that need different HSA_OVERRIDE_GFX_VERSION values ("
            + ", ".join(f"{g.name} {g.arch}" for g in used)
            + "); pin it to GPUs of one kind with `gpus:`"
        ) from None


def host_gpu_env(host: ResolvedHost) -> dict[str, str]:
    """The environment every GPU of the host shares (router mode sets it for the whole service)."""
    return _arch_env(host, list(host.host.gpus), "router mode (one environment for all models)")


def _gpu_env(host: ResolvedHost, model: ResolvedModel) -> dict[str, str]:
    backend = host.host.backend
    gpus = host.host.gpus
    env: dict[str, str] = {}
    if model.gpus is not None:
        for index in model.gpus:
            if index < 0 or index >= len(gpus):
                raise RenderError(
                    f"{host.host_file}: model {model.id!r} uses GPU {index}, but the host lists "
                    f"{len(gpus)} GPU(s) (indices 0-{len(gpus) - 1}); fix `gpus:`"
                )
        name = VISIBLE_DEVICES.get(backend)
        if name:
            env[name] = ",".join(str(i) for i in model.gpus)
    used = [gpus[i] for i in (model.gpus if model.gpus is not None else range(len(gpus)))]
    env.update(_arch_env(host, used, f"model {model.id!r}"))
    return env


def _check_managed(host: ResolvedHost, model: ResolvedModel) -> None:
    for name in model.server:
        if name.lstrip("-") in MANAGED_FLAGS:
            where = model.recipe_file or host.host_file
            raise RenderError(
                f"{where}: model {model.id!r} (recipe {model.recipe.name}) sets server flag "
                f"{name!r}: {MANAGED_FLAGS[name.lstrip('-')]}"
            )


def check_accepted(
    inputs: RenderInputs,
    model: ResolvedModel,
    flags: Mapping[str, FlagValue],
    *,
    extra_ok: frozenset[str] = frozenset(),
) -> None:
    """Every flag name (and, with a full flag table, value) the pinned binary accepts."""
    accepted = inputs.accepted_flags
    if accepted is None:
        return
    where = model.recipe_file or inputs.host.host_file
    to_check = {k: v for k, v in flags.items() if k not in extra_ok}
    if isinstance(accepted, AcceptedFlags):
        problems = [p.message for p in check_flags(model.id, to_check, accepted, recipe_file=where)]
        # check_flags names the build from the flag table; say which recipe too
        problems = [f"{p} (recipe {model.recipe.name}, build {inputs.build})" for p in problems]
    else:
        problems = []
        for name in to_check:
            if name not in accepted:
                problems.append(
                    f"{where}: model '{model.id}' (recipe {model.recipe.name}): server flag '{name}' "
                    f"is not accepted by {inputs.build}" + did_you_mean(name, accepted, cutoff=0.75)
                )
    if problems:
        raise RenderError("; ".join(problems))


def _flags_for(inputs: RenderInputs, model: ResolvedModel, port: int) -> tuple[list[tuple[str, FlagValue]], list[str]]:
    files = inputs.model_files.get(model.id)
    if not files:
        raise RenderError(
            f"no fetched weights for model {model.id!r} of host {inputs.host.name}: "
            f"run `doit fetch host={inputs.host.name}` first"
        )
    notes: list[str] = []
    flags: list[tuple[str, FlagValue]] = [("model", str(files[0]))]
    if model.id in inputs.mmproj:
        flags.append(("mmproj", str(inputs.mmproj[model.id])))
    draft = inputs.draft.get(model.id)
    if model.draft is not None and draft is None:
        raise RenderError(
            f"no fetched draft model for model {model.id!r} of host {inputs.host.name}: "
            f"run `doit fetch host={inputs.host.name}` first"
        )
    if draft is not None:
        flags.append(("spec-draft-model", str(draft)))
    flags += [("host", BACKEND_HOST), ("port", port)]

    planned = (inputs.plan or {}).get(model.id)
    server = dict(model.server)
    if planned is not None and planned.ctx_size is not None:
        server["ctx-size"] = planned.ctx_size
    if planned is not None and planned.tensor_split:
        # the plan's split covers the RPC workers' devices too; it replaces the recipe's
        server["tensor-split"] = ",".join(_share(x) for x in planned.tensor_split)
    if model.rpc_workers:
        # first: llama-server parses flags in order, and --rpc registers the devices (RPC0,
        # RPC1...) that a later spec-draft-device, device or mmproj-device may name
        server = {"rpc": rpc_endpoints(inputs, model), **server}
        notes.append(
            "layers also on RPC workers " + ", ".join(model.rpc_workers) + " (llama.cpp RPC: unauthenticated, LAN only)"
        )
    if str(server.get("ctx-size", "")).lower() == "auto":
        del server["ctx-size"]
        notes.append("ctx-size: auto without a plan: llama-server's --fit picks the context")

    speculative: dict[str, str] = {}  # MTP flags, or the type a draft model needs
    if model.mtp is not None:
        supported = inputs.mtp_supported.get(model.id, False)
        speculative = mtp_flags(
            MtpSettings(draft_n_max=model.mtp.draft_n_max, draft_n_min=model.mtp.draft_n_min),
            has_mtp_heads=supported,
            accepted=inputs.accepted_flags if isinstance(inputs.accepted_flags, AcceptedFlags) else None,
            build_number=inputs.build_number,
        )
        if not speculative:
            # asked for and silently off would serve a slower model than the host file promises
            reason = inputs.mtp_refused.get(model.id, "the GGUF has no MTP heads")
            raise RenderError(
                f"{inputs.host.host_file}: model {model.id!r} sets `mtp:` but MTP cannot take effect: {reason}; "
                "remove `mtp:`, or use a GGUF with MTP heads (or declare a separate MTP head file as the "
                "model's `draft:`)"
            )
        # no --fit off: llama-server fits the MTP draft context together with the model
    elif draft is not None and "spec-type" not in server:
        # b11434 loads a draft given without --spec-type but never drafts with it (it infers
        # only MTP heads and DFlash/DSpark sidecars from the file)
        speculative = {"spec-type": DRAFT_SIMPLE}
    for name, value in server.items():
        if value is None or value is False:
            continue
        flags.append((name, value))
    flags += list(speculative.items())
    return flags, notes


def _share(value: float) -> str:
    """``1.0`` -> ``1``, ``0.25`` -> ``0.25``: short, and the same bytes for the same plan."""
    return f"{value:.6g}"


def rpc_endpoints(inputs: RenderInputs, model: ResolvedModel) -> str:
    """``--rpc`` value: the workers' ``address:port``, in the order the host file lists them."""
    missing = [w for w in model.rpc_workers if w not in inputs.rpc_workers]
    if missing:
        raise RenderError(
            f"{inputs.host.host_file}: model {model.id!r} uses RPC worker(s) {', '.join(missing)}, but the "
            "render inputs have no endpoint for them (assemble them with homelab.inventory.multihost.load_related)"
        )
    # llama-server lists --rpc in every build but refuses it at start without GGML_RPC
    if inputs.rpc_support is False:
        raise RenderError(
            f"{inputs.host.host_file}: model {model.id!r} uses RPC workers, but {inputs.build} was built "
            f"without RPC support (GGML_RPC): rebuild with `doit build host={inputs.host.name}` (a host whose "
            "models use rpc: builds the rpc-server target, which turns GGML_RPC on)"
        )
    return ",".join(inputs.rpc_workers[w] for w in model.rpc_workers)


def build_backends(inputs: RenderInputs) -> list[Backend]:
    host = inputs.host
    runtime = host.host.runtime
    ids = [m.id for m in host.models]
    for model_id in sorted({i for i in ids if ids.count(i) > 1}):
        raise RenderError(f"{host.host_file}: model ID {model_id!r} is used twice; give one an `id:`")
    _host, listen_port = split_host_port(runtime.listen)
    ports = assign_ports(
        [m.id for m in host.models],
        start_port=runtime.start_port,
        pinned={m.id: m.port for m in host.models},
        previous=inputs.previous_ports,
        reserved=[listen_port],
    )
    _check_names(host)
    backends = []
    for model in host.models:
        _check_managed(host, model)
        flags, notes = _flags_for(inputs, model, ports[model.id])
        check_accepted(inputs, model, dict(flags))
        env = {**host_model_env(model), **_gpu_env(host, model)}
        profiles = {
            pid: {k: v for k, v in params.items() if v is not None}
            for pid, params in sorted(model.profile_ids().items())
        }
        backends.append(
            Backend(
                id=model.id,
                model=model,
                port=ports[model.id],
                flags=tuple(flags),
                env=dict(sorted(env.items())),
                ttl=model.ttl,
                aliases=tuple(model.aliases),
                profiles=profiles,
                health_timeout=health_timeout(inputs.model_bytes.get(model.id), runtime.health_check_timeout),
                plan=(inputs.plan or {}).get(model.id),
                preload=model.preload or model.id in runtime.preload,
                notes=tuple(notes),
            )
        )
    return sorted(backends, key=lambda b: b.id)


def host_model_env(model: ResolvedModel) -> dict[str, str]:
    return {str(k): str(v) for k, v in model.env.items()}


def _check_names(host: ResolvedHost) -> None:
    """Model IDs, aliases and profile IDs are one namespace: each name means one model only."""
    owner: dict[str, tuple[str, str]] = {m.id: (m.id, "the ID") for m in host.models}
    for model in host.models:
        names = [(a, "an alias") for a in model.aliases] + [(p, "a profile ID") for p in model.profile_ids()]
        for name, kind in names:
            other = owner.setdefault(name, (model.id, kind))
            if other[0] != model.id:
                raise RenderError(
                    f"{host.host_file}: duplicate alias {name!r}: {kind} of model {model.id!r} "
                    f"(recipe {model.recipe.name}) is already {other[1]} of model {other[0]!r}; names "
                    "must be unique on a host: rename one with `aliases:` or the model's `id:`"
                )
    for preload in host.host.runtime.preload:
        if preload not in {m.id for m in host.models}:
            raise RenderError(f"{host.host_file}: runtime.preload names {preload!r}, which is not a model on this host")
