"""Every rendered unit passes ``systemd-analyze verify`` with nothing on stderr.

``verify`` exits 0 on unknown keys and bad values (it only warns), so stderr is what counts, and
it fails when ExecStart's binary is missing: these units point at real files in tmp. The
``security`` exposure score of the system unit must stay "OK" (below 4.0).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from homelab.render import StatePaths, render_host

from .conftest import example_host, fake_inputs, with_runtime

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")

CASES = [
    ("xtx", "system", "supervisor"),
    ("duo3060", "system", "supervisor"),
    ("local", "system", "supervisor"),
    ("duo3060", "system", "router"),
    ("local", "system", "llama-swap"),
    ("xtx", "user", "supervisor"),
    ("duo3060", "user", "router"),
    ("local", "auto", "supervisor"),
]


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def _render_unit(tmp_path: Path, name: str, service: str, kind: str) -> Path:
    host = with_runtime(example_host(name), service=service, kind=kind)
    state = tmp_path / "state"
    inputs = fake_inputs(
        host,
        server_binary=_executable(tmp_path / "bin" / "llama-server"),
        homelab_executable=_executable(tmp_path / "venv" / "bin" / "homelab"),
        llama_swap_binary=_executable(tmp_path / "bin" / "llama-swap"),
        paths=StatePaths(state, name),
    )
    unit = tmp_path / f"homelab-{name}.service"
    unit.write_text(render_host(inputs)[f"units/homelab-{name}.service"])
    return unit


@pytest.mark.parametrize(("name", "service", "kind"), CASES)
def test_unit_verifies_cleanly(tmp_path: Path, name: str, service: str, kind: str) -> None:
    unit = _render_unit(tmp_path, name, service, kind)
    env = dict(os.environ)
    argv = ["systemd-analyze", "verify", str(unit)]
    if service != "system":
        runtime = tmp_path / "xdg-runtime"
        runtime.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime)  # a user manager needs one, even offline
        argv.insert(1, "--user")
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.parametrize("name", ["xtx", "duo3060", "local"])
def test_system_unit_security_score_is_ok(tmp_path: Path, name: str) -> None:
    unit = _render_unit(tmp_path, name, "system", "supervisor")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) < 4.0 and match[2] in ("OK", "SAFE"), match[0]
