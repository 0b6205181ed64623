"""Memory estimate for one ``llama-server`` process, every term separately, per device.

The rules follow llama.cpp b11434 (``src/llama-model.cpp`` layer placement, ``llama-context.cpp``
context sizes, ``llama-kv-cache*.cpp`` cache sizes, ``llama-memory-recurrent.cpp``); the compute
buffer, which llama.cpp only knows after building and allocating the graph, is a formula of the
peak live tensors calibrated against the real ``llama-server`` (``homelab bench plan``):

- weights: every tensor's exact byte size, placed on the device llama.cpp puts it on
  (``n-gpu-layers`` counts from the last layer; the input embedding always stays on the CPU;
  ``override-tensor`` regexes, ``cpu-moe``/``n-cpu-moe``, ``split-mode``, ``tensor-split``,
  ``main-gpu``);
- KV cache: cells x per-layer K and V row sizes of the cache types; ``ctx-size`` padded to 256;
  ``parallel`` streams when the cache is not unified; sliding-window layers hold
  ``n_swa x n_seq + n_ubatch`` cells (padded); MLA keeps one head of ``kv_lora_rank + rope`` and no V;
  recurrent layers of hybrid models hold none;
- recurrent state: ``(r + s) x 4 bytes x n_seq`` per recurrent layer;
- output buffer: logits for one output per sequence, in host memory;
- compute buffer: the attention mask plus the larger of the attention and FFN working sets of one
  ubatch (see :func:`compute_bytes`);
- MTP draft context: its own KV for the MTP layers and a one-layer compute buffer; the MTP
  layers' weights only count with MTP on (llama.cpp skips loading them otherwise), and hybrid
  models keep ``spec-draft-n-max`` extra recurrent-state snapshots per sequence;
- mmproj: the projector's weights on the main device;
- draft: a separate draft model's (or MTP head file's) weights, KV cache and compute buffer on
  the devices its flags put it on (:mod:`homelab.plan.draft` adds it);
- overhead: a GPU runtime context per process and device (CUDA/HIP: hundreds of MiB).
"""

from __future__ import annotations

import bisect
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import HomelabError
from ..gguf.facts import ModelFacts

MIB = 1024 * 1024
CPU = "CPU"

KV_TYPES: dict[str, tuple[int, int]] = {
    # type -> (elements per block, bytes per block), as ggml defines them
    "f32": (1, 4),
    "f16": (1, 2),
    "bf16": (1, 2),
    "q8_0": (32, 34),
    "q4_0": (32, 18),
    "q4_1": (32, 20),
    "q5_0": (32, 22),
    "q5_1": (32, 24),
    "iq4_nl": (32, 18),
}

RUNTIME_OVERHEAD_MIB: dict[str, int] = {"cuda": 400, "hip": 600, "vulkan": 300, "cpu": 0}
"""Memory a GPU runtime takes per process and device beyond llama.cpp's buffers (driver context,
kernels, BLAS workspaces). Not in any llama.cpp report; measured on users' cards with
nvidia-smi / rocm-smi. Override with ``HOMELAB_PLAN_OVERHEAD_MIB``."""

PIPELINE_BACKENDS = {"cuda", "hip", "vulkan"}
"""Backends whose devices report async compute and events (b11434's ``ggml-cuda``,
``ggml-vulkan`` device props), where llama.cpp turns on pipeline parallelism. RPC devices
report both too (``ggml-rpc.cpp``), whatever the worker runs."""
SCHED_COPIES = 4
"""GGML_SCHED_MAX_COPIES: input copies per split with pipeline parallelism."""

LLAMA_SERVER_AUTO_PARALLEL = 4
"""``llama-server`` with ``--parallel`` unset uses 4 slots and a unified KV cache (b11434)."""


class EstimateError(HomelabError):
    pass


# ------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Override:
    pattern: str
    device: str  # "CPU" or "GPU<i>"


@dataclass(frozen=True)
class Settings:
    """The llama-server flags that change memory, normalised."""

    ctx_size: int = 0
    """0: the model's training context."""
    parallel: int = LLAMA_SERVER_AUTO_PARALLEL
    kv_unified: bool = True
    ubatch: int = 512
    batch: int = 2048
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: bool = True
    n_gpu_layers: int = 999
    overrides: tuple[Override, ...] = ()
    split_mode: str = "layer"
    tensor_split: tuple[float, ...] = ()
    main_gpu: int = 0
    swa_full: bool = False
    kv_offload: bool = True
    mtp: bool = False
    draft_n_max: int = 0
    """Tokens drafted per step with MTP; hybrid models keep that many extra state snapshots."""
    draft_type_k: str = "f16"
    draft_type_v: str = "f16"
    """The MTP draft context's KV types (``cache-type-k-draft``; llama.cpp's default f16, not the
    main cache's type)."""
    mmproj_bytes: int = 0
    mmproj_offload: bool = True


_FLAG_ALIASES = {
    "gpu-layers": "n-gpu-layers",
    "ngl": "n-gpu-layers",
    "c": "ctx-size",
    "np": "parallel",
    "ub": "ubatch-size",
    "b": "batch-size",
    "ctk": "cache-type-k",
    "ctv": "cache-type-v",
    "fa": "flash-attn",
    "ot": "override-tensor",
    "ts": "tensor-split",
    "sm": "split-mode",
    "mg": "main-gpu",
    "ncmoe": "n-cpu-moe",
    "cmoe": "cpu-moe",
    "nkvo": "no-kv-offload",
}

EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"
"""llama.cpp's ``--cpu-moe`` pattern; ``--n-cpu-moe N`` prefixes it with ``blk\\.<i>`` for i < N."""


def _int(flags: Mapping[str, Any], name: str, default: int) -> int:
    value = flags.get(name)
    if value is None or value is False:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EstimateError(f"flag {name}: {value!r} is not a whole number") from None


def _on(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in {"on", "true", "1", "yes", "enabled"}:
        return True
    if text in {"off", "false", "0", "no", "disabled"}:
        return False
    return default  # "auto": llama.cpp enables flash attention where the backend supports it


def device_name(name: str) -> str:
    """llama.cpp buffer-type names (CPU, CUDA0, ROCm1, Vulkan0, RPC0) as our device names."""
    if name.upper().startswith("CPU"):
        return CPU
    if m := re.match(r"RPC(\d+)", name, re.IGNORECASE):
        return f"RPC{int(m.group(1))}"
    m = re.search(r"(\d+)$", name)
    return f"GPU{int(m.group(1)) if m else 0}"


DEFAULT_DRAFT_N_MAX = 3
"""llama.cpp's ``--spec-draft-n-max`` default (b11434)."""


def settings_from_flags(
    flags: Mapping[str, Any], *, mtp: bool = False, draft_n_max: int | None = None, mmproj_bytes: int = 0
) -> Settings:
    """Normalise recipe flags (long names without dashes; aliases accepted)."""
    flags = {_FLAG_ALIASES.get(k.lstrip("-"), k.lstrip("-")): v for k, v in flags.items()}
    ctx = flags.get("ctx-size")
    ctx_size = 0 if ctx in (None, False, "auto", "max") else _int(flags, "ctx-size", 0)
    parallel_raw = flags.get("parallel")
    if parallel_raw in (None, False, "auto", -1, "-1"):
        parallel, unified = LLAMA_SERVER_AUTO_PARALLEL, True
    else:
        parallel, unified = max(1, _int(flags, "parallel", 1)), False
    if "kv-unified" in flags:
        unified = _on(flags["kv-unified"], unified)
    if flags.get("no-kv-unified"):
        unified = False
    ngl_raw = flags.get("n-gpu-layers")
    if ngl_raw in (None, "auto", "all", -1, -2, "-1", "-2"):
        ngl = 999
    else:
        ngl = _int(flags, "n-gpu-layers", 999)
    overrides: list[Override] = []
    ot = flags.get("override-tensor")
    if ot not in (None, False):
        for item in str(ot).split(","):
            if not item.strip():
                continue
            if "=" not in item:
                raise EstimateError(f"override-tensor {item!r}: expected PATTERN=BUFFER_TYPE (e.g. exps=CPU)")
            pattern, target = item.rsplit("=", 1)
            try:
                re.compile(pattern)
            except re.error as exc:
                raise EstimateError(f"override-tensor {pattern!r}: not a regular expression ({exc})") from None
            overrides.append(Override(pattern, device_name(target.strip())))
    if flags.get("cpu-moe"):
        overrides.append(Override(EXPS_REGEX, CPU))
    for i in range(_int(flags, "n-cpu-moe", 0)):
        overrides.append(Override(rf"blk\.{i}{EXPS_REGEX}", CPU))
    ts = flags.get("tensor-split")
    tensor_split: tuple[float, ...] = ()
    if ts not in (None, False):
        try:
            tensor_split = tuple(float(x) for x in re.split(r"[,/]", str(ts)) if x.strip())
        except ValueError:
            raise EstimateError(f"tensor-split {ts!r}: expected numbers like 3,1") from None
    spec = str(flags.get("spec-type") or "")
    kv_offload = not flags.get("no-kv-offload") and _on(flags.get("kv-offload"), True)
    ubatch = _int(flags, "ubatch-size", 512)
    batch = _int(flags, "batch-size", 2048)
    return Settings(
        ctx_size=ctx_size,
        parallel=parallel,
        kv_unified=unified,
        ubatch=min(ubatch, batch),
        batch=batch,
        cache_type_k=str(flags.get("cache-type-k") or "f16").lower(),
        cache_type_v=str(flags.get("cache-type-v") or "f16").lower(),
        flash_attn=_on(flags.get("flash-attn"), True),
        n_gpu_layers=ngl,
        overrides=tuple(overrides),
        split_mode=str(flags.get("split-mode") or "layer"),
        tensor_split=tensor_split,
        main_gpu=_int(flags, "main-gpu", 0),
        swa_full=bool(flags.get("swa-full")),
        kv_offload=kv_offload,
        mtp=(use_mtp := mtp or "mtp" in spec),
        draft_n_max=(draft_n_max or _int(flags, "spec-draft-n-max", DEFAULT_DRAFT_N_MAX)) if use_mtp else 0,
        draft_type_k=str(flags.get("cache-type-k-draft") or flags.get("spec-draft-type-k") or "f16").lower(),
        draft_type_v=str(flags.get("cache-type-v-draft") or flags.get("spec-draft-type-v") or "f16").lower(),
        mmproj_bytes=mmproj_bytes,
        mmproj_offload=not flags.get("no-mmproj-offload"),
    )


# ------------------------------------------------------------------------------- estimate


@dataclass
class Terms:
    """Bytes of each kind on one device (or summed over devices)."""

    weights: int = 0
    kv: int = 0
    recurrent: int = 0
    output: int = 0
    compute: int = 0
    mtp: int = 0
    mmproj: int = 0
    draft: int = 0
    overhead: int = 0

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.kv
            + self.recurrent
            + self.output
            + self.compute
            + self.mtp
            + self.mmproj
            + self.draft
            + self.overhead
        )

    def add(self, other: Terms) -> None:
        for name in TERM_NAMES:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {**{name: getattr(self, name) for name in TERM_NAMES}, "total": self.total}


TERM_NAMES = ("weights", "kv", "recurrent", "output", "compute", "mtp", "mmproj", "draft", "overhead")


@dataclass(frozen=True)
class Geometry:
    """Context sizes as llama.cpp derives them from the flags."""

    n_ctx: int
    n_ctx_seq: int
    n_seq: int
    n_stream: int
    n_ubatch: int
    kv_cells: int
    """Cells per stream of the full-attention layers."""
    swa_cells: int
    """Cells per stream of the sliding-window layers (0 if none)."""


@dataclass(frozen=True)
class Estimate:
    """One llama-server process. All values in bytes; ``devices`` maps CPU/GPU<i> to its terms."""

    weights: int
    kv: int
    recurrent: int
    output: int
    compute: int
    mtp: int
    mmproj: int
    draft: int
    overhead: int
    total: int
    devices: dict[str, dict[str, int]]
    geometry: Geometry
    settings: Settings
    notes: tuple[str, ...] = ()
    layer_devices: tuple[str, ...] = ()
    """Device of each layer 0..n_layer_all (the last: the output layer), as llama.cpp assigns them."""

    @property
    def buffers(self) -> int:
        """What llama.cpp itself allocates and reports (everything but the runtime overhead)."""
        return self.total - self.overhead

    def device_total(self, device: str) -> int:
        return self.devices.get(device, {}).get("total", 0)

    @property
    def gpu_devices(self) -> list[str]:
        return [d for d in self.devices if d != CPU]

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in (*TERM_NAMES, "total")}
        data["buffers"] = self.buffers
        data["devices"] = self.devices
        data["geometry"] = asdict(self.geometry)
        data["notes"] = list(self.notes)
        return data


def _pad(x: int, n: int) -> int:
    return (x + n - 1) // n * n


def row_bytes(cache_type: str, n: int) -> int:
    """Bytes of ``n`` elements of a KV cache type (ggml_row_size)."""
    try:
        block, size = KV_TYPES[cache_type]
    except KeyError:
        raise EstimateError(
            f"cache type {cache_type!r} is not one llama.cpp offers for the KV cache (known: {', '.join(KV_TYPES)})"
        ) from None
    if n % block:
        raise EstimateError(
            f"cache type {cache_type} needs rows that are a multiple of {block} elements; "
            f"this model's K/V rows have {n} (use f16 or q8_0 with a compatible head size)"
        )
    return n // block * size


def geometry(facts: ModelFacts, s: Settings) -> Geometry:
    n_ctx = s.ctx_size or facts.context_length or 4096
    n_ctx = _pad(n_ctx, 256)
    n_seq = max(1, s.parallel)
    if s.kv_unified:
        n_ctx_seq, n_stream = n_ctx, 1
    else:
        n_ctx_seq = _pad(n_ctx // n_seq, 256)
        n_ctx = n_ctx_seq * n_seq
        n_stream = n_seq
    n_ubatch = min(n_ctx, s.ubatch)
    swa_cells = 0
    if facts.n_swa and any(facts.is_swa(il) for il in range(facts.n_layer)):
        if s.swa_full:
            swa_cells = n_ctx_seq
        else:
            swa_cells = _pad(min(n_ctx_seq, facts.n_swa * (n_seq if s.kv_unified else 1) + s.ubatch), 256)
    return Geometry(n_ctx, n_ctx_seq, n_seq, n_stream, n_ubatch, n_ctx_seq, swa_cells)


@dataclass(frozen=True)
class RpcDevice:
    """One device an ``rpc-server`` offers to the head's ``llama-server`` (``--rpc``).

    llama.cpp puts every RPC device before the local GPUs (``llama_prepare_model_devices``:
    "add RPC servers at the front of the list"), in ``--rpc`` order, each server's devices in
    its own order; ``--tensor-split`` and ``main-gpu`` index that combined list. Our estimate
    names them ``RPC0``, ``RPC1``... like llama.cpp's device names."""

    size: float
    """Relative size for llama.cpp's default split (by free memory): the device's budget."""
    backend: str = "cpu"
    """What the worker runs (its runtime overhead per device)."""


def model_devices(gpus: Sequence[float], rpc: Sequence[RpcDevice] = ()) -> list[tuple[str, float]]:
    """The devices llama.cpp's model uses, in its order (RPC first, then local GPUs), with sizes."""
    return [(f"RPC{j}", d.size) for j, d in enumerate(rpc)] + [(f"GPU{i}", float(g)) for i, g in enumerate(gpus)]


def split_points(ratios: Sequence[float]) -> list[float]:
    """llama.cpp's normalised cumulative split in float32, as ``load_tensors`` computes it."""
    points: list[float] = []
    acc = _f32(0.0)
    for r in ratios:
        acc = _f32(acc + _f32(r))
        points.append(acc)
    total = acc or _f32(1.0)
    return [_f32(p / total) for p in points]


def _f32(x: float) -> float:
    """Round to float32: the split is float arithmetic in llama.cpp, and a layer exactly on a
    boundary (``--tensor-split 5,2``) must land where llama.cpp puts it."""
    return struct.unpack("f", struct.pack("f", x))[0]


def layer_devices(facts: ModelFacts, s: Settings, gpus: Sequence[float], rpc: Sequence[RpcDevice] = ()) -> list[str]:
    """Device of each layer 0..n_layer_all (the last entry is the output layer).

    ``gpus`` are the relative sizes of the GPUs the process may use (their VRAM, for llama.cpp's
    default split by free memory); empty for a CPU-only host. ``rpc``: the ``--rpc`` devices,
    which come first in llama.cpp's device list.
    """
    n_all = facts.n_layer_all
    devices = model_devices(gpus, rpc)
    if not devices or s.n_gpu_layers <= 0:
        return [CPU] * (n_all + 1)
    names = [name for name, _ in devices]
    if s.split_mode in ("none", "row", "tensor") or len(devices) == 1:
        main = names[min(s.main_gpu if s.split_mode != "layer" else 0, len(names) - 1)]
        weights_split = [main]
    else:
        weights_split = []
    ngl = s.n_gpu_layers
    start = max(n_all + 1 - ngl, 0)
    act = min(ngl, n_all + 1)
    sizes = [size for _, size in devices]
    ratios = list(s.tensor_split[: len(sizes)]) if s.tensor_split and any(s.tensor_split) else sizes
    ratios += [0.0] * (len(sizes) - len(ratios))
    points = split_points(ratios)
    out: list[str] = []
    for il in range(n_all + 1):
        if il < start or il - start >= act:
            out.append(CPU)
        elif weights_split:
            out.append(weights_split[0])
        else:
            # std::upper_bound(splits, float(il - i_gpu_start) / act_gpu_layers)
            frac = _f32(_f32(il - start) / _f32(act))
            idx = bisect.bisect_right(points, frac)
            out.append(names[min(idx, len(names) - 1)])
    return out


_BLK = re.compile(r"^blk\.(\d+)\.")


def _layer_of(name: str) -> int:
    m = _BLK.match(name)
    return int(m.group(1)) if m else -1


def tensor_device(name: str, layer_dev: Sequence[str], s: Settings) -> str:
    for ov in s.overrides:
        if re.search(ov.pattern, name):
            return ov.device
    if m := _BLK.match(name):
        il = int(m.group(1))
        return layer_dev[min(il, len(layer_dev) - 1)]
    if name.startswith(("token_embd", "token_types", "pos_embd")):
        return CPU  # llama.cpp keeps the input layer on the CPU
    return layer_dev[-1]  # output layer and model-wide tensors


def compute_bytes(facts: ModelFacts, s: Settings, g: Geometry) -> int:
    """Peak live bytes of the worst-case ubatch graph (llama.cpp's "compute buffer").

    Per token of the ubatch (f32 unless noted): the KQ mask over all cells (f16 with flash
    attention, f32 without), a second one for sliding-window layers, and the larger of

    - attention: without flash attention the KQ scores ``n_kv x n_head`` (softmax in place)
      plus about 6.5 rows of ``n_embd``; with flash attention about 5 rows of ``n_embd``;
      MLA: the absorbed queries and latent outputs (``2 n_head kv_lora_rank``), the per-head
      q/k/v rows (``n_head (2 k_mla + v_mla)``) and 3 rows of ``n_embd`` (+ KQ without FA);
    - FFN: gate, up and their product (3 x ``n_ff``; MoE: per used expert plus the shared
      expert and the router scores) plus 3 to 5 rows of ``n_embd`` (the allocator's
      fragmentation grows it to 5 for wide FFNs and deeper models).

    The constants were fitted against llama.cpp b11434's own report on the CPU backend over
    n_embd 128-512, n_ff 256-4096, 2-32 layers, ubatch 128-512, dense/MoE/MLA/hybrid models
    (within 2% there; ``homelab bench plan``). One-layer graphs peak lower (over-estimated).
    """
    n_tok = g.n_ubatch
    # unified: one stream over all cells; split: each stream's tokens see its own n_ctx_seq
    # cells; either way the mask (and KQ) is n_ctx_seq x n_tokens
    n_kv_total = g.kv_cells
    mask = _mask_bytes(s, g)
    n_head = max(facts.n_head) if facts.n_head else 0
    e = facts.n_embd
    if facts.is_mla:
        # measured on MLA models: the absorbed queries and the latent attention output per head
        # (2 x kv_lora_rank), the per-head q/k/v rows (2 x k_mla + v_mla) and 3 rows of n_embd
        attn = 2 * n_head * facts.kv_lora_rank + n_head * (2 * facts.head_dim_k_mla + facts.head_dim_v_mla) + 3 * e
        if not s.flash_attn:
            attn += n_kv_total * n_head
    elif s.flash_attn:
        attn = 5 * e
    else:
        attn = n_kv_total * n_head + int(6.5 * e)
    if facts.is_moe:
        # measured: a MoE layer's working set is a dense FFN as wide as its used experts
        # (plus the shared expert) and the router's scores
        shared = facts.n_ff_shexp or (facts.n_ff_exp * facts.n_expert_shared)
        ffn_width = facts.n_ff_exp * max(1, facts.n_expert_used) + shared
        ffn = 3 * ffn_width + 2 * facts.n_expert
    else:
        ffn_width = facts.n_ff
        ffn = 3 * ffn_width
    # the residual stream around the FFN: 3 rows, 5 once ggml-alloc's free list fragments
    # (wide FFNs, or from the third layer on); fitted, see the docstring
    ffn += 5 * e if ffn_width >= 4 * e or (ffn_width >= 2 * e and facts.n_layer >= 3) else 3 * e
    per_token = max(attn, ffn)
    outputs = min(n_tok, g.n_seq) * facts.n_vocab * 4
    return mask + per_token * n_tok * 4 + outputs


def mtp_kv_bytes(facts: ModelFacts, s: Settings, g: Geometry) -> int:
    """The MTP draft context's KV cache: the MTP layers at the full context."""
    total = 0
    for il in range(facts.n_layer, facts.n_layer_all):
        k = row_bytes(s.draft_type_k, facts.k_per_token(il))
        v = 0 if facts.is_mla else row_bytes(s.draft_type_v, facts.v_per_token(il))
        total += g.kv_cells * g.n_stream * (k + v)
    return total


def draft_compute_bytes(facts: ModelFacts, s: Settings, g: Geometry) -> int:
    """The MTP draft context's graph: one layer; measured as the mask plus ~6 rows of n_embd."""
    return _mask_bytes(s, g) + 6 * facts.n_embd * g.n_ubatch * 4 + min(g.n_ubatch, g.n_seq) * facts.n_vocab * 4


def _mask_bytes(s: Settings, g: Geometry) -> int:
    """The KQ mask(s) of one ubatch: f16 with flash attention, f32 without; SWA layers have their own."""
    elt = 2 if s.flash_attn else 4
    return (g.kv_cells + g.swa_cells) * g.n_ubatch * elt


def _kv_for_layer(facts: ModelFacts, s: Settings, g: Geometry, il: int) -> int:
    cells = (g.swa_cells if facts.is_swa(il) else g.kv_cells) * g.n_stream
    k = row_bytes(s.cache_type_k, facts.k_per_token(il))
    if facts.is_mla:
        return cells * k
    # without flash attention V is stored transposed and padded to the widest layer
    v_elems = facts.v_per_token(il) if s.flash_attn else max(facts.v_per_token(i) for i in range(facts.n_layer))
    v = row_bytes(s.cache_type_v, v_elems)
    return cells * (k + v)


def overhead_bytes(backend: str) -> int:
    env = os.environ.get("HOMELAB_PLAN_OVERHEAD_MIB")
    if env:
        try:
            return int(float(env) * MIB)
        except ValueError:
            raise EstimateError(f"HOMELAB_PLAN_OVERHEAD_MIB={env!r} is not a number of MiB") from None
    return RUNTIME_OVERHEAD_MIB.get(backend, 0) * MIB


def estimate(
    facts: ModelFacts,
    settings: Settings,
    *,
    backend: str = "cpu",
    gpus: Sequence[float] = (),
    rpc: Sequence[RpcDevice] = (),
) -> Estimate:
    """Estimate one process. ``gpus``: relative sizes (VRAM MiB) of the GPUs it may use;
    ``rpc``: the devices of its ``--rpc`` workers (before the GPUs in llama.cpp's order)."""
    if backend == "cpu":
        gpus = ()
    s = settings
    notes: list[str] = []
    if not s.flash_attn and s.cache_type_v not in ("f16", "f32", "bf16"):
        raise EstimateError(
            f"cache-type-v {s.cache_type_v} needs flash attention in llama.cpp; set flash-attn: on "
            "or use an f16 V cache"
        )
    g = geometry(facts, s)
    layer_dev = layer_devices(facts, s, gpus, rpc)
    devs: dict[str, Terms] = {}

    def at(device: str) -> Terms:
        return devs.setdefault(device, Terms())

    # weights
    has_output = any(t.name == "output.weight" for t in facts.tensors)
    for t in facts.tensors:
        if not s.mtp and facts.n_layer_nextn and _layer_of(t.name) >= facts.n_layer:
            continue  # llama.cpp skips loading the MTP layers unless MTP is on
        dev = tensor_device(t.name, layer_dev, s)
        if s.split_mode in ("row", "tensor") and len(gpus) > 1 and not rpc and dev != CPU and len(t.shape) >= 2:
            ratios = list(s.tensor_split[: len(gpus)]) if s.tensor_split else list(gpus)
            total = sum(ratios) or 1.0
            for i, r in enumerate(ratios):
                at(f"GPU{i}").weights += int(t.n_bytes * r / total)
            continue
        at(dev).weights += t.n_bytes
        if t.name == "token_embd.weight" and not has_output and layer_dev[-1] != CPU:
            at(layer_dev[-1]).weights += t.n_bytes  # tied embeddings: the output layer gets a copy
    # KV cache and recurrent state, on each layer's device (or the CPU with no-kv-offload)
    for il in range(facts.n_layer):
        dev = layer_dev[il] if s.kv_offload else CPU
        if facts.is_recurrent(il):
            per_seq = (facts.recurrent_r_per_seq + facts.recurrent_s_per_seq) * 4
            # with MTP, llama.cpp keeps draft_n_max more snapshots per sequence for rollback
            at(dev).recurrent += per_seq * max(1, g.n_seq) * (1 + s.draft_n_max)
        elif facts.has_kv(il):
            at(dev).kv += _kv_for_layer(facts, s, g, il)
    # output buffer: host memory (pinned on GPU backends)
    at(CPU).output += facts.n_vocab * g.n_seq * 4
    # compute: each device that runs layers holds a full worst-case graph's working set
    run_devices = sorted({d for d in layer_dev[: facts.n_layer + 1]})
    compute = compute_bytes(facts, s, g)
    # llama.cpp's test: more than one model device (RPC ones included), all offloaded, layer
    # split, KV offloaded, no overrides, and every device with async compute and events (RPC
    # devices always say yes; of the local backends CUDA, HIP and Vulkan)
    n_model_devices = len(gpus) + len(rpc)
    pipeline = (
        (not gpus or backend in PIPELINE_BACKENDS)
        and n_model_devices > 1
        and s.n_gpu_layers > facts.n_layer_all
        and s.split_mode == "layer"
        and s.kv_offload
        and not s.overrides
    )
    row = facts.n_embd * g.n_ubatch * 4
    if pipeline:
        # ggml_backend_sched with pipeline parallelism keeps GGML_SCHED_MAX_COPIES (4) copies of
        # every split input (the KQ mask(s), the activations handed from the previous device) on
        # the device that reads it, and 4 copies of the graph inputs in host memory. Fitted on
        # RPC devices (b11434; 6 shapes, FA on/off, ctx 4k-16k, ubatch 128/512, `homelab bench
        # plan`): the first device holds the whole-graph working set + 3 more masks + 11 rows of
        # n_embd, each later device + 3 masks + 1 row, the host 4 masks + 10 rows (within 4%).
        mask = _mask_bytes(s, g)
        first = next(d for d in layer_dev if d != CPU)
        extra_first = (SCHED_COPIES - 1) * mask + 11 * row
        extra_later = (SCHED_COPIES - 1) * mask + row
        for dev in run_devices:
            at(dev).compute += compute + (extra_first if dev == first else extra_later)
        at(CPU).compute += SCHED_COPIES * mask + 10 * row
        kind = "devices" if rpc else "GPUs"
        notes.append(
            f"pipeline parallelism over {n_model_devices} {kind}: +{extra_first / MIB:.0f} MiB of input copies "
            f"on the first, +{extra_later / MIB:.0f} MiB on the others"
        )
    else:
        for dev in run_devices:
            at(dev).compute += compute
        if CPU not in run_devices:
            # the input embedding runs on the CPU: its rows for one ubatch
            at(CPU).compute += row
    # MTP draft context: KV of the MTP layers and a one-layer graph
    if s.mtp:
        if not facts.has_mtp:
            notes.append("MTP requested but the model has no MTP layers (nextn_predict_layers = 0)")
        else:
            dev = layer_dev[facts.n_layer]
            at(dev).mtp += mtp_kv_bytes(facts, s, g) + draft_compute_bytes(facts, s, g)
            at(CPU).mtp += facts.n_vocab * g.n_seq * 4
    # multimodal projector
    if s.mmproj_bytes:
        dev = f"GPU{s.main_gpu}" if gpus and s.mmproj_offload else CPU
        at(dev).mmproj += s.mmproj_bytes
    # runtime overhead per GPU process context
    rpc_backend = {f"RPC{j}": d.backend for j, d in enumerate(rpc)}
    for dev in list(devs):
        if dev != CPU:
            # an RPC device's runtime context lives in the worker's rpc-server process
            at(dev).overhead += overhead_bytes(rpc_backend.get(dev, backend))
    sums = Terms()
    for terms in devs.values():
        sums.add(terms)
    rank = {name: i for i, (name, _) in enumerate(model_devices(gpus, rpc))}
    order = sorted(devs, key=lambda d: -1 if d == CPU else rank.get(d, len(rank)))
    return Estimate(
        **{name: getattr(sums, name) for name in TERM_NAMES},
        total=sums.total,
        devices={d: devs[d].as_dict() for d in order},
        geometry=g,
        settings=s,
        notes=tuple(notes),
        layer_devices=tuple(layer_dev),
    )
