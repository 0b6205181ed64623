"""The duo3060 CUDA build compiled for real, for one architecture (86), by ``homelab build``.

Long (20-60 minutes on two cores), so it runs only with ``HOMELAB_CUDA_BUILD=1``. It needs nvcc
and cuBLAS: a toolkit with cuBLAS, or the ``nvidia-cublas`` wheel importable (``pip install
nvidia-cublas``, or its unpacked folder on ``PYTHONPATH``); without ``libcuda.so`` the host is
built with ``GGML_CUDA_NO_VMM: ON``. The b11434 tree is the e2e tests' cached sdist repository.
State lives in ``$HOMELAB_TEST_CACHE/cuda-state`` so a second run shows the cached path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from homelab.settings import CHECKOUT

pytestmark = [
    pytest.mark.cuda_build,
    pytest.mark.skipif(os.environ.get("HOMELAB_CUDA_BUILD") != "1", reason="set HOMELAB_CUDA_BUILD=1 (long)"),
]


def homelab(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "homelab.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_duo3060_compiles_for_sm86(tmp_path: Path) -> None:
    if shutil.which("nvcc") is None:
        pytest.skip("no nvcc on PATH")
    cache = Path(os.environ.get("HOMELAB_TEST_CACHE", "~/.cache/homelab-tests")).expanduser()
    repo = cache / "src" / "llama.cpp-b11434.git"
    if not repo.is_dir():
        pytest.skip("no cached b11434 repository (run the e2e tests once)")
    inventory = tmp_path / "inventory"
    shutil.copytree(CHECKOUT / "recipes", inventory / "recipes")
    host = yaml.safe_load((CHECKOUT / "hosts" / "duo3060.yaml").read_text())
    host["gpus"] = host["gpus"][:1]  # one card, one arch: 86
    for model in host["models"]:
        model.get("server", {}).pop("tensor-split", None)
    host["llama_cpp"] = {"ref": "b11434", "repo": str(repo), "cmake": {"GGML_CUDA_NO_VMM": True}}
    (inventory / "hosts").mkdir()
    (inventory / "hosts" / "duo3060.yaml").write_text(yaml.safe_dump(host, sort_keys=False))
    env = {**os.environ, "HOMELAB_STATE": str(cache / "cuda-state"), "PYTHONPATH": os.pathsep.join(sys.path)}

    dry = homelab(["build", "duo3060", "--inventory", str(inventory), "--dry-run"], env, 600)
    assert dry.returncode == 0, dry.stderr
    assert "-DCMAKE_CUDA_ARCHITECTURES=86" in dry.stdout and "-DGGML_CUDA_NO_VMM=ON" in dry.stdout
    assert "a build would stop here" not in dry.stderr, dry.stderr

    started = time.monotonic()
    first = homelab(["build", "duo3060", "--inventory", str(inventory), "-q"], env, 4 * 3600)
    took = time.monotonic() - started
    assert first.returncode == 0, first.stderr[-3000:]
    server = Path(re.search(r"llama-server (?:built in [\d.]+ s|up to date): (\S+)", first.stdout)[1])  # type: ignore[index]
    assert server.is_file()
    help_text = subprocess.run([str(server), "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert "--spec-type" in help_text.stdout + help_text.stderr

    started = time.monotonic()
    again = homelab(["build", "duo3060", "--inventory", str(inventory), "-q"], env, 600)
    cached = time.monotonic() - started
    assert again.returncode == 0 and "up to date" in again.stdout
    print(f"\ncuda build: {took:.0f} s ({first.stdout.strip()}); cached: {cached:.1f} s")
