"""The task graph over the example inventory, and a broken inventory stopping it early."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def doit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HOMELAB_INVENTORY"}
    return subprocess.run(
        [sys.executable, "-m", "doit", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )


def copy_example_inventory(target: Path) -> None:
    """The example hosts and recipes under ``target`` (their lockfiles left out)."""
    for folder in ("hosts", "recipes"):
        shutil.copytree(REPO / folder, target / folder, ignore=shutil.ignore_patterns("*.lock.json"))


def test_doit_list_shows_every_stage_for_the_example_hosts() -> None:
    out = doit("list", "--all", "host=xtx,duo3060")
    assert out.returncode == 0, out.stderr
    for host in ("xtx", "duo3060"):
        for stage in ("lock", "source", "build", "plan", "render", "install", "deploy"):
            assert f"{stage}:{host}" in out.stdout


def test_a_broken_inventory_stops_doit_with_file_and_line(tmp_path: Path) -> None:
    copy_example_inventory(tmp_path)
    host = tmp_path / "hosts" / "xtx.yaml"
    host.write_text(host.read_text().replace("arch: gfx1100", "arch: sm_86"))
    out = doit("list", "host=xtx", f"inventory={tmp_path}")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"{host}:7: gpus[0].arch: 'sm_86' is not a ROCm target" in out.stderr


def test_making_the_task_graph_imports_no_heavy_stage_library() -> None:
    """A no-op deploy pays for every import at task creation: numpy (via gguf), GitPython and
    requests belong in the actions that use them, not in `doit list` / the graph."""
    env = {k: v for k, v in os.environ.items() if k != "HOMELAB_INVENTORY"}
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "doit", "list", "--all", "host=xtx,duo3060"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "homelab.tasks.factory" in imported and "homelab.render.stage" in imported  # the graph was made
    assert not {"numpy", "gguf", "git", "requests"} & imported


def test_a_head_naming_a_host_without_rpc_server_stops_doit_before_any_task(tmp_path: Path) -> None:
    copy_example_inventory(tmp_path)
    head = tmp_path / "hosts" / "rig4090.yaml"
    head.write_text(head.read_text().replace("rpc: [rpc3090]", "rpc: [xtx]"))
    out = doit("list", "host=rig4090", f"inventory={tmp_path}")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"{head}:" in out.stderr and "host 'xtx' runs no rpc-server" in out.stderr
