"""Every term of the estimate, on facts from tiny files or built directly for other shapes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from homelab.gguf.facts import ModelFacts, TensorFacts, facts_from_file
from homelab.plan.estimate import (
    MIB,
    EstimateError,
    compute_bytes,
    estimate,
    geometry,
    row_bytes,
    settings_from_flags,
)
from homelab.testing.tiny_gguf import (
    TinyArchSpec,
    TinySpec,
    write_tiny_arch,
    write_tiny_llama,
)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> ModelFacts:
    return facts_from_file(write_tiny_llama(tmp_path_factory.mktemp("m") / "t.gguf", TinySpec(n_layer=4)))


def est(facts: ModelFacts, backend: str = "cpu", gpus: tuple[float, ...] = (), **flags: object):
    return estimate(facts, settings_from_flags(flags), backend=backend, gpus=gpus)


def test_kv_f16_q8_q4_exact(llama: ModelFacts) -> None:
    # 4 layers x 2 KV heads x head_dim 32 = 64 elements of K and of V per layer and cell
    cells = 4096
    assert est(llama, **{"ctx-size": 4096}).kv == cells * 4 * 2 * 64 * 2
    assert est(llama, **{"ctx-size": 4096, "cache-type-k": "q8_0", "cache-type-v": "q8_0"}).kv == cells * 4 * 2 * 2 * 34
    assert est(llama, **{"ctx-size": 4096, "cache-type-k": "q4_0", "cache-type-v": "q4_0"}).kv == cells * 4 * 2 * 2 * 18
    mixed = est(llama, **{"ctx-size": 4096, "cache-type-k": "q8_0", "cache-type-v": "q4_0"}).kv
    assert mixed == cells * 4 * (2 * 34 + 2 * 18)


def test_ctx_padded_to_256_and_parallel_streams(llama: ModelFacts) -> None:
    g = geometry(llama, settings_from_flags({"ctx-size": 1000}))
    assert (g.n_ctx, g.n_seq, g.n_stream, g.kv_cells) == (1024, 4, 1, 1024)  # auto: 4 slots, unified
    g = geometry(llama, settings_from_flags({"ctx-size": 5000, "parallel": 3}))
    # split cache: 5120 / 3 = 1706 -> 1792 per stream, 3 streams
    assert (g.n_ctx, g.n_ctx_seq, g.n_stream) == (5376, 1792, 3)
    assert est(llama, **{"ctx-size": 5000, "parallel": 3}).kv == 5376 * 4 * 2 * 64 * 2
    # ctx 0 / unset: the training context
    assert geometry(llama, settings_from_flags({})).n_ctx == 4096


def test_quantized_kv_needs_rows_of_32(llama: ModelFacts) -> None:
    odd = replace(llama, head_dim_k=40, head_dim_v=40, n_head_kv=(1,) * 4)
    with pytest.raises(EstimateError, match="multiple of 32"):
        est(odd, **{"cache-type-k": "q4_0"})
    with pytest.raises(EstimateError, match="not one llama.cpp offers"):
        row_bytes("q3_k", 64)


def test_quantized_v_without_flash_attention_is_refused(llama: ModelFacts) -> None:
    with pytest.raises(EstimateError, match="flash attention"):
        est(llama, **{"cache-type-v": "q8_0", "flash-attn": "off"})


def test_sliding_window_cells(tmp_path: Path) -> None:
    f = facts_from_file(write_tiny_arch(tmp_path / "g.gguf", TinyArchSpec(arch="gemma3", n_layer=12, sliding_window=1024)))
    per_layer_cell = 2 * 64 * 2  # K+V, 2 heads x 32, f16
    e = est(f, **{"ctx-size": 32768, "parallel": 1})
    swa_cells = 1024 * 1 + 512  # n_swa x n_seq + ubatch -> padded to 256: 1536
    assert e.geometry.swa_cells == swa_cells
    assert e.kv == (2 * 32768 + 10 * swa_cells) * per_layer_cell
    # unified with 4 slots: the window is per sequence
    assert est(f, **{"ctx-size": 32768}).geometry.swa_cells == 1024 * 4 + 512
    # swa-full keeps the whole context on every layer
    assert est(f, **{"ctx-size": 32768, "parallel": 1, "swa-full": True}).kv == 12 * 32768 * per_layer_cell
    # the window never exceeds the context
    assert est(f, **{"ctx-size": 1024, "parallel": 1}).geometry.swa_cells == 1024


def _facts(**kw: object) -> ModelFacts:
    base = dict(architecture="x", n_layer=4, n_embd=256, n_vocab=1000, n_head=(8,) * 4, n_head_kv=(2,) * 4,
                head_dim_k=32, head_dim_v=32, n_ff=512, context_length=8192)
    base.update(kw)
    return ModelFacts(**base)  # type: ignore[arg-type]


def test_mla_has_no_v_cache() -> None:
    f = _facts(n_head_kv=(1,) * 4, head_dim_k=576, head_dim_v=512, kv_lora_rank=512, rope_dim=64, mla=True)
    assert est(f, **{"ctx-size": 4096}).kv == 4096 * 4 * 576 * 2
    assert est(f, **{"ctx-size": 4096, "cache-type-k": "q8_0"}).kv == 4096 * 4 * 576 // 32 * 34


def test_hybrid_recurrent_state_and_kv_only_on_attention_layers() -> None:
    f = _facts(n_layer=8, n_head=(8,) * 8, n_head_kv=(2,) * 8, recurrent_layers=(True, True, True, False) * 2,
               ssm_d_conv=4, ssm_d_inner=512, ssm_d_state=64, ssm_n_group=4)
    e = est(f, **{"ctx-size": 8192, "parallel": 2})
    assert e.kv == 8192 * 2 * (64 + 64) * 2  # two attention layers
    r, s = 3 * (512 + 2 * 4 * 64), 64 * 512
    assert e.recurrent == 6 * (r + s) * 4 * 2  # six recurrent layers, f32, two sequences
    assert est(f, **{"ctx-size": 16384, "parallel": 2}).recurrent == e.recurrent  # state does not grow with ctx


def test_output_buffer_is_one_row_of_logits_per_sequence(llama: ModelFacts) -> None:
    assert est(llama, parallel=1).output == 259 * 4
    assert est(llama).output == 259 * 4 * 4
    assert est(llama).devices["CPU"]["output"] == est(llama).output


def test_compute_grows_with_context_ubatch_and_without_flash_attention(llama: ModelFacts) -> None:
    def c(**flags: object) -> int:
        return est(llama, **flags).compute

    assert c(**{"ctx-size": 8192}) > c(**{"ctx-size": 4096})
    assert c(**{"ctx-size": 4096, "ubatch-size": 1024, "batch-size": 2048}) > c(**{"ctx-size": 4096, "ubatch-size": 256})
    assert c(**{"ctx-size": 4096, "flash-attn": "off"}) > 3 * c(**{"ctx-size": 4096, "flash-attn": "on"})
    # the mask term: f16, ctx x ubatch
    s = settings_from_flags({"ctx-size": 4096})
    g = geometry(llama, s)
    assert compute_bytes(llama, s, g) - compute_bytes(llama, s, replace(g, kv_cells=g.kv_cells - 256)) == 256 * 512 * 2


def test_moe_compute_counts_used_experts_not_all() -> None:
    dense = _facts(n_ff=2048)
    moe = _facts(n_ff=0, n_expert=64, n_expert_used=4, n_ff_exp=512)
    s = settings_from_flags({"ctx-size": 4096})
    assert abs(compute_bytes(moe, s, geometry(moe, s)) - compute_bytes(dense, s, geometry(dense, s))) < 64 * 2 * 512 * 4 + 1


def _gpu_facts() -> ModelFacts:
    tensors = [TensorFacts("token_embd.weight", (256, 1000), "F16", 512000),
               TensorFacts("output.weight", (256, 1000), "F16", 512000),
               TensorFacts("output_norm.weight", (256,), "F32", 1024)]
    for i in range(4):
        tensors.append(TensorFacts(f"blk.{i}.attn_q.weight", (256, 256), "F16", 131072))
        tensors.append(TensorFacts(f"blk.{i}.ffn_up_exps.weight", (256, 512, 8), "Q4_0", 589824))
    return _facts(tensors=tuple(tensors), n_expert=8, n_expert_used=2, n_ff_exp=512)


def test_weights_placement_ngl_and_input_layer_on_cpu() -> None:
    f = _gpu_facts()
    full = est(f, "cuda", (24576.0,))
    assert full.devices["CPU"]["weights"] == 512000  # token_embd stays on the CPU
    assert full.devices["GPU0"]["weights"] == f.weights_bytes - 512000
    # -ngl 2 of 5 (4 layers + output): output and the last layer on the GPU
    part = est(f, "cuda", (24576.0,), **{"n-gpu-layers": 2})
    layer = 131072 + 589824
    assert part.devices["GPU0"]["weights"] == 512000 + 1024 + layer
    assert part.devices["CPU"]["weights"] == 512000 + 3 * layer
    none = est(f, "cuda", (24576.0,), **{"n-gpu-layers": 0})
    assert list(none.devices) == ["CPU"] and none.overhead == 0


def test_override_tensor_and_n_cpu_moe() -> None:
    f = _gpu_facts()
    exps = est(f, "cuda", (24576.0,), **{"override-tensor": "exps=CPU"})
    assert exps.devices["CPU"]["weights"] == 512000 + 4 * 589824
    ncmoe = est(f, "cuda", (24576.0,), **{"n-cpu-moe": 3})
    assert ncmoe.devices["CPU"]["weights"] == 512000 + 3 * 589824
    cpu_moe = est(f, "cuda", (24576.0,), **{"cpu-moe": True})
    assert cpu_moe.devices["CPU"]["weights"] == exps.devices["CPU"]["weights"]
    with pytest.raises(EstimateError, match="PATTERN=BUFFER_TYPE"):
        est(f, "cuda", (24576.0,), **{"override-tensor": "exps"})


def test_tensor_split_and_split_modes_over_two_gpus() -> None:
    f = _gpu_facts()
    layer = 131072 + 589824
    even = est(f, "cuda", (12288.0, 12288.0))
    # 5 offloaded layers (4 + output) split by free memory: 0.0, 0.2 | 0.4.. -> layers 0-2 on GPU0
    assert even.devices["GPU0"]["weights"] == 3 * layer
    assert even.devices["GPU1"]["weights"] == layer + 512000 + 1024
    skew = est(f, "cuda", (12288.0, 12288.0), **{"tensor-split": "1,3"})
    assert skew.devices["GPU0"]["weights"] == 2 * layer  # 0.0, 0.2 < 0.25
    # KV follows the layers
    assert even.devices["GPU0"]["kv"] == 3 * even.devices["GPU1"]["kv"]
    none = est(f, "cuda", (12288.0, 12288.0), **{"split-mode": "none", "main-gpu": 1})
    assert "GPU0" not in none.devices and none.devices["GPU1"]["weights"] == f.weights_bytes - 512000
    row = est(f, "cuda", (12288.0, 12288.0), **{"split-mode": "row"})
    assert abs(row.devices["GPU0"]["weights"] - row.devices["GPU1"]["weights"]) < 2048
    # each GPU process context costs the runtime overhead
    assert even.overhead == 2 * 400 * MIB and est(f).overhead == 0


def test_no_kv_offload_keeps_cache_in_ram() -> None:
    f = _gpu_facts()
    e = est(f, "hip", (24576.0,), **{"no-kv-offload": True})
    assert e.devices["GPU0"]["kv"] == 0 and e.devices["CPU"]["kv"] == e.kv > 0
    assert e.devices["GPU0"]["overhead"] == 600 * MIB


def test_mtp_draft_context_and_mmproj() -> None:
    f = _facts(n_layer=4, n_layer_nextn=1, n_head=(8,) * 5, n_head_kv=(2,) * 5)
    plain = est(f, **{"ctx-size": 4096})
    with_mtp = estimate(f, settings_from_flags({"ctx-size": 4096}, mtp=True, mmproj_bytes=10 * MIB), backend="cuda", gpus=(24576.0,))
    kv_one_layer = 4096 * (64 + 64) * 2
    assert with_mtp.mtp > kv_one_layer and with_mtp.kv == plain.kv
    assert with_mtp.mmproj == 10 * MIB and with_mtp.devices["GPU0"]["mmproj"] == 10 * MIB
    no_heads = estimate(_facts(), settings_from_flags({}, mtp=True))
    assert no_heads.mtp == 0 and "no MTP layers" in no_heads.notes[0]


def test_overhead_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOMELAB_PLAN_OVERHEAD_MIB", "123")
    assert est(_gpu_facts(), "cuda", (24576.0,)).overhead == 123 * MIB


def test_total_is_the_sum_of_terms(llama: ModelFacts) -> None:
    e = est(llama, **{"ctx-size": 2048})
    assert e.total == e.weights + e.kv + e.recurrent + e.output + e.compute + e.mtp + e.mmproj + e.overhead
    assert e.total == sum(d["total"] for d in e.devices.values())


def test_pipeline_parallelism_copies_inputs_on_multi_gpu_full_offload() -> None:
    f = _gpu_facts()
    two = est(f, "cuda", (12288.0, 12288.0), **{"ctx-size": 4096})
    # one layer on the CPU: no pipeline parallelism, the plain working set on each GPU
    plain = est(f, "cuda", (12288.0, 12288.0), **{"ctx-size": 4096, "n-gpu-layers": 4})
    mask, row = 4096 * 512 * 2, 256 * 512 * 4
    base = plain.devices["GPU1"]["compute"]
    # the fit measured on RPC devices (homelab bench plan): first device +3 masks +11 rows,
    # later devices +3 masks +1 row, the host 4 masks + 10 rows
    assert two.devices["GPU0"]["compute"] == base + 3 * mask + 11 * row
    assert two.devices["GPU1"]["compute"] == base + 3 * mask + row
    assert two.devices["CPU"]["compute"] == 4 * mask + 10 * row
    assert any("pipeline parallelism" in n for n in two.notes)
    # Vulkan devices report async compute and events too (b11434): the same copies
    vulkan = est(f, "vulkan", (12288.0, 12288.0), **{"ctx-size": 4096})
    assert vulkan.devices["GPU0"]["compute"] == two.devices["GPU0"]["compute"]


def test_mtp_layers_weights_state_snapshots_and_draft_kv_type() -> None:
    tensors = (TensorFacts("blk.0.attn_q.weight", (256, 256), "F16", 1000),
               TensorFacts("blk.4.nextn.eh_proj.weight", (512, 256), "F16", 500))
    f = _facts(n_layer=4, n_layer_nextn=1, n_head=(8,) * 5, n_head_kv=(2,) * 5, tensors=tensors,
               recurrent_layers=(True, True, True, False, False), ssm_d_conv=4, ssm_d_inner=256,
               ssm_d_state=32, ssm_n_group=2)
    off = estimate(f, settings_from_flags({"ctx-size": 4096}))
    on = estimate(f, settings_from_flags({"ctx-size": 4096, "cache-type-k": "q8_0", "cache-type-v": "q8_0"},
                                         mtp=True, draft_n_max=2))
    assert off.weights == 1000 and on.weights == 1500  # MTP layers load only with MTP on
    assert on.recurrent == 3 * off.recurrent  # 1 + draft_n_max snapshots
    assert on.settings.draft_type_k == "f16"  # the draft cache keeps llama.cpp's f16 default
    q8 = settings_from_flags({"spec-type": "draft-mtp", "cache-type-k-draft": "q8_0"})
    assert q8.mtp and q8.draft_n_max == 3 and q8.draft_type_k == "q8_0"
