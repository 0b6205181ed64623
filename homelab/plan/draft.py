"""A speculative draft model's share of its backend's memory, as llama.cpp b11434 places it.

``llama-server --spec-draft-model FILE`` loads a second model and a second context in the same
process (``common_base_params_to_speculative``, ``common_speculative_init_result``):

- weights: the draft's own tensors, offloaded by ``--spec-draft-ngl`` (default auto: all) onto
  ``--spec-draft-device`` (default: the main model's devices; ``none``: the CPU; local GPUs and
  the ``--rpc`` workers' ``RPC<j>`` devices by name); a draft pinned to one device runs there
  whole (layer split), else it inherits the main ``split-mode`` and ``tensor-split``;
- KV cache: the draft context holds as many cells as the main one (``llama_n_ctx`` of the
  target) with the same ``parallel`` slots and unified flag, in ``--cache-type-k-draft`` /
  ``--cache-type-v-draft`` (default f16, not the main cache's types);
- compute and output buffers of its own graph; MoE drafts honour ``--cpu-moe-draft``,
  ``--n-cpu-moe-draft`` and ``--override-tensor-draft``;
- an MTP head file (``mtp:`` with a ``draft:``) runs an MTP context: the file's weights, the KV
  of its MTP layers and a one-layer graph.

The draft lands in its own ``draft`` term on each device, so sets, ``ctx-size: auto`` and the
rendered figures all count it. A device only the draft uses adds its runtime overhead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..gguf.facts import ModelFacts
from ..suggest import closest
from .estimate import (
    CPU,
    TERM_NAMES,
    Estimate,
    EstimateError,
    RpcDevice,
    Settings,
    device_name,
    estimate,
    settings_from_flags,
)

DRAFT_FLAGS: dict[str, tuple[str, ...]] = {
    # the main-model flag a draft flag plays for the draft context -> every spelling of it
    "n-gpu-layers": ("spec-draft-ngl", "gpu-layers-draft", "n-gpu-layers-draft", "ngld"),
    "cache-type-k": ("spec-draft-type-k", "cache-type-k-draft", "ctkd"),
    "cache-type-v": ("spec-draft-type-v", "cache-type-v-draft", "ctvd"),
    "override-tensor": ("spec-draft-override-tensor", "override-tensor-draft", "otd"),
    "cpu-moe": ("spec-draft-cpu-moe", "cpu-moe-draft", "cmoed"),
    "n-cpu-moe": ("spec-draft-n-cpu-moe", "spec-draft-ncmoe", "n-cpu-moe-draft", "ncmoed"),
}
DEVICE_FLAGS = ("spec-draft-device", "device-draft", "devd")
_MTP_WITHOUT_HEADS = "MTP requested but the model has no MTP layers"


@dataclass(frozen=True)
class DraftInput:
    """What the plan knows about a model's draft before placing it."""

    facts: ModelFacts
    source: str
    """Where its metadata came from: a local path, hf://repo/path@rev, or a stand-in."""


def _flag(flags: Mapping[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        value = flags.get(name)
        if value is not None and value is not False:
            return value
    return None


@dataclass(frozen=True)
class DraftDevices:
    """The devices ``--spec-draft-device`` pins the draft to, as positions in the model's lists."""

    gpus: tuple[int, ...] = ()
    """The model's GPUs as its process numbers them (``CUDA<j>`` -> ``GPU<j>``)."""
    rpc: tuple[int, ...] = ()
    """The model's RPC devices in llama.cpp's order (``RPC<j>``: the j-th device of its ``--rpc``
    servers, each server's devices in its own order)."""


def draft_devices(
    flags: Mapping[str, Any], n_gpus: int, n_rpc: int = 0, rpc_buffers: Sequence[str] = ()
) -> DraftDevices | None:
    """Where ``--spec-draft-device`` puts the draft: None = the main model's devices (llama.cpp's
    default), no devices = none (``none``: CPU only).

    llama.cpp (b11434) names the devices ``--rpc`` registers ``RPC0``, ``RPC1``... across all its
    servers in ``--rpc`` order (``ggml_backend_rpc_add_server``); ``RPC0[host:port]`` is only the
    name of their buffers in the log, and ``parse_device_list`` refuses it (``rpc_buffers``: those
    names, for the hint)."""
    value = _flag(flags, DEVICE_FLAGS)
    if value is None:
        return None
    names = [n.strip() for n in str(value).split(",") if n.strip()]
    if names in ([], ["none"]):
        return DraftDevices()
    gpus: list[int] = []
    rpc: list[int] = []
    for name in names:
        dev = device_name(name)
        if dev == CPU:
            continue
        if name.upper().startswith("RPC"):
            # ggml matches device names whole (case-insensitively): RPC<j>, nothing after it
            if re.fullmatch(r"RPC\d+", name, re.IGNORECASE) and int(dev[3:]) < n_rpc:
                rpc.append(int(dev[3:]))
                continue
        elif dev.startswith("GPU") and int(dev[3:]) < n_gpus:
            gpus.append(int(dev[3:]))
            continue
        raise EstimateError(f"spec-draft-device {value!r}: {_not_a_device(name, n_gpus, n_rpc, rpc_buffers)}")
    return DraftDevices(tuple(gpus), tuple(rpc))


def _not_a_device(name: str, n_gpus: int, n_rpc: int, rpc_buffers: Sequence[str]) -> str:
    """Why ``name`` is none of the model's devices, with the names llama-server takes."""
    gpu_names = [f"{kind}{j}" for j in range(n_gpus) for kind in ("CUDA", "ROCm", "Vulkan")]
    rpc_names = [f"RPC{j}" for j in range(n_rpc)]
    valid = ", ".join([f"CUDA{j}/ROCm{j}/Vulkan{j}" for j in range(n_gpus)] + rpc_names) or "none"
    hint = ""
    if name in rpc_buffers:
        hint = f"; {name!r} names its buffers in the log, the device is {rpc_names[list(rpc_buffers).index(name)]!r}"
    elif near := closest(name, [*gpu_names, *rpc_names]):
        hint = f"; did you mean {near!r}?"
    return (
        f"{name!r} is not one of the model's {n_gpus} GPU(s) or {n_rpc} RPC device(s) "
        f"(as the process sees them: {valid}){hint}"
    )


def draft_settings(main: Settings, n_ctx: int, flags: Mapping[str, Any], *, head: bool) -> Settings:
    """The draft context's settings: the main ones (slots, batch, flash attention, split) with
    the draft's own offload, cache types and overrides, at the main context's size."""
    own = settings_from_flags(
        {main_name: value for main_name, names in DRAFT_FLAGS.items() if (value := _flag(flags, names)) is not None}
    )
    return replace(
        main,
        ctx_size=n_ctx,
        n_gpu_layers=own.n_gpu_layers,
        cache_type_k=own.cache_type_k,
        cache_type_v=own.cache_type_v,
        draft_type_k=own.cache_type_k,
        draft_type_v=own.cache_type_v,
        overrides=own.overrides,
        mtp=head,
        draft_n_max=0,
        mmproj_bytes=0,
    )


def with_draft(
    main: Estimate,
    draft: DraftInput,
    flags: Mapping[str, Any],
    *,
    mtp: bool,
    backend: str,
    gpus: Sequence[float],
    rpc: Sequence[RpcDevice] = (),
    labels: Mapping[str, str] | None = None,
    rpc_buffers: Sequence[str] = (),
) -> Estimate:
    """``main`` with its draft's bytes added per device (the ``draft`` term).

    ``flags``: the model's merged ``server:`` flags; ``mtp``: the model asks for MTP, so the
    draft is a head file when it has MTP layers; ``gpus``/``rpc``: as for the main estimate;
    ``labels``: how the note names each estimate device (the plan's ``gpu0``, ``cpu``,
    ``w1:gpu0``; default: the estimate's own names); ``rpc_buffers``: the RPC devices' buffer
    names (``RPC0[host:port]``), for the hint when the device flag names one."""
    head = mtp and draft.facts.has_mtp
    devices = draft_devices(flags, len(gpus) if backend != "cpu" else 0, len(rpc), rpc_buffers)
    s = draft_settings(main.settings, main.geometry.n_ctx, flags, head=head)
    if devices is None:
        used_gpus, used_rpc, rename = list(gpus), list(rpc), {}
    else:
        # pinned: only those devices (their list replaces the model's), llama.cpp's main split
        # does not apply to them. The estimate numbers them from 0, RPC first; each goes back to
        # the model's own position, so its share lands on that device of the plan. (llama.cpp
        # keeps a pinned list in the order given; a list naming a GPU before an RPC device would
        # put its layers in that order, which the estimate does not follow)
        used_gpus, used_rpc = [gpus[j] for j in devices.gpus], [rpc[j] for j in devices.rpc]
        rename = {f"RPC{k}": f"RPC{j}" for k, j in enumerate(devices.rpc)}
        rename.update({f"GPU{k}": f"GPU{j}" for k, j in enumerate(devices.gpus)})
        on_device = bool(devices.gpus or devices.rpc)
        s = replace(s, tensor_split=(), main_gpu=0, n_gpu_layers=s.n_gpu_layers if on_device else 0)
    if len(used_gpus) + len(used_rpc) == 1:
        s = replace(s, split_mode="layer", tensor_split=())
    est = estimate(draft.facts, s, backend=backend, gpus=used_gpus, rpc=used_rpc)
    devs = {d: dict(t) for d, t in main.devices.items()}
    shares: dict[str, int] = {}
    for name, terms in est.devices.items():
        dev = rename.get(name, name)
        # a head file runs only its MTP layers: its weights and the MTP context, no trunk KV
        shares[dev] = terms["weights"] + terms["mtp"] if head else terms["total"] - terms["overhead"]
        entry = devs.setdefault(dev, {t: 0 for t in TERM_NAMES})
        if dev not in main.devices:
            entry["overhead"] += terms["overhead"]
        entry["draft"] += shares[dev]
        entry["total"] = sum(entry[t] for t in TERM_NAMES)
    sums = {t: sum(d[t] for d in devs.values()) for t in TERM_NAMES}
    kind = "MTP head file" if head else "draft model"
    where = ", ".join(f"{(labels or {}).get(d, d)} {b / (1 << 20):,.0f} MiB" for d, b in shares.items() if b)
    notes = [n for n in main.notes if not (head and n.startswith(_MTP_WITHOUT_HEADS))]
    notes.append(f"{kind} {draft.source}: {where}")
    return replace(main, **sums, total=sum(sums.values()), devices=devs, notes=tuple(notes))  # type: ignore[arg-type]  # sums holds only the int term fields
