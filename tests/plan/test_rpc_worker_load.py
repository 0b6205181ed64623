"""A worker that heads put layers on: its own plan keeps their load free, and the heads leave
room for the worker's own models (homelab/plan/rpcload.py). Pure: tiny GGUFs and stand-ins."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from homelab.gguf.facts import facts_from_file
from homelab.inventory import ResolvedHost, load_host
from homelab.plan.estimate import MIB
from homelab.plan.host import ModelInput, PlanError, host_device, usage
from homelab.plan.report import render_plan
from homelab.plan.rpcload import heads_of
from homelab.plan.stage import make_plan, plan_fingerprint
from homelab.testing.tiny_gguf import TinySpec, write_tiny_llama

DEEP = TinySpec(n_embd=256, n_head=8, n_head_kv=2, n_ff=1024, n_layer=12, name="deep")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    logging.getLogger("gguf").setLevel(logging.WARNING)
    return write_tiny_llama(tmp_path_factory.mktemp("rpcload") / "deep.gguf", DEEP)


def write_inventory(root: Path, model: Path, hosts: dict[str, str]) -> Path:
    """``hosts``: name -> the host file's body after ``name:``. One recipe, ``deep``, ctx 4096."""
    (root / "hosts").mkdir(parents=True)
    (root / "recipes").mkdir()
    (root / "recipes" / "deep.yaml").write_text(
        f"name: deep\nsource: {{path: {{path: {model}}}}}\nserver: {{ctx-size: 4096, parallel: 1}}\n"
    )
    for name, body in hosts.items():
        (root / "hosts" / f"{name}.yaml").write_text(f"name: {name}\n{body}")
    return root


def worker(ram_mib: int, port: int, models: str = "") -> str:
    return f"backend: cpu\nram_mib: {ram_mib}\nrpc_server: {{listen: '127.0.0.1:{port}'}}\n" + models


def head(rpc: str, models: str = "") -> str:
    return f"backend: cpu\nram_mib: 4096\nmodels:\n  - recipe: deep\n    rpc: {rpc}\n" + models


OWN = "models:\n  - recipe: deep\n    id: own\n"


def rpc_mib(plan_json: dict, model: str, device: str) -> int:
    return plan_json["models"][model]["rpc_mib"][device]


def test_worker_without_models_reserves_the_heads_load(deep_model: Path, tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv", deep_model, {
        "head": head("[w1, w2]"), "w1": worker(300, 50052), "w2": worker(100, 50053),
    })
    head_json = make_plan(load_host("head", inv))[0].to_json()
    plan, _ = make_plan(load_host("w1", inv))
    assert plan.fits, plan.problems
    data = plan.to_json()
    cpu = data["devices"]["cpu"]
    # exactly what the head's plan puts on w1 (same split code, same numbers)
    assert cpu["rpc_reserved_mib"] == rpc_mib(head_json, "deep", "w1:cpu") > 0
    assert cpu["rpc_reserved_for"] == [
        {"head": "head", "group": "model deep", "models": ["deep"], "mib": cpu["rpc_reserved_mib"]}
    ]
    # what is left for w1's own models (bytes, rounded down; the parts are rounded each their way)
    assert cpu["budget_mib"] - cpu["rpc_reserved_mib"] <= cpu["available_mib"] <= cpu["budget_mib"] - cpu["rpc_reserved_mib"] + 1
    text = render_plan(plan)
    assert f"RPC load reserved {cpu['rpc_reserved_mib']}" in text
    assert "head  model deep  deep" in text
    # w1 has no models: the head's split is as before (nothing kept for w1)
    assert head_json["models"]["deep"]["tensor_split"] == [10, 3]
    assert "kept_mib" not in head_json["devices"]["w1:cpu"]


def test_worker_model_and_head_load_fit_together(deep_model: Path, tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv", deep_model, {
        "head": head("[w1, w2]"), "w1": worker(300, 50052, OWN), "w2": worker(100, 50053),
    })
    head_plan, _ = make_plan(load_host("head", inv))
    worker_plan, _ = make_plan(load_host("w1", inv))
    assert head_plan.fits and worker_plan.fits, head_plan.problems + worker_plan.problems
    h, w = head_plan.to_json(), worker_plan.to_json()
    own = w["models"]["own"]["ram_mib"]
    # the head leaves the worker's own model room: budget less it, and a layer moved to w2
    assert h["devices"]["w1:cpu"]["kept_mib"] == own and h["devices"]["w1:cpu"]["kept_for"] == "model own"
    assert h["devices"]["w1:cpu"]["budget_mib"] == int(300 * 0.93) - own
    assert h["models"]["deep"]["tensor_split"] == [9, 4]
    # the worker reserves exactly that (smaller) load, and its own model fits beside it
    reserved = w["devices"]["cpu"]["rpc_reserved_mib"]
    assert reserved == rpc_mib(h, "deep", "w1:cpu")
    assert own + reserved <= w["devices"]["cpu"]["budget_mib"]
    assert "(279 less 69 kept for w1's own model own)" in render_plan(head_plan)


def test_worker_model_and_head_load_that_do_not_fit_are_reported_on_both_sides(
    deep_model: Path, tmp_path: Path
) -> None:
    # a CPU head with one worker puts every layer there (69 MiB); w1's own model needs 69 MiB of
    # its 130 MiB budget: each fits alone, not together
    inv = write_inventory(tmp_path / "inv", deep_model, {"head": head("[w1]"), "w1": worker(140, 50052, OWN)})
    worker_plan, _ = make_plan(load_host("w1", inv))
    head_plan, _ = make_plan(load_host("head", inv))
    assert not worker_plan.fits and not head_plan.fits
    w = worker_plan.to_json()
    own, reserved = w["models"]["own"]["ram_mib"], w["devices"]["cpu"]["rpc_reserved_mib"]
    budget = w["devices"]["cpu"]["budget_mib"]
    assert own <= budget and reserved <= budget < own + reserved
    [problem] = worker_plan.problems
    # the worker's side: its own use against what the head leaves, naming the head and its model
    assert problem.startswith(
        f"model own does not fit alone at ctx-size 4096: cpu: {own} MiB of {w['devices']['cpu']['available_mib']} MiB left "
        f"({budget} MiB budget less {reserved} MiB RPC load of head's model deep {reserved} MiB), "
    ), problem
    # MiB over: from the bytes (used rounds up, the limit down), so within 1 of the rounded figures
    over = int(re.search(r"\), (\d+) MiB over\.", problem).group(1))  # type: ignore[union-attr]
    assert own + reserved - budget - 1 <= over <= own + reserved - budget
    assert "put fewer layers of head's deep on w1 (remove w1 from its rpc: in hosts/head.yaml" in problem
    # the head's side: its load against what w1 keeps for its own model (each side counts the
    # other's share once, in the "left" figure, never in "used")
    [problem] = head_plan.problems
    head_use = rpc_mib(head_plan.to_json(), "deep", "w1:cpu")
    left = head_plan.to_json()["devices"]["w1:cpu"]["budget_mib"]
    assert budget - own <= left <= budget - own + 1
    assert f"w1:cpu: {head_use} MiB of {left} MiB left ({budget} MiB budget less {own} MiB kept for w1's own model own)" in problem
    assert "give w1's own model own less (hosts/w1.yaml" in problem
    assert "DOES NOT FIT: model own" in render_plan(worker_plan)


def test_two_heads_on_one_worker_add_up(deep_model: Path, tmp_path: Path) -> None:
    hosts = {"h1": head("[w1]"), "h2": head("[w1]"), "w1": worker(200, 50052)}
    inv = write_inventory(tmp_path / "fits", deep_model, {**hosts, "w1": worker(200, 50052)})
    one = rpc_mib(make_plan(load_host("h1", inv))[0].to_json(), "deep", "w1:cpu")
    plan, _ = make_plan(load_host("w1", inv))
    assert plan.fits, plan.problems
    cpu = plan.to_json()["devices"]["cpu"]
    assert [(r["head"], r["mib"]) for r in cpu["rpc_reserved_for"]] == [("h1", one), ("h2", one)]
    one_bytes = make_plan(load_host("h1", inv))[0].models["deep"].host_devices()["w1:cpu"]["total"]
    assert cpu["rpc_reserved_mib"] == -(-2 * one_bytes // MIB)  # bytes added up, then rounded up
    # a smaller worker: each head fits on its own (and says so), together they do not
    inv = write_inventory(tmp_path / "over", deep_model, {**hosts, "w1": worker(120, 50052)})
    assert make_plan(load_host("h1", inv))[0].fits and make_plan(load_host("h2", inv))[0].fits
    plan, _ = make_plan(load_host("w1", inv))
    [problem] = plan.problems
    budget = int(120 * 0.93)
    total = plan.to_json()["devices"]["cpu"]["rpc_reserved_mib"]
    assert 2 * one - 1 <= total <= 2 * one
    assert problem.startswith(
        f"cpu (system RAM) of RPC worker w1: the heads' RPC load h1's model deep {one} MiB + h2's model deep "
        f"{one} MiB = {total} MiB exceeds its budget {budget} MiB by "
    ), problem
    assert "remove w1 from rpc: of one of these models (hosts/h1.yaml, hosts/h2.yaml)" in problem


def test_a_heads_largest_resident_group_is_reserved(deep_model: Path, tmp_path: Path) -> None:
    # two models of one head on w1: alone, the larger counts; in a set together, their sum
    two = (
        "  - recipe: deep\n    id: deep-8k\n    rpc: [w1]\n    server: {ctx-size: 8192}\n"
    )
    inv = write_inventory(tmp_path / "alone", deep_model, {"head": head("[w1]", two), "w1": worker(1000, 50052)})
    h = make_plan(load_host("head", inv))[0].to_json()
    small, big = rpc_mib(h, "deep", "w1:cpu"), rpc_mib(h, "deep-8k", "w1:cpu")
    assert big > small
    [load] = make_plan(load_host("w1", inv))[0].to_json()["devices"]["cpu"]["rpc_reserved_for"]
    assert (load["group"], load["models"], load["mib"]) == ("model deep-8k", ["deep-8k"], big)

    inv = write_inventory(tmp_path / "set", deep_model, {
        "head": head("[w1]", two + "sets:\n  both: deep & deep-8k\n"), "w1": worker(1000, 50052),
    })
    head_plan = make_plan(load_host("head", inv))[0]
    both = -(-head_plan.sets[0].used["w1:cpu"] // MIB)
    [load] = make_plan(load_host("w1", inv))[0].to_json()["devices"]["cpu"]["rpc_reserved_for"]
    assert load["group"] == "set 'both' (deep & deep-8k)" and load["models"] == ["deep", "deep-8k"]
    assert load["mib"] == both and both >= small + big - 1


def test_example_rpc3090_reserves_rig4090s_split(standin_dir: Path) -> None:
    def standins(host: ResolvedHost) -> dict[str, ModelInput]:
        return {
            m.id: ModelInput(m, facts_from_file(standin_dir / f"{m.recipe.name}.gguf"), source="stand-in")
            for m in host.models
        }

    rpc3090 = load_host("rpc3090", REPO)
    assert [h.name for h in heads_of(rpc3090)] == ["rig4090"]
    rig = load_host("rig4090", REPO)
    head_plan, _ = make_plan(rig, standins(rig), inputs_of=standins)
    assert head_plan.fits, head_plan.problems
    plan, _ = make_plan(rpc3090, {}, inputs_of=standins)
    assert plan.fits, plan.problems
    gpu0 = plan.to_json()["devices"]["gpu0"]
    think = head_plan.models["think-split"]
    on_3090 = usage(think.estimate, think.gpu_index)["rpc3090:gpu0"]
    assert gpu0["rpc_reserved_mib"] == -(-on_3090 // MIB) > 10_000
    assert gpu0["rpc_reserved_for"][0]["head"] == "rig4090"
    assert gpu0["rpc_reserved_for"][0]["models"] == ["think-split"]
    assert host_device("RPC0", think.gpu_index) == "rpc3090:gpu0"
    assert "RPC load reserved" in render_plan(plan)


def test_doit_replans_the_worker_when_a_head_changes(deep_model: Path, tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv", deep_model, {"head": head("[w1]"), "w1": worker(300, 50052)})
    before = plan_fingerprint(load_host("w1", inv))
    assert plan_fingerprint(load_host("w1", inv)) == before
    # the real task: runs, is then up to date, and runs again after the head's host file changed
    env = {**os.environ, "HOMELAB_INVENTORY": str(inv), "HOMELAB_STATE": str(tmp_path / "state")}

    def doit() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "run", "-s", "plan:w1", "host=w1"],
            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
        )

    first = doit()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "RPC load reserved" in first.stdout
    again = doit()
    assert again.returncode == 0 and "-- plan:w1" in again.stdout, again.stdout  # up to date
    head_file = inv / "hosts" / "head.yaml"
    head_file.write_text(head_file.read_text().replace("rpc: [w1]\n", "rpc: [w1]\n    server: {ctx-size: 8192}\n"))
    assert plan_fingerprint(load_host("w1", inv)) != before
    changed = doit()
    assert changed.returncode == 0 and "-- plan:w1" not in changed.stdout, changed.stdout  # ran again
    assert "RPC load reserved" in changed.stdout


def test_worker_set_beside_two_heads_is_checked_with_their_load(deep_model: Path, tmp_path: Path) -> None:
    # w1 serves a set of two models (138 MiB); each head fits beside that set, and each of w1's
    # models fits beside both heads, but the set does not: only w1's plan sees all three shares
    own = OWN + "  - recipe: deep\n    id: own2\nsets:\n  both: own & own2\n"
    inv = write_inventory(tmp_path / "inv", deep_model, {
        "h1": head("[w1]"), "h2": head("[w1]"), "w1": worker(290, 50052, own),
    })
    for name in ("h1", "h2"):
        plan = make_plan(load_host(name, inv))[0]
        assert plan.fits, plan.problems
        assert plan.kept["w1:cpu"].group == "set 'both' (own & own2)"
    plan, _ = make_plan(load_host("w1", inv))
    data = plan.to_json()
    assert all(m["fits_alone"] for m in data["models"].values())
    [problem] = plan.problems
    reserved = data["devices"]["cpu"]["rpc_reserved_mib"]
    assert problem.startswith(
        f"set 'both' (own & own2) does not fit: cpu: {data['sets'][0]['used_mib']['cpu']} MiB of "
        f"{data['devices']['cpu']['available_mib']} MiB left (269 MiB budget less {reserved} MiB RPC load of "
        "h1's model deep"
    ), problem
    assert "put fewer layers of h1's deep on w1" in problem and "put fewer layers of h2's deep on w1" in problem
    [s] = data["sets"]
    assert s["rpc_reserved_mib"] == {"cpu": reserved}
    assert s["headroom_mib"]["cpu"] == 269 - s["used_mib"]["cpu"] - reserved < 0 and not s["fits"]
    table = render_plan(plan)
    assert "set   models      device  used  rpc  budget  headroom  status" in table
    assert "OVER" in table


def test_worker_auto_context_grows_into_what_the_heads_leave(tmp_path: Path) -> None:
    long_ctx = write_tiny_llama(tmp_path / "deep-long.gguf", replace(DEEP, context_length=131072))
    auto = "models:\n  - recipe: deep\n    id: own\n    server: {ctx-size: auto}\n"
    alone = write_inventory(tmp_path / "alone", long_ctx, {"w1": worker(300, 50052, auto)})
    shared = write_inventory(tmp_path / "shared", long_ctx, {"head": head("[w1]"), "w1": worker(300, 50052, auto)})
    ctx_alone = make_plan(load_host("w1", alone))[0].models["own"].ctx_size
    plan, _ = make_plan(load_host("w1", shared))
    assert plan.fits, plan.problems
    data = plan.to_json()
    own = data["models"]["own"]
    assert own["ctx_auto"] and 256 <= own["ctx_size"] < ctx_alone
    assert plan.models["own"].host_devices()["cpu"]["total"] <= plan.available()["cpu"]  # bytes
    # the head left room for w1's model at its smallest context (the auto context grows after)
    head_plan = make_plan(load_host("head", shared))[0]
    assert head_plan.fits and head_plan.kept["w1:cpu"].group == "model own"


def test_a_head_that_cannot_be_planned_is_a_note_for_a_bare_worker_and_an_error_otherwise(
    deep_model: Path, tmp_path: Path
) -> None:
    # the head's model file is not there (e.g. the worker deploys first, before the head's fetch)
    def inventory(root: Path, w1_models: str) -> Path:
        inv = write_inventory(root, deep_model, {"head": head("[w1]"), "w1": worker(300, 50052, w1_models)})
        (inv / "recipes" / "deep.yaml").write_text(
            f"name: deep\nsource: {{path: {{path: {tmp_path / 'missing.gguf'}}}}}\nserver: {{ctx-size: 4096}}\n"
        )
        (inv / "recipes" / "mine.yaml").write_text(
            f"name: mine\nsource: {{path: {{path: {deep_model}}}}}\nserver: {{ctx-size: 4096}}\n"
        )
        return inv

    bare = inventory(tmp_path / "bare", "")
    plan, _ = make_plan(load_host("w1", bare))
    assert plan.fits and not plan.reserved
    assert any(n.startswith("RPC load of head not reserved") and "missing.gguf does not exist" in n for n in plan.notes)
    serving = inventory(tmp_path / "serving", "models:\n  - recipe: mine\n")
    with pytest.raises(PlanError, match=r"head\.yaml: host head puts layers on w1 \(rpc:\), and its plan, which sizes "
                                        r"that load, cannot be made: .*missing\.gguf does not exist"):
        make_plan(load_host("w1", serving))
