"""A worker that also serves its own models: what heads put on it, and what it keeps for itself.

A head puts layers of a model on a worker's devices (``rpc: [worker]``); the worker may also
serve models of its own on the same GPUs. Both plans must then agree on who gets which memory,
or the device is over-committed. The rule (the same numbers on both sides):

- **Kept** (the worker's own share, seen by the heads): per worker device, the most any of its
  resident groups needs there (each set alternative, each model alone), with ``ctx-size: auto``
  models at their smallest context (fixed contexts as given). A head's budget on that device is
  the device's budget less this; its split (``--tensor-split``) is chosen against it and every
  check of the head uses it. Auto contexts of the worker's own models grow into whatever the
  heads leave (the heads' split comes first: it is fixed at render time; an auto context is not).
- **Reserved** (the heads' share, seen by the worker): per worker device, the SUM over heads of
  each head's largest resident group's use there (the most over its set alternatives and its
  models alone, as the head's plan computes them). A sum, because each head loads and unloads its
  models on its own schedule: any mix of their groups can be resident at once. The worker's own
  models, sets and auto contexts must fit the budget less this.

With one head the two agree by construction (the head leaves the worker's largest own group
room); with several heads only the worker's plan adds them up, so an over-committed worker is
reported there (and each head still reports a conflict with the worker's own models).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import replace

from ..errors import HomelabError
from ..inventory import InventoryError, host_path, list_hosts, load_host
from ..inventory.resolved import ResolvedHost
from .host import (
    MIN_CTX,
    HostPlan,
    ModelInput,
    PlanError,
    _alternatives,
    _sum_usage,
    estimate_for,
    is_auto_ctx,
    model_settings,
    plan_host,
    usage,
)
from .rpc import HeadLoad, Kept, Reservation, Worker, load_workers, model_rpc_devices

InputsOf = Callable[[ResolvedHost], dict[str, ModelInput]]
"""A host -> its models' facts (the stage reads locks and headers; tests pass stand-ins). A
model left out (a report-only host whose header cannot be read) is left out of the numbers."""


def _group_label(name: str, ids: tuple[str, ...]) -> str:
    return f"set {name!r} ({' & '.join(ids)})"


def own_use(host: ResolvedHost, inputs: Mapping[str, ModelInput]) -> dict[str, Kept]:
    """Per local device (``gpu0``, ``cpu``): the most the host's own resident groups need there,
    auto contexts at their smallest (see the module doc). Empty for a host without models."""
    if not host.models:
        return {}
    workers: dict[str, Worker] | None = None
    use: dict[str, dict[str, int]] = {}
    for m in host.models:
        if m.id not in inputs:
            continue
        inp = inputs[m.id]
        if m.rpc_workers and not inp.rpc:  # this worker is a head too: its own split, plain budgets
            workers = workers if workers is not None else load_workers(host)
            inp = replace(inp, rpc=model_rpc_devices(host, m, workers))
        est, idx = estimate_for(host, inp, model_settings(inp, MIN_CTX if is_auto_ctx(m) else None))
        use[m.id] = {d: v for d, v in usage(est, idx).items() if ":" not in d}  # local devices only
    groups: list[tuple[str, tuple[str, ...]]] = [(f"model {mid}", (mid,)) for mid in use]
    groups += [(_group_label(name, ids), ids) for name, ids in _alternatives(host)]
    best: dict[str, Kept] = {}
    for label, ids in groups:
        for d, v in _sum_usage([use[i] for i in ids if i in use]).items():
            if v > 0 and (d not in best or v > best[d].bytes):
                best[d] = Kept(v, label)
    return best


def _complete(host: ResolvedHost, inputs: Mapping[str, ModelInput]) -> ResolvedHost:
    """``host`` without the models ``inputs`` leaves out (as the stage's report-only plan does)."""
    if all(m.id in inputs for m in host.models):
        return host
    return replace(host, models=tuple(m for m in host.models if m.id in inputs), sets={})


def workers_for(
    head: ResolvedHost, inputs_of: InputsOf, known: Mapping[str, Mapping[str, Kept]] | None = None
) -> dict[str, Worker]:
    """The head's RPC workers, each with what it keeps for its own models (``known``: already
    computed, by worker name)."""
    out: dict[str, Worker] = {}
    for name, worker in load_workers(head).items():
        if known is not None and name in known:
            kept: Mapping[str, Kept] = known[name]
        elif worker.host.models:
            try:
                kept = own_use(worker.host, inputs_of(worker.host))
            except HomelabError as exc:
                raise PlanError(
                    f"{worker.host.host_file}: RPC worker {name} also serves models, and the plan of "
                    f"{head.name} needs their size (what {name} keeps for itself): {exc}"
                ) from None
        else:
            kept = {}
        out[name] = replace(worker, kept=dict(kept))
    return out


def heads_of(worker: ResolvedHost) -> list[ResolvedHost]:
    """The hosts of ``worker``'s inventory with a model that names it in ``rpc:``."""
    if worker.host.rpc_server is None:
        return []
    out: list[ResolvedHost] = []
    for name in list_hosts(worker.inventory):
        if name == worker.name:
            continue
        path = host_path(name, worker.inventory)
        # ``rpc:`` is a host-file key (recipes cannot set it): a file that never spells this
        # worker's name cannot put load on it, so only those that do are resolved (this runs in
        # the plan task's up-to-date check, for every worker, on every deploy)
        text = path.read_text(encoding="utf-8", errors="replace")
        if worker.name not in text:
            continue
        try:
            other = load_host(name, worker.inventory)
        except InventoryError as exc:
            # a broken file that never names this worker cannot put load on it
            if re.search(rf"\b{re.escape(worker.name)}\b", text):
                raise PlanError(
                    f"{path}: names {worker.name}, which may be an RPC worker of its models, but the file does not "
                    f"load, so the plan of {worker.name} cannot size that load: fix it (`homelab validate {name}`). "
                    f"{exc}"
                ) from None
            continue
        if any(worker.name in m.rpc_workers for m in other.models):
            out.append(other)
    return out


def head_loads(plan: HostPlan, worker: str) -> dict[str, HeadLoad]:
    """Per device of ``worker`` (``gpu0``): the head plan's largest resident group there (its set
    alternatives and each model alone) and what it puts there."""
    prefix = f"{worker}:"
    per_model = {mid: usage(mp.estimate, mp.gpu_index) for mid, mp in plan.models.items()}
    groups: list[tuple[str, tuple[str, ...], dict[str, int]]] = [
        (f"model {mid}", (mid,), used) for mid, used in per_model.items()
    ]
    groups += [(_group_label(c.set_name, c.models), c.models, c.used) for c in plan.sets]
    out: dict[str, HeadLoad] = {}
    for label, ids, used in groups:
        for key, v in used.items():
            if not key.startswith(prefix) or v <= 0:
                continue
            dev = key[len(prefix) :]
            if dev not in out or v > out[dev].bytes:
                models = tuple(i for i in ids if per_model.get(i, {}).get(key, 0) > 0)
                out[dev] = HeadLoad(plan.host, label, models, v)
    return out


def rpc_reservations(
    worker: ResolvedHost, inputs: Mapping[str, ModelInput], inputs_of: InputsOf
) -> tuple[dict[str, Reservation], list[str]]:
    """Per device of ``worker``: the heads' RPC load to keep free (see the module doc), and notes.
    Each head is planned as its own plan does it (same workers, same kept shares, same split).

    A head whose plan cannot be made is an error when the worker serves models (their fit
    depends on it); a worker without models only reports the heads' load (each head checks its
    own share), so there it is a note: deploying the worker first, before a head's lock and
    headers exist, must not fail on the head's account."""
    heads = heads_of(worker)
    if not heads:
        return {}, []
    # what each worker keeps for its own models, this one's and those heads share (computed once)
    known: dict[str, Mapping[str, Kept]] = {worker.name: own_use(worker, inputs)}
    loads: dict[str, list[HeadLoad]] = {}
    notes: list[str] = []
    for head in heads:
        try:
            head_inputs = inputs_of(head)
            planned = _complete(head, head_inputs)
            workers = workers_for(planned, inputs_of, known)
            known.update({name: w.kept for name, w in workers.items()})
            plan = plan_host(planned, head_inputs, workers)
        except HomelabError as exc:
            why = (
                f"{head.host_file}: host {head.name} puts layers on {worker.name} (rpc:), and its plan, which "
                f"sizes that load, cannot be made: {exc}"
            )
            if worker.models:
                raise PlanError(why) from None
            notes.append(
                f"RPC load of {head.name} not reserved (this host serves no models, so nothing else is at stake): {why}"
            )
            continue
        for dev, load in head_loads(plan, worker.name).items():
            loads.setdefault(dev, []).append(load)
    return {dev: Reservation(tuple(ls)) for dev, ls in loads.items()}, notes


# --------------------------------------------------------------------------- doit


def _host_bytes(host: ResolvedHost) -> bytes:
    data = json.dumps(host.as_dict(), sort_keys=True, default=str).encode()
    try:
        return data + host.lock_file.read_bytes()
    except FileNotFoundError:
        return data + b"no lock"


def related_digest(host: ResolvedHost) -> str:
    """What ``host``'s plan depends on beyond itself: as a head, its workers (their devices and
    own models, with their locks); as a worker, every head using it and that head's other
    workers (they move the head's split). For the plan task's up-to-date check."""
    h = hashlib.sha256()

    def add(name: str) -> None:
        try:
            h.update(_host_bytes(load_host(name, host.inventory)))
        except InventoryError as exc:
            h.update(f"{name}: {exc}".encode())

    for name in host.depends_on:
        add(name)
    try:
        heads = heads_of(host)
    except PlanError as exc:
        h.update(str(exc).encode())
        heads = []
    for head in heads:
        h.update(_host_bytes(head))
        for name in head.depends_on:
            if name != host.name:
                add(name)
    return h.hexdigest()
