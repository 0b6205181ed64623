"""Host plans on the example inventory's shapes: tables, sets, auto context, ways out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from homelab.gguf.facts import facts_from_file
from homelab.inventory import ResolvedHost, load_host
from homelab.plan.draft import DraftInput
from homelab.plan.estimate import MIB
from homelab.plan.host import (
    ModelInput,
    PlanError,
    estimate_for,
    model_settings,
    plan_host,
    usage,
)
from homelab.plan.report import render_plan

REPO = Path(__file__).resolve().parents[2]


def inputs_for(host: ResolvedHost, standins: Path) -> dict[str, ModelInput]:
    # a draft (hosts/duo3060.yaml's chat-small) is the 0.6B of its family
    small = DraftInput(facts_from_file(standins / "qwen3-0.6b.gguf"), "stand-in draft")
    return {
        m.id: ModelInput(
            m, facts_from_file(standins / f"{m.recipe.name}.gguf"), source="stand-in",
            draft=small if m.draft is not None else None,
        )
        for m in host.models
    }


def with_server(host: ResolvedHost, model_id: str, **flags: object) -> ResolvedHost:
    models = tuple(
        replace(m, server={**m.server, **flags}) if m.id == model_id else m for m in host.models
    )
    return replace(host, models=models)


def test_xtx_table_has_every_model_and_its_terms(standin_dir: Path) -> None:
    host = load_host("xtx", REPO)
    plan = plan_host(host, inputs_for(host, standin_dir))
    text = render_plan(plan)
    assert "gpu0 RX 7900 XTX: budget 22,840" in text
    for m in host.models:
        assert m.id in text
    for column in ("weights", "kv", "state", "compute", "runtime", "total"):
        assert column in text
    data = plan.to_json()
    m = data["models"]["qwen3.6-35b-a3b"]
    assert m["ctx_size"] == 102400 and set(m["vram_mib"]) == {"0"}
    assert m["vram_mib_total"] == m["vram_mib"]["0"]
    assert m["terms"]["recurrent"] > 0 and m["terms"]["kv"] > 0  # hybrid: both
    assert data["models"]["qwen3.6-35b-a3b-mtp"]["terms"]["mtp"] > 0
    assert data["models"]["glm-4.7-flash"]["terms"]["kv"] < data["models"]["mistral-small-3.2-24b"]["terms"]["kv"]
    assert data["devices"]["gpu0"]["budget_mib"] == int(24560 * 0.93)
    # every model alone is within budget on the example host
    assert plan.fits, plan.problems


def test_duo3060_per_gpu_tables_and_sets(standin_dir: Path) -> None:
    host = load_host("duo3060", REPO)
    plan = plan_host(host, inputs_for(host, standin_dir))
    text = render_plan(plan)
    assert "gpu0 RTX 3060" in text and "gpu1 RTX 3060" in text
    data = plan.to_json()
    assert set(data["models"]["chat-small"]["vram_mib"]) == {"0"}  # gpus: [0]
    small = data["models"]["think-small"]["vram_mib"]
    assert set(small) == {"0", "1"} and small["1"] > small["0"]  # tensor-split 1,1.5
    voice = next(s for s in data["sets"] if s["set"] == "voice")
    assert voice["models"] == ["chat-small", "think-small"]
    assert voice["used_mib"]["gpu0"] >= data["models"]["chat-small"]["vram_mib"]["0"] + small["0"] - 1
    assert voice["headroom_mib"]["gpu0"] == voice["budget_mib"]["gpu0"] - voice["used_mib"]["gpu0"]
    assert "voice" in text and "headroom" in text


def test_over_budget_set_fails_with_numbers_and_a_way_out(standin_dir: Path) -> None:
    # chat-small (pinned to gpu0, with its 0.6B draft) fits alone at 16k f16 but not beside
    # think-small's share of gpu0
    host = with_server(load_host("duo3060", REPO), "chat-small", **{"ctx-size": 16384})
    inputs = inputs_for(host, standin_dir)
    plan = plan_host(host, inputs)
    assert plan.models["chat-small"].fits_alone
    assert not plan.fits
    problem = next(p for p in plan.problems if "voice" in p)
    assert "set 'voice' (chat-small & think-small) does not fit" in problem
    assert "MiB over" in problem and "budget" in problem
    assert "ctx-size:" in problem
    # the suggested context really fits beside chat-small
    suggested = int(problem.split("ctx-size: ")[1].split(" ")[0])
    assert "Ways out for chat-small" in problem and suggested < 16384
    fixed = with_server(host, "chat-small", **{"ctx-size": suggested})
    assert plan_host(fixed, inputs_for(fixed, standin_dir)).fits
    assert "OVER" in render_plan(plan) and "DOES NOT FIT" in render_plan(plan)


def test_model_that_does_not_fit_alone_gets_concrete_options(standin_dir: Path) -> None:
    host = with_server(load_host("xtx", REPO), "mistral-small-3.2-24b", **{"ctx-size": 131072, "cache-type-k": "f16", "cache-type-v": "f16"})
    plan = plan_host(host, inputs_for(host, standin_dir))
    problem = next(p for p in plan.problems if "mistral" in p)
    assert "does not fit alone at ctx-size 131072" in problem
    assert "q8_0" in problem or "q4_0" in problem
    assert "n-gpu-layers:" in problem
    assert not plan.to_json()["models"]["mistral-small-3.2-24b"]["fits_alone"]


def test_weights_too_big_suggests_a_smaller_quant(standin_dir: Path) -> None:
    host = with_server(load_host("xtx", REPO), "mistral-small-3.2-24b", **{"ctx-size": 4096})
    host = replace(host, host=host.host.model_copy(update={"gpus": [host.host.gpus[0].model_copy(update={"vram_mib": 14336})]}))
    plan = plan_host(host, inputs_for(host, standin_dir))
    problem = next(p for p in plan.problems if "mistral" in p)
    bpw = float(problem.split("about ")[1].split(" bits")[0])
    now = float(problem.split("(this file: ")[1].split(")")[0])
    assert 3.0 < bpw < now
    # the suggested size really fits: scale the weights on the GPU to that many bits per weight
    mp = plan.models["mistral-small-3.2-24b"]
    gpu = mp.estimate.devices["GPU0"]
    assert gpu["total"] - gpu["weights"] * (1 - bpw / now) <= plan.budget["gpu0"] * 1.01


def test_moe_way_out_is_n_cpu_moe(standin_dir: Path) -> None:
    host = load_host("xtx", REPO)
    host = replace(host, host=host.host.model_copy(update={"gpus": [host.host.gpus[0].model_copy(update={"vram_mib": 16384})]}))
    plan = plan_host(host, inputs_for(host, standin_dir))
    problem = next(p for p in plan.problems if p.startswith("model qwen3.6-35b-a3b "))
    assert "n-cpu-moe:" in problem


def test_ctx_auto_picks_the_largest_context_that_fits(standin_dir: Path) -> None:
    # f16 KV: the budget, not the model's 128k training context, limits it
    host = with_server(load_host("xtx", REPO), "mistral-small-3.2-24b",
                       **{"ctx-size": "auto", "cache-type-k": "f16", "cache-type-v": "f16"})
    inputs = inputs_for(host, standin_dir)
    plan = plan_host(host, inputs)
    mp = plan.models["mistral-small-3.2-24b"]
    assert mp.ctx_auto and plan.fits
    budget = plan.budget["gpu0"]
    inp = inputs["mistral-small-3.2-24b"]
    at = lambda ctx: usage(*estimate_for(host, inp, model_settings(inp, ctx)))["gpu0"]  # noqa: E731
    assert at(mp.ctx_size) <= budget < at(mp.ctx_size + 256)
    assert plan.to_json()["models"]["mistral-small-3.2-24b"]["ctx_size"] == mp.ctx_size
    assert "* ctx-size chosen by the plan" in render_plan(plan)


def test_ctx_auto_takes_the_tightest_set(standin_dir: Path) -> None:
    base = load_host("duo3060", REPO)
    host = with_server(base, "chat-small", **{"ctx-size": "max"})
    plan = plan_host(host, inputs_for(host, standin_dir))
    assert plan.fits, plan.problems
    voice = next(c for c in plan.sets if c.set_name == "voice")
    alone = plan_host(replace(host, sets={}), inputs_for(host, standin_dir))
    # beside think-small on gpu0 it gets less context than alone
    assert plan.models["chat-small"].ctx_size < alone.models["chat-small"].ctx_size
    assert all(voice.used[d] <= voice.budget[d] for d in voice.budget)


def test_cpu_host_without_ram_is_a_report_and_with_ram_a_check(standin_dir: Path) -> None:
    host = load_host("local", REPO)
    plan = plan_host(host, inputs_for(host, standin_dir))
    assert plan.fits and not plan.budget and "report only" in render_plan(plan)
    small = replace(host, host=host.host.model_copy(update={"ram_mib": 512}))
    plan = plan_host(small, inputs_for(small, standin_dir))
    assert not plan.fits and "cpu:" in plan.problems[0]


def test_set_naming_an_unknown_model_is_a_user_error(standin_dir: Path) -> None:
    host = load_host("duo3060", REPO)
    bad = replace(host, sets={"x": "chat-small & nobody"})
    with pytest.raises(PlanError, match="nobody"):
        plan_host(bad, inputs_for(host, standin_dir))


def test_plan_json_vram_is_rounded_up_mib(standin_dir: Path) -> None:
    host = load_host("xtx", REPO)
    plan = plan_host(host, inputs_for(host, standin_dir))
    mp = plan.models["qwen3.5-9b"]
    total = mp.estimate.devices["GPU0"]["total"]
    assert plan.to_json()["models"]["qwen3.5-9b"]["vram_mib"]["0"] == -(-total // MIB)


def test_unset_ctx_size_is_planned_like_auto(standin_dir: Path) -> None:
    base = load_host("xtx", REPO)
    models = tuple(
        replace(m, server={k: v for k, v in m.server.items() if k != "ctx-size"} | {"cache-type-k": "f16", "cache-type-v": "f16"})
        if m.id == "mistral-small-3.2-24b" else m
        for m in base.models
    )
    host = replace(base, models=models)
    plan = plan_host(host, inputs_for(host, standin_dir))
    mp = plan.models["mistral-small-3.2-24b"]
    assert mp.ctx_auto and plan.fits and 4096 < mp.ctx_size < 131072
