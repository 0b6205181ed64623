"""Human-readable plan: one table per device with each model's terms, then the sets."""

from __future__ import annotations

from collections.abc import Sequence

from .estimate import MIB, Estimate
from .host import HostPlan

COLUMNS = ("weights", "kv", "recurrent", "compute", "output", "mtp", "mmproj", "draft", "overhead", "total")
HEADERS = ("weights", "kv", "state", "compute", "output", "mtp", "mmproj", "draft", "runtime", "total")


def mib(n: int) -> str:
    return f"{n / MIB:,.0f}"


def mib_up(n: int) -> str:
    """Rounded up, as the plan JSON counts use."""
    return f"{-(-n // MIB):,}"


def _table(rows: Sequence[Sequence[str]], right_from: int = 1) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.ljust(widths[i]) if i < right_from else c.rjust(widths[i]) for i, c in enumerate(r)]
        out.append("  ".join(cells).rstrip())
    return out


def render_plan(plan: HostPlan, oracle: dict[str, dict[str, int]] | None = None) -> str:
    """The per-device tables. ``oracle``: model -> host device -> llama-fit-params MiB, shown beside ours."""
    lines = [f"VRAM plan for {plan.host} ({plan.backend}), MiB"]
    devices = list(plan.budget) or sorted({d for mp in plan.models.values() for d in mp.host_devices()})
    for dev in devices:
        budget = plan.budget.get(dev)
        name = plan.device_names.get(dev, "system RAM" if dev == "cpu" else dev)
        head = f"{dev} {name}"
        if budget is not None:
            head += f": budget {budget // MIB:,}"
        if dev in plan.kept:  # this host is a head; the worker keeps some for its own models
            k = plan.kept[dev]
            head += f" ({((budget or 0) + k.bytes) // MIB:,} less {mib_up(k.bytes)} kept for {dev.split(':')[0]}'s own {k.group})"
        if dev in plan.reserved and budget is not None:  # this host is a worker
            r = plan.reserved[dev]
            head += f"; RPC load reserved {mib_up(r.bytes)}; left for this host's models {(budget - r.bytes) // MIB:,}"
        lines += ["", head]
        rows: list[list[str]] = [["model", "ctx", *HEADERS] + (["fit-params"] if oracle else [])]
        for mid, mp in plan.models.items():
            terms = mp.host_devices().get(dev)
            if not terms:
                continue
            ctx = f"{mp.ctx_size}" + ("*" if mp.ctx_auto else "")
            row = [mid, ctx, *(mib(terms[c]) for c in COLUMNS)]
            if oracle:
                theirs = oracle.get(mid, {}).get(dev)
                row.append("-" if theirs is None else f"{theirs:,}")
            rows.append(row)
        if len(rows) > 1:
            lines += ["  " + ln for ln in _table(rows, right_from=1)]
        else:
            lines.append("  (no model uses it)")
    if plan.reserved:
        lines += [
            "",
            "RPC load reserved for heads (this host is their RPC worker; each head's largest resident group, added up)",
        ]
        rows = [["device", "head", "group", "models", "MiB"]]
        for dev, r in plan.reserved.items():
            for i, load in enumerate(r.loads):
                rows.append([dev if i == 0 else "", load.head, load.group, ", ".join(load.models), mib_up(load.bytes)])
        lines += ["  " + ln for ln in _table(rows, right_from=4)]
    if plan.sets:
        lines += ["", "sets (any subset of an alternative may be resident together)"]
        rpc = any(c.reserved for c in plan.sets)
        rows = [["set", "models", "device", "used"] + (["rpc"] if rpc else []) + ["budget", "headroom", "status"]]
        for c in plan.sets:
            for i, dev in enumerate(c.budget):
                # as in the plan JSON: use rounded up, budget rounded down
                used = -(-c.used.get(dev, 0) // MIB)
                held = -(-c.reserved.get(dev, 0) // MIB)
                budget = c.budget[dev] // MIB
                rows.append(
                    [
                        c.set_name if i == 0 else "",
                        " & ".join(c.models) if i == 0 else "",
                        dev,
                        f"{used:,}",
                        *([f"{held:,}"] if rpc else []),
                        f"{budget:,}",
                        f"{budget - used - held:,}",
                        "ok" if c.used.get(dev, 0) + c.reserved.get(dev, 0) <= c.budget[dev] else "OVER",
                    ]
                )
        lines += ["  " + ln for ln in _table(rows, right_from=3)]
    if any(mp.ctx_auto for mp in plan.models.values()):
        lines += ["", "* ctx-size chosen by the plan (auto)"]
    split_models = [mp for mp in plan.models.values() if mp.rpc]
    if split_models:
        lines += ["", "RPC split (devices in llama.cpp's order: RPC workers first, then local GPUs)"]
        rows = [["model", "device", "where", "layers", "MiB"]]
        for mp in split_models:
            for i, part in enumerate(mp.split()):
                where = part["host_device"] + (f" ({part['endpoint']})" if "endpoint" in part else "")
                rows.append([mp.id if i == 0 else "", part["device"], where, part["layers"], f"{part['mib']:,}"])
            given = ",".join(f"{x:g}" for x in mp.estimate.settings.tensor_split)
            source = "chosen by the plan" if mp.tensor_split else "from the recipe"
            rows.append(["", "", f"--tensor-split {given} ({source})", "", ""])
        lines += ["  " + ln for ln in _table(rows, right_from=4)]
    for note in plan.notes:
        lines.append(f"note: {note}")
    for mp in plan.models.values():
        for note in mp.estimate.notes:
            lines.append(f"note: {mp.id}: {note}")
    if plan.problems:
        lines += [""] + [f"DOES NOT FIT: {p}" for p in plan.problems]
    else:
        lines += ["", "every model and set fits" if plan.budget else "report only (no budget)"]
    return "\n".join(lines)


def render_estimate(est: Estimate) -> str:
    g = est.geometry
    s = est.settings
    lines = [
        f"context: ctx-size {g.n_ctx} ({g.n_seq} sequence(s), {'unified' if s.kv_unified else 'split'} KV, "
        f"{g.kv_cells} cells per stream"
        + (f", {g.swa_cells} in sliding-window layers" if g.swa_cells else "")
        + f"), ubatch {g.n_ubatch}, K {s.cache_type_k} V {s.cache_type_v}, flash-attn {'on' if s.flash_attn else 'off'}",
    ]
    rows = [["device", *HEADERS]]
    for dev, terms in est.devices.items():
        rows.append([dev, *(mib(terms[c]) for c in COLUMNS)])
    rows.append(["all", *(mib(getattr(est, c)) for c in COLUMNS)])
    lines += _table(rows)
    lines.append("(MiB; runtime = GPU context overhead per process, not in llama.cpp's own reports)")
    lines += [f"note: {n}" for n in est.notes]
    return "\n".join(lines)
