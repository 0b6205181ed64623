"""The plan stage's edge: gather facts, plan, compare with llama.cpp's dry run, write the JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import HomelabError
from ..files import atomic_write_text
from ..inventory.resolved import ResolvedHost
from ..llamacpp.stage import current_build
from ..lock import Lock, read_lock
from ..settings import state_dir
from ..stage import Stage, code_digest, digest, file_bytes
from .estimate import MIB
from .host import HostPlan, ModelInput, PlanError, host_budget, host_device, plan_host
from .observe import FitReport, OracleError, help_flags, run_fit_params
from .report import render_plan
from .rpcload import InputsOf, related_digest, rpc_reservations, workers_for

FIT_PARAMS = "llama-fit-params"


def plan_path(host: str) -> Path:
    """The plan contract file the renderer and the supervisor read."""
    return state_dir() / "plans" / f"{host}.json"


def write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_plan(host: str) -> dict | None:
    """The last written plan of ``host`` (for render and the supervisor), or None."""
    try:
        return json.loads(plan_path(host).read_text())
    except FileNotFoundError:
        return None


def host_lock(host: ResolvedHost) -> Lock | None:
    return read_lock(host.lock_file)


def gather_inputs(host: ResolvedHost, lock: Lock | None) -> tuple[dict[str, ModelInput], list[str]]:
    """Every model's facts. A host with a budget needs them all (the plan must prove the fit);
    a report-only host (CPU, no ram_mib) leaves out a model whose header cannot be read (offline,
    before lock and fetch) with a note instead of failing the deploy."""
    # lazily: gguf (numpy) and requests; plan_path() callers need neither
    from .sources import model_input

    budget, _ = host_budget(host)
    inputs: dict[str, ModelInput] = {}
    missing: list[str] = []
    for m in host.models:
        try:
            inputs[m.id] = model_input(host, m, lock)
        except HomelabError as exc:
            if budget:
                raise
            missing.append(f"{m.id} left out of the report: {exc}")
    return inputs, missing


def host_inputs(host: ResolvedHost) -> dict[str, ModelInput]:
    """Another host's model facts (a worker's own models, a head's), as its own plan reads them."""
    return gather_inputs(host, host_lock(host))[0]


def make_plan(
    host: ResolvedHost,
    inputs: dict[str, ModelInput] | None = None,
    inputs_of: InputsOf | None = None,
) -> tuple[HostPlan, dict[str, ModelInput]]:
    """The host's plan. With RPC: its workers keep room for their own models, and as a worker it
    keeps room for the heads that use it (:mod:`.rpcload`); ``inputs_of`` gives other hosts' model
    facts (default: their locks and headers, like their own plans)."""
    missing: list[str] = []
    inputs_of = inputs_of or host_inputs
    if inputs is None:
        inputs, missing = gather_inputs(host, host_lock(host))
    if missing:
        host = replace(host, models=tuple(m for m in host.models if m.id in inputs), sets={})
    workers = workers_for(host, inputs_of) if any(m.rpc_workers for m in host.models) else None
    reserved, rpc_notes = rpc_reservations(host, inputs, inputs_of) if host.host.rpc_server is not None else ({}, [])
    plan = plan_host(host, inputs, workers, reserved)
    plan.notes.extend(missing + rpc_notes)
    return plan, inputs


def write_plan(plan: HostPlan, oracle: dict | None = None) -> Path:
    data = plan.to_json()
    if oracle:
        data["oracle"] = oracle
    path = plan_path(plan.host)
    write_json_atomic(path, data)
    return path


# --------------------------------------------------------------------------- oracle


def find_fit_params(host: ResolvedHost, explicit: str | None = None) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise PlanError(f"--fit-params {path}: no such file (build it with llama_cpp.targets: [llama-fit-params])")
        return path
    try:
        build = current_build(host.name)
    except Exception:  # the build stage's own errors: no build is simply "no oracle"
        build = None
    if build is not None and (build.bin_dir / FIT_PARAMS).is_file():
        return build.bin_dir / FIT_PARAMS
    return None


@dataclass
class OracleResult:
    per_model: dict[str, dict[str, int]] = field(default_factory=dict)
    """model -> host device -> MiB (model + context + compute) from llama-fit-params."""
    reports: dict[str, FitReport] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {
            "per_model_mib": self.per_model,
            "rows": {m: [r.__dict__ for r in rep.rows] for m, rep in self.reports.items()},
            "problems": self.problems,
        }


def oracle_flags(plan: HostPlan, inputs: dict[str, ModelInput], model_id: str) -> dict[str, object]:
    flags: dict[str, object] = dict(inputs[model_id].model.server)
    flags["ctx-size"] = plan.models[model_id].ctx_size
    flags["fit"] = "off"  # report the flags as given; do not let it adjust them
    return flags


def run_oracle(fit_bin: Path, plan: HostPlan, inputs: dict[str, ModelInput]) -> OracleResult:
    """llama-fit-params with each model's real flags, where the model file is on disk.

    Flags llama-fit-params does not take (server-only ones: jinja, alias, metrics...) are left out
    of its run; when a llama-server sits beside it, every flag is also checked against that
    binary's ``--help`` and an unknown one is reported (it would fail the deploy).
    """
    result = OracleResult()
    fit_known = help_flags(fit_bin)
    server_bin = fit_bin.with_name("llama-server")
    server_known = help_flags(server_bin) if server_bin.is_file() else None
    for mid, inp in inputs.items():
        flags = oracle_flags(plan, inputs, mid)
        if server_known is not None:
            unknown = [k for k in inp.model.server if k not in server_known]
            if unknown:
                result.problems.append(f"{mid}: {server_bin} does not accept " + ", ".join(f"--{k}" for k in unknown))
        source = Path(inp.source)
        if not source.is_file():
            result.problems.append(
                f"{mid}: not fetched yet ({inp.source}); run `doit fetch` for llama.cpp's own numbers"
            )
            continue
        fit_flags = {k: v for k, v in flags.items() if k in fit_known}
        try:
            report = run_fit_params(fit_bin, source, fit_flags)
        except OracleError as exc:
            result.problems.append(f"{mid}: {exc}")
            continue
        result.reports[mid] = report
        if report.rejected:
            result.problems.append(f"{mid}: {fit_bin.name} rejected the flags: {report.rejected}")
            continue
        gpu_index = plan.models[mid].gpu_index
        per: dict[str, int] = {}
        gpu_rows = [r for r in report.rows if r.device.lower() != "host"]
        for j, row in enumerate(gpu_rows):
            per[host_device(f"GPU{j}", gpu_index)] = row.total_mib
        for row in report.rows:
            if row.device.lower() == "host":
                per["cpu"] = row.total_mib
        result.per_model[mid] = per
    return result


def ours_mib(plan: HostPlan, model_id: str) -> dict[str, int]:
    """Our estimate per host device as llama-fit-params counts: model + context (KV, state) + compute."""
    out = {}
    for dev, terms in plan.models[model_id].host_devices().items():
        out[dev] = -(-(terms["weights"] + terms["kv"] + terms["recurrent"] + terms["compute"]) // MIB)
    return out


# --------------------------------------------------------------------------- the stage


def plan_fingerprint(host: ResolvedHost) -> str:
    """What the plan depends on: the merged host, its lock, the hosts it shares GPUs with over
    RPC (a head's workers; for a worker, the heads using it: see :func:`.rpcload.related_digest`)
    and the planner's own code (this package and what it imports)."""
    return digest(host.as_dict(), file_bytes(host.lock_file), related_digest(host), code_digest("homelab.plan"))


def _plan(host: ResolvedHost) -> None:
    plan, _ = make_plan(host)
    write_plan(plan)
    print(render_plan(plan))
    if not plan.fits:
        raise PlanError(f"host {host.name} does not fit: " + " | ".join(plan.problems))


PLAN = Stage(
    name="plan",
    doc="Prove every model and resident set fits the host's VRAM budget",
    consumes=("host file and recipes", "<host>.lock.json", "RPC-related hosts", "the planner's code"),
    produces="$HOMELAB_STATE/plans/<host>.json",
    after=("lock",),
    fingerprint=plan_fingerprint,
    run=_plan,
    target=lambda host: plan_path(host.name),
)
