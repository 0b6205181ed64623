"""The host gauges llama-swap's ``/metrics`` exposes (its ``internal/perf/prometheus.go``), under
its names, so its example Grafana dashboard works on ``homelab serve`` unchanged: CPU use per
core, memory, swap, load average, network bytes, and per-GPU temperature, use, memory, fan and
power. They sit beside our ``homelab_*`` metrics.

Host figures come from psutil (llama-swap uses gopsutil); GPU figures from ``nvidia-smi``'s CSV
query, as llama-swap reads them, and are left out without it. CPU use is measured between two
scrapes (the first scrape after start measures from the start).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass

import psutil

from .metrics import escape_label

log = logging.getLogger("homelab.supervisor")

NVIDIA_QUERY = "index,name,uuid,temperature.gpu,utilization.gpu,memory.used,memory.total,fan.speed,power.draw"
NVIDIA_TIMEOUT = 5.0
GPU_CACHE_SECONDS = 1.0
MIB = 1024 * 1024


def _gauge(name: str, help: str, samples: list[tuple[str, float]], kind: str = "gauge") -> list[str]:
    lines = [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
    return lines + [f"{name}{labels} {_number_text(value)}" for labels, value in samples]


def _number_text(value: float) -> str:
    """Byte counts in full (``%g`` would round 16 GiB to 6 digits), other figures short."""
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return f"{value:g}"


@dataclass(frozen=True)
class GpuStat:
    index: int
    name: str
    uuid: str
    temperature_c: float
    util_percent: float
    memory_used_mib: float
    memory_total_mib: float
    fan_percent: float
    power_w: float

    @property
    def memory_util_percent(self) -> float:
        return 100.0 * self.memory_used_mib / self.memory_total_mib if self.memory_total_mib else 0.0


def _number(text: str) -> float:
    """A CSV figure; ``[N/A]`` (a fanless card, power not reported) counts as 0 like llama-swap."""
    try:
        return float(text)
    except ValueError:
        return 0.0


def parse_nvidia_smi(output: str) -> list[GpuStat]:
    """``nvidia-smi --query-gpu=<NVIDIA_QUERY> --format=csv,noheader,nounits`` lines."""
    gpus = []
    for line in output.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 9 or not fields[0].isdigit():
            continue
        index, name, uuid, *figures = fields
        temp, util, used, total, fan, power = (_number(f) for f in figures)
        gpus.append(GpuStat(int(index), name, uuid, temp, util, used, total, fan, power))
    return gpus


class HostMetrics:
    def __init__(self) -> None:
        psutil.cpu_percent(percpu=True)  # the baseline the first scrape measures from
        self._gpus: list[GpuStat] = []
        self._gpus_at = -GPU_CACHE_SECONDS
        self._nvidia_smi = shutil.which("nvidia-smi")

    async def render(self) -> str:
        return "\n".join(self.host_lines() + self.gpu_lines(await self.gpus())) + "\n"

    def host_lines(self) -> list[str]:
        cpu = psutil.cpu_percent(percpu=True)
        memory = psutil.virtual_memory()
        swap = psutil.swap_memory()
        load = psutil.getloadavg()
        lines = _gauge(
            "llamaswap_cpu_util_percent",
            "CPU utilization per core (0-100)",
            [(f'{{core="{i}"}}', pct) for i, pct in enumerate(cpu)],
        )
        lines += _gauge("llamaswap_memory_total_bytes", "Total memory in bytes", [("", memory.total)])
        lines += _gauge("llamaswap_memory_used_bytes", "Used memory in bytes", [("", memory.used)])
        lines += _gauge("llamaswap_memory_free_bytes", "Free memory in bytes", [("", memory.free)])
        lines += _gauge("llamaswap_swap_total_bytes", "Total swap in bytes", [("", swap.total)])
        lines += _gauge("llamaswap_swap_used_bytes", "Used swap in bytes", [("", swap.used)])
        lines += _gauge(
            "llamaswap_load_average",
            "Load average",
            [(f'{{interval="{name}"}}', value) for name, value in zip(("1m", "5m", "15m"), load, strict=True)],
        )
        network = psutil.net_io_counters(pernic=True)
        if network:
            samples: list[tuple[str, float]] = []
            for iface, io in sorted(network.items()):
                samples.append((f'{{interface="{escape_label(iface)}",direction="recv"}}', io.bytes_recv))
                samples.append((f'{{interface="{escape_label(iface)}",direction="sent"}}', io.bytes_sent))
            lines += _gauge("llamaswap_network_bytes_total", "Total network bytes transferred", samples, "counter")
        return lines

    async def gpus(self) -> list[GpuStat]:
        if self._nvidia_smi is None:
            return []
        now = time.monotonic()
        if now - self._gpus_at < GPU_CACHE_SECONDS:
            return self._gpus  # a burst of scrapes runs nvidia-smi once
        self._gpus_at = now
        try:
            proc = await asyncio.create_subprocess_exec(
                self._nvidia_smi,
                f"--query-gpu={NVIDIA_QUERY}",
                "--format=csv,noheader,nounits",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                output, _ = await asyncio.wait_for(proc.communicate(), NVIDIA_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
        except (OSError, TimeoutError) as exc:
            log.warning("metrics: nvidia-smi failed (%s); GPU gauges left out", exc or "timed out")
            self._gpus = []
            return []
        self._gpus = parse_nvidia_smi(output.decode(errors="replace"))
        return self._gpus

    @staticmethod
    def gpu_lines(gpus: list[GpuStat]) -> list[str]:
        if not gpus:
            return []
        figures = (
            ("llamaswap_gpu_temperature_celsius", "GPU temperature in Celsius", lambda g: g.temperature_c),
            ("llamaswap_gpu_util_percent", "GPU utilization percent (0-100)", lambda g: g.util_percent),
            ("llamaswap_gpu_memory_util_percent", "GPU memory utilization percent (0-100)", lambda g: g.memory_util_percent),
            ("llamaswap_gpu_memory_used_bytes", "GPU memory used in bytes", lambda g: g.memory_used_mib * MIB),
            ("llamaswap_gpu_memory_total_bytes", "GPU memory total in bytes", lambda g: g.memory_total_mib * MIB),
            ("llamaswap_gpu_fan_speed_percent", "GPU fan speed percent (0-100)", lambda g: g.fan_percent),
            ("llamaswap_gpu_power_draw_watts", "GPU power draw in watts", lambda g: g.power_w),
        )  # fmt: skip
        lines: list[str] = []
        for name, help, value in figures:
            samples = [
                (f'{{id="{g.index}",name="{escape_label(g.name)}",uuid="{escape_label(g.uuid)}"}}', value(g))
                for g in gpus
            ]
            lines += _gauge(name, help, samples)
        return lines
