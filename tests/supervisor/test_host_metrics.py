"""``/metrics`` also carries the host gauges llama-swap exposes, under its names, so its example
Grafana dashboard reads ``homelab serve`` unchanged."""

from __future__ import annotations

import os
import re
from pathlib import Path

import aiohttp
import psutil

from homelab.supervisor.config import PerformanceSettings
from homelab.supervisor.hostmetrics import parse_nvidia_smi

from .conftest import fake_model, make_config

# Every metric the panels of llama-swap's docs/grafana/example-dashboard.json query.
DASHBOARD_METRICS = (
    "llamaswap_cpu_util_percent", "llamaswap_gpu_fan_speed_percent", "llamaswap_gpu_memory_util_percent",
    "llamaswap_gpu_power_draw_watts", "llamaswap_gpu_temperature_celsius", "llamaswap_gpu_util_percent",
    "llamaswap_load_average", "llamaswap_memory_free_bytes", "llamaswap_memory_total_bytes",
    "llamaswap_memory_used_bytes", "llamaswap_swap_used_bytes", "llamaswap_network_bytes_total",
)  # fmt: skip

NVIDIA_SMI_OUTPUT = """\
0, NVIDIA GeForce RTX 3060, GPU-a, 41, 12, 1024, 12288, 30, 35.50
1, NVIDIA GeForce RTX 3060, GPU-b, 55, 97, 6144, 12288, [N/A], 170.20
"""


def fake_nvidia_smi(directory: Path) -> None:
    """A real executable on PATH that prints what nvidia-smi's CSV query prints."""
    script = directory / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{NVIDIA_SMI_OUTPUT}EOF\n")
    script.chmod(0o755)


async def test_metrics_carry_the_gauges_llama_swaps_dashboard_reads(serve, tmp_path, monkeypatch) -> None:
    fake_nvidia_smi(tmp_path)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    running = await serve(make_config(fake_model("a")))
    async with aiohttp.ClientSession() as s, s.get(running.url + "/metrics") as resp:
        text = await resp.text()
    for name in DASHBOARD_METRICS:
        assert re.search(rf"^# TYPE {name} (gauge|counter)$", text, re.M), name
        assert re.search(rf"^{name}(\{{[^}}]*\}})? [-+.e0-9]+$", text, re.M), name
    assert len(re.findall(r"^llamaswap_cpu_util_percent\{core=", text, re.M)) == psutil.cpu_count()
    total = int(re.search(r"^llamaswap_memory_total_bytes (\d+)$", text, re.M).group(1))
    assert total == psutil.virtual_memory().total
    assert 'llamaswap_gpu_memory_util_percent{id="1",name="NVIDIA GeForce RTX 3060",uuid="GPU-b"} 50' in text
    assert 'llamaswap_gpu_fan_speed_percent{id="1",name="NVIDIA GeForce RTX 3060",uuid="GPU-b"} 0' in text
    assert 'llamaswap_gpu_power_draw_watts{id="0",name="NVIDIA GeForce RTX 3060",uuid="GPU-a"} 35.5' in text
    assert 'llamaswap_load_average{interval="15m"}' in text
    assert 'homelab_model_loaded{model="a"} 0' in text  # ours, beside


async def test_no_gpu_gauges_without_nvidia_smi(serve, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    running = await serve(make_config(fake_model("a")))
    async with aiohttp.ClientSession() as s, s.get(running.url + "/metrics") as resp:
        text = await resp.text()
    assert "llamaswap_memory_total_bytes" in text and "llamaswap_gpu_" not in text


def test_parse_nvidia_smi_skips_other_lines() -> None:
    gpus = parse_nvidia_smi(NVIDIA_SMI_OUTPUT + "No devices were found\n")
    assert [(g.index, g.uuid, g.memory_total_mib, g.fan_percent) for g in gpus] == [
        (0, "GPU-a", 12288, 30), (1, "GPU-b", 12288, 0)]


async def test_performance_disabled_leaves_the_host_gauges_out(serve) -> None:
    running = await serve(make_config(fake_model("a"), performance=PerformanceSettings(disabled=True)))
    async with aiohttp.ClientSession() as s, s.get(running.url + "/metrics") as resp:
        text = await resp.text()
    assert "llamaswap_" not in text and 'homelab_model_loaded{model="a"} 0' in text
