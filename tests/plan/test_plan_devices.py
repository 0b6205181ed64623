"""Per-device truth end to end (#17): the plan's figures per device, the rendered config's
``x-devices`` / ``x-deviceBudgetMiB``, and the supervisor admitting by them.

The chain is the real one: stand-in GGUF headers -> :func:`plan_host` -> the plan contract
(``to_json``) -> the renderer -> the supervisor's config loader -> its admission and scheduler.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from render.conftest import fake_inputs

from homelab.gguf.facts import facts_from_file
from homelab.inventory import ResolvedHost, load_host
from homelab.inventory.resolved import ResolvedModel
from homelab.inventory.schema import GPU
from homelab.plan.host import HostPlan, ModelInput, PlanError, plan_host
from homelab.render import render_host
from homelab.render.assemble import parse_plan
from homelab.supervisor.admission import over_budget
from homelab.supervisor.config import Config
from homelab.supervisor.config_load import parse_config
from homelab.supervisor.scheduler import Scheduler, Start, Stop

REPO = Path(__file__).resolve().parents[2]


def plan_of(host: ResolvedHost, standins: Path) -> HostPlan:
    inputs = {
        m.id: ModelInput(m, facts_from_file(standins / f"{m.recipe.name}.gguf"), source="stand-in")
        for m in host.models
    }
    return plan_host(host, inputs)


def supervisor_config(host: ResolvedHost, plan: HostPlan) -> Config:
    """Render the host with the plan's figures and load the config as ``homelab serve`` does."""
    files = render_host(fake_inputs(host, plan=parse_plan(plan.to_json())))
    return parse_config(files["config.yaml"])


def chat_model(host: ResolvedHost, mid: str, ctx: int, gpus: tuple[int, ...] | None = (0,), **server: object) -> ResolvedModel:
    """The duo3060 example's qwen3-4b (chat-small) under another ID, f16 KV at ``ctx``, without
    the example's draft (these tests are about placing one model's figures per device)."""
    small = next(m for m in host.models if m.id == "chat-small")
    flags = {"ctx-size": ctx, "cache-type-k": "f16", "cache-type-v": "f16", **server}
    return replace(small, id=mid, gpus=gpus, server=flags, draft=None)


# ------------------------------------------------------------------ the 2x3060 case


def test_duo3060_two_models_pinned_to_gpu0_refused_with_the_device_and_numbers(standin_dir: Path) -> None:
    """#17: two ~7600 MiB models pinned to GPU 0 of a 2x3060 host, allowed together by a set.
    The old summed budget (22,854 MiB) admitted both; per device they need twice GPU 0's share."""
    duo = load_host("duo3060", REPO)
    host = replace(duo, models=(chat_model(duo, "a", 32768), chat_model(duo, "b", 32768)), sets={"both": "a & b"})
    plan = plan_of(host, standin_dir)
    each = plan.to_json()["models"]["a"]["vram_mib"]
    assert set(each) == {"0"} and 7000 < each["0"] < 11427  # fits alone, pinned to gpu0
    [problem] = plan.problems
    print(problem)
    used = 2 * each["0"]
    assert (
        f"set 'both' (a & b) does not fit: gpu0 (RTX 3060, CUDA0): {used:,} MiB of 11,427 MiB budget, "
        f"{used - 11427:,} MiB over" in problem
    )
    # the rendered config carries the same figures per device; the supervisor never has both resident
    cfg = supervisor_config(host, plan)
    assert cfg.device_budget_mib == {"CUDA0": 11427, "CUDA1": 11427}
    assert cfg.models["a"].devices_mib == {"CUDA0": each["0"]}
    assert over_budget(cfg, ["a", "b"]) == {"CUDA0": (used, 11427)}
    s = Scheduler(cfg)
    assert s.request(1, "a", 0) == [Start("a", 0)]
    s.ready("a", 0)
    assert s.request(2, "b", 1) == []  # a is busy: b waits although the matrix allows a & b
    free = 11427 - each["0"]
    reason = f"evicted to start 'b' (CUDA0: needs {each['0']} MiB, {free} of 11427 MiB free)"
    assert s.done(1, 2) == [Stop("a", reason)]
    assert s.stopped("a", 3) == [Start("b", 1)]


def test_a_model_too_big_for_its_device_is_refused_by_plan_and_supervisor(standin_dir: Path) -> None:
    duo = load_host("duo3060", REPO)
    host = replace(duo, models=(chat_model(duo, "big", 65536),), sets={})
    plan = plan_of(host, standin_dir)
    need = plan.to_json()["models"]["big"]["vram_mib"]["0"]
    [problem] = plan.problems
    assert f"model big does not fit alone at ctx-size 65536: gpu0 (RTX 3060, CUDA0): {need:,} MiB of 11,427 MiB" in (
        problem
    )
    [reject] = Scheduler(supervisor_config(host, plan)).request(1, "big", 0)
    assert reject.status == 503 and f"needs {need} MiB on CUDA0" in reject.message  # type: ignore[union-attr]
    assert f"is 11427 MiB, {need - 11427} MiB short" in reject.message  # type: ignore[union-attr]


# ------------------------------------------------------------------ -dev / --device


def test_device_flag_places_the_model_as_llama_cpp_would(standin_dir: Path) -> None:
    duo = load_host("duo3060", REPO)
    models = (
        chat_model(duo, "on1", 4096, gpus=None, device="CUDA1"),  # both visible, CUDA1 chosen
        chat_model(duo, "pinned1", 4096, gpus=(1,), device="CUDA0"),  # only gpu1 visible: it is CUDA0 inside
        chat_model(duo, "both", 4096, gpus=None, device="CUDA1,CUDA0", **{"tensor-split": "3,1"}),
        chat_model(duo, "cpu", 4096, gpus=None, device="none"),
    )
    plan = plan_of(replace(duo, models=models, sets={}), standin_dir).to_json()["models"]
    assert set(plan["on1"]["vram_mib"]) == {"1"}
    assert set(plan["pinned1"]["vram_mib"]) == {"1"}
    # llama.cpp's order is the --device order: tensor-split 3,1 puts 3 parts on CUDA1 (host gpu1)
    assert plan["both"]["vram_mib"]["1"] > plan["both"]["vram_mib"]["0"]
    assert plan["cpu"]["vram_mib"] == {} and plan["cpu"]["ram_mib"] > 0


def test_device_flag_naming_an_unseen_device_is_a_plan_error(standin_dir: Path) -> None:
    duo = load_host("duo3060", REPO)
    host = replace(duo, models=(chat_model(duo, "x", 4096, gpus=(1,), device="CUDA1"),), sets={})
    with pytest.raises(PlanError, match=r"device 'CUDA1' is not a device its process sees \(CUDA0, or none; "
                                        r"with gpus: \[1\] they are numbered from 0\)"):
        plan_of(host, standin_dir)


# ------------------------------------------------------------------ plan and supervisor agree


@st.composite
def hosts(draw: st.DrawFn, duo: ResolvedHost) -> ResolvedHost:
    """1-4 GPUs of different sizes, system RAM or not; 2-3 chat models pinned to one GPU or split over several
    (with and without a tensor-split); one set per pair."""
    n = draw(st.integers(1, 4))
    gpus = [GPU(name=f"card{i}", vram_mib=draw(st.integers(3000, 16000))) for i in range(n)]
    models = []
    for k in range(draw(st.integers(2, 3))):
        ctx = draw(st.sampled_from([2048, 8192, 16384, 32768]))
        if n > 1 and draw(st.booleans()):
            used = tuple(sorted(draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=n, unique=True))))
            split = {"tensor-split": ",".join(str(draw(st.integers(1, 4))) for _ in used)} if draw(st.booleans()) else {}
            models.append(chat_model(duo, f"m{k}", ctx, gpus=used, **split))
        else:
            models.append(chat_model(duo, f"m{k}", ctx, gpus=(draw(st.integers(0, n - 1)),)))
    ids = [m.id for m in models]
    sets = {f"s{i}{j}": f"{ids[i]} & {ids[j]}" for i in range(len(ids)) for j in range(i + 1, len(ids))}
    ram = draw(st.one_of(st.none(), st.integers(300, 6000)))  # system RAM as a device, sometimes tight
    return replace(duo, host=duo.host.model_copy(update={"gpus": gpus, "ram_mib": ram}), models=tuple(models), sets=sets)


COUNTS = {"hosts": 0, "sets": 0, "refused": 0, "cpu": 0}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_plan_and_supervisor_agree_on_every_set(standin_dir: Path, data: st.DataObject) -> None:
    host = data.draw(hosts(load_host("duo3060", REPO)))
    plan = plan_of(host, standin_dir)
    cfg = supervisor_config(host, plan)
    for check in plan.sets:
        excess = over_budget(cfg, check.models)
        assert check.fits == (not excess), f"{check.set_name}: plan fits={check.fits}, supervisor over {excess}"
        COUNTS["sets"] += 1
        COUNTS["refused"] += not check.fits
    for mid, mp in plan.models.items():
        assert mp.fits_alone == (not over_budget(cfg, [mid]))
    COUNTS["hosts"] += 1
    COUNTS["cpu"] += "CPU" in cfg.device_budget_mib


def test_agreement_counts() -> None:
    if not COUNTS["hosts"]:
        pytest.skip("run with the property test")
    print(f"\nplan vs supervisor: {COUNTS['hosts']} hosts ({COUNTS['cpu']} with RAM budgeted), {COUNTS['sets']} sets, "
          f"{COUNTS['refused']} refused by both")
    assert COUNTS["refused"] > 0 and COUNTS["refused"] < COUNTS["sets"]


# ------------------------------------------------------------------ one naming for dashboard and config


@pytest.mark.parametrize(("backend", "prefix"), [("cuda", "CUDA"), ("hip", "ROCm"), ("vulkan", "Vulkan")])
def test_plan_devices_carry_the_llama_cpp_names_the_rendered_config_uses(
    standin_dir: Path, backend: str, prefix: str
) -> None:
    """plan.json's devices (gpu0.., cpu) each name their llama.cpp device, and through it the
    plan's budgets and per-model figures are exactly the rendered config's ``x-deviceBudgetMiB``
    and ``x-devices`` (the dashboard reads the first, the supervisor admits by the second)."""
    duo = load_host("duo3060", REPO)
    duo = replace(duo, host=duo.host.model_copy(update={"backend": backend, "ram_mib": 32768}))
    models = (chat_model(duo, "on-gpu1", 8192, gpus=(1,)), chat_model(duo, "split", 8192, gpus=None))
    host = replace(duo, models=models, sets={})
    plan = plan_of(host, standin_dir)
    data = plan.to_json()
    names = {d: v.get("llama_cpp") for d, v in data["devices"].items()}
    assert names == {"gpu0": f"{prefix}0", "gpu1": f"{prefix}1", "cpu": "CPU"}
    cfg = supervisor_config(host, plan)
    assert {names[d]: v["budget_mib"] for d, v in data["devices"].items()} == cfg.device_budget_mib
    for mid, m in data["models"].items():
        planned = {names[d]: -(-t["total"] // (1 << 20)) for d, t in m["devices"].items() if names.get(d)}
        assert {d: mib for d, mib in planned.items() if d in cfg.device_budget_mib} == cfg.models[mid].devices_mib
    assert set(plan.to_json()["models"]["on-gpu1"]["devices"]) <= {"gpu1", "cpu"}
    assert f"{prefix}1" in cfg.models["on-gpu1"].devices_mib
