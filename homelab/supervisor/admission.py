"""Which resident models must go before ``target`` can start: matrix, groups, VRAM budget.

Pure functions of the config and the resident set (no I/O), used by the scheduler.

* with a ``matrix``: :func:`homelab.matrix.solve` picks the cheapest allowed set;
* otherwise llama-swap's groups (:func:`homelab.matrix.group_evictions`; ungrouped
  models form one default group with ``swap`` and ``exclusive``, so a plain config runs one model
  at a time);
* then VRAM-aware admission: where the config states ``x-vramBudgetMiB`` and models carry
  ``vram_mib``, least-recently-used models (idle ones first) are added to the evictions until the
  target fits. With a budget, no matrix, no groups and a VRAM figure for every model, the budget
  alone decides what may be resident together.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from ..errors import HomelabError
from ..matrix import group_evictions, solve
from .config import Config


class AdmissionError(HomelabError):
    """The target can never start under this config (for example it exceeds the VRAM budget)."""


def vram_only(config: Config) -> bool:
    """Budget-driven residency: a budget, no matrix, no groups, a VRAM figure for every model."""
    return (
        config.vram_budget_mib is not None
        and config.matrix is None
        and not config.groups
        and all(m.vram_mib is not None for m in config.models.values())
    )


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
    budget = config.vram_budget_mib
    if budget is None:
        return frozenset(evict)

    def vram(model_id: str) -> int:
        model = config.models.get(model_id)
        return (model.vram_mib or 0) if model else 0

    need = vram(target)
    if need > budget:
        raise AdmissionError(
            f"model {target!r} needs {need} MiB of VRAM but the budget (x-vramBudgetMiB) is "
            f"{budget} MiB: lower its context size or quantization, or raise the budget"
        )
    kept = [m for m in resident if m not in evict and m != target]
    used = sum(vram(m) for m in kept)
    if used + need > budget:
        by_preference = [m for m in kept if m not in busy] + [m for m in kept if m in busy]
        for model in by_preference:
            if vram(model) == 0:
                continue
            evict.add(model)
            used -= vram(model)
            if used + need <= budget:
                break
    return frozenset(evict)
