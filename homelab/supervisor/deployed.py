"""What the deploy put beside the config: the VRAM plan and the generation's manifest.

The render stage writes ``plan.json`` (the plan report: per-device budgets and each model's
planned bytes per device and term) and ``manifest.json`` (host, build number, input hashes,
ports) into the generation directory next to ``config.yaml``; the deploy stage adds
``.homelab-generation.json`` (generation number, when it was created). The supervisor does not
need any of them to serve; the dashboard shows them when present. Read on demand (small files,
re-read after a reload installs a new generation), never trusted to have any key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLAN = "plan.json"
MANIFEST = "manifest.json"
GENERATION_META = ".homelab-generation.json"
TERMS = ("weights", "kv", "recurrent", "compute", "output", "mtp", "mmproj", "draft", "overhead")
MIB = 1 << 20


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def deploy_facts(config_file: Path | None) -> dict[str, Any]:
    """The generation's facts for the page; empty values when the config was not deployed."""
    if config_file is None:
        return {"config": None, "generation": None, "manifest": None, "deployed": None}
    directory = config_file.resolve().parent
    manifest = read_json(directory / MANIFEST)
    meta = read_json(directory / GENERATION_META) or {}
    deployed = meta.get("created")
    if deployed is None and manifest is not None:
        deployed = (directory / MANIFEST).stat().st_mtime
    plan = read_json(directory / PLAN) or {}
    sources = {mid: m.get("source") for mid, m in (plan.get("models") or {}).items() if isinstance(m, dict)}
    return {
        "config": str(config_file),
        "generation": meta.get("number", directory.name if manifest is not None else None),
        "status": meta.get("status"),
        "deployed": deployed,
        "manifest": manifest,
        "backend": plan.get("backend"),
        "model_sources": sources,
    }


def vram_picture(
    config_file: Path | None,
    budget_mib: int | None,
    model_mib: dict[str, int | None],
    device_budget: dict[str, int] | None = None,
    model_devices: dict[str, dict[str, int] | None] | None = None,
) -> dict[str, Any]:
    """Devices with their budgets and each model's planned share per device and term (MiB).

    From ``plan.json`` when the generation has one; otherwise from the config's own figures: one
    bar per device of ``x-deviceBudgetMiB`` with each model's ``x-devices``, or (configs without
    per-device figures) one ``budget`` device from ``x-vramBudgetMiB`` with each model's ``vram_mib``."""
    plan = read_json(config_file.resolve().parent / PLAN) if config_file is not None else None
    if plan and isinstance(plan.get("devices"), dict) and isinstance(plan.get("models"), dict):
        devices = {
            # llama_cpp: the device's name in the config (CUDA0, CPU), shown beside the plan's gpu0
            d: {"name": v.get("name", d), "budget_mib": v.get("budget_mib")}
            | ({"llama_cpp": v["llama_cpp"]} if isinstance(v.get("llama_cpp"), str) else {})
            for d, v in plan["devices"].items()
            if isinstance(v, dict)
        }
        models: dict[str, dict[str, dict[str, int]]] = {}
        for mid, entry in plan["models"].items():
            per_device = entry.get("devices") if isinstance(entry, dict) else None
            if not isinstance(per_device, dict):
                continue
            models[mid] = {}
            for dev, terms in per_device.items():
                if not isinstance(terms, dict):
                    continue
                devices.setdefault(dev, {"name": "system RAM" if dev == "cpu" else dev, "budget_mib": None})
                models[mid][dev] = _shares(terms)
        return {"source": "plan", "devices": devices, "models": models}
    if device_budget:
        per_model = {
            mid: {d: {"total": mib} for d, mib in (devices_mib or {}).items() if mib}
            for mid, devices_mib in (model_devices or {}).items()
        }
        return {
            "source": "config",
            "devices": {
                d: {"name": "system RAM" if d == "CPU" else d, "budget_mib": mib} for d, mib in device_budget.items()
            },
            "models": {mid: shares for mid, shares in per_model.items() if shares},
        }
    devices = {"budget": {"name": "VRAM budget (x-vramBudgetMiB)", "budget_mib": budget_mib}} if budget_mib else {}
    models = {mid: {"budget": {"total": mib}} for mid, mib in model_mib.items() if mib}
    if models and not devices:
        devices = {"budget": {"name": "VRAM (no budget set)", "budget_mib": None}}
    return {"source": "config" if devices else "none", "devices": devices, "models": models}


def _shares(terms: dict[str, Any]) -> dict[str, int]:
    """Bytes per term -> MiB (rounded up), keeping weights, kv and compute apart; the rest as other."""

    def mib(n: Any) -> int:
        return -(-int(n) // MIB) if isinstance(n, (int, float)) and n > 0 else 0

    out = {t: mib(terms.get(t, 0)) for t in ("weights", "kv", "compute")}
    out["other"] = sum(mib(terms.get(t, 0)) for t in TERMS if t not in out)
    out["total"] = mib(terms.get("total", 0)) or sum(out.values())
    return out
