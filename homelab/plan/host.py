"""The VRAM plan of one host: every model alone and every resident set against the budget.

Pure: it takes the resolved host and a way to get each model's facts, and returns a
:class:`HostPlan` (written as ``$HOMELAB_STATE/plans/<host>.json``, the contract the renderer and
the supervisor read). ``ctx-size: auto`` (or ``max``) is chosen here: the largest context with
which the model fits alone and in every set alternative it belongs to (the tightest wins; auto
models sharing an alternative split its free room evenly).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import HomelabError
from ..gguf.facts import ModelFacts
from ..gpuarch import device_name
from ..inventory.resolved import ResolvedHost, ResolvedModel
from ..matrix import expand_sets
from .draft import DraftInput, with_draft
from .estimate import (
    CPU,
    EXPS_REGEX,
    MIB,
    Estimate,
    EstimateError,
    Override,
    RpcDevice,
    Settings,
    estimate,
    settings_from_flags,
)
from .rpc import (
    Kept,
    RemoteDevice,
    Reservation,
    RpcPlanError,
    Worker,
    balance_layers,
    model_rpc_devices,
    proportional_layers,
)

AUTO_CTX = ("auto", "max")
MIN_CTX = 256
DEFAULT_CTX_CAP = 262144
"""Upper bound for ``ctx-size: auto`` when the model does not state its training context."""


class PlanError(HomelabError):
    pass


@dataclass(frozen=True)
class ModelInput:
    """What the plan knows about one model before choosing anything."""

    model: ResolvedModel
    facts: ModelFacts
    mmproj_bytes: int = 0
    source: str = ""
    """Where the metadata came from: a local path, hf://repo/path@rev, or a stand-in."""
    rpc: tuple[RemoteDevice, ...] = ()
    """The devices of the model's RPC workers, in llama.cpp's order (see :mod:`.rpc`)."""
    draft: DraftInput | None = None
    """The model's ``draft:`` (speculative draft model or MTP head file), counted on its devices."""


@dataclass
class ModelPlan:
    id: str
    ctx_size: int
    ctx_auto: bool
    estimate: Estimate
    gpu_index: dict[str, int | str]
    """Estimate device name (GPU0, GPU1 as the process sees them) -> host GPU index; RPC<j> ->
    the worker device's plan name (``w1:gpu0``)."""
    source: str
    fits_alone: bool = True
    rpc: tuple[RemoteDevice, ...] = ()
    tensor_split: tuple[int, ...] = ()
    """The split the plan chose (whole layers per device, llama.cpp's device order); empty when
    the model has no RPC workers or its recipe sets ``tensor-split`` itself."""

    def split(self) -> list[dict[str, Any]]:
        """Per model device (llama.cpp's order): where it is, which layers, MiB on it."""
        if not self.rpc:
            return []
        layers = self.estimate.layer_devices
        n_all = len(layers) - 1
        devices = self.estimate.devices
        out = []
        for name in [f"RPC{j}" for j in range(len(self.rpc))] + sorted(
            (d for d in self.gpu_index if d.startswith("GPU")), key=lambda d: int(d[3:])
        ):
            mine = [il for il, d in enumerate(layers) if d == name]
            entry: dict[str, Any] = {
                "device": name,
                "host_device": host_device(name, self.gpu_index),
                "layers": _layer_text(mine, n_all),
                "n_layers": len(mine),
                "mib": _mib(devices.get(name, {}).get("total", 0)),
            }
            if name.startswith("RPC"):
                remote = self.rpc[int(name[3:])]
                entry["endpoint"] = remote.endpoint
                entry["buffer"] = remote.buffer_name
            out.append(entry)
        return out

    def host_devices(self) -> dict[str, dict[str, int]]:
        """The estimate's devices renamed to host devices (``gpu<i>`` / ``cpu``)."""
        out: dict[str, dict[str, int]] = {}
        for dev, terms in self.estimate.devices.items():
            out[host_device(dev, self.gpu_index)] = terms
        return out


def host_device(dev: str, gpu_index: Mapping[str, int | str]) -> str:
    if dev == CPU:
        return "cpu"
    where = gpu_index.get(dev, dev[3:])
    return where if isinstance(where, str) and not where.isdigit() else f"gpu{where}"


def _layer_text(layers: Sequence[int], n_all: int) -> str:
    """``0-4``, ``5-6, output``: a device's layers as people read them (n_all = the output layer)."""
    if not layers:
        return "-"
    parts: list[str] = []
    trunk = [il for il in layers if il < n_all]
    if trunk:
        runs: list[tuple[int, int]] = []
        for il in trunk:
            if runs and il == runs[-1][1] + 1:
                runs[-1] = (runs[-1][0], il)
            else:
                runs.append((il, il))
        parts += [f"{a}-{b}" if a != b else f"{a}" for a, b in runs]
    if n_all in layers:
        parts.append("output")
    return ", ".join(parts)


@dataclass
class SetCheck:
    set_name: str
    models: tuple[str, ...]
    used: dict[str, int]
    """Host device -> bytes (this host's models)."""
    budget: dict[str, int]
    fits: bool
    reserved: dict[str, int] = field(default_factory=dict)
    """Host device -> bytes kept free for heads' RPC load (a worker host; see :mod:`.rpcload`):
    the set fits when used + reserved <= budget."""


@dataclass
class HostPlan:
    host: str
    backend: str
    budget: dict[str, int]
    """Host device (gpu0.., cpu when budgeted) -> bytes the plan may fill."""
    device_names: dict[str, str]
    models: dict[str, ModelPlan]
    sets: list[SetCheck]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reserved: dict[str, Reservation] = field(default_factory=dict)
    """This host as an RPC worker: host device -> the heads' load kept free there."""
    kept: dict[str, Kept] = field(default_factory=dict)
    """This host as a head: remote device (``w1:gpu0``) -> what the worker keeps for its own
    models (already taken off :attr:`budget`)."""

    @property
    def fits(self) -> bool:
        return not self.problems

    def available(self) -> dict[str, int]:
        """Per device, what this host's models may fill: the budget less the heads' RPC load."""
        return {d: b - (self.reserved[d].bytes if d in self.reserved else 0) for d, b in self.budget.items()}

    def limit_notes(self) -> dict[str, str]:
        """Why a device's limit is less than its budget, for problem texts (no double counting:
        each side names only what the other side puts there)."""
        out: dict[str, str] = {}
        for d, r in self.reserved.items():
            if d in self.budget:
                out[d] = f"{_mib_down(self.budget[d]):,} MiB budget less {_mib(r.bytes):,} MiB RPC load of {r.text()}"
        for d, k in self.kept.items():
            if d in self.budget:
                worker = d.split(":", 1)[0]
                out[d] = (
                    f"{_mib_down(self.budget[d] + k.bytes):,} MiB budget less {_mib(k.bytes):,} MiB kept for "
                    f"{worker}'s own {k.group}"
                )
        return out

    def llama_cpp_device(self, d: str) -> str | None:
        """llama.cpp's name of this host's device ``d`` with every card visible (``gpu1`` ->
        ``CUDA1``, ``cpu`` -> ``CPU``): the name the rendered config's ``x-devices`` and
        ``x-deviceBudgetMiB`` use. None for a remote device (``w1:gpu0``)."""
        if d == "cpu":
            return "CPU"
        if d.startswith("gpu") and d[3:].isdigit():
            return device_name(self.backend, int(d[3:]))
        return None

    def labels(self) -> dict[str, str]:
        """Problem texts name a local GPU by card and llama.cpp device: ``gpu0 (RTX 3060, CUDA0)``."""
        return {
            d: f"{d} ({self.device_names.get(d, d)}, {self.llama_cpp_device(d)})"
            for d in self.budget
            if d.startswith("gpu") and d[3:].isdigit()
        }

    def device_json(self, d: str, b: int) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.device_names.get(d, d), "budget_mib": b // MIB}
        if (llama_cpp := self.llama_cpp_device(d)) is not None:
            entry["llama_cpp"] = llama_cpp
        if d in self.reserved:
            r = self.reserved[d]
            entry["rpc_reserved_mib"] = _mib(r.bytes)
            entry["rpc_reserved_for"] = [
                {"head": h.head, "group": h.group, "models": list(h.models), "mib": _mib(h.bytes)} for h in r.loads
            ]
            entry["available_mib"] = (b - r.bytes) // MIB  # as problem texts say "left"
        if d in self.kept:
            k = self.kept[d]
            entry["kept_mib"] = _mib(k.bytes)
            entry["kept_for"] = k.group
        return entry

    def to_json(self) -> dict[str, Any]:
        """The plan contract (``plans/<host>.json``)."""
        models: dict[str, Any] = {}
        for mid, mp in self.models.items():
            devices = mp.host_devices()
            vram = {d.removeprefix("gpu"): _mib(t["total"]) for d, t in devices.items() if d.startswith("gpu")}
            models[mid] = {
                "ctx_size": mp.ctx_size,
                "ctx_auto": mp.ctx_auto,
                "vram_mib": vram,
                "vram_mib_total": sum(vram.values()),
                "ram_mib": _mib(devices.get("cpu", {}).get("total", 0)),
                "rpc_mib": {d: _mib(t["total"]) for d, t in devices.items() if ":" in d},
                "tensor_split": list(mp.tensor_split),
                "split": mp.split(),
                "terms": {k: v for k, v in mp.estimate.as_dict().items() if k not in ("devices", "geometry", "notes")},
                "devices": devices,
                "geometry": mp.estimate.as_dict()["geometry"],
                "fits_alone": mp.fits_alone,
                "source": mp.source,
                "notes": list(mp.estimate.notes),
            }
        return {
            "version": 1,
            "host": self.host,
            "backend": self.backend,
            "fits": self.fits,
            "devices": {d: self.device_json(d, b) for d, b in self.budget.items()},
            "models": models,
            "sets": [
                {
                    "set": c.set_name,
                    "models": list(c.models),
                    "used_mib": {d: _mib(v) for d, v in c.used.items()},
                    "budget_mib": {d: v // MIB for d, v in c.budget.items()},
                    "rpc_reserved_mib": {d: _mib(v) for d, v in c.reserved.items()},
                    "headroom_mib": {
                        d: c.budget[d] // MIB - _mib(c.used.get(d, 0)) - _mib(c.reserved.get(d, 0)) for d in c.budget
                    },
                    "fits": c.fits,
                }
                for c in self.sets
            ],
            "problems": self.problems,
            "notes": self.notes,
        }


def _mib(n: int) -> int:
    """Bytes as MiB, rounded up (a plan must never under-state use; budgets round down)."""
    return -(-n // MIB)


def _mib_down(n: int) -> int:
    return n // MIB


# --------------------------------------------------------------------------- budgets


def host_budget(host: ResolvedHost) -> tuple[dict[str, int], dict[str, str]]:
    h = host.host
    budget: dict[str, int] = {}
    names: dict[str, str] = {}
    if h.backend != "cpu":
        for i, gpu in enumerate(h.gpus):
            budget[f"gpu{i}"] = int(gpu.vram_mib * MIB * h.vram_budget)
            names[f"gpu{i}"] = gpu.name
    if h.ram_mib:
        budget["cpu"] = int(h.ram_mib * MIB * (h.vram_budget if h.backend == "cpu" else 1.0))
        names["cpu"] = "system RAM"
    return budget, names


def model_gpus(host: ResolvedHost, model: ResolvedModel) -> list[int]:
    """Host GPU indices the model's process uses, in llama.cpp's order: the ones ``gpus:`` makes
    visible (all by default), narrowed and ordered by a ``device`` (``-dev``) server flag."""
    if host.host.backend == "cpu":
        return []
    indices = list(model.gpus) if model.gpus is not None else list(range(len(host.host.gpus)))
    for i in indices:
        if i >= len(host.host.gpus):
            raise PlanError(
                f"{host.host_file}: model {model.id} uses gpus: [{i}] but the host lists "
                f"{len(host.host.gpus)} GPU(s) (indices start at 0)"
            )
    chosen = device_flag(model)
    return indices if chosen is None else [indices[j] for j in _device_indices(host, model, chosen, len(indices))]


def device_flag(model: ResolvedModel) -> list[str] | None:
    """The ``device``/``dev`` server flag as a list of llama.cpp device names, or None."""
    for name, value in model.server.items():
        if name.lstrip("-") in ("device", "dev") and value not in (None, False):
            return [part.strip() for part in str(value).split(",") if part.strip()]
    return None


def _device_indices(host: ResolvedHost, model: ResolvedModel, names: Sequence[str], n_visible: int) -> list[int]:
    """``--device CUDA1,CUDA0`` -> [1, 0]: positions among the GPUs the process sees (``gpus:``
    sets ``CUDA_VISIBLE_DEVICES``, so inside the process they are numbered from 0)."""
    if names == ["none"]:
        return []
    backend = host.host.backend
    seen = [device_name(backend, j) for j in range(n_visible)]
    out: list[int] = []
    for name in names:
        if name not in seen:
            raise PlanError(
                f"{host.host_file}: model {model.id}: server flag device {name!r} is not a device its process sees "
                f"({', '.join(seen)}, or none"
                + (f"; with gpus: {list(model.gpus)} they are numbered from 0" if model.gpus is not None else "")
                + ")"
            )
        out.append(seen.index(name))
    return out


# --------------------------------------------------------------------------- estimates


def is_auto_ctx(model: ResolvedModel) -> bool:
    """``ctx-size: auto|max``, and also no ctx-size at all (or 0): llama-server would then fit the
    context to the free memory at start, so the plan chooses it instead, against the budget."""
    value = model.server.get("ctx-size")
    return value in (None, False, 0, "0") or str(value).lower() in AUTO_CTX


def model_settings(inp: ModelInput, ctx: int | None = None) -> Settings:
    mtp = inp.model.mtp
    s = settings_from_flags(
        inp.model.server,
        mtp=mtp is not None,
        draft_n_max=mtp.draft_n_max if mtp is not None else None,
        mmproj_bytes=inp.mmproj_bytes,
    )
    return replace(s, ctx_size=ctx) if ctx is not None else s


def estimate_for(host: ResolvedHost, inp: ModelInput, settings: Settings) -> tuple[Estimate, dict[str, int | str]]:
    """One model's estimate with ``settings``. A model with RPC workers and no ``tensor-split``
    of its own gets the plan's split (:func:`choose_split`)."""
    gpus = model_gpus(host, inp.model)
    sizes = [float(host.host.gpus[i].vram_mib) for i in gpus]
    rpc = [d.as_estimate_device() for d in inp.rpc]
    index = device_index(host, inp)
    if inp.rpc:
        n_devices = len(rpc) + len(gpus)
        if len(settings.tensor_split) > n_devices:
            raise PlanError(
                f"model {inp.model.id}: tensor-split has {len(settings.tensor_split)} values but the model has "
                f"{n_devices} devices ({', '.join(_device_list(index))}); with rpc: the RPC devices come first"
            )
        if not settings.tensor_split:
            settings = replace(settings, tensor_split=choose_split(host, inp, settings, index))
    if inp.model.draft is not None and inp.draft is None:
        raise PlanError(f"model {inp.model.id}: its draft model's facts were not read (a bug: see plan.sources)")
    try:
        est = _model_estimate(host, inp, settings, sizes, rpc, index)
    except EstimateError as exc:
        raise PlanError(f"model {inp.model.id}: {exc}") from None
    return est, index


def _model_estimate(
    host: ResolvedHost,
    inp: ModelInput,
    settings: Settings,
    sizes: Sequence[float],
    rpc: Sequence[RpcDevice],
    index: Mapping[str, int | str],
) -> Estimate:
    """The model's estimate with its draft (if any) on the devices the draft flags give it; the
    draft's note names devices as the rest of the plan does (``gpu0``, ``cpu``, ``w1:gpu0``)."""
    est = estimate(inp.facts, settings, backend=host.host.backend, gpus=sizes, rpc=rpc)
    if inp.draft is None:
        return est
    labels = {d: host_device(d, index) for d in [CPU, *index]}
    return with_draft(
        est, inp.draft, inp.model.server, mtp=inp.model.mtp is not None, backend=host.host.backend, gpus=sizes,
        rpc=rpc, labels=labels, rpc_buffers=[d.buffer_name for d in inp.rpc],
    )  # fmt: skip


def device_index(host: ResolvedHost, inp: ModelInput) -> dict[str, int | str]:
    """Estimate device (RPC<j>, GPU<j> as the process sees them) -> host GPU index or worker device."""
    index: dict[str, int | str] = {f"RPC{j}": d.key for j, d in enumerate(inp.rpc)}
    index.update({f"GPU{j}": i for j, i in enumerate(model_gpus(host, inp.model))})
    return index


def _device_list(index: Mapping[str, int | str]) -> list[str]:
    return [f"{d} = {host_device(d, index)}" for d in index]


def device_budgets(host: ResolvedHost, inp: ModelInput) -> dict[str, int]:
    """Budget (bytes) of every device the model may use: the host's, and its RPC workers'."""
    budget, _ = host_budget(host)
    budget.update({d.key: d.budget for d in inp.rpc})
    return budget


def choose_split(
    host: ResolvedHost, inp: ModelInput, settings: Settings, index: Mapping[str, int | str]
) -> tuple[float, ...]:
    """Whole offloaded layers per model device (llama.cpp's order: RPC devices, then GPUs).

    Start in proportion to each device's budget, then move single layers from a device over
    its budget to the one with the most room while that lowers the worst overuse (fixed costs,
    compute buffers and runtime overhead, are not proportional to layers). The draft model
    counts where its flags put it (pinned by ``spec-draft-device`` to a local GPU or an RPC
    device, or split with the main model), so the split leaves room for it."""
    gpus = model_gpus(host, inp.model)
    sizes = [float(host.host.gpus[i].vram_mib) for i in gpus]
    rpc = [d.as_estimate_device() for d in inp.rpc]
    budget = device_budgets(host, inp)
    order = [f"RPC{j}" for j in range(len(rpc))] + [f"GPU{j}" for j in range(len(gpus))]
    keys = [host_device(d, index) for d in order]
    n_all = inp.facts.n_layer_all
    n_offload = min(max(settings.n_gpu_layers, 0), n_all + 1)
    weights = [float(budget.get(k, 0)) for k in keys]
    start = proportional_layers(n_offload, weights)

    def overuse(counts: Sequence[int]) -> list[float]:
        trial = replace(settings, tensor_split=tuple(float(c) for c in counts) if any(counts) else ())
        try:
            est = _model_estimate(host, inp, trial, sizes, rpc, index)
        except EstimateError:
            return [0.0] * len(counts)  # reported by the caller's own estimate
        used = {d: t["total"] for d, t in est.devices.items()}
        return [
            float(used.get(d, 0) - budget.get(k, 0)) if k in budget else 0.0 for d, k in zip(order, keys, strict=False)
        ]

    counts = balance_layers(start, overuse)
    return tuple(float(c) for c in counts)


def usage(est: Estimate, gpu_index: Mapping[str, int | str]) -> dict[str, int]:
    """Bytes per host device. This host's own devices are rounded up to whole MiB: the rendered
    config carries whole MiB per model and device (``x-devices``), so the plan checks the figures
    the supervisor admits by, and they agree on every set. RPC devices (``w1:gpu0``) stay exact:
    the worker adds up the heads' loads in bytes."""
    out: dict[str, int] = {}
    for d, t in est.devices.items():
        name = host_device(d, gpu_index)
        out[name] = t["total"] if ":" in name else _mib(t["total"]) * MIB
    return out


def over(used: Mapping[str, int], limits: Mapping[str, int]) -> dict[str, int]:
    """Devices (with a limit) where ``used`` exceeds it, and by how much."""
    return {d: used.get(d, 0) - lim for d, lim in limits.items() if used.get(d, 0) > lim}


def ctx_cap(facts: ModelFacts, settings: Settings) -> int:
    cap = facts.context_length or DEFAULT_CTX_CAP
    if not settings.kv_unified:
        cap *= max(1, settings.parallel)  # each of the parallel slots gets ctx / parallel
    return max(MIN_CTX, cap // 256 * 256)


def largest_fitting(fits: Callable[[int], bool], low: int, high: int, step: int = 1) -> int | None:
    """The largest value in [low, high] (multiples of ``step``) for which ``fits`` holds; monotone."""
    lo, hi = low // step, high // step
    if lo > hi or not fits(lo * step):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid * step):
            lo = mid
        else:
            hi = mid - 1
    return lo * step


def largest_ctx(
    host: ResolvedHost, inp: ModelInput, limits: Mapping[str, int], base: Settings | None = None
) -> int | None:
    """The largest ctx-size (a multiple of 256) whose estimate stays within ``limits``."""
    settings = base or model_settings(inp)

    def fits(ctx: int) -> bool:
        est, idx = estimate_for(host, inp, replace(settings, ctx_size=ctx))
        return not over(usage(est, idx), limits)

    return largest_fitting(fits, MIN_CTX, ctx_cap(inp.facts, settings), 256)


# --------------------------------------------------------------------------- the plan


def _alternatives(host: ResolvedHost) -> list[tuple[str, tuple[str, ...]]]:
    if not host.sets:
        return []

    expanded = expand_sets(host.sets)
    known = {m.id for m in host.models}
    out: list[tuple[str, tuple[str, ...]]] = []
    for name, alternatives in expanded.items():
        for alt in alternatives:
            ids = tuple(sorted({n.split(":", 1)[0] for n in alt}))
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise PlanError(
                    f"{host.host_file}: set {name!r} names {', '.join(unknown)}, not a model of this host "
                    f"(models: {', '.join(sorted(known))})"
                )
            out.append((name, ids))
    return out


def plan_host(
    host: ResolvedHost,
    inputs: Mapping[str, ModelInput],
    workers: Mapping[str, Worker] | None = None,
    reserved: Mapping[str, Reservation] | None = None,
) -> HostPlan:
    """Plan every model and set. ``inputs`` maps model ID -> its facts (see :mod:`.sources`);
    ``workers``: the RPC worker hosts models name in ``rpc:`` (see :func:`.rpc.load_workers`);
    ``reserved``: this host as an RPC worker, per host device the heads' load to keep free
    (:func:`.rpcload.rpc_reservations`): its own models and sets get the budget less that."""
    budget, names = host_budget(host)
    kept: dict[str, Kept] = {}
    inputs = dict(inputs)
    for m in host.models:
        if m.rpc_workers and not inputs[m.id].rpc:
            if workers is None:
                raise PlanError(
                    f"{host.host_file}: model {m.id} uses RPC workers ({', '.join(m.rpc_workers)}) and the plan "
                    "was not given their host files"
                )
            try:
                inputs[m.id] = replace(inputs[m.id], rpc=model_rpc_devices(host, m, workers))
            except RpcPlanError as exc:
                raise PlanError(str(exc)) from None
        for rd in inputs[m.id].rpc:
            budget[rd.key] = rd.budget
            names[rd.key] = f"{rd.name} on {rd.host} (rpc {rd.endpoint})"
            if rd.kept is not None:
                kept[rd.key] = rd.kept
    alternatives = _alternatives(host)
    in_sets = {mid for _, ids in alternatives for mid in ids}
    plan = HostPlan(
        host=host.name,
        backend=host.host.backend,
        budget=budget,
        device_names=names,
        models={},
        sets=[],
        reserved={d: r for d, r in (reserved or {}).items() if r.loads and d in budget},
        kept=kept,
    )
    for d, r in (reserved or {}).items():
        if r.loads and d not in budget:
            plan.notes.append(f"RPC load of {r.text()} on {d}, which this host's plan does not budget (not checked)")
    # what this host's own models may fill: the budget less what heads put here over RPC
    limits = plan.available()
    _check_reserved(host, plan)
    if not budget:
        plan.notes.append(
            "no budget to check: the host has no GPUs and no ram_mib; the numbers are a report only "
            "(set ram_mib in the host file to check system memory)"
        )

    # 1. fixed-context models first, auto models at the smallest context for now
    current: dict[str, Estimate] = {}
    gpu_idx: dict[str, dict[str, int | str]] = {}
    for m in host.models:
        inp = inputs[m.id]
        ctx = MIN_CTX if is_auto_ctx(m) else None
        est, idx = estimate_for(host, inp, model_settings(inp, ctx))
        current[m.id], gpu_idx[m.id] = est, idx

    # 2. choose auto contexts: alone, and in each alternative with the others' usage subtracted
    for m in host.models:
        if not is_auto_ctx(m):
            continue
        inp = inputs[m.id]
        if not budget:
            ctx = ctx_cap(inp.facts, model_settings(inp))
            plan.notes.append(f"{m.id}: ctx-size auto without a budget: the model's training context {ctx}")
        else:
            limit_sets: list[dict[str, int]] = [dict(limits)]
            for _, ids in alternatives:
                if m.id not in ids:
                    continue
                autos = [i for i in ids if is_auto_ctx(host.model(i))]
                used = _sum_usage([usage(current[i], gpu_idx[i]) for i in ids])
                mine = usage(current[m.id], gpu_idx[m.id])
                mine_limits = {}
                for d, b in limits.items():
                    free = b - used.get(d, 0)
                    mine_limits[d] = mine.get(d, 0) + (free // len(autos) if free > 0 else free)
                limit_sets.append(mine_limits)
            tightest = {d: min(ls[d] for ls in limit_sets) for d in limits}
            found = largest_ctx(host, inp, tightest)
            ctx = found if found is not None else MIN_CTX
        est, idx = estimate_for(host, inp, model_settings(inp, ctx))
        current[m.id], gpu_idx[m.id] = est, idx

    # 3. every model alone
    for m in host.models:
        est = current[m.id]
        mp = ModelPlan(
            id=m.id,
            ctx_size=est.geometry.n_ctx,
            ctx_auto=is_auto_ctx(m),
            estimate=est,
            gpu_index=gpu_idx[m.id],
            source=inputs[m.id].source,
            rpc=inputs[m.id].rpc,
            tensor_split=(
                tuple(int(x) for x in est.settings.tensor_split)
                if inputs[m.id].rpc and not model_settings(inputs[m.id]).tensor_split
                else ()
            ),
        )
        excess = over(usage(est, gpu_idx[m.id]), limits)
        if excess:
            mp.fits_alone = False
            plan.problems.append(_model_problem(host, inputs[m.id], mp, plan, limits, excess))
        plan.models[m.id] = mp

    # 4. every set alternative
    for set_name, ids in alternatives:
        used = _sum_usage([usage(current[i], gpu_idx[i]) for i in ids])
        excess = over(used, limits)
        held = {d: r.bytes for d, r in plan.reserved.items()}
        plan.sets.append(SetCheck(set_name, ids, used, dict(budget), not excess, reserved=held))
        if excess and all(plan.models[i].fits_alone for i in ids):
            plan.problems.append(_set_problem(host, inputs, plan, set_name, ids, used, limits, excess))
    alone = [m.id for m in host.models if m.id not in in_sets]
    if alternatives and alone:
        plan.notes.append(f"not in any set, checked alone: {', '.join(alone)}")
    return plan


def _sum_usage(parts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in parts:
        for d, v in p.items():
            out[d] = out.get(d, 0) + v
    return out


def _fmt(n: int) -> str:
    return f"{n / MIB:,.0f} MiB"


def _excess_text(
    excess: Mapping[str, int],
    used: Mapping[str, int],
    budget: Mapping[str, int],
    why: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """``gpu0 (RTX 3060, CUDA0): 12,000 MiB of 11,427 MiB budget, 573 MiB over``; where ``why``
    explains a device's limit (RPC load or a worker's own models taken off): ``... of 11,859 MiB
    left (why), ...``. ``labels``: how to name a device (default: its plan name)."""
    parts = []
    for d, v in excess.items():
        of = f"{budget[d] // MIB:,} MiB left ({why[d]})" if why and d in why else f"{budget[d] // MIB:,} MiB budget"
        label = labels.get(d, d) if labels else d
        parts.append(f"{label}: {_mib(used.get(d, 0)):,} MiB of {of}, {_mib(v):,} MiB over")
    return "; ".join(parts)


def _rpc_hint(plan: HostPlan, excess: Mapping[str, int]) -> str:
    """The other side of a shared device, as a way out: heads' models (this host a worker) or the
    worker's own models (this host a head)."""
    hints: list[str] = []
    for d in excess:
        if d in plan.reserved:
            for h in plan.reserved[d].loads:
                hints.append(
                    f"put fewer layers of {h.head}'s {', '.join(h.models)} on {plan.host} (remove {plan.host} from "
                    f"its rpc: in hosts/{h.head}.yaml, or lower its ctx-size/cache types there)"
                )
        if d in plan.kept:
            worker = d.split(":", 1)[0]
            hints.append(
                f"give {worker}'s own {plan.kept[d].group} less (hosts/{worker}.yaml: its ctx-size, cache types, "
                f"sets), or remove {worker} from rpc:"
            )
    return "".join(f"; or {h}" for h in dict.fromkeys(hints))


def _check_reserved(host: ResolvedHost, plan: HostPlan) -> None:
    """The heads' RPC load alone must fit each device of this worker (each head checks its own
    share; only here are the heads added up)."""
    for d, r in plan.reserved.items():
        if r.bytes <= plan.budget[d]:
            continue
        heads = ", ".join(dict.fromkeys(f"hosts/{h.head}.yaml" for h in r.loads))
        plan.problems.append(
            f"{d} ({plan.device_names.get(d, d)}) of RPC worker {host.name}: the heads' RPC load {r.text()} = "
            f"{_mib(r.bytes):,} MiB exceeds its budget {plan.budget[d] // MIB:,} MiB by "
            f"{_mib(r.bytes - plan.budget[d]):,} MiB (heads load their models independently, so these can be "
            f"resident together). Ways out: remove {host.name} from rpc: of one of these models ({heads}); or "
            f"lower their ctx-size/cache types; or raise vram_budget in {host.host_file}"
        )


def ways_out(host: ResolvedHost, inp: ModelInput, limits: Mapping[str, int], current: Estimate) -> list[str]:
    """Concrete changes that would make ``inp`` fit within ``limits`` (per host device)."""
    s = current.settings
    out: list[str] = []

    def fits_with(settings: Settings) -> bool:
        try:
            est, idx = estimate_for(host, inp, settings)
        except PlanError:
            return False
        return not over(usage(est, idx), limits)

    ctx = largest_ctx(host, inp, limits, s)
    if ctx is not None and ctx < current.geometry.n_ctx:
        out.append(f"ctx-size: {ctx} (now {current.geometry.n_ctx})")
    for kv_type in ("q8_0", "q4_0"):
        if s.cache_type_k == kv_type and s.cache_type_v == kv_type:
            continue
        if s.cache_type_k in ("q4_0",) and kv_type == "q8_0":
            continue
        quant = replace(s, cache_type_k=kv_type, cache_type_v=kv_type, flash_attn=True)
        try:
            if fits_with(quant):
                out.append(
                    f"cache-type-k: {kv_type} and cache-type-v: {kv_type} (flash-attn: on) at ctx-size {current.geometry.n_ctx}"
                )
                break
            qctx = largest_ctx(host, inp, limits, quant)
        except (PlanError, EstimateError):
            continue
        if qctx is not None and (ctx is None or qctx > ctx):
            out.append(f"cache-type-k/v: {kv_type} with ctx-size: {qctx}")
            break
    n_all = inp.facts.n_layer_all
    if current.gpu_devices and inp.facts.is_moe:
        n_moe = largest_fitting(lambda n: fits_with(_cpu_moe(s, n_all - n)), 0, n_all)
        if n_moe is not None:
            out.append(f"n-cpu-moe: {n_all - n_moe} (expert weights of the first layers in system RAM; slower)")
    if current.gpu_devices:
        ngl = largest_fitting(lambda n: fits_with(replace(s, n_gpu_layers=n)), 0, min(s.n_gpu_layers, n_all + 1))
        if ngl is not None and ngl > 0:
            out.append(f"n-gpu-layers: {ngl} of {n_all + 1} (the rest on the CPU; much slower)")
    gpu_weights = sum(t["weights"] for d, t in current.devices.items() if d != CPU)
    if gpu_weights:
        excess = max(over(usage(current, device_index(host, inp)), limits).values(), default=0)
        n_params = sum(_n_elements(t.shape) for t in inp.facts.tensors) or 1
        bpw_now = inp.facts.weights_bytes * 8 / n_params
        bpw_fit = (gpu_weights - excess) / gpu_weights * bpw_now
        if bpw_fit > 1.5:
            out.append(f"a smaller quant: about {bpw_fit:.1f} bits per weight or less (this file: {bpw_now:.1f})")
    return out


def _n_elements(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _cpu_moe(s: Settings, n: int) -> Settings:
    extra = tuple(Override(rf"blk\.{i}{EXPS_REGEX}", CPU) for i in range(n))
    return replace(s, overrides=s.overrides + extra)


def _model_problem(
    host: ResolvedHost,
    inp: ModelInput,
    mp: ModelPlan,
    plan: HostPlan,
    budget: Mapping[str, int],
    excess: Mapping[str, int],
) -> str:
    used = usage(mp.estimate, mp.gpu_index)
    why = plan.limit_notes()
    text = (
        f"model {mp.id} does not fit alone at ctx-size {mp.ctx_size}: "
        f"{_excess_text(excess, used, budget, why, plan.labels())}"
    )
    fixes = ways_out(host, inp, budget, mp.estimate)
    hint = _rpc_hint(plan, excess)
    if fixes:
        return text + ". Ways out: " + "; or ".join(fixes) + hint
    return text + (
        ". Ways out: " + hint[len("; or ") :] if hint else ". No single setting makes it fit: use a smaller model"
    )


def _set_problem(
    host: ResolvedHost,
    inputs: Mapping[str, ModelInput],
    plan: HostPlan,
    set_name: str,
    ids: Sequence[str],
    used: Mapping[str, int],
    budget: Mapping[str, int],
    excess: Mapping[str, int],
) -> str:
    text = (
        f"set {set_name!r} ({' & '.join(ids)}) does not fit: "
        f"{_excess_text(excess, used, budget, plan.limit_notes(), plan.labels())}"
    )
    # the biggest user of the worst device gives way first, with the others as they are
    worst = max(excess, key=lambda d: excess[d])
    biggest = max(ids, key=lambda i: usage(plan.models[i].estimate, plan.models[i].gpu_index).get(worst, 0))
    others = _sum_usage([usage(plan.models[i].estimate, plan.models[i].gpu_index) for i in ids if i != biggest])
    limits = {d: b - others.get(d, 0) for d, b in budget.items()}
    fixes = ways_out(host, inputs[biggest], limits, plan.models[biggest].estimate)
    hint = f". Ways out for {biggest}: " + "; or ".join(fixes) if fixes else ""
    return (
        text + hint + f"; or drop a model from the set (or set ctx-size: auto on {biggest})" + _rpc_hint(plan, excess)
    )
