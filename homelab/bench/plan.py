"""``homelab bench plan``: our estimate beside llama.cpp's own buffer report, per term.

Tiny models of several shapes are written with :mod:`homelab.testing.tiny_gguf`, each loaded by the real
``llama-server`` at log verbosity 4 with several settings; the buffers it reports (model, KV,
compute, output: per buffer type, to 0.01 MiB) are compared with :func:`estimate`. With an
``rpc-server`` beside the binary, models are also split (``--rpc``, ``--tensor-split``) over two
real rpc-servers on 127.0.0.1 and every device's buffers are compared (``RPC_SETTINGS``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..gguf.facts import facts_from_file
from ..plan.estimate import (
    MIB,
    RpcDevice,
    draft_compute_bytes,
    estimate,
    mtp_kv_bytes,
    settings_from_flags,
)
from ..plan.observe import (
    Observed,
    local_rpc_servers,
    observe_server,
    rpc_server_beside,
)
from ..testing.llama_server import build_test_server
from ..testing.tiny_gguf import (
    TinyArchSpec,
    TinySpec,
    write_tiny_arch,
    write_tiny_llama,
)

MODELS: dict[str, TinySpec | TinyArchSpec] = {
    "tiny-llama": TinySpec(),
    "wide-f16": TinySpec(n_embd=512, n_head=8, n_head_kv=4, n_ff=2048, n_layer=4, dtype="f16", name="wide"),
    "deep": TinySpec(n_embd=256, n_head=8, n_head_kv=2, n_ff=1024, n_layer=12, name="deep"),
    "mha": TinySpec(n_embd=256, n_head=8, n_head_kv=8, n_ff=768, n_layer=6, name="mha"),
    "gemma3-swa": TinyArchSpec(
        arch="gemma3", n_embd=256, n_head=8, n_head_kv=4, n_ff=1024, n_layer=12, sliding_window=512
    ),
    "qwen3moe": TinyArchSpec(
        arch="qwen3moe", n_embd=256, n_head=8, n_head_kv=4, n_layer=6, n_expert=16, n_expert_used=4, n_ff_exp=256
    ),
    "qwen35-hybrid": TinyArchSpec(
        arch="qwen35",
        n_embd=256,
        n_head=8,
        n_head_kv=2,
        n_ff=768,
        n_layer=12,
        ssm_state=64,
        ssm_groups=2,
        ssm_v_heads=8,
    ),
    "qwen35-mtp": TinyArchSpec(
        arch="qwen35",
        n_embd=256,
        n_head=8,
        n_head_kv=2,
        n_ff=768,
        n_layer=8,
        ssm_state=64,
        ssm_groups=2,
        ssm_v_heads=8,
        mtp_layers=1,
    ),
    "deepseek2-mla": TinyArchSpec(
        arch="deepseek2",
        n_embd=256,
        n_head=16,
        kv_lora_rank=128,
        n_layer=6,
        n_expert=16,
        n_expert_used=4,
        n_ff_exp=128,
        n_ff=768,
    ),
}

EXTRA_SETTINGS: dict[str, dict[str, dict[str, object]]] = {
    # MTP: the draft context (KV of the MTP layer, its own compute buffer) and the hybrid state's
    # rollback snapshots, with llama-server's own draft-mtp speculative decoding
    "qwen35-mtp": {
        "ctx8k mtp n3": {"ctx-size": 8192, "spec-type": "draft-mtp", "spec-draft-n-max": 3},
        "ctx16k q8 mtp n2": {
            "ctx-size": 16384,
            "cache-type-k": "q8_0",
            "cache-type-v": "q8_0",
            "spec-type": "draft-mtp",
            "spec-draft-n-max": 2,
            "parallel": 1,
        },
    },
}


def write_model(path: Path, spec: TinySpec | TinyArchSpec) -> Path:
    if isinstance(spec, TinyArchSpec):
        return write_tiny_arch(path, spec)
    return write_tiny_llama(path, spec)


SETTINGS: dict[str, dict[str, object]] = {
    "ctx4k f16": {"ctx-size": 4096},
    "ctx16k q8_0": {"ctx-size": 16384, "cache-type-k": "q8_0", "cache-type-v": "q8_0", "flash-attn": "on"},
    "ctx8k q4_0 np2": {
        "ctx-size": 8192,
        "cache-type-k": "q4_0",
        "cache-type-v": "q4_0",
        "flash-attn": "on",
        "parallel": 2,
    },
    "ctx4k fa-off": {"ctx-size": 4096, "flash-attn": "off", "parallel": 1},
    "ctx6000 ub128": {"ctx-size": 6000, "ubatch-size": 128, "parallel": 1},
}

TERMS = ("weights", "kv", "state", "compute", "total")


@dataclass(frozen=True)
class Row:
    model: str
    setting: str
    ours: dict[str, int]
    theirs: dict[str, int]

    def error(self, term: str) -> float:
        t = self.theirs[term]
        if not t:  # llama.cpp has none: right only if we have none either
            return 1.0 if self.ours[term] else 0.0
        return (self.ours[term] - t) / t


def _theirs(obs: Observed) -> dict[str, int]:
    return {
        "weights": obs.total(obs.model),
        "kv": obs.total(obs.kv),
        "state": obs.total(obs.recurrent),
        "compute": obs.total(obs.compute),
        "total": obs.all_total,
    }


def server_binary(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("HOMELAB_TEST_LLAMA_SERVER")
    if env:
        return Path(env)
    return build_test_server()


def compare(server: Path, workdir: Path) -> list[Row]:
    rows: list[Row] = []
    for name, spec in MODELS.items():
        path = write_model(workdir / f"{name}.gguf", spec)
        facts = facts_from_file(path)
        for setting, flags in {**SETTINGS, **EXTRA_SETTINGS.get(name, {})}.items():
            obs = observe_server(server, path, {**flags, "no-repack": True})
            settings = settings_from_flags(flags)
            est = estimate(facts, settings)
            # llama.cpp reports the draft context's KV and compute buffers with the others
            draft_kv = mtp_kv_bytes(facts, settings, est.geometry) if settings.mtp else 0
            draft_compute = draft_compute_bytes(facts, settings, est.geometry) if settings.mtp else 0
            ours = {
                "weights": est.weights,
                "kv": est.kv + draft_kv,
                "state": est.recurrent,
                "compute": est.compute + draft_compute,
                "total": est.buffers,
            }
            rows.append(Row(name, setting, ours, _theirs(obs)))
    return rows


RPC_SETTINGS: dict[str, tuple[str, dict[str, object]]] = {
    # model -> (setting name -> flags): a split over two real rpc-servers on 127.0.0.1 (CPU devices)
    "ts 10,3 ctx4k": ("deep", {"tensor-split": "10,3", "ctx-size": 4096, "parallel": 1}),
    "ts 1,1 ctx16k q8_0": (
        "deep",
        {
            "tensor-split": "1,1",
            "ctx-size": 16384,
            "cache-type-k": "q8_0",
            "cache-type-v": "q8_0",
            "flash-attn": "on",
            "parallel": 1,
        },
    ),
    "ts 3,10 fa-off": ("deep", {"tensor-split": "3,10", "ctx-size": 4096, "flash-attn": "off", "parallel": 1}),
    "ts 2,3 ctx8k np2": ("wide-f16", {"tensor-split": "2,3", "ctx-size": 8192, "parallel": 2}),
    "ts 1,1 ctx4k": ("qwen35-hybrid", {"tensor-split": "1,1", "ctx-size": 4096, "parallel": 1}),
    "ts 1,1 ctx4k swa": ("gemma3-swa", {"tensor-split": "1,1", "ctx-size": 4096, "parallel": 1}),
    # one repeating layer on the second device: its graph peaks lower than our whole-graph figure
    "ts 1,1 ctx4k 1-layer": ("wide-f16", {"tensor-split": "1,1", "ctx-size": 4096, "parallel": 1}),
}
"""RPC split rows: each device's buffers (the two workers and the head's CPU) ours vs llama.cpp."""


def compare_rpc(server: Path, workdir: Path) -> list[Row]:
    """Per device of a model split with ``--rpc`` over two local rpc-servers (none without one)."""
    rpc_bin = rpc_server_beside(server)
    if rpc_bin is None:
        return []
    rows: list[Row] = []
    with local_rpc_servers(rpc_bin, 2) as endpoints:
        for setting, (name, flags) in RPC_SETTINGS.items():
            path = workdir / f"{name}.gguf"
            if not path.is_file():
                write_model(path, MODELS[name])
            facts = facts_from_file(path)
            run = {**flags, "rpc": ",".join(endpoints), "n-gpu-layers": 99, "no-repack": True}
            obs = observe_server(server, path, run)
            est = estimate(facts, settings_from_flags(run), backend="cpu", rpc=[RpcDevice(1.0), RpcDevice(1.0)])
            devices = [(f"RPC{j}", f"RPC0[{ep}]") for j, ep in enumerate(endpoints)] + [("CPU", "CPU")]
            for dev, buffer in devices:
                mine = est.devices.get(dev, {})
                ours = {
                    "weights": mine.get("weights", 0),
                    "kv": mine.get("kv", 0),
                    "state": mine.get("recurrent", 0),
                    "compute": mine.get("compute", 0),
                }

                def get(part: dict[str, int], buffer: str = buffer) -> int:
                    # the head's host buffers: CPU, CPU_Mapped (mmap), CPU_REPACK...
                    return (
                        sum(v for k, v in part.items() if k.startswith("CPU"))
                        if buffer == "CPU"
                        else part.get(buffer, 0)
                    )

                theirs = {
                    "weights": get(obs.model),
                    "kv": get(obs.kv),
                    "state": get(obs.recurrent),
                    "compute": get(obs.compute),
                }
                ours["total"], theirs["total"] = sum(ours.values()), sum(theirs.values())
                rows.append(Row(name, f"{setting} {dev}", ours, theirs))
    return rows


def run_bench(server: str | None, *, as_json: bool = False, rpc: bool = True) -> int:
    logging.getLogger("gguf").setLevel(logging.WARNING)  # the writer's "Writing the following files"
    binary = server_binary(server)
    with tempfile.TemporaryDirectory(prefix="homelab-bench-plan-") as tmp:
        rows = compare(binary, Path(tmp))
        split_rows = compare_rpc(binary, Path(tmp)) if rpc else []
    rows += split_rows
    if as_json:
        print(
            json.dumps(
                [{"model": r.model, "setting": r.setting, "ours": r.ours, "llama_cpp": r.theirs} for r in rows],
                indent=2,
            )
        )
        return 0
    print(f"llama-server: {binary}")
    print("MiB ours / llama.cpp (error %)")
    header = f"{'model':<13} {'setting':<24}" + "".join(f" {t:>26}" for t in TERMS)
    print(header)
    for r in rows:
        cells = [f" {r.ours[t] / MIB:9.2f} /{r.theirs[t] / MIB:9.2f} ({r.error(t) * 100:+5.1f}%)" for t in TERMS]
        print(f"{r.model:<13} {r.setting:<24}" + "".join(cells))
    single = rows[: len(rows) - len(split_rows)]
    print("worst |error|: " + ", ".join(f"{t} {max(abs(r.error(t)) for r in single) * 100:.1f}%" for t in TERMS))
    print("targets: weights, kv and state 1%, compute 15%, total 5%")
    if split_rows:
        # per device of a split: an over-estimate wastes room, an under-estimate risks a failed load
        under = {t: min(min(r.error(t) for r in split_rows), 0.0) for t in TERMS}
        over = {t: max(max(r.error(t) for r in split_rows), 0.0) for t in TERMS}
        print("RPC split, per device: worst under-estimate " + ", ".join(f"{t} {under[t] * 100:.1f}%" for t in TERMS))
        print("RPC split, per device: worst over-estimate  " + ", ".join(f"{t} {over[t] * 100:.1f}%" for t in TERMS))
    if rpc and not split_rows:
        print(f"(no rpc-server beside {binary}: RPC split rows skipped)")
    return 0


def bench_command(args: argparse.Namespace) -> int:
    return run_bench(args.server, as_json=args.json)


def register(cli) -> None:  # noqa: ANN001 - homelab.cli.CLI
    b = cli.benchmark("plan", bench_command, "our memory estimate beside llama.cpp's own numbers on tiny models")
    b.add_argument(
        "--server",
        metavar="PATH",
        help="llama-server to compare with (default: $HOMELAB_TEST_LLAMA_SERVER or the test build)",
    )
    b.add_argument("--json", action="store_true")
