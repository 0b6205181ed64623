"""Which resident models must go before ``target`` can start: matrix, groups, memory per device.

Pure functions of the config and the resident set (no I/O), used by the scheduler.

* with a ``matrix``: :func:`homelab.matrix.solve` picks the cheapest allowed set;
* otherwise llama-swap's groups (:func:`homelab.matrix.group_evictions`; ungrouped
  models form one default group with ``swap`` and ``exclusive``, so a plain config runs one model
  at a time);
* then memory-aware admission, device by device. The *pools* are the devices of
  ``x-deviceBudgetMiB`` (each model's ``x-devices`` says what it takes on each) and, in configs
  without per-device figures, one pool for all GPUs: ``x-vramBudgetMiB`` with each model's
  ``vram_mib``. A model starts only when every pool it uses has room. Where one is short, only
  models that use a short pool are evicted (idle ones first, least recently used first), and an
  eviction that turned out not to be needed once later ones were chosen is kept resident. With a
  budget, no matrix, no groups and figures for every model, the budgets alone decide what may be
  resident together.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from ..errors import HomelabError
from ..matrix import group_evictions, solve
from .config import Config

SUMMED = "x-vramBudgetMiB"
"""The pool name of the one budget for all GPUs (configs without per-device figures)."""


class AdmissionError(HomelabError):
    """The target can never start under this config (for example it exceeds a device's budget)."""


def budgets(config: Config) -> dict[str, int]:
    """Pool -> MiB its resident models may fill."""
    out = dict(config.device_budget_mib)
    if config.vram_budget_mib is not None:
        out[SUMMED] = config.vram_budget_mib
    return out


def needs(config: Config, model_id: str) -> dict[str, int]:
    """Pool -> MiB the model takes there (budgeted pools only; unknown figures count as none)."""
    model = config.models.get(model_id)
    if model is None:
        return {}
    out = {d: mib for d, mib in (model.devices_mib or {}).items() if d in config.device_budget_mib and mib > 0}
    if config.vram_budget_mib is not None and model.vram_mib:
        out[SUMMED] = model.vram_mib
    return out


def vram_only(config: Config) -> bool:
    """Budget-driven residency: a budget, no matrix, no groups, figures for every model."""
    if config.matrix is not None or config.groups or not budgets(config):
        return False
    return all(
        (not config.device_budget_mib or m.devices_mib is not None)
        and (config.vram_budget_mib is None or m.vram_mib is not None)
        for m in config.models.values()
    )


def used_mib(config: Config, models: Collection[str]) -> dict[str, int]:
    """Pool -> MiB the ``models`` take together."""
    out: dict[str, int] = {}
    for model_id in models:
        for pool, mib in needs(config, model_id).items():
            out[pool] = out.get(pool, 0) + mib
    return out


def shortfall(config: Config, target: str, kept: Collection[str]) -> dict[str, tuple[int, int, int]]:
    """Pools where ``target`` does not fit beside ``kept``: pool -> (its need, free MiB, budget)."""
    budget = budgets(config)
    used = used_mib(config, [m for m in kept if m != target])
    return {
        pool: (need, budget[pool] - used.get(pool, 0), budget[pool])
        for pool, need in needs(config, target).items()
        if used.get(pool, 0) + need > budget[pool]
    }


def check_fits_alone(config: Config, target: str) -> None:
    """Raise :class:`AdmissionError` when ``target`` exceeds a budget even with nothing else resident."""
    budget = budgets(config)
    for pool, need in needs(config, target).items():
        if need <= budget[pool]:
            continue
        if pool == SUMMED:
            raise AdmissionError(
                f"model {target!r} needs {need} MiB of VRAM but the budget (x-vramBudgetMiB) is "
                f"{budget[pool]} MiB: lower its context size or quantization, or raise the budget"
            )
        raise AdmissionError(
            f"model {target!r} needs {need} MiB on {pool} but the budget of {pool} (x-deviceBudgetMiB) is "
            f"{budget[pool]} MiB, {need - budget[pool]} MiB short: lower its context size or quantization, "
            "spread it over more devices (tensor-split), or raise the budget"
        )


def room_evictions(config: Config, target: str, kept: Sequence[str], busy: Collection[str] = ()) -> frozenset[str]:
    """The fewest of ``kept`` (least recently used first) to stop so that ``target`` fits in every
    pool. Only models that use a short pool are candidates: idle ones first, then busy ones. A
    candidate made redundant by later choices stays resident (busy and recent ones are kept first)."""
    short = shortfall(config, target, kept)
    if not short:
        return frozenset()
    candidates = [m for m in kept if m != target and m not in busy] + [m for m in kept if m != target and m in busy]
    chosen: list[str] = []
    for model_id in candidates:
        if not short:
            break
        if any(pool in short for pool in needs(config, model_id)):
            chosen.append(model_id)
            short = shortfall(config, target, [m for m in kept if m not in chosen])
    for model_id in reversed(chosen):
        trial = [m for m in chosen if m != model_id]
        if not shortfall(config, target, [m for m in kept if m not in trial]):
            chosen = trial
    return frozenset(chosen)


def evictions(config: Config, target: str, resident: Sequence[str], busy: Collection[str] = ()) -> frozenset[str]:
    """Models to stop before ``target`` starts. ``resident`` is least recently used first."""
    running = frozenset(resident)
    if config.matrix is not None:
        evict = set(solve(config.matrix, running, target).evict)
    elif vram_only(config):
        evict = set()
    else:
        evict = set(group_evictions(config.groups, running, target))
    evict.discard(target)
    if not budgets(config):
        return frozenset(evict)
    check_fits_alone(config, target)
    kept = [m for m in resident if m not in evict and m != target]
    return frozenset(evict | room_evictions(config, target, kept, busy))


def room_text(config: Config, target: str, resident: Collection[str]) -> str:
    """Why ``target`` needs room, device by device (empty for the one summed pool, whose reason
    the budget key already says): ``CUDA0: needs 8000 MiB, 3427 of 11427 MiB free``."""
    short = shortfall(config, target, resident)
    return "; ".join(
        f"{pool}: needs {need} MiB, {free} of {budget} MiB free"
        for pool, (need, free, budget) in short.items()
        if pool != SUMMED
    )


def over_budget(config: Config, models: Collection[str]) -> dict[str, tuple[int, int]]:
    """Pools the ``models`` together exceed: pool -> (MiB used, budget). Empty when they fit."""
    budget = budgets(config)
    return {pool: (mib, budget[pool]) for pool, mib in used_mib(config, models).items() if mib > budget[pool]}
