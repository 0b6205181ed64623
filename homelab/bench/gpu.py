"""``homelab bench gpu-host`` and ``homelab bench gpu``: the plan and a CUDA build on a real card.

Driven by ``scripts/gpu-check.sh`` on a machine with an NVIDIA GPU (any step also runs alone):

1. ``gpu-host`` writes a one-host inventory from ``nvidia-smi``'s CSV: backend cuda, each card
   with its VRAM and compute capability (the build compiles for exactly those: the native
   arch), llama.cpp from a local git repository, and one model: a small real GGUF (written with
   :mod:`homelab.testing.tiny_gguf`) with a tinier draft model, fully offloaded;
2. the script runs ``homelab lock`` and ``homelab build`` on it (timed);
3. ``gpu`` loads that model with the built ``llama-server`` at log verbosity 4 and compares the
   plan's per-device figures (``homelab plan``'s own code) with the buffers llama.cpp reports,
   the main model and its draft apart; checks that the weights, KV cache and the draft landed
   on the GPU; then serves it for real: load time, ``/props``, a completion with its speed and
   drafted tokens, and a second load (the swap back) timed again. Everything goes to
   ``OUT/gpu-check.json``; the exit status is 1 when offload did not happen.

``--device`` names the plan's device the model must land on (``gpu0``); on a CPU build ``cpu``
runs the same checks, which is how the tests exercise this without a GPU.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..address import free_loopback_port
from ..errors import HomelabError
from ..http_client import http_session
from ..inventory import ResolvedHost, host_path, load_host
from ..plan.estimate import MIB
from ..plan.host import HostPlan
from ..plan.observe import Observed, flag_args, observe_server, parse_server_log, stop_server
from ..plan.sources import model_inputs
from ..plan.stage import make_plan
from ..testing.tiny_gguf import TinySpec, write_tiny_llama

HOST = "gpucheck"
MODEL = TinySpec(n_embd=512, n_head=8, n_head_kv=4, n_ff=2048, n_layer=8, dtype="f16", seed=11, name="gpu-main")
"""Big enough that every buffer is MiB-sized on the card, small enough to load in a blink."""
DRAFT = TinySpec(n_embd=128, n_head=4, n_head_kv=2, n_ff=256, n_layer=2, seed=12, name="gpu-draft")
"""Same 259-token vocabulary as the model: llama.cpp accepts it as a draft."""
SERVER = {"ctx-size": 8192, "n-gpu-layers": 99, "flash-attn": "on", "parallel": 2, "jinja": True}
LOAD_TIMEOUT_S = 120.0


class GpuCheckError(HomelabError):
    pass


# --------------------------------------------------------------------------------------------
# The inventory (pure but for the files it writes)


def gpus_from_smi(text: str) -> list[dict[str, Any]]:
    """``nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits``
    -> host ``gpus:`` entries (name, vram_mib, arch as the compute capability)."""
    gpus = []
    for row in csv.reader(io.StringIO(text)):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) != 3 or not cells[1].isdigit():
            raise GpuCheckError(
                f"nvidia-smi line {','.join(row)!r} is not 'name, memory.total, compute_cap' (query it with "
                "--query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits)"
            )
        gpus.append({"name": cells[0], "vram_mib": int(cells[1]), "arch": cells[2]})
    if not gpus:
        raise GpuCheckError("nvidia-smi listed no GPU: is the driver loaded (nvidia-smi -L)?")
    return gpus


def host_document(gpus: list[dict[str, Any]], repo: str, ref: str, jobs: int | None) -> dict[str, Any]:
    llama_cpp: dict[str, Any] = {"repo": repo, "ref": ref}
    if jobs:
        llama_cpp["jobs"] = jobs
    return {
        "name": HOST,
        "description": "scripts/gpu-check.sh: this machine's NVIDIA GPUs",
        "backend": "cuda",
        "gpus": gpus,
        "llama_cpp": llama_cpp,
        "runtime": {"kind": "supervisor", "service": "none"},
        "models": [{"recipe": "gpu-main", "gpus": [0]}],
    }


def write_inventory(root: Path, smi: str, repo: str, ref: str = "b11434", jobs: int | None = None) -> Path:
    """The check's inventory under ``root``: models, recipe and host file; returns the host file."""
    root = root.resolve()
    models = root / "models"
    main = write_tiny_llama(models / "gpu-main.gguf", MODEL)
    draft = write_tiny_llama(models / "gpu-draft.gguf", DRAFT)
    recipe = {
        "name": "gpu-main",
        "description": "a small f16 llama with a smaller draft (homelab bench gpu)",
        "source": {"path": {"path": str(main)}},
        "draft": {"path": {"path": str(draft)}},
        "server": SERVER,
    }
    for folder in ("recipes", "hosts"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "recipes" / "gpu-main.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    host_file = host_path(HOST, root)
    host_file.write_text(yaml.safe_dump(host_document(gpus_from_smi(smi), repo, ref, jobs), sort_keys=False))
    load_host(HOST, root)  # the loader's checks, now rather than in the build
    return host_file


# --------------------------------------------------------------------------------------------
# Plan against llama.cpp's buffers


def split_draft(text: str) -> tuple[Observed, Observed | None]:
    """The buffers of the main model and of its draft (logged after "loading draft model")."""
    at = text.find("loading draft model")
    if at < 0:
        return parse_server_log(text), None
    return parse_server_log(text[:at]), parse_server_log(text[at:])


def _device_of(buffer_type: str) -> str:
    """llama.cpp's buffer type -> the plan's host device (``CUDA0`` -> gpu0, host buffers -> cpu)."""
    name = buffer_type.lower()
    if name.startswith("cpu") or "host" in name or "mapped" in name or not name[-1:].isdigit():
        return "cpu"
    digits = len(name) - len(name.rstrip("0123456789"))
    return f"gpu{int(name[-digits:])}"


def per_device(obs: Observed) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in (obs.model, obs.kv, obs.recurrent, obs.output, obs.compute):
        for buffer_type, size in part.items():
            device = _device_of(buffer_type)
            out[device] = out.get(device, 0) + size
    return out


def compare_plan(plan: HostPlan, model_id: str, main: Observed, draft: Observed | None) -> list[dict[str, Any]]:
    """Per device: the plan's buffers (its total less the runtime overhead) and its draft term
    beside what llama.cpp allocated, in MiB."""
    devices = plan.models[model_id].host_devices()
    theirs_main, theirs_draft = per_device(main), per_device(draft) if draft else {}
    rows = []
    for device in sorted(set(devices) | set(theirs_main) | set(theirs_draft)):
        terms = devices.get(device, {})
        ours_draft = terms.get("draft", 0)
        ours_main = terms.get("total", 0) - terms.get("overhead", 0) - ours_draft
        rows.append(
            {
                "device": device,
                "model_ours_mib": round(ours_main / MIB, 2),
                "model_theirs_mib": round(theirs_main.get(device, 0) / MIB, 2),
                "draft_ours_mib": round(ours_draft / MIB, 2),
                "draft_theirs_mib": round(theirs_draft.get(device, 0) / MIB, 2),
            }
        )
    return rows


def _on(part: Mapping[str, int], device: str) -> int:
    return sum(size for buffer_type, size in part.items() if _device_of(buffer_type) == device)


def offload_findings(main: Observed, draft: Observed | None, device: str) -> list[str]:
    """What did not land on ``device`` (the plan's name: gpu0, or cpu for a CPU build)."""
    findings = []
    for what, part in (("model weights", main.model), ("KV cache", main.kv), ("compute buffer", main.compute)):
        if not _on(part, device):
            findings.append(f"no {what} on {device} (llama.cpp's buffers: {', '.join(sorted(part)) or 'none'})")
    if draft is None:
        findings.append("the draft model was not loaded (no 'loading draft model' in the log)")
    elif not _on(draft.model, device):
        findings.append(
            f"no draft weights on {device} (llama.cpp's buffers: {', '.join(sorted(draft.model)) or 'none'})"
        )
    return findings


# --------------------------------------------------------------------------------------------
# Serving for real


def serve_once(server: Path, model: Path, flags: Mapping[str, object], log: Path) -> dict[str, Any]:
    """Start llama-server, time the load until /health answers 200, read /props, complete once."""
    port = free_loopback_port()
    cmd = [str(server), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), *flag_args(dict(flags))]
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        with http_session() as http:
            while True:
                if proc.poll() is not None:
                    raise GpuCheckError(f"llama-server exited with {proc.returncode} while loading: see {log}")
                if time.monotonic() - started > LOAD_TIMEOUT_S:
                    raise GpuCheckError(f"llama-server not healthy within {LOAD_TIMEOUT_S:.0f} s: see {log}")
                try:
                    if http.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            load_s = time.monotonic() - started
            props = http.get(f"{base}/props", timeout=10).json()
            body = {"prompt": "abcabcabcabcabcabcabcabc", "n_predict": 32, "temperature": 0, "ignore_eos": True}
            answer = http.post(f"{base}/completion", json=body, timeout=120).json()
    finally:
        stop_server(proc)
    timings = answer.get("timings") or {}
    return {
        "load_s": round(load_s, 3),
        "build_info": props.get("build_info"),
        "predicted_n": timings.get("predicted_n"),
        "predicted_per_second": timings.get("predicted_per_second"),
        "draft_n": timings.get("draft_n", 0),
        "draft_n_accepted": timings.get("draft_n_accepted", 0),
    }


def check(host: ResolvedHost, server: Path, out: Path, device: str) -> dict[str, Any]:
    """Plan vs buffers, offload, and two timed loads; the report also written to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model = host.models[0]
    if model.source.path is None or model.draft is None or model.draft.path is None:
        raise GpuCheckError(f"{host.host_file}: the check wants its first model and draft as path sources")
    main_file, draft_file = Path(model.source.path.path), Path(model.draft.path.path)
    flags: dict[str, object] = {**model.server, "spec-draft-model": str(draft_file), "spec-type": "draft-simple"}
    plan, _ = make_plan(host, model_inputs(host))
    obs = observe_server(server, main_file, flags, timeout=LOAD_TIMEOUT_S)
    (out / "buffers.log").write_text(obs.log)
    main, draft = split_draft(obs.log)
    report: dict[str, Any] = {
        "server": str(server),
        "device": device,
        "gpus": [g.model_dump() for g in host.host.gpus],
        "plan_vs_llama_cpp": compare_plan(plan, model.id, main, draft),
        "findings": offload_findings(main, draft, device),
        "loads": [serve_once(server, main_file, flags, out / f"serve-{i}.log") for i in (1, 2)],
    }
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def print_report(report: Mapping[str, Any]) -> None:
    print(f"plan vs llama.cpp's buffers ({report['server']}), MiB")
    print(f"  {'device':<6} {'model ours':>11} {'theirs':>9} {'draft ours':>11} {'theirs':>9}")
    for r in report["plan_vs_llama_cpp"]:
        print(
            f"  {r['device']:<6} {r['model_ours_mib']:>11.2f} {r['model_theirs_mib']:>9.2f} "
            f"{r['draft_ours_mib']:>11.2f} {r['draft_theirs_mib']:>9.2f}"
        )
    for i, load in enumerate(report["loads"], 1):
        print(
            f"load {i}: {load['load_s']:.3f} s to healthy; {load['predicted_n']} tokens at "
            f"{load['predicted_per_second'] or 0:.0f}/s, {load['draft_n_accepted']}/{load['draft_n']} drafted "
            f"accepted ({load['build_info']})"
        )
    for finding in report["findings"]:
        print(f"NOT OFFLOADED: {finding}")
    print("offload: ok" if not report["findings"] else f"offload: {len(report['findings'])} problem(s)")


# --------------------------------------------------------------------------------------------
# CLI


def host_command(args: argparse.Namespace) -> int:
    logging.getLogger("gguf").setLevel(logging.WARNING)  # the writer's "Writing the following files"
    smi = Path(args.smi).read_text()
    print(write_inventory(Path(args.inventory), smi, args.repo, args.ref, args.jobs))
    return 0


def check_command(args: argparse.Namespace) -> int:
    host = load_host(HOST, Path(args.inventory))
    report = check(host, Path(args.server), Path(args.out), args.device)
    print_report(report)
    return 1 if report["findings"] else 0


def register(cli) -> None:  # noqa: ANN001 - homelab.cli.CLI
    h = cli.benchmark("gpu-host", host_command, "write the GPU check's inventory from nvidia-smi's CSV")
    h.add_argument("--smi", required=True, help="nvidia-smi --query-gpu=name,memory.total,compute_cap CSV file")
    h.add_argument("--inventory", required=True, help="folder to write hosts/, recipes/ and models/ into")
    h.add_argument("--repo", required=True, help="llama.cpp git repository (a local one works offline)")
    h.add_argument("--ref", default="b11434", help="tag, branch or commit to build (default b11434)")
    h.add_argument("--jobs", type=int, default=None, help="compile jobs (default: CPU count)")
    c = cli.benchmark("gpu", check_command, "the plan and offload of a built llama-server on this GPU, timed loads")
    c.add_argument("--inventory", required=True, help="the folder gpu-host wrote")
    c.add_argument("--server", required=True, help="the llama-server `homelab build gpucheck` built")
    c.add_argument("--out", required=True, help="where gpu-check.json and the logs go")
    c.add_argument("--device", default="gpu0", help="the plan's device the model must land on (cpu on a CPU build)")
