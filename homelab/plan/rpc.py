"""RPC split: the devices of a model's ``--rpc`` workers, their budgets, and the layer split.

A model with ``rpc: [w1, w2]`` runs one ``llama-server`` on the head host with
``--rpc <w1 listen>,<w2 listen>``; llama.cpp (b11434) then lists the workers' devices *before*
the head's GPUs (``llama_prepare_model_devices``), each server's devices in its own order, and
splits the offloaded layers over that list by ``--tensor-split``. The plan picks that split
itself, as whole layers per device (``--tensor-split 5,2`` puts five layers on the first device
and two on the second: exact, because the split points are then ratios of whole numbers), so
what the plan checks against each device's budget is what llama-server will allocate there.

A worker's devices, as its ``rpc-server`` offers them: ``rpc_server.devices`` when given
(``CUDA0``, ``ROCm1``, ``Vulkan0``, ``CPU``), else every GPU of the worker, else (a CPU worker)
its CPU. Budgets: a GPU ``vram_budget x vram_mib``; a CPU worker ``vram_budget x ram_mib``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from ..errors import HomelabError
from ..inventory.multihost import load_related
from ..inventory.resolved import ResolvedHost, ResolvedModel
from .estimate import MIB, RpcDevice

# ------------------------------------------------------------------------------ workers


@dataclass(frozen=True)
class Kept:
    """Memory of one worker device kept for the worker's OWN models (it serves some too): the
    most any of its resident groups (a set alternative, or a model alone) needs there, with
    ``ctx-size: auto`` models at their smallest context (see :mod:`.rpcload`)."""

    bytes: int
    group: str
    """Which of the worker's groups needs the most: ``set 'voice' (a & b)`` or ``model a``."""


@dataclass(frozen=True)
class HeadLoad:
    """The most one head host puts on one worker device at once (its largest resident group)."""

    head: str
    group: str
    """``set 'coding' (think-split & x)`` or ``model think-split`` (on the head)."""
    models: tuple[str, ...]
    bytes: int

    def text(self) -> str:
        return f"{self.head}'s {self.group} {-(-self.bytes // MIB):,} MiB"  # rounded up, as the plan JSON


@dataclass(frozen=True)
class Reservation:
    """What a worker keeps free on one device for the heads that put layers there: the sum over
    heads of each head's largest resident group (heads load and unload independently, so any
    mix of their groups may be resident at once)."""

    loads: tuple[HeadLoad, ...]

    @property
    def bytes(self) -> int:
        return sum(h.bytes for h in self.loads)

    def text(self) -> str:
        return " + ".join(h.text() for h in self.loads)


@dataclass(frozen=True)
class Worker:
    """An RPC worker host as the head reaches it."""

    host: ResolvedHost
    endpoint: str
    """``address:port`` the head passes to ``--rpc`` (llama.cpp names the device's buffers
    ``RPC<i>[<endpoint>]``)."""
    kept: Mapping[str, Kept] = field(default_factory=dict)
    """Worker device (``gpu0``, ``cpu``) -> memory its own models need there (the head's budget
    on that device is what is left)."""


def load_workers(host: ResolvedHost) -> dict[str, Worker]:
    """The worker hosts named by ``rpc:`` of any model of ``host``, checked together with it
    (:func:`homelab.inventory.multihost.load_related`: each has an rpc-server the head can reach;
    the endpoint is the address the head uses)."""
    related = load_related(host)
    return {name: Worker(related.hosts[name], endpoint) for name, endpoint in related.workers.items()}


@dataclass(frozen=True)
class RemoteDevice:
    """One device of an RPC worker, as the plan checks it."""

    host: str
    """The worker host's name."""
    device: str
    """``gpu<i>`` (the worker's GPU index) or ``cpu`` (its system RAM)."""
    name: str
    """For people: the GPU's name, or ``system RAM``."""
    endpoint: str
    """``rpc_server.listen``: what ``--rpc`` names, and what llama.cpp's buffer names show."""
    index: int
    """The device's position within its rpc-server (llama.cpp's buffer ``RPC<index>[endpoint]``)."""
    budget: int
    """Bytes the head's plan may fill: the device's budget less what the worker keeps for its own
    models (:attr:`kept`)."""
    backend: str
    kept: Kept | None = None
    """Memory of this device the worker's own models need (already taken off :attr:`budget`)."""

    @property
    def full_budget(self) -> int:
        """The device's whole budget (``vram_budget`` of the worker's memory)."""
        return self.budget + (self.kept.bytes if self.kept else 0)

    @property
    def key(self) -> str:
        """The plan's device name: ``<worker>:gpu<i>`` or ``<worker>:cpu``."""
        return f"{self.host}:{self.device}"

    @property
    def buffer_name(self) -> str:
        """The buffer type llama-server reports this device's buffers under."""
        return f"RPC{self.index}[{self.endpoint}]"

    def as_estimate_device(self) -> RpcDevice:
        return RpcDevice(size=float(self.budget), backend=self.backend)


class RpcPlanError(HomelabError):
    """A worker the plan cannot use or check (names the host file and the fix)."""


def worker_devices(
    worker: ResolvedHost, endpoint: str | None = None, kept: Mapping[str, Kept] | None = None
) -> list[RemoteDevice]:
    """The devices ``worker``'s rpc-server offers, in its order, with their budgets.
    ``endpoint``: how the head reaches it (default: ``rpc_server.listen``); ``kept``: memory per
    device the worker's own models need (taken off the budget the head may fill)."""
    return [_keep(d, (kept or {}).get(d.device)) for d in _worker_devices(worker, endpoint)]


def _keep(device: RemoteDevice, kept: Kept | None) -> RemoteDevice:
    if kept is None or kept.bytes <= 0:
        return device
    return replace(device, budget=max(0, device.budget - kept.bytes), kept=kept)


def _worker_devices(worker: ResolvedHost, endpoint: str | None = None) -> list[RemoteDevice]:
    h = worker.host
    where = worker.host_file
    rpc = h.rpc_server
    if rpc is None:
        raise RpcPlanError(
            f"{where}: host {h.name} is named as an RPC worker but has no rpc_server; add "
            "rpc_server: {listen: LAN_ADDRESS:PORT} to it"
        )
    endpoint = endpoint or rpc.listen
    wanted: list[str]
    if rpc.devices:
        wanted = list(rpc.devices)
    elif h.backend != "cpu" and h.gpus:
        wanted = [f"GPU{i}" for i in range(len(h.gpus))]
    else:
        wanted = ["CPU"]
    out: list[RemoteDevice] = []
    for index, name in enumerate(wanted):
        if name.upper().startswith("CPU"):
            if not h.ram_mib:
                raise RpcPlanError(
                    f"{where}: the RPC worker {h.name} offers its CPU, and the plan cannot check it without "
                    "ram_mib: set ram_mib (system RAM in MiB) in that host file"
                )
            budget = int(h.ram_mib * MIB * h.vram_budget)
            out.append(RemoteDevice(h.name, "cpu", "system RAM", endpoint, index, budget, "cpu"))
            continue
        m = re.search(r"(\d+)$", name)
        gpu = int(m.group(1)) if m else 0
        if gpu >= len(h.gpus):
            raise RpcPlanError(
                f"{where}: rpc_server.devices names {name}, but the host lists {len(h.gpus)} GPU(s); "
                "use device names as `rpc-server --device` takes them (CUDA0, ROCm1, Vulkan0, CPU)"
            )
        budget = int(h.gpus[gpu].vram_mib * MIB * h.vram_budget)
        out.append(RemoteDevice(h.name, f"gpu{gpu}", h.gpus[gpu].name, endpoint, index, budget, h.backend))
    return out


def model_rpc_devices(
    head: ResolvedHost, model: ResolvedModel, workers: Mapping[str, Worker]
) -> tuple[RemoteDevice, ...]:
    """The RPC devices of ``model`` in llama.cpp's order (``--rpc`` order, then each server's)."""
    out: list[RemoteDevice] = []
    for name in model.rpc_workers:
        worker = workers.get(name)
        if worker is None:
            raise RpcPlanError(
                f"{head.host_file}: model {model.id} names RPC worker {name!r}, which is not loaded "
                f"(expected hosts/{name}.yaml in {head.inventory})"
            )
        if name == head.name:
            raise RpcPlanError(
                f"{head.host_file}: model {model.id} names its own host {name!r} as an RPC worker; "
                "its local GPUs are used without RPC"
            )
        out.extend(worker_devices(worker.host, worker.endpoint, worker.kept))
    return tuple(out)


# ------------------------------------------------------------------------------ the split


def proportional_layers(n_layers: int, weights: Sequence[float]) -> list[int]:
    """``n_layers`` whole layers in proportion to ``weights`` (largest remainder, ties to the
    earlier device)."""
    total = sum(max(w, 0.0) for w in weights)
    if n_layers <= 0 or not weights:
        return [0] * len(weights)
    if total <= 0:
        weights, total = [1.0] * len(weights), float(len(weights))
    exact = [n_layers * max(w, 0.0) / total for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n_layers - sum(counts)]:
        counts[i] += 1
    return counts


def balance_layers(
    start: Sequence[int],
    overuse: Callable[[Sequence[int]], list[float]],
    *,
    max_moves: int | None = None,
) -> list[int]:
    """Move whole layers from the most over-budget device to the one with the most room.

    ``overuse(counts)`` returns each device's use minus its budget (bytes; > 0 is over). Stops
    when nothing is over, or when a move would not lower the worst overuse (then the split
    cannot fit and the plan reports it with the numbers of the best split found)."""
    counts = list(start)
    moves = max_moves if max_moves is not None else sum(counts) * max(1, len(counts))
    current = overuse(counts)
    for _ in range(moves):
        worst = max(range(len(counts)), key=lambda i: current[i])
        if current[worst] <= 0 or counts[worst] == 0:
            break
        best: tuple[float, list[int], list[float]] | None = None
        for target in sorted(range(len(counts)), key=lambda i: current[i]):
            if target == worst or current[target] >= 0:
                continue
            trial = list(counts)
            trial[worst] -= 1
            trial[target] += 1
            after = overuse(trial)
            if best is None or max(after) < best[0]:
                best = (max(after), trial, after)
            break  # the device with the most room is the one to try
        if best is None or best[0] >= max(current):
            break
        _, counts, current = best
    return counts
