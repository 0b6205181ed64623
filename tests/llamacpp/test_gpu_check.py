"""scripts/gpu-check.sh, as far as a machine without a GPU can run it: the whole script on the
CPU test build with a stand-in nvidia-smi (no compile: GPU_CHECK_SERVER), and its parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from homelab.bench.gpu import GpuCheckError, gpus_from_smi, offload_findings, split_draft
from homelab.settings import CHECKOUT
from homelab.testing.llama_server import cache_dir

SCRIPT = CHECKOUT / "scripts" / "gpu-check.sh"
STAND_IN = """#!/bin/sh
# what an H200 reports to the two queries the script makes
case "$*" in
  *--query-gpu*) echo "NVIDIA H200, 143771, 9.0" ;;
  *) echo "stand-in nvidia-smi" ;;
esac
"""


def test_the_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True).returncode == 0
    assert os.access(SCRIPT, os.X_OK)


def test_cards_from_nvidia_smi() -> None:
    text = "NVIDIA GeForce RTX 4090, 24564, 8.9\nNVIDIA GeForce RTX 3090, 24576, 8.6\n\n"
    assert gpus_from_smi(text) == [
        {"name": "NVIDIA GeForce RTX 4090", "vram_mib": 24564, "arch": "8.9"},
        {"name": "NVIDIA GeForce RTX 3090", "vram_mib": 24576, "arch": "8.6"},
    ]
    with pytest.raises(GpuCheckError, match="is not 'name, memory.total, compute_cap'"):
        gpus_from_smi("name, memory.total [MiB]\n")
    with pytest.raises(GpuCheckError, match="listed no GPU"):
        gpus_from_smi("")


@pytest.mark.e2e
def test_the_script_end_to_end_on_the_cpu_build(tmp_path: Path, llama_server_bin: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text(STAND_IN)
    (fake / "nvidia-smi").chmod(0o755)
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PATH": f"{fake}:{os.environ['PATH']}",
        "OUT": str(out),
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "GPU_CHECK_NO_INSTALL": "1",
        "PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(CHECKOUT), *sys.path]),
        "HOMELAB_TEST_CACHE": str(cache_dir()),  # the b11434 repository the e2e tests keep
        "GPU_CHECK_SERVER": str(llama_server_bin),
        "GPU_CHECK_DEVICE": "cpu",
    }
    run = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    log = (out / "gpu-check.log").read_text()
    assert run.returncode == 0, log[-4000:]
    steps = [line.split() for line in (out / "steps.txt").read_text().splitlines()]
    assert [s[0] for s in steps] == ["gpus", "install", "source", "inventory", "lock", "build", "check", "plan"]
    assert all(s[1] == "0" for s in steps), steps
    # the build targets the card's own compute capability (9.0 -> 90)
    assert "-DCMAKE_CUDA_ARCHITECTURES=90" in (out / "build-dry-run.txt").read_text()
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["findings"] == []
    assert [load["build_info"].split("-")[0] for load in report["loads"]] == ["b11434", "b11434"]
    assert all(load["draft_n"] > 0 for load in report["loads"])  # the draft drafts
    # the plan's figures (all devices) within 10% of what llama.cpp allocated, model and draft apart
    rows = report["plan_vs_llama_cpp"]
    for part in ("model", "draft"):
        ours, theirs = (sum(r[f"{part}_{side}_mib"] for r in rows) for side in ("ours", "theirs"))
        assert abs(ours - theirs) <= 0.1 * theirs, (part, ours, theirs)
    assert " draft " in (out / "plan.txt").read_text()
    assert "exit 0" in (out / "summary.txt").read_text()

    # the same buffers judged for the GPU: nothing is there, and each part is named
    main, draft = split_draft((out / "buffers.log").read_text())
    findings = offload_findings(main, draft, "gpu0")
    assert [f.split(" on ")[0] for f in findings] == [
        "no model weights", "no KV cache", "no compute buffer", "no draft weights"
    ]  # fmt: skip
    assert offload_findings(main, None, "cpu") == ["the draft model was not loaded (no 'loading draft model' in the log)"]
