"""Write tiny GGUF models that the real ``llama-server`` loads, for tests and benchmarks.

A llama-architecture model with a 259-token byte vocabulary (``<unk>``, ``<s>``, ``</s>`` and
``<0x00>``..``<0xFF>``), head_dim 32 so quantized KV caches work, random F32 (or F16) weights and
a tiny chat template so ``/v1/chat/completions`` works. It writes nonsense fast, which is all a
swap, proxy or memory test needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

CHAT_TEMPLATE = (
    "{% for message in messages %}<s>{{ message['role'] }}: {{ message['content'] }}</s>"
    "{% endfor %}{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny llama model. Defaults give a ~1.3 MB file that loads in milliseconds."""

    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 256
    context_length: int = 4096
    dtype: str = "f32"  # f32 | f16 for the 2-D weight tensors
    seed: int = 0
    name: str = "tiny-llama"
    sliding_window: int | None = None
    """Writes ``llama.attention.sliding_window`` metadata (for estimator tests of the key)."""

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


VOCAB_SIZE = 259


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(tokens)
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    return tokens, scores, [int(t) for t in types]


def _add_byte_tokenizer(writer: gguf.GGUFWriter) -> None:
    """The 259-token byte vocabulary and chat template every tiny model shares."""
    tokens, scores, types = _vocab()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def write_tiny_llama(path: str | os.PathLike[str], spec: TinySpec = TinySpec()) -> Path:
    """Write the model to ``path`` (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    rng = np.random.default_rng(spec.seed)
    wdtype = np.float16 if spec.dtype == "f16" else np.float32

    def weight(*ggml_shape: int) -> np.ndarray:
        # numpy shapes are ggml shapes reversed
        scale = 1.0 / np.sqrt(ggml_shape[0])
        return (rng.standard_normal(tuple(reversed(ggml_shape))) * scale).astype(wdtype)

    def norm(n: int) -> np.ndarray:
        return np.ones((n,), dtype=np.float32)

    arch = "llama"
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_name(spec.name)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(VOCAB_SIZE)
    if spec.sliding_window:
        writer.add_sliding_window(spec.sliding_window)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if spec.dtype == "f16" else gguf.LlamaFileType.ALL_F32)

    _add_byte_tokenizer(writer)

    e, kv = spec.n_embd, spec.n_head_kv * spec.head_dim
    writer.add_tensor("token_embd.weight", weight(e, VOCAB_SIZE))
    writer.add_tensor("output_norm.weight", norm(e))
    writer.add_tensor("output.weight", weight(e, VOCAB_SIZE))
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", norm(e))
        writer.add_tensor(p + "attn_q.weight", weight(e, e))
        writer.add_tensor(p + "attn_k.weight", weight(e, kv))
        writer.add_tensor(p + "attn_v.weight", weight(e, kv))
        writer.add_tensor(p + "attn_output.weight", weight(e, e))
        writer.add_tensor(p + "ffn_norm.weight", norm(e))
        writer.add_tensor(p + "ffn_gate.weight", weight(e, spec.n_ff))
        writer.add_tensor(p + "ffn_up.weight", weight(e, spec.n_ff))
        writer.add_tensor(p + "ffn_down.weight", weight(spec.n_ff, e))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# More architectures, for memory-estimate tests against the real llama-server: Gemma 3 (sliding
# window: five local layers, one global), Qwen3-MoE (experts), Qwen3.5 (hybrid: gated delta-net
# recurrent layers, full attention on one layer in ``full_attention_interval``; optional MTP layer)
# and DeepSeek-2 (multi-head latent attention + MoE). Same byte vocabulary.


@dataclass(frozen=True)
class TinyArchSpec:
    """A tiny model of another architecture: ``gemma3``, ``qwen3moe``, ``qwen35`` or ``deepseek2``
    (multi-head latent attention, one dense lead layer, then MoE with a shared expert)."""

    arch: str = "gemma3"
    n_layer: int = 6
    n_embd: int = 128
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 32
    n_ff: int = 256
    context_length: int = 8192
    sliding_window: int = 256
    """gemma3: the local layers' window."""
    n_expert: int = 4
    n_expert_used: int = 2
    n_ff_exp: int = 64
    full_attention_interval: int = 4
    """qwen35: layers il with (il + 1) % interval == 0 use attention, the rest are recurrent."""
    ssm_conv: int = 4
    ssm_state: int = 32
    """qwen35: the delta-net head size (keys and values)."""
    ssm_groups: int = 2
    """qwen35: key heads."""
    ssm_v_heads: int = 4
    """qwen35: value heads (``ssm.time_step_rank``); ``ssm.inner_size`` = state x value heads."""
    mtp_layers: int = 0
    """qwen35: MTP (NextN) layers after the trunk (``nextn_predict_layers``), for draft-mtp."""
    kv_lora_rank: int = 64
    """deepseek2: the latent KV width; the cache holds kv_lora_rank + rope_dim per token."""
    rope_dim: int = 32
    qk_nope_dim: int = 32
    v_head_dim: int = 32
    seed: int = 0
    name: str = ""


TINY_ARCHS = ("gemma3", "qwen3moe", "qwen35", "deepseek2")


def write_tiny_arch(path: str | os.PathLike[str], spec: TinyArchSpec = TinyArchSpec()) -> Path:
    """Write a tiny model of ``spec.arch`` (F32 weights) atomically; return the path."""
    if spec.arch not in TINY_ARCHS:
        raise ValueError(f"tiny architecture {spec.arch!r} not supported (choose from {', '.join(TINY_ARCHS)})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    rng = np.random.default_rng(spec.seed)

    def weight(*ggml_shape: int) -> np.ndarray:
        scale = 1.0 / np.sqrt(ggml_shape[0])
        return (rng.standard_normal(tuple(reversed(ggml_shape))) * scale).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return np.ones((n,), dtype=np.float32)

    arch = spec.arch
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_name(spec.name or f"tiny-{arch}")
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.n_embd)
    n_mtp = spec.mtp_layers if arch == "qwen35" else 0
    writer.add_block_count(spec.n_layer + n_mtp)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(1 if arch == "deepseek2" else spec.n_head_kv)  # MLA: one latent KV head
    if arch == "deepseek2":
        # MLA as converted for llama.cpp's latent cache: one KV "head" of kv_lora_rank + rope
        writer.add_key_length(spec.kv_lora_rank + spec.rope_dim)
        writer.add_value_length(spec.kv_lora_rank)
        writer.add_uint32(f"{arch}.attention.key_length_mla", spec.qk_nope_dim + spec.rope_dim)
        writer.add_uint32(f"{arch}.attention.value_length_mla", spec.v_head_dim)
        writer.add_uint32(f"{arch}.attention.kv_lora_rank", spec.kv_lora_rank)
        writer.add_uint32(f"{arch}.attention.q_lora_rank", 0)
        writer.add_uint32(f"{arch}.rope.dimension_count", spec.rope_dim)
        writer.add_uint32(f"{arch}.leading_dense_block_count", 1)
        writer.add_uint32(f"{arch}.expert_shared_count", 1)
    else:
        writer.add_key_length(spec.head_dim)
        writer.add_value_length(spec.head_dim)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(VOCAB_SIZE)
    if arch == "gemma3":
        writer.add_sliding_window(spec.sliding_window)
    if arch in ("qwen3moe", "deepseek2"):
        writer.add_expert_count(spec.n_expert)
        writer.add_expert_used_count(spec.n_expert_used)
        writer.add_expert_feed_forward_length(spec.n_ff_exp)
    key_dim, value_dim = spec.ssm_state * spec.ssm_groups, spec.ssm_state * spec.ssm_v_heads
    if arch == "qwen35":
        writer.add_uint32(f"{arch}.full_attention_interval", spec.full_attention_interval)
        writer.add_uint32(f"{arch}.ssm.conv_kernel", spec.ssm_conv)
        writer.add_uint32(f"{arch}.ssm.inner_size", value_dim)
        writer.add_uint32(f"{arch}.ssm.state_size", spec.ssm_state)
        writer.add_uint32(f"{arch}.ssm.group_count", spec.ssm_groups)
        writer.add_uint32(f"{arch}.ssm.time_step_rank", spec.ssm_v_heads)
        writer.add_array(f"{arch}.rope.dimension_sections", [spec.head_dim // 4, spec.head_dim // 4, 0, 0])
        if n_mtp:
            writer.add_uint32(f"{arch}.nextn_predict_layers", n_mtp)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_byte_tokenizer(writer)

    e, hd = spec.n_embd, spec.head_dim
    q, kv = spec.n_head * hd, spec.n_head_kv * hd
    writer.add_tensor("token_embd.weight", weight(e, VOCAB_SIZE))
    writer.add_tensor("output_norm.weight", norm(e))
    if arch in ("qwen3moe", "qwen35", "deepseek2"):
        writer.add_tensor("output.weight", weight(e, VOCAB_SIZE))
    # gemma3 ties the output to token_embd (llama.cpp duplicates it for the output layer)
    for i in range(spec.n_layer + n_mtp):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", norm(e))
        if arch == "qwen35":
            writer.add_tensor(p + "post_attention_norm.weight", norm(e))
            if i >= spec.n_layer:  # MTP block: a full-attention layer plus the NextN projection
                writer.add_tensor(p + "nextn.eh_proj.weight", weight(2 * e, e))
                writer.add_tensor(p + "nextn.enorm.weight", norm(e))
                writer.add_tensor(p + "nextn.hnorm.weight", norm(e))
            if i < spec.n_layer and (i + 1) % spec.full_attention_interval != 0:  # gated delta-net layer
                conv_dim = 2 * key_dim + value_dim
                writer.add_tensor(p + "attn_qkv.weight", weight(e, conv_dim))
                writer.add_tensor(p + "attn_gate.weight", weight(e, value_dim))
                writer.add_tensor(p + "ssm_conv1d.weight", weight(spec.ssm_conv, conv_dim))
                writer.add_tensor(p + "ssm_dt.bias", np.zeros((spec.ssm_v_heads,), dtype=np.float32))
                writer.add_tensor(p + "ssm_a", -np.ones((spec.ssm_v_heads,), dtype=np.float32))
                writer.add_tensor(p + "ssm_beta.weight", weight(e, spec.ssm_v_heads))
                writer.add_tensor(p + "ssm_alpha.weight", weight(e, spec.ssm_v_heads))
                writer.add_tensor(p + "ssm_norm.weight", norm(spec.ssm_state))
                writer.add_tensor(p + "ssm_out.weight", weight(value_dim, e))
            else:  # full attention with a gated query (2 x q)
                writer.add_tensor(p + "attn_q.weight", weight(e, 2 * q))
                writer.add_tensor(p + "attn_k.weight", weight(e, kv))
                writer.add_tensor(p + "attn_v.weight", weight(e, kv))
                writer.add_tensor(p + "attn_output.weight", weight(q, e))
                writer.add_tensor(p + "attn_q_norm.weight", norm(hd))
                writer.add_tensor(p + "attn_k_norm.weight", norm(hd))
            writer.add_tensor(p + "ffn_gate.weight", weight(e, spec.n_ff))
            writer.add_tensor(p + "ffn_up.weight", weight(e, spec.n_ff))
            writer.add_tensor(p + "ffn_down.weight", weight(spec.n_ff, e))
            continue
        if arch == "deepseek2":
            r, k_mla, nh = spec.kv_lora_rank, spec.qk_nope_dim + spec.rope_dim, spec.n_head
            writer.add_tensor(p + "attn_kv_a_norm.weight", norm(r))
            writer.add_tensor(p + "attn_q.weight", weight(e, nh * k_mla))
            writer.add_tensor(p + "attn_kv_a_mqa.weight", weight(e, r + spec.rope_dim))
            writer.add_tensor(p + "attn_k_b.weight", weight(spec.qk_nope_dim, r, nh))
            writer.add_tensor(p + "attn_v_b.weight", weight(r, spec.v_head_dim, nh))
            writer.add_tensor(p + "attn_output.weight", weight(nh * spec.v_head_dim, e))
            writer.add_tensor(p + "ffn_norm.weight", norm(e))
            if i == 0:  # the dense lead layer
                writer.add_tensor(p + "ffn_gate.weight", weight(e, spec.n_ff))
                writer.add_tensor(p + "ffn_up.weight", weight(e, spec.n_ff))
                writer.add_tensor(p + "ffn_down.weight", weight(spec.n_ff, e))
            else:
                writer.add_tensor(p + "ffn_gate_inp.weight", weight(e, spec.n_expert))
                writer.add_tensor(p + "ffn_gate_exps.weight", weight(e, spec.n_ff_exp, spec.n_expert))
                writer.add_tensor(p + "ffn_up_exps.weight", weight(e, spec.n_ff_exp, spec.n_expert))
                writer.add_tensor(p + "ffn_down_exps.weight", weight(spec.n_ff_exp, e, spec.n_expert))
                writer.add_tensor(p + "ffn_gate_shexp.weight", weight(e, spec.n_ff_exp))
                writer.add_tensor(p + "ffn_up_shexp.weight", weight(e, spec.n_ff_exp))
                writer.add_tensor(p + "ffn_down_shexp.weight", weight(spec.n_ff_exp, e))
            continue
        writer.add_tensor(p + "attn_q.weight", weight(e, q))
        writer.add_tensor(p + "attn_k.weight", weight(e, kv))
        writer.add_tensor(p + "attn_v.weight", weight(e, kv))
        writer.add_tensor(p + "attn_output.weight", weight(q, e))
        writer.add_tensor(p + "attn_q_norm.weight", norm(hd))
        writer.add_tensor(p + "attn_k_norm.weight", norm(hd))
        writer.add_tensor(p + "ffn_norm.weight", norm(e))
        if arch == "gemma3":
            writer.add_tensor(p + "post_attention_norm.weight", norm(e))
            writer.add_tensor(p + "post_ffw_norm.weight", norm(e))
            writer.add_tensor(p + "ffn_gate.weight", weight(e, spec.n_ff))
            writer.add_tensor(p + "ffn_up.weight", weight(e, spec.n_ff))
            writer.add_tensor(p + "ffn_down.weight", weight(spec.n_ff, e))
        else:
            writer.add_tensor(p + "ffn_gate_inp.weight", weight(e, spec.n_expert))
            writer.add_tensor(p + "ffn_gate_exps.weight", weight(e, spec.n_ff_exp, spec.n_expert))
            writer.add_tensor(p + "ffn_up_exps.weight", weight(e, spec.n_ff_exp, spec.n_expert))
            writer.add_tensor(p + "ffn_down_exps.weight", weight(spec.n_ff_exp, e, spec.n_expert))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path
