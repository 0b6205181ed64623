"""A model's draft in the plan: its weights, KV cache (at the main context, in the draft cache
types) and compute land on the devices llama.cpp's draft flags put them on, and every figure
that decides fit (alone, sets, ctx-size: auto) counts them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from homelab.gguf.facts import facts_from_file
from homelab.inventory import ResolvedHost, load_host
from homelab.inventory.schema import Draft
from homelab.plan.draft import DraftInput
from homelab.plan.estimate import CPU, estimate, settings_from_flags
from homelab.plan.host import ModelInput, PlanError, plan_host
from homelab.plan.rpc import load_workers

REPO = Path(__file__).resolve().parents[2]
SMALL = Draft.model_validate({"hf": {"repo": "unsloth/Qwen3-0.6B-GGUF", "file": "Qwen3-0.6B-Q8_0.gguf"}})


def inputs_for(host: ResolvedHost, standins: Path, draft: str = "qwen3-0.6b") -> dict[str, ModelInput]:
    small = DraftInput(facts_from_file(standins / f"{draft}.gguf"), f"stand-in {draft}")
    return {
        m.id: ModelInput(m, facts_from_file(standins / f"{m.recipe.name}.gguf"), source="stand-in",
                         draft=small if m.draft is not None else None)
        for m in host.models
    }  # fmt: skip


def edit(host: ResolvedHost, model_id: str, draft: Draft | None | bool = True, **flags: object) -> ResolvedHost:
    """``host`` with one model's server flags changed (None drops a flag) and its draft set."""
    models = []
    for m in host.models:
        if m.id == model_id:
            server = {k: v for k, v in {**m.server, **flags}.items() if v is not None}
            m = replace(m, server=server, draft=(m.draft if draft is True else draft or None))
        models.append(m)
    return replace(host, models=tuple(models))


def devices(host: ResolvedHost, standins: Path, model_id: str) -> dict[str, dict[str, int]]:
    return plan_host(host, inputs_for(host, standins)).to_json()["models"][model_id]["devices"]


def test_the_draft_counts_on_the_card_of_its_model(standin_dir: Path) -> None:
    host = load_host("duo3060", REPO)
    with_draft = devices(host, standin_dir, "chat-small")
    without = devices(edit(host, "chat-small", draft=None), standin_dir, "chat-small")
    # the same process: each device grows by the draft term alone (no second runtime context)
    assert set(with_draft) == set(without) == {"gpu0", "cpu"}
    for dev in with_draft:
        assert with_draft[dev]["total"] - without[dev]["total"] == with_draft[dev]["draft"]
        assert {k: v for k, v in with_draft[dev].items() if k not in ("draft", "total")} == {
            k: v for k, v in without[dev].items() if k not in ("draft", "total")
        }
    # what the draft puts there is the 0.6B run as its own context: the main context's 4096
    # cells, llama-server's 4 slots, f16 cache (the draft default), flash attention as the model
    facts = facts_from_file(standin_dir / "qwen3-0.6b.gguf")
    alone = estimate(facts, settings_from_flags({"ctx-size": 4096, "flash-attn": "on"}), backend="cuda", gpus=[12288])
    assert with_draft["gpu0"]["draft"] == alone.devices["GPU0"]["total"] - alone.devices["GPU0"]["overhead"]
    assert with_draft["cpu"]["draft"] == alone.devices[CPU]["total"]
    assert with_draft["gpu0"]["draft"] > facts.weights_bytes - alone.devices[CPU]["weights"]


def test_draft_cache_types_and_the_main_context_size_the_draft_kv(standin_dir: Path) -> None:
    host = load_host("duo3060", REPO)
    f16 = devices(host, standin_dir, "chat-small")["gpu0"]
    q8 = devices(edit(host, "chat-small", **{"cache-type-k-draft": "q8_0", "cache-type-v-draft": "q8_0"}), standin_dir,
                 "chat-small")["gpu0"]  # fmt: skip
    facts = facts_from_file(standin_dir / "qwen3-0.6b.gguf")
    per_cell_f16 = sum(2 * (facts.k_per_token(il) + facts.v_per_token(il)) for il in range(facts.n_layer))
    # q8_0 stores 32 elements in 34 bytes: the draft's 4096 cells shrink by that much, the main KV not at all
    assert f16["draft"] - q8["draft"] == 4096 * per_cell_f16 * (64 - 34) // 64
    assert f16["kv"] == q8["kv"]
    # twice the main context: the draft context grows with it (KV and its mask)
    wide = devices(edit(host, "chat-small", **{"ctx-size": 8192}), standin_dir, "chat-small")["gpu0"]
    assert wide["draft"] - f16["draft"] >= 4096 * per_cell_f16


@pytest.mark.parametrize("flags", [{"spec-draft-device": "none"}, {"spec-draft-ngl": 0}, {"devd": "none"}])
def test_a_draft_kept_off_the_gpu_lands_in_system_ram(standin_dir: Path, flags: dict[str, object]) -> None:
    host = load_host("duo3060", REPO)
    on_gpu = devices(host, standin_dir, "chat-small")
    off = devices(edit(host, "chat-small", **flags), standin_dir, "chat-small")
    assert off["gpu0"]["draft"] == 0
    assert off["cpu"]["draft"] >= on_gpu["gpu0"]["draft"]  # weights, KV and graph all moved
    assert off["gpu0"]["total"] == on_gpu["gpu0"]["total"] - on_gpu["gpu0"]["draft"]


def test_a_split_model_splits_its_draft_unless_the_draft_is_pinned(standin_dir: Path) -> None:
    host = edit(load_host("duo3060", REPO), "think-small", draft=SMALL)
    split = devices(host, standin_dir, "think-small")
    assert split["gpu0"]["draft"] > 0 and split["gpu1"]["draft"] > split["gpu0"]["draft"]  # tensor-split 1,1.5
    pinned = devices(edit(host, "think-small", **{"spec-draft-device": "CUDA1"}), standin_dir, "think-small")
    assert pinned["gpu0"]["draft"] == 0
    facts = facts_from_file(standin_dir / "qwen3-0.6b.gguf")
    on_gpu = facts.weights_bytes - sum(t.n_bytes for t in facts.tensors if t.name == "token_embd.weight")
    assert pinned["gpu1"]["draft"] > split["gpu1"]["draft"] and pinned["gpu1"]["draft"] > on_gpu
    with pytest.raises(PlanError, match=r"think-small: spec-draft-device 'CUDA2': 'CUDA2' is not one of the model's 2 GPU"):
        devices(edit(host, "think-small", **{"spec-draft-device": "CUDA2"}), standin_dir, "think-small")


def test_auto_context_and_sets_leave_room_for_the_draft(standin_dir: Path) -> None:
    host = edit(load_host("duo3060", REPO), "chat-small", **{"ctx-size": "auto"})
    auto_with = plan_host(host, inputs_for(host, standin_dir))
    plain = edit(host, "chat-small", draft=None)
    auto_without = plan_host(plain, inputs_for(plain, standin_dir))
    assert auto_with.fits and auto_without.fits
    assert auto_with.models["chat-small"].ctx_size < auto_without.models["chat-small"].ctx_size
    voice = next(s for s in auto_with.to_json()["sets"] if s["set"] == "voice")
    assert voice["headroom_mib"]["gpu0"] >= 0


def test_an_mtp_head_file_counts_its_weights_and_mtp_context_not_a_trunk(standin_dir: Path) -> None:
    """``mtp:`` with a ``draft:`` that has MTP layers: llama.cpp runs an MTP context on the head
    file; the trunk's KV of a full draft model is not allocated."""
    xtx = load_host("xtx", REPO)
    head = Draft.model_validate({"path": {"path": "/models/mtp-head.gguf"}})
    host = edit(xtx, "qwen3.6-35b-a3b-mtp", draft=head)
    inputs = inputs_for(host, standin_dir, draft="qwen3.6-35b-a3b")
    # the main file without heads (as with a separate head file); the head file with them
    main = inputs["qwen3.6-35b-a3b-mtp"]
    inputs["qwen3.6-35b-a3b-mtp"] = replace(main, facts=replace(main.facts, n_layer_nextn=0))
    as_head = plan_host(host, inputs).models["qwen3.6-35b-a3b-mtp"].estimate
    plain_host = replace(host, models=tuple(replace(m, mtp=None) if m.id == "qwen3.6-35b-a3b-mtp" else m
                                            for m in host.models))  # fmt: skip
    plain_inputs = {k: replace(v, model=plain_host.model(k)) for k, v in inputs.items()}
    as_model = plan_host(plain_host, plain_inputs).models["qwen3.6-35b-a3b-mtp"].estimate
    assert 0 < as_head.draft < as_model.draft  # no trunk KV or recurrent state in an MTP context
    assert not any("no MTP layers" in n for n in as_head.notes)
    assert any(n.startswith("MTP head file stand-in") for n in as_head.notes)
    facts = facts_from_file(standin_dir / "qwen3.6-35b-a3b.gguf")
    assert as_head.draft >= facts.weights_bytes - sum(t.n_bytes for t in facts.tensors if t.name == "token_embd.weight")


@pytest.mark.parametrize("pin", ["spec-draft-device", "devd"])
def test_the_rpc_split_leaves_room_for_a_draft_pinned_to_a_local_gpu(standin_dir: Path, pin: str) -> None:
    """rig4090's think-split over its RTX 4090 and rpc3090's card, with a 0.6B draft pinned to
    the 4090 (``spec-draft-device: CUDA0``): the split the plan chooses without the draft puts
    half the layers on the 4090 and overflows it once the draft is there; the plan's split counts
    the draft and moves layers to the worker."""
    rig = load_host("rig4090", REPO)
    workers = load_workers(rig)
    plain = plan_host(rig, inputs_for(rig, standin_dir), workers)
    assert plain.fits, plain.problems
    old_split = plain.models["think-split"].tensor_split
    pinned = edit(rig, "think-split", draft=SMALL, **{pin: "CUDA0"})
    # the draft-blind split, as the plan chose it before: the 4090 overflows
    blind = edit(pinned, "think-split", **{"tensor-split": ",".join(map(str, old_split))})
    overflow = plan_host(blind, inputs_for(blind, standin_dir), workers)
    assert not overflow.models["think-split"].fits_alone
    assert "gpu0 (RTX 4090, CUDA0)" in overflow.problems[0] and "rpc3090:gpu0" not in overflow.problems[0]
    # the plan's own split with the draft counted fits every device
    plan = plan_host(pinned, inputs_for(pinned, standin_dir), workers)
    assert plan.fits, plan.problems
    mp = plan.models["think-split"]
    rpc_layers, gpu_layers = mp.tensor_split
    assert rpc_layers > old_split[0] and gpu_layers < old_split[1]
    assert sum(mp.tensor_split) == sum(old_split)
    data = plan.to_json()
    devices = data["models"]["think-split"]["devices"]
    assert devices["gpu0"]["draft"] > 0 and devices["rpc3090:gpu0"]["draft"] == 0
    for dev in ("gpu0", "rpc3090:gpu0"):
        assert -(-devices[dev]["total"] // (1 << 20)) <= data["devices"][dev]["budget_mib"]


@pytest.mark.parametrize("gpu", [0, 1])
def test_the_draft_note_names_devices_as_the_plan_does(standin_dir: Path, gpu: int) -> None:
    """The note says where the draft went in the plan's own device names (``gpu1``, ``cpu``), the
    names of its tables, sets and problems, not the process's GPU0 (which is host gpu1 under
    ``gpus: [1]``)."""
    duo = load_host("duo3060", REPO)
    host = replace(duo, models=tuple(replace(m, gpus=(gpu,)) if m.id == "chat-small" else m for m in duo.models))
    data = plan_host(host, inputs_for(host, standin_dir)).to_json()["models"]["chat-small"]
    note = next(n for n in data["notes"] if n.startswith("draft model "))
    where = dict(part.rsplit(" ", 2)[:2] for part in note.split(": ", 1)[1].split(", "))
    assert where == {d: f"{t['draft'] / (1 << 20):,.0f}" for d, t in data["devices"].items() if t["draft"]}
    assert set(where) == {"cpu", f"gpu{gpu}"}


def test_a_draft_kept_in_system_ram_leaves_the_rpc_split_as_it_was(standin_dir: Path) -> None:
    """``spec-draft-ngl: 0``: the draft's layers stay in the head's RAM, so no GPU needs room
    for it and the split is the draft-free one."""
    rig = load_host("rig4090", REPO)
    workers = load_workers(rig)
    plain = plan_host(rig, inputs_for(rig, standin_dir), workers).models["think-split"]
    host = edit(rig, "think-split", draft=SMALL, **{"spec-draft-device": "CUDA0", "spec-draft-ngl": 0})
    plan = plan_host(host, inputs_for(host, standin_dir), workers)
    assert plan.fits, plan.problems
    mp = plan.models["think-split"]
    assert mp.tensor_split == plain.tensor_split
    devices = plan.to_json()["models"]["think-split"]["devices"]
    assert devices["cpu"]["draft"] > 0 and devices["gpu0"]["draft"] == devices["rpc3090:gpu0"]["draft"] == 0


def test_a_draft_pinned_to_an_rpc_device_counts_on_the_worker(standin_dir: Path) -> None:
    """``spec-draft-device: RPC0`` (llama.cpp's name for the first device of the ``--rpc``
    servers): the draft runs whole on rpc3090's card, so its share is checked against that
    card's budget, the 4090 holds none of it, and the split moves layers to the 4090 to make room."""
    rig = load_host("rig4090", REPO)
    workers = load_workers(rig)
    plain = plan_host(rig, inputs_for(rig, standin_dir), workers).models["think-split"]
    on_4090 = edit(rig, "think-split", draft=SMALL, **{"spec-draft-device": "CUDA0"})
    on_worker = edit(rig, "think-split", draft=SMALL, **{"spec-draft-device": "RPC0"})
    plan = plan_host(on_worker, inputs_for(on_worker, standin_dir), workers)
    assert plan.fits, plan.problems
    data = plan.to_json()
    devices = data["models"]["think-split"]["devices"]
    local = plan_host(on_4090, inputs_for(on_4090, standin_dir), workers).to_json()["models"]["think-split"]["devices"]
    # the same draft on the same kind of card (both CUDA, one device, layer split): the same bytes
    assert devices["rpc3090:gpu0"]["draft"] == local["gpu0"]["draft"] > 0
    assert devices["gpu0"]["draft"] == 0 and local["rpc3090:gpu0"]["draft"] == 0
    worker = devices["rpc3090:gpu0"]
    assert worker["total"] == sum(v for k, v in worker.items() if k != "total")
    assert -(-worker["total"] // (1 << 20)) <= data["devices"]["rpc3090:gpu0"]["budget_mib"]
    rpc_layers, gpu_layers = plan.models["think-split"].tensor_split
    assert rpc_layers < plain.tensor_split[0] and gpu_layers > plain.tensor_split[1]
    note = next(n for n in data["models"]["think-split"]["notes"] if n.startswith("draft model "))
    where = dict(part.rsplit(" ", 2)[:2] for part in note.split(": ", 1)[1].split(", "))
    assert set(where) == {"cpu", "rpc3090:gpu0"}  # the input embedding stays in the head's RAM


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("RPC5", r"\(as the process sees them: CUDA0/ROCm0/Vulkan0, RPC0\); did you mean 'RPC0'\?"),
        # the name llama-server logs the worker's buffers under is not a device name it takes
        (
            "RPC0[192.168.1.31:50052]",
            r"'RPC0\[192.168.1.31:50052\]' names its buffers in the log, the device is 'RPC0'",
        ),
    ],
)
def test_a_draft_pinned_to_a_device_the_model_lacks_is_refused_naming_its_devices(
    standin_dir: Path, name: str, hint: str
) -> None:
    rig = load_host("rig4090", REPO)
    workers = load_workers(rig)
    assert workers["rpc3090"].endpoint == "192.168.1.31:50052"
    host = edit(rig, "think-split", draft=SMALL, **{"spec-draft-device": name})
    with pytest.raises(PlanError, match=r"think-split: spec-draft-device .*is not one of the model's 1 GPU\(s\) or "
                       r"1 RPC device\(s\) .*" + hint):  # fmt: skip
        plan_host(host, inputs_for(host, standin_dir), workers)
