"""Model facts from GGUF metadata: what the VRAM estimator needs to know about one model.

Built from a :class:`homelab.hub.gguf_header.GGUFHeader` (the one GGUF-reading path: a local
file, or a header read from the Hub with Range requests), so a plan can run before a download.

The per-architecture rules mirror llama.cpp b11434's loaders (``src/models/<arch>.cpp``):
which layers use a sliding window (Gemma 3: five local, one global), which are recurrent
(Qwen3-Next / Qwen3.5: one full-attention layer in ``full_attention_interval``), MLA caches
(DeepSeek 2/3: ``kv_lora_rank`` + rope dims, no V) and MTP layers (``nextn_predict_layers``,
counted in ``block_count`` but not in the trunk's KV cache).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import HomelabError


class FactsError(HomelabError):
    pass


# Sliding-window layer patterns by architecture (llama.cpp ``load_swa_pattern(ml, n, dense_first)``):
# with period n, layer il slides unless it is the period's global layer. Applies only when the
# GGUF has ``{arch}.attention.sliding_window`` > 0 and no explicit pattern array.
SWA_PERIOD: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma-embedding": (6, False),
    "gemma3n": (5, False),
    "cohere2": (4, False),
    "gpt-oss": (2, False),
    "exaone4": (4, False),
    "exaone-moe": (4, False),
    "llama4": (4, False),
    "olmo2": (4, False),
    "afmoe": (4, False),
    "mellum": (4, False),
    "plamo3": (8, False),
    "smallthinker": (4, True),
    "cohere2moe": (4, True),
}
"""Architectures whose every layer slides when a window is set (phi3 with a window)."""
SWA_ALL = {"phi3"}

# Hybrid architectures whose recurrent layers follow ``full_attention_interval`` (default).
RECURRENT_INTERVAL: dict[str, int] = {
    "qwen3next": 4,
    "qwen35": 4,
    "qwen35moe": 4,
    "qwen4exp": 4,
    "minimax-01": 8,
}
# Hybrid architectures whose recurrent layers are the ones with zero KV heads.
RECURRENT_BY_ZERO_KV = {"jamba", "granitehybrid", "lfm2", "lfm2moe", "bailingmoe3", "glm5-next", "falcon-h1"}
# Pure recurrent models: every layer.
RECURRENT_ALL = {"mamba", "mamba2", "rwkv6", "rwkv7", "rwkv6qwen2", "arwkv7"}


@dataclass(frozen=True)
class TensorFacts:
    name: str
    shape: tuple[int, ...]
    """ggml order: ``shape[0]`` is the contiguous dimension."""
    ggml_type: str
    n_bytes: int


@dataclass(frozen=True)
class ModelFacts:
    """Everything the estimator uses, per layer where models vary by layer.

    Per-layer tuples have ``n_layer_all`` entries (trunk layers, then MTP layers).
    """

    architecture: str
    n_layer: int
    """Trunk layers (``block_count`` minus MTP layers)."""
    n_embd: int
    n_vocab: int
    n_head: tuple[int, ...]
    n_head_kv: tuple[int, ...]
    head_dim_k: int
    head_dim_v: int
    n_ff: int = 0
    context_length: int = 0
    n_layer_nextn: int = 0
    """MTP (multi-token prediction) layers, counted in block_count after the trunk."""
    n_swa: int = 0
    swa_layers: tuple[bool, ...] = ()
    kv_lora_rank: int = 0
    rope_dim: int = 0
    head_dim_k_mla: int = 0
    """MLA: per-head query/key width (nope + rope dims), ``attention.key_length_mla``."""
    head_dim_v_mla: int = 0
    mla: bool = False
    """Multi-head latent attention cache (llama.cpp: ``key_length_mla`` and ``value_length_mla``
    set): one KV head of ``key_length`` (= kv_lora_rank + rope dims) per token and layer, no V.
    Older DeepSeek GGUFs without those keys cache full K and V heads."""
    n_expert: int = 0
    n_expert_used: int = 0
    n_expert_shared: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    recurrent_layers: tuple[bool, ...] = ()
    full_attention_interval: int = 0
    ssm_d_conv: int = 0
    ssm_d_inner: int = 0
    ssm_d_state: int = 0
    ssm_n_group: int = 0
    ssm_dt_rank: int = 0
    name: str = ""
    file_type: str = ""
    tensors: tuple[TensorFacts, ...] = field(default=(), repr=False)

    # ---------------------------------------------------------------- derived

    @property
    def n_layer_all(self) -> int:
        return self.n_layer + self.n_layer_nextn

    @property
    def is_mla(self) -> bool:
        return self.mla

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    @property
    def weights_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    def is_swa(self, il: int) -> bool:
        return self.n_swa > 0 and il < len(self.swa_layers) and self.swa_layers[il]

    def is_recurrent(self, il: int) -> bool:
        return il < len(self.recurrent_layers) and self.recurrent_layers[il]

    def has_kv(self, il: int) -> bool:
        """Whether trunk layer ``il`` keeps a KV cache (attention, not recurrent)."""
        return not self.is_recurrent(il) and self.n_head_kv[il] > 0

    def k_per_token(self, il: int) -> int:
        """K elements per cell for layer ``il`` (MLA: the compressed latent plus rope dims)."""
        return self.n_head_kv[il] * self.head_dim_k

    def v_per_token(self, il: int) -> int:
        return 0 if self.is_mla else self.n_head_kv[il] * self.head_dim_v

    @property
    def recurrent_r_per_seq(self) -> int:
        """f32 elements of the convolution (r) state of one recurrent layer and sequence."""
        if not self.ssm_d_conv:
            return 0
        return (self.ssm_d_conv - 1) * (self.ssm_d_inner + 2 * self.ssm_n_group * self.ssm_d_state)

    @property
    def recurrent_s_per_seq(self) -> int:
        """f32 elements of the SSM / delta-net (s) state of one recurrent layer and sequence."""
        return self.ssm_d_state * self.ssm_d_inner

    @property
    def has_mtp(self) -> bool:
        return self.n_layer_nextn > 0

    def summary(self) -> dict[str, Any]:
        """JSON-friendly facts (tensors grouped by quant type; the full list is long)."""
        data = asdict(self)
        data.pop("tensors")
        by_type: dict[str, dict[str, int]] = {}
        for t in self.tensors:
            entry = by_type.setdefault(t.ggml_type, {"count": 0, "bytes": 0})
            entry["count"] += 1
            entry["bytes"] += t.n_bytes
        data["weights_bytes"] = self.weights_bytes
        data["tensor_types"] = by_type
        data["n_tensors"] = len(self.tensors)
        for key in ("n_head", "n_head_kv", "swa_layers", "recurrent_layers"):
            data[key] = _compact(data[key])
        return data


def _compact(values: Sequence[Any]) -> Any:
    """A per-layer tuple as one value when all layers agree (readable JSON)."""
    values = list(values)
    if values and all(v == values[0] for v in values):
        return values[0]
    return values


# -------------------------------------------------------------------- building from metadata


def _per_layer(value: Any, n: int, what: str) -> tuple[int, ...]:
    if isinstance(value, list):
        if len(value) < n:
            raise FactsError(f"{what} has {len(value)} entries for {n} layers")
        return tuple(int(v) for v in value[:n])
    return (int(value),) * n


def facts_from_metadata(fields: Mapping[str, Any], tensors: Sequence[Any] = (), *, source: str = "GGUF") -> ModelFacts:
    """Facts from GGUF key/values and tensor infos (objects with name, shape, ggml_type, n_bytes)."""
    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise FactsError(f"{source}: no general.architecture in the metadata; is it a GGUF model?")

    def key(name: str, default: Any = None) -> Any:
        return fields.get(f"{arch}.{name}", default)

    def required(name: str) -> Any:
        value = key(name)
        if value is None:
            raise FactsError(f"{source}: metadata key {arch}.{name} is missing")
        return value

    block_count = int(required("block_count"))
    n_layer_nextn = int(key("nextn_predict_layers", 0) or 0)
    n_embd = int(required("embedding_length"))
    head_raw = required("attention.head_count")
    n_head = _per_layer(head_raw, block_count, f"{arch}.attention.head_count")
    n_head_kv = _per_layer(key("attention.head_count_kv", head_raw), block_count, f"{arch}.attention.head_count_kv")
    n_head_max = max(n_head) if n_head else 0
    default_head_dim = n_embd // n_head_max if n_head_max else 0
    head_dim_k = int(key("attention.key_length", default_head_dim))
    head_dim_v = int(key("attention.value_length", default_head_dim))
    n_layer = block_count - n_layer_nextn

    n_vocab = key("vocab_size")
    if n_vocab is None:
        tokens = fields.get("tokenizer.ggml.tokens")
        n_vocab = len(tokens) if isinstance(tokens, list) else 0
    if not n_vocab:
        n_vocab = next((t.shape[1] for t in tensors if t.name == "token_embd.weight" and len(t.shape) > 1), 0)

    ff = key("feed_forward_length", 0)
    n_ff = max(ff) if isinstance(ff, list) else int(ff or 0)

    # sliding window
    n_swa = int(key("attention.sliding_window", 0) or 0)
    pattern = key("attention.sliding_window_pattern")
    swa_layers: tuple[bool, ...] = (False,) * block_count
    if n_swa > 0:
        if isinstance(pattern, list):
            swa_layers = tuple(bool(v) for v in pattern[:block_count]) + (False,) * max(0, block_count - len(pattern))
        elif arch in SWA_ALL:
            swa_layers = (True,) * n_layer + (False,) * n_layer_nextn
        elif arch in SWA_PERIOD:
            period, dense_first = SWA_PERIOD[arch]
            if isinstance(pattern, int) and not isinstance(pattern, bool):
                period = pattern
            swa_layers = tuple(
                il < n_layer and (period == 0 or (il % period != 0 if dense_first else il % period < period - 1))
                for il in range(block_count)
            )
        else:
            n_swa = 0  # llama.cpp ignores the key for this architecture (plain llama, qwen...)

    # recurrent layers (hybrid and pure state-space models)
    interval = int(key("full_attention_interval", 0) or 0)
    recurrent: tuple[bool, ...] = (False,) * block_count
    explicit = key("attention.recurrent_layers")
    if isinstance(explicit, list):
        recurrent = tuple(bool(v) for v in explicit[:block_count])
    elif arch in RECURRENT_INTERVAL:
        interval = interval or RECURRENT_INTERVAL[arch]
        recurrent = tuple(il < n_layer and (il + 1) % interval != 0 for il in range(block_count))
    elif arch in RECURRENT_BY_ZERO_KV:
        recurrent = tuple(il < n_layer and n_head_kv[il] == 0 for il in range(block_count))
    elif arch in RECURRENT_ALL:
        recurrent = (True,) * n_layer + (False,) * n_layer_nextn

    kv_lora_rank = int(key("attention.kv_lora_rank", 0) or 0)
    rope_dim = int(key("rope.dimension_count", 0) or 0)
    tensor_facts = tuple(
        TensorFacts(
            name=t.name, shape=tuple(int(d) for d in t.shape), ggml_type=str(t.ggml_type), n_bytes=int(t.n_bytes)
        )
        for t in tensors
    )
    file_type = fields.get("general.file_type")
    return ModelFacts(
        architecture=arch,
        n_layer=n_layer,
        n_embd=n_embd,
        n_vocab=int(n_vocab),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=head_dim_k,
        head_dim_v=head_dim_v,
        n_ff=n_ff,
        context_length=int(key("context_length", 0) or 0),
        n_layer_nextn=n_layer_nextn,
        n_swa=n_swa,
        swa_layers=swa_layers,
        kv_lora_rank=kv_lora_rank,
        rope_dim=rope_dim,
        head_dim_k_mla=int(key("attention.key_length_mla", 0) or 0),
        head_dim_v_mla=int(key("attention.value_length_mla", 0) or 0),
        mla=bool(key("attention.key_length_mla", 0)) and bool(key("attention.value_length_mla", 0)),
        n_expert=int(key("expert_count", 0) or 0),
        n_expert_used=int(key("expert_used_count", 0) or 0),
        n_expert_shared=int(key("expert_shared_count", 0) or 0),
        n_ff_exp=int(key("expert_feed_forward_length", 0) or 0),
        n_ff_shexp=int(key("expert_shared_feed_forward_length", 0) or 0),
        recurrent_layers=recurrent,
        full_attention_interval=interval,
        ssm_d_conv=int(key("ssm.conv_kernel", 0) or 0),
        ssm_d_inner=int(key("ssm.inner_size", 0) or 0),
        ssm_d_state=int(key("ssm.state_size", 0) or 0),
        ssm_n_group=int(key("ssm.group_count", 0) or 0),
        ssm_dt_rank=int(key("ssm.time_step_rank", 0) or 0),
        name=str(fields.get("general.name", "")),
        file_type=_file_type_name(file_type),
        tensors=tensor_facts,
    )


def _file_type_name(value: Any) -> str:
    if value is None:
        return ""
    try:
        import gguf  # lazily: gguf loads numpy, which a no-op deploy never needs

        return gguf.LlamaFileType(int(value)).name.removeprefix("MOSTLY_")
    except (ValueError, TypeError):
        return str(value)


def facts_from_header(header: Any, *, source: str = "GGUF") -> ModelFacts:
    """Facts from a :class:`homelab.hub.gguf_header.GGUFHeader`."""
    return facts_from_metadata(header.fields, header.tensors, source=source)


def facts_from_file(path: str | os.PathLike[str]) -> ModelFacts:
    """Facts of a local GGUF, reading only its header."""
    from ..hub.gguf_header import (
        read_local_header,  # lazily: it loads gguf (numpy) and requests
    )

    return facts_from_header(read_local_header(path), source=str(path))
