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
