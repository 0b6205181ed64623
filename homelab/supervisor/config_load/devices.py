"""Per-device memory: ``x-deviceBudgetMiB`` (top level) and each model's ``x-devices``.

    x-deviceBudgetMiB: {CUDA0: 11427, CUDA1: 11427}   # what resident models may fill, per device
    models:
      chat:
        x-devices: {CUDA0: 3120}                     # what this model takes there (the plan's figures)

Device names are llama.cpp's as the whole host sees them (``CUDA0``, ``ROCm1``, ``Vulkan0``,
``CPU`` for system RAM). A model naming a device the budget does not list is an error (a typo
would silently skip the check). Without ``x-deviceBudgetMiB`` the figures are only reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ...suggest import did_you_mean
from ..config import ModelConfig
from .values import Value

BUDGET_KEY = "x-deviceBudgetMiB"
MODEL_KEY = "x-devices"


def _device_mib(value: Value, minimum: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, (key, entry) in value.entries("a mapping of device name to MiB, like {CUDA0: 11427}").items():
        if not name.strip():
            raise key.error("a device name must not be empty")
        out[name] = entry.integer(minimum=minimum)
    return out


def parse_device_budget(value: Value | None) -> dict[str, int]:
    """``x-deviceBudgetMiB``: device -> MiB (at least 1 each)."""
    if value is None or value.is_null:
        return {}
    return _device_mib(value, minimum=1)


def _model_entry(model: Value) -> Value | None:
    """The model's ``x-devices`` node (read from the node's pairs, as ``x-promptCache``: the
    model's keys were already checked and merges flattened)."""
    for key_node, value_node in model.node.value:
        if key_node.value == MODEL_KEY:
            return model.child(value_node, MODEL_KEY)
    return None


def parse_model_devices(model: Value, budget: Mapping[str, int]) -> dict[str, int] | None:
    """A model's ``x-devices`` (None when absent), its devices checked against the budget."""
    entry = _model_entry(model)
    if entry is None or entry.is_null:
        return None
    devices = _device_mib(entry, minimum=0)
    if budget:
        for name in devices:
            if name not in budget:
                raise entry.error(
                    f"device {name!r} is not in {BUDGET_KEY} ({', '.join(budget)})",
                    "name a budgeted device" + did_you_mean(name, budget),
                )
    return devices


def with_devices(
    models: Mapping[str, ModelConfig], nodes: Mapping[str, Value], budget: Mapping[str, int]
) -> dict[str, ModelConfig]:
    """The models with their ``x-devices`` read (``nodes``: model ID -> its YAML node)."""
    out: dict[str, ModelConfig] = {}
    for model_id, model in models.items():
        devices = parse_model_devices(nodes[model_id], budget) if model_id in nodes else None
        out[model_id] = replace(model, devices_mib=devices) if devices is not None else model
    return out
