"""RPC split in the plan: llama.cpp's device order, the chosen layer split, per-device budgets."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from homelab.gguf.facts import facts_from_file
from homelab.inventory import ResolvedHost, load_host
from homelab.plan.draft import DraftInput, with_draft
from homelab.plan.estimate import (
    CPU,
    MIB,
    RpcDevice,
    estimate,
    layer_devices,
    settings_from_flags,
    split_points,
)
from homelab.plan.host import ModelInput, PlanError, plan_host
from homelab.plan.observe import parse_server_log
from homelab.plan.report import render_plan
from homelab.plan.rpc import Worker, balance_layers, load_workers, proportional_layers
from homelab.plan.sources import model_inputs
from homelab.plan.stage import make_plan
from homelab.render.assemble import parse_plan
from homelab.testing.tiny_gguf import TinySpec, write_tiny_llama

DEEP = TinySpec(n_embd=256, n_head=8, n_head_kv=2, n_ff=1024, n_layer=12, name="deep")


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    logging.getLogger("gguf").setLevel(logging.WARNING)
    return write_tiny_llama(tmp_path_factory.mktemp("rpc") / "deep.gguf", DEEP)


def inventory(
    root: Path,
    model: Path,
    *,
    w1: str = "backend: cpu\nram_mib: 300\n",
    w2: str = "backend: cpu\nram_mib: 100\n",
    head: str = "backend: cpu\nram_mib: 4096\n",
    server: str = "{ctx-size: 4096, parallel: 1}",
    rpc: str = "[w1, w2]",
) -> Path:
    (root / "hosts").mkdir(parents=True)
    (root / "recipes").mkdir()
    (root / "recipes" / "deep.yaml").write_text(f"name: deep\nsource: {{path: {{path: {model}}}}}\nserver: {server}\n")
    (root / "hosts" / "head.yaml").write_text(f"name: head\n{head}models:\n  - recipe: deep\n    rpc: {rpc}\n")
    (root / "hosts" / "w1.yaml").write_text(f"name: w1\n{w1}rpc_server: {{listen: '127.0.0.1:50052'}}\n")
    (root / "hosts" / "w2.yaml").write_text(f"name: w2\n{w2}rpc_server: {{listen: '127.0.0.1:50053'}}\n")
    return root


# ------------------------------------------------------------------------ llama.cpp's rules


def test_rpc_devices_come_before_the_local_gpus(deep_model: Path) -> None:
    facts = facts_from_file(deep_model)
    s = settings_from_flags({"tensor-split": "1,1"})
    layers = layer_devices(facts, s, gpus=[24000.0], rpc=[RpcDevice(24000.0)])
    # 12 repeating layers + output: the first half on the RPC device, the rest and output local
    assert layers[0] == "RPC0" and layers[-1] == "GPU0"
    assert layers.count("RPC0") == 7 and layers.count("GPU0") == 6


def test_whole_layer_counts_land_exactly_where_llama_cpp_puts_them(deep_model: Path) -> None:
    facts = facts_from_file(deep_model)
    n = facts.n_layer_all + 1  # 13 layer units with the output layer
    for counts in ([10, 3], [1, 12], [6, 0, 7], [4, 5, 4], [0, 13]):
        s = settings_from_flags({"tensor-split": ",".join(map(str, counts))})
        rpc = [RpcDevice(1.0)] * len(counts)
        layers = layer_devices(facts, s, gpus=[], rpc=rpc)
        assert [layers.count(f"RPC{j}") for j in range(len(counts))] == counts
        assert len(layers) == n
        # contiguous, in device order
        assert layers == sorted(layers, key=lambda d: int(d[3:]))


def test_split_points_are_float32_like_llama_cpp() -> None:
    # 0.1 + 0.2 in float32 normalised by its own sum is exactly 1.0 at the end
    points = split_points([0.1, 0.2, 0.7])
    assert points[-1] == 1.0 and points[0] == pytest.approx(0.1, rel=1e-6)


def test_cpu_host_with_rpc_offloads_to_the_workers_only(deep_model: Path) -> None:
    facts = facts_from_file(deep_model)
    s = settings_from_flags({"ctx-size": 4096, "parallel": 1, "tensor-split": "10,3"})
    est = estimate(facts, s, backend="cpu", rpc=[RpcDevice(300.0), RpcDevice(100.0)])
    assert set(est.devices) == {CPU, "RPC0", "RPC1"}
    # the input embedding stays in the head's RAM; every layer's weights and KV on the workers
    assert est.devices[CPU]["weights"] == next(t.n_bytes for t in facts.tensors if t.name == "token_embd.weight")
    assert est.devices[CPU]["kv"] == 0
    kv0, kv1 = est.devices["RPC0"]["kv"], est.devices["RPC1"]["kv"]
    assert kv0 == 5 * kv1  # 10 of the 12 KV layers on RPC0, 2 on RPC1
    assert any("pipeline parallelism over 2 devices" in n for n in est.notes)


def test_proportional_layers_and_balancing() -> None:
    assert proportional_layers(13, [300, 100]) == [10, 3]
    assert proportional_layers(13, [1, 1, 1]) == [5, 4, 4]
    assert proportional_layers(5, [0, 0]) == [3, 2]
    # a fixed cost of 10 per device, 4 per layer; budgets 60 and 30
    def overuse(counts: list[int]) -> list[float]:
        return [10 + 4 * counts[0] - 60.0, 10 + 4 * counts[1] - 30.0]

    assert balance_layers([6, 7], overuse) == [8, 5]  # 42/60 and 30/30: the first split that fits
    # nothing fits: it stops at the best split instead of looping
    assert balance_layers([20, 20], lambda c: [4.0 * c[0], 4.0 * c[1]]) == [20, 20]


def test_a_draft_pinned_to_the_second_rpc_device_lands_on_it(deep_model: Path) -> None:
    """``spec-draft-device: RPC1``: the draft's list (one device) replaces the model's; estimated
    on that device alone (there named RPC0), its share goes back to the model's RPC1."""
    facts = facts_from_file(deep_model)
    s = settings_from_flags({"ctx-size": 4096, "parallel": 1, "tensor-split": "3,10"})
    rpc = [RpcDevice(300.0), RpcDevice(100.0)]
    main = estimate(facts, s, backend="cpu", rpc=rpc)
    draft = with_draft(main, DraftInput(facts, "tiny"), {"spec-draft-device": "RPC1"}, mtp=False, backend="cpu",
                       gpus=[], rpc=rpc)  # fmt: skip
    alone = estimate(facts, replace(s, tensor_split=()), backend="cpu", rpc=[rpc[1]])
    assert draft.devices["RPC0"]["draft"] == 0
    assert draft.devices["RPC1"]["draft"] == alone.devices["RPC0"]["total"] - alone.devices["RPC0"]["overhead"] > 0
    assert draft.devices[CPU]["draft"] == alone.devices[CPU]["total"]
    # the device list replaces the model's: both workers, none of the model's split
    both = with_draft(main, DraftInput(facts, "tiny"), {"devd": "RPC0,RPC1"}, mtp=False, backend="cpu", gpus=[],
                      rpc=rpc)  # fmt: skip
    assert both.devices["RPC0"]["draft"] > both.devices["RPC1"]["draft"] > 0  # by size 300:100, not the model's 3:10


# ------------------------------------------------------------------------ the host plan


def test_plan_splits_by_worker_budgets_and_reports_every_device(deep_model: Path, tmp_path: Path) -> None:
    inv = inventory(tmp_path / "inv", deep_model)
    host = load_host("head", inv)
    plan, _ = make_plan(host)
    assert plan.fits, plan.problems
    data = plan.to_json()
    m = data["models"]["deep"]
    assert m["tensor_split"] == [10, 3]
    assert set(m["rpc_mib"]) == {"w1:cpu", "w2:cpu"}
    assert data["devices"]["w1:cpu"]["budget_mib"] == int(300 * 0.93)
    assert data["devices"]["w2:cpu"]["budget_mib"] == int(100 * 0.93)
    split = {p["host_device"]: p for p in m["split"]}
    assert split["w1:cpu"]["layers"] == "0-9" and split["w1:cpu"]["buffer"] == "RPC0[127.0.0.1:50052]"
    assert split["w2:cpu"]["layers"] == "10-11, output" and split["w2:cpu"]["buffer"] == "RPC0[127.0.0.1:50053]"
    assert split["w1:cpu"]["mib"] == m["rpc_mib"]["w1:cpu"]
    # the weights on both workers add up to every layer's (the input embedding stays on the head)
    on_workers = sum(m["devices"][d]["weights"] for d in ("w1:cpu", "w2:cpu"))
    assert on_workers + m["devices"]["cpu"]["weights"] == m["terms"]["weights"]
    text = render_plan(plan)
    assert "w2:cpu system RAM on w2 (rpc 127.0.0.1:50053): budget 93" in text
    assert "--tensor-split 10,3 (chosen by the plan)" in text
    # the render reads the split from the plan contract
    assert parse_plan(data)["deep"].tensor_split == (10.0, 3.0)


def test_split_moves_layers_off_a_worker_that_is_too_small(deep_model: Path, tmp_path: Path) -> None:
    # budgets 139 and 27 MiB: in proportion w2 would get 2 of the 13 layers, more than its budget
    # beside its compute buffer; the plan moves one to w1 so that w2 fits
    assert proportional_layers(13, [int(150 * 0.93 * MIB), int(30 * 0.93 * MIB)]) == [11, 2]
    inv = inventory(tmp_path / "inv", deep_model, w1="backend: cpu\nram_mib: 150\n", w2="backend: cpu\nram_mib: 30\n")
    plan, _ = make_plan(load_host("head", inv))
    assert plan.fits, plan.problems
    m = plan.to_json()["models"]["deep"]
    assert m["tensor_split"] == [12, 1]
    assert m["rpc_mib"]["w2:cpu"] <= int(30 * 0.93)


def test_a_split_that_cannot_fit_names_the_device_and_host(deep_model: Path, tmp_path: Path) -> None:
    inv = inventory(tmp_path / "inv", deep_model, w1="backend: cpu\nram_mib: 40\n", w2="backend: cpu\nram_mib: 40\n")
    plan, _ = make_plan(load_host("head", inv))
    assert not plan.fits
    assert "model deep does not fit alone" in plan.problems[0]
    assert "w1:cpu" in plan.problems[0] or "w2:cpu" in plan.problems[0]


def test_gpu_worker_budget_and_runtime_overhead(deep_model: Path, tmp_path: Path) -> None:
    inv = inventory(
        tmp_path / "inv",
        deep_model,
        head="backend: cuda\ngpus:\n  - {name: RTX 4090, vram_mib: 24564}\n",
        w1="backend: hip\nvram_budget: 0.9\ngpus:\n  - {name: RX 7900 XTX, vram_mib: 24560}\n",
        rpc="[w1]",
    )
    plan, _ = make_plan(load_host("head", inv))
    data = plan.to_json()
    assert data["devices"]["w1:gpu0"]["budget_mib"] == int(24560 * 0.9)
    m = data["models"]["deep"]
    # RPC first, then the head's own GPU; budgets 22,104 and 22,844 MiB: 6 + 7 layers
    assert [p["device"] for p in m["split"]] == ["RPC0", "GPU0"]
    assert m["tensor_split"] == [6, 7]
    # the worker's device carries its own runtime (hip 600), the head's GPU cuda's 400
    assert m["devices"]["w1:gpu0"]["overhead"] == 600 * MIB
    assert m["devices"]["gpu0"]["overhead"] == 400 * MIB
    assert set(m["vram_mib"]) == {"0"}  # vram_mib keeps host GPU indices only (the render's contract)


def test_recipe_tensor_split_is_honoured_and_checked(deep_model: Path, tmp_path: Path) -> None:
    inv = inventory(tmp_path / "inv", deep_model)
    head = load_host("head", inv)
    workers = load_workers(head)

    def with_split(split: str) -> ResolvedHost:
        # set after loading: the inventory's own check counts local GPUs only (see the notes)
        model = replace(head.models[0], server={**head.models[0].server, "tensor-split": split})
        return replace(head, models=(model,))

    host = with_split("1,1")
    plan = plan_host(host, model_inputs(host), workers)
    m = plan.to_json()["models"]["deep"]
    assert m["tensor_split"] == []  # the recipe's own split stands; the render keeps it
    assert [p["n_layers"] for p in m["split"]] == [7, 6]
    assert "--tensor-split 1,1 (from the recipe)" in render_plan(plan)
    host = with_split("1,1,1")
    with pytest.raises(PlanError, match=r"tensor-split has 3 values but the model has 2 devices .*RPC0 = w1:cpu"):
        plan_host(host, model_inputs(host), workers)


def test_cpu_worker_without_ram_is_a_clear_error(deep_model: Path, tmp_path: Path) -> None:
    inv = inventory(tmp_path / "inv", deep_model, w2="backend: cpu\n")
    with pytest.raises(PlanError, match=r"w2\.yaml: the RPC worker w2 offers its CPU.*set ram_mib"):
        make_plan(load_host("head", inv))


def test_worker_without_rpc_server_is_a_clear_error(deep_model: Path, tmp_path: Path) -> None:
    inv = inventory(tmp_path / "inv", deep_model)
    head = load_host("head", inv)
    workers = load_workers(head)
    (inv / "hosts" / "w2.yaml").write_text("name: w2\nbackend: cpu\nram_mib: 100\n")
    workers["w2"] = Worker(load_host("w2", inv), "127.0.0.1:50053")
    with pytest.raises(PlanError, match=r"w2\.yaml: host w2 is named as an RPC worker but has no rpc_server"):
        plan_host(head, model_inputs(head), workers)


def test_auto_context_counts_the_workers_budgets(deep_model: Path, tmp_path: Path) -> None:
    inv = inventory(tmp_path / "inv", deep_model, server="{ctx-size: auto, parallel: 1}")
    plan, _ = make_plan(load_host("head", inv))
    assert plan.fits, plan.problems
    m = plan.to_json()["models"]["deep"]
    assert m["ctx_auto"] and m["ctx_size"] >= 4096
    for dev in ("w1:cpu", "w2:cpu"):
        assert m["rpc_mib"][dev] <= plan.to_json()["devices"][dev]["budget_mib"]


def test_example_rig4090_splits_think_split_with_rpc3090(standin_dir: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    host = load_host("rig4090", repo)
    inputs = {
        m.id: ModelInput(m, facts_from_file(standin_dir / f"{m.recipe.name}.gguf"), source="stand-in")
        for m in host.models
    }
    plan = plan_host(host, inputs, load_workers(host))
    assert plan.fits, plan.problems
    data = plan.to_json()
    m = data["models"]["think-split"]
    # the worker's RTX 3090 first (RPC0), then the head's RTX 4090; 65 layer units
    assert [p["host_device"] for p in m["split"]] == ["rpc3090:gpu0", "gpu0"]
    assert m["split"][0]["buffer"] == "RPC0[192.168.1.31:50052]"
    assert sum(m["tensor_split"]) == 65 and all(x > 0 for x in m["tensor_split"])
    assert data["devices"]["rpc3090:gpu0"]["budget_mib"] == int(24576 * 0.93)
    assert data["models"]["chat-4b"]["rpc_mib"] == {} and data["models"]["chat-4b"]["tensor_split"] == []


def test_log_parser_keeps_the_last_load_and_rpc_buffer_names() -> None:
    # at -lv 5 llama-server logs --fit's dry run (no allocation) before the real load
    log = "\n".join([
        "0.00.201.915 I load_tensors: loading model tensors, this can take a while... (load_mode = none)",
        "0.00.208.744 I load_tensors: RPC0[127.0.0.1:36987] model buffer size =     0.00 MiB",
        "0.00.228.103 I sched_reserve: RPC0[127.0.0.1:48561] compute buffer size =    30.05 MiB",
        "0.00.228.104 I sched_reserve: RPC0[127.0.0.1:36987] compute buffer size =    27.04 MiB",
        "0.00.250.000 I load_tensors: loading model tensors, this can take a while... (load_mode = mmap)",
        "0.00.262.694 I load_tensors:   CPU_Mapped model buffer size =     0.25 MiB",
        "0.00.262.702 I load_tensors: RPC0[127.0.0.1:36987] model buffer size =     7.51 MiB",
        "0.00.433.551 I llama_kv_cache: RPC0[127.0.0.1:36987] KV buffer size =     2.00 MiB",
        "0.00.543.120 I sched_reserve: RPC0[127.0.0.1:36987] compute buffer size =    25.04 MiB",
        "0.00.543.125 I sched_reserve:        CPU compute buffer size =    21.07 MiB",
    ])
    obs = parse_server_log(log)
    assert obs.model == {"CPU_Mapped": round(0.25 * MIB), "RPC0[127.0.0.1:36987]": round(7.51 * MIB)}
    assert obs.kv == {"RPC0[127.0.0.1:36987]": 2 * MIB}
    assert obs.compute == {"RPC0[127.0.0.1:36987]": round(25.04 * MIB), "CPU": round(21.07 * MIB)}
