"""Header-only stand-in GGUFs whose metadata mimics the example inventory's real models.

The shapes follow the published configs (layers, widths, heads, experts, hybrid intervals);
weights use K-quant types of about the real files' bits per weight. Only the header is written
(tensor infos with true shapes, types and byte sizes; no data), so a "20 GB" stand-in is a few
hundred KiB and the plan reads it exactly as it reads a real file or a Hub header.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np


@dataclass(frozen=True)
class Shape:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    n_ff: int = 0
    context_length: int = 262144
    full_attention_interval: int = 0
    ssm: tuple[int, int, int, int, int] | None = None
    """conv kernel, inner size, state size, groups, time-step rank."""
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    kv_lora_rank: int = 0
    rope_dim: int = 0
    nextn: int = 0
    weight_type: str = "Q4_K"
    extra: dict[str, object] = field(default_factory=dict)


SHAPES: dict[str, Shape] = {
    # recipe name -> shape
    "qwen3.6-35b-a3b": Shape("qwen35moe", 41, 2048, 16, 2, 256, 248320, context_length=262144,
                             full_attention_interval=4, ssm=(4, 4096, 128, 16, 32), n_expert=256,
                             n_expert_used=8, n_ff_exp=512, n_ff_shexp=512, nextn=1, weight_type="IQ4_XS"),
    "qwen3.6-27b": Shape("qwen35", 64, 5120, 24, 4, 256, 248320, n_ff=17408, full_attention_interval=4,
                         ssm=(4, 6144, 128, 16, 48)),
    "qwen3.5-9b": Shape("qwen35", 32, 4096, 16, 4, 256, 248320, n_ff=12288, full_attention_interval=4,
                        ssm=(4, 4096, 128, 16, 32)),
    "mistral-small-3.2-24b": Shape("llama", 40, 5120, 32, 8, 128, 131072, n_ff=32768, context_length=131072),
    "glm-4.7-flash": Shape("deepseek2", 47, 2048, 20, 1, 576, 154880, n_ff=10240, context_length=202752,
                           n_expert=64, n_expert_used=4, n_ff_exp=1536, n_ff_shexp=1536, kv_lora_rank=512,
                           rope_dim=64),
    "qwen3-4b-instruct-2507": Shape("qwen3", 36, 2560, 32, 8, 128, 151936, n_ff=9728, context_length=262144),
    "qwen3-0.6b": Shape("qwen3", 28, 1024, 16, 8, 128, 151936, n_ff=3072, context_length=40960, weight_type="Q8_0"),
}


def write_standin(path: Path, s: Shape) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), s.arch)
    a = s.arch
    w.add_name(f"stand-in {path.stem}")
    w.add_uint32(f"{a}.block_count", s.n_layer)
    w.add_uint32(f"{a}.context_length", s.context_length)
    w.add_uint32(f"{a}.embedding_length", s.n_embd)
    w.add_uint32(f"{a}.attention.head_count", s.n_head)
    w.add_uint32(f"{a}.attention.head_count_kv", s.n_head_kv)
    w.add_uint32(f"{a}.attention.key_length", s.head_dim)
    w.add_uint32(f"{a}.attention.value_length", s.kv_lora_rank or s.head_dim)
    w.add_uint32(f"{a}.vocab_size", s.n_vocab)
    if s.n_ff:
        w.add_uint32(f"{a}.feed_forward_length", s.n_ff)
    if s.full_attention_interval:
        w.add_uint32(f"{a}.full_attention_interval", s.full_attention_interval)
    if s.ssm:
        for key, value in zip(("conv_kernel", "inner_size", "state_size", "group_count", "time_step_rank"), s.ssm):
            w.add_uint32(f"{a}.ssm.{key}", value)
    if s.n_expert:
        w.add_uint32(f"{a}.expert_count", s.n_expert)
        w.add_uint32(f"{a}.expert_used_count", s.n_expert_used)
        w.add_uint32(f"{a}.expert_feed_forward_length", s.n_ff_exp)
        if s.n_ff_shexp:
            w.add_uint32(f"{a}.expert_shared_feed_forward_length", s.n_ff_shexp)
            w.add_uint32(f"{a}.expert_shared_count", 1)
    if s.kv_lora_rank:
        w.add_uint32(f"{a}.attention.kv_lora_rank", s.kv_lora_rank)
        w.add_uint32(f"{a}.rope.dimension_count", s.rope_dim)
        w.add_uint32(f"{a}.attention.key_length_mla", 128 + s.rope_dim)
        w.add_uint32(f"{a}.attention.value_length_mla", 256)
    if s.nextn:
        w.add_uint32(f"{a}.nextn_predict_layers", s.nextn)

    def info(name: str, ggml_shape: tuple[int, ...], type_name: str) -> None:
        qtype = gguf.GGMLQuantizationType[type_name]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n = int(np.prod(ggml_shape))
        w.add_tensor_info(name, tuple(reversed(ggml_shape)), np.dtype(np.float32), n // block * size, raw_dtype=qtype)

    e, wt = s.n_embd, s.weight_type
    info("token_embd.weight", (e, s.n_vocab), "Q4_K")
    info("output_norm.weight", (e,), "F32")
    info("output.weight", (e, s.n_vocab), "Q6_K")
    trunk = s.n_layer - s.nextn
    for i in range(s.n_layer):
        p = f"blk.{i}."
        info(p + "attn_norm.weight", (e,), "F32")
        recurrent = s.full_attention_interval and i < trunk and (i + 1) % s.full_attention_interval != 0
        if recurrent:
            conv, inner, state, groups, _ = s.ssm  # type: ignore[misc]
            info(p + "attn_qkv.weight", (e, inner + 2 * groups * state), wt)
            info(p + "attn_gate.weight", (e, inner), wt)
            info(p + "ssm_out.weight", (inner, e), wt)
        elif s.kv_lora_rank:
            info(p + "attn_q.weight", (e, s.n_head * (128 + s.rope_dim)), wt)
            info(p + "attn_kv_a_mqa.weight", (e, s.kv_lora_rank + s.rope_dim), wt)
            info(p + "attn_kv_b.weight", (s.kv_lora_rank, s.n_head * 256), wt)
            info(p + "attn_output.weight", (s.n_head * 128, e), wt)
        else:
            info(p + "attn_q.weight", (e, s.n_head * s.head_dim), wt)
            info(p + "attn_k.weight", (e, s.n_head_kv * s.head_dim), wt)
            info(p + "attn_v.weight", (e, s.n_head_kv * s.head_dim), "Q6_K")
            info(p + "attn_output.weight", (s.n_head * s.head_dim, e), wt)
        info(p + "ffn_norm.weight", (e,), "F32")
        if s.n_expert:
            info(p + "ffn_gate_inp.weight", (e, s.n_expert), "F32")
            info(p + "ffn_gate_exps.weight", (e, s.n_ff_exp, s.n_expert), wt)
            info(p + "ffn_up_exps.weight", (e, s.n_ff_exp, s.n_expert), wt)
            info(p + "ffn_down_exps.weight", (s.n_ff_exp, e, s.n_expert), "Q6_K" if wt == "Q4_K" else wt)
            if s.n_ff_shexp:
                info(p + "ffn_up_shexp.weight", (e, s.n_ff_shexp), wt)
                info(p + "ffn_gate_shexp.weight", (e, s.n_ff_shexp), wt)
                info(p + "ffn_down_shexp.weight", (s.n_ff_shexp, e), wt)
        else:
            info(p + "ffn_gate.weight", (e, s.n_ff), wt)
            info(p + "ffn_up.weight", (e, s.n_ff), wt)
            info(p + "ffn_down.weight", (s.n_ff, e), "Q6_K" if wt == "Q4_K" else wt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path
