"""``homelab gguf inspect FILE_OR_HF_REF``: a model's facts and its memory estimate."""

from __future__ import annotations

import argparse
import json

from ..gguf.ref import facts_from_ref
from .estimate import RUNTIME_OVERHEAD_MIB, estimate, settings_from_flags
from .report import mib, render_estimate


def register(cli) -> None:  # cli: homelab.cli.CLI (the CLI imports this module lazily)
    def show_help(_args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p: argparse.ArgumentParser = cli.command("gguf", show_help, "GGUF model files: facts and memory estimates")
    sub = p.add_subparsers(dest="gguf_command", metavar="ACTION")
    inspect = sub.add_parser(
        "inspect",
        help="print a model's facts and memory estimate (local file or hf://owner/repo/file.gguf[@rev])",
        description="Facts from the GGUF header (read from the Hub with Range requests for hf:// "
        "references, no download) and the memory llama-server would use with these settings.",
    )
    inspect.add_argument("ref", metavar="FILE_OR_HF_REF")
    inspect.add_argument("--ctx", type=int, default=None, help="ctx-size (default: the model's training context)")
    inspect.add_argument("--cache-type-k", default="f16", help="K cache type: f16, q8_0, q4_0... (default f16)")
    inspect.add_argument("--cache-type-v", default="f16", help="V cache type (default f16)")
    inspect.add_argument(
        "--parallel", type=int, default=None, help="slots (default: llama-server's auto, 4 with a unified KV)"
    )
    inspect.add_argument("--ubatch", type=int, default=512, help="ubatch-size (default 512)")
    inspect.add_argument("--flash-attn", choices=["on", "off", "auto"], default="auto")
    inspect.add_argument("--n-gpu-layers", type=int, default=None, help="layers on the GPU (default all)")
    inspect.add_argument(
        "--backend",
        choices=sorted(RUNTIME_OVERHEAD_MIB),
        default="cpu",
        help="where it runs, for the per-device split and runtime overhead (default cpu)",
    )
    inspect.add_argument(
        "--vram",
        type=int,
        action="append",
        default=[],
        metavar="MIB",
        help="VRAM of a GPU in MiB (repeat for several GPUs; with --backend cuda/hip/vulkan)",
    )
    inspect.add_argument("--json", action="store_true", help="machine-readable output (contract)")
    inspect.set_defaults(handler=inspect_command)


def inspect_command(args: argparse.Namespace) -> int:
    facts, source = facts_from_ref(args.ref)
    flags: dict[str, object] = {
        "ctx-size": args.ctx,
        "cache-type-k": args.cache_type_k,
        "cache-type-v": args.cache_type_v,
        "parallel": args.parallel,
        "ubatch-size": args.ubatch,
        "flash-attn": args.flash_attn,
        "n-gpu-layers": args.n_gpu_layers,
    }
    settings = settings_from_flags({k: v for k, v in flags.items() if v is not None})
    gpus = [float(v) for v in args.vram] or ([24576.0] if args.backend != "cpu" else [])
    est = estimate(facts, settings, backend=args.backend, gpus=gpus)
    if args.json:
        print(json.dumps({"source": source, "estimate": est.as_dict(), "facts": facts.summary()}, indent=2))
        return 0
    f = facts
    print(f"{source}")
    print(
        f"  {f.architecture} {f.name!r}, {f.file_type or '?'}, {mib(f.weights_bytes)} MiB of weights in {len(f.tensors)} tensors"
    )
    heads = f"{min(f.n_head)}-{max(f.n_head)}" if len(set(f.n_head)) > 1 else f"{f.n_head[0] if f.n_head else 0}"
    kv_heads = (
        f"{min(f.n_head_kv)}-{max(f.n_head_kv)}"
        if len(set(f.n_head_kv)) > 1
        else f"{f.n_head_kv[0] if f.n_head_kv else 0}"
    )
    print(
        f"  layers {f.n_layer}"
        + (f" + {f.n_layer_nextn} MTP" if f.n_layer_nextn else "")
        + f", n_embd {f.n_embd}, heads {heads}, KV heads {kv_heads}, head dim K {f.head_dim_k} V {f.head_dim_v}, "
        f"vocab {f.n_vocab}, trained ctx {f.context_length}"
    )
    if f.n_swa:
        print(f"  sliding window {f.n_swa} on {sum(f.swa_layers[: f.n_layer])} of {f.n_layer} layers")
    if f.is_mla:
        print(f"  MLA: kv_lora_rank {f.kv_lora_rank}, rope dims {f.rope_dim} (K cache only)")
    if f.is_moe:
        print(
            f"  MoE: {f.n_expert} experts, {f.n_expert_used} used, {f.n_expert_shared} shared, expert FFN {f.n_ff_exp}"
        )
    if any(f.recurrent_layers):
        print(
            f"  hybrid: {sum(f.recurrent_layers)} recurrent layers, {f.n_layer - sum(f.recurrent_layers[: f.n_layer])} attention layers"
        )
    types: dict[str, int] = {}
    for t in f.tensors:
        types[t.ggml_type] = types.get(t.ggml_type, 0) + t.n_bytes
    print("  tensor types: " + ", ".join(f"{k} {mib(v)} MiB" for k, v in sorted(types.items(), key=lambda kv: -kv[1])))
    print(render_estimate(est))
    return 0
