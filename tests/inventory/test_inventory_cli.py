"""``homelab hosts``, ``show``, ``validate`` and ``schema`` as users run them (subprocesses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from inventory_testkit import Inventory

REPO = Path(__file__).resolve().parents[2]


def homelab(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HOMELAB_INVENTORY"}
    return subprocess.run(
        [sys.executable, "-m", "homelab.cli", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120
    )


def test_show_xtx_prints_the_merged_host() -> None:
    out = homelab("show", "xtx")
    assert out.returncode == 0, out.stderr
    shown = yaml.safe_load(out.stdout)
    assert shown["name"] == "xtx" and shown["backend"] == "hip"
    models = {m["id"]: m for m in shown["models"]}
    mtp = models["qwen3.6-35b-a3b-mtp"]
    # host override (ctx-size) merged over recipe values (cache types, flash-attn)
    assert mtp["server"]["ctx-size"] == 65536 and mtp["server"]["cache-type-k"] == "q4_0"
    assert mtp["server"]["flash-attn"] == "on" and mtp["mtp"] == {"draft-n-max": 2}
    assert mtp["recipe"]["name"] == "qwen3.6-35b-a3b"
    assert mtp["source"]["hf"]["file"] == "Qwen3.6-35B-A3B-UD-IQ4_XS.gguf"
    assert "qwen3.6-35b-a3b:thinking" in models["qwen3.6-35b-a3b"]["names"]
    assert models["qwen3.6-35b-a3b"]["profiles"]["chat"]["chat_template_kwargs"] == {"enable_thinking": False}


def test_hosts_lists_backend_gpus_and_model_count() -> None:
    out = homelab("hosts")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert "cuda" in rows["duo3060"] and "2x RTX 3060 (12288 MiB)" in rows["duo3060"]
    assert rows["xtx"].split()[-1] == "6"


def test_validate_reports_every_problem_and_exits_2(inventory: Inventory) -> None:
    first = inventory.edit_host("xtx", "vram_mib: 24560", "vram_mib: lots")
    second = inventory.edit_host("duo3060", 'voice: "chat-small & think-small"', 'voice: "chat-small & thinks"')
    out = homelab("validate", "--inventory", str(inventory.root))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"{inventory.host_path('xtx')}:{first}: gpus[0].vram_mib: expected an integer" in out.stderr
    assert f"{inventory.host_path('duo3060')}:{second}: sets.voice:" in out.stderr
    assert out.stderr.startswith("homelab: error: ")


def test_validate_ok_and_single_files(inventory: Inventory) -> None:
    out = homelab("validate", "--inventory", str(inventory.root))
    assert out.returncode == 0, out.stderr
    assert "6 host(s) (duo3060, local, nas, rig4090, rpc3090, xtx)" in out.stdout
    out = homelab("validate", str(inventory.recipe_path("glm-4.7-flash")), str(inventory.host_path("local")))
    assert out.returncode == 0, out.stderr
    assert "1 host(s) (local) and 1 recipe(s)" in out.stdout


def test_validate_takes_a_host_name(inventory: Inventory) -> None:
    """`homelab validate duo3060` checks hosts/duo3060.yaml, as other commands name a host."""
    line = inventory.edit_host("duo3060", "spec-draft-n-max: 8}", "spec-draft-n-max: 8, spec-type: mtp}")
    out = homelab("validate", "--inventory", str(inventory.root), "duo3060")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{inventory.host_path('duo3060')}:{line}: models[0].server.spec-type:" in out.stderr
    assert "did you mean 'draft-mtp'?" in out.stderr
    out = homelab("validate", "--inventory", str(inventory.root), "duo306")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "duo306: no such file, and no host of that name" in out.stderr and "duo3060" in out.stderr


def test_show_unknown_host_is_a_one_line_error() -> None:
    out = homelab("show", "nope")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unknown host 'nope'" in out.stderr


def test_schema_check_passes_on_the_committed_schemas() -> None:
    out = homelab("schema", "--check")
    assert out.returncode == 0, out.stderr


def test_schema_write_to_a_folder(tmp_path: Path) -> None:
    out = homelab("schema", "--write", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "host.schema.json").read_text() == (REPO / "schemas" / "host.schema.json").read_text()
    out = homelab("schema", "--check", "--dir", str(tmp_path / "empty"))
    assert out.returncode == 2 and "homelab schema --write" in out.stderr
