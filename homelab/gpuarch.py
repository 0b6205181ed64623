"""One table from a GPU's architecture to what the build compiles and what the runtime sets.

Three places must agree about a card or it gets a binary it cannot run: the build targets
(``GPU_TARGETS`` / ``CMAKE_CUDA_ARCHITECTURES``), the environment of the process that uses the
card (``HSA_OVERRIDE_GFX_VERSION``, ``CUDA_DEVICE_ORDER``), and the plan's device list (host
``gpus[i]`` is the i-th card the runtime enumerates). RDNA2 parts other than gfx1030 have no
ROCm kernels: with ``HSA_OVERRIDE_GFX_VERSION=10.3.0`` they report themselves as gfx1030, so the
binary must carry gfx1030 kernels, not gfx1031 ones. :func:`build_target` and
:func:`runtime_env` both read :data:`FAMILIES`, so they cannot drift apart.

CUDA: a compute capability is compiled as itself; CUDA 13 toolkits dropped everything below 7.5
(Maxwell, Pascal, Volta), CUDA 12 builds 5.0 and newer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

Vendor = Literal["amd", "nvidia"]


@dataclass(frozen=True)
class Family:
    name: str
    vendor: Vendor
    archs: tuple[str, ...]
    """Architectures of this family as people write them (``gfx1031``, ``86``)."""
    runs_as: dict[str, str] = field(default_factory=dict)
    """arch -> the arch the runtime reports under :attr:`override` (what the kernels must be)."""
    override: str | None = None
    """``HSA_OVERRIDE_GFX_VERSION`` for the archs in :attr:`runs_as`."""


FAMILIES: tuple[Family, ...] = (
    # RX 6800/6900 (gfx1030), RX 6700 XT (gfx1031), RX 6600 (gfx1032)
    Family(
        "RDNA2",
        "amd",
        ("gfx1030", "gfx1031", "gfx1032", "gfx1033", "gfx1034", "gfx1035", "gfx1036"),
        runs_as={f"gfx103{n}": "gfx1030" for n in range(1, 7)},
        override="10.3.0",
    ),
    # RX 7900 XTX (gfx1100), RX 7800 XT (gfx1101), RX 7600 (gfx1102), 780M iGPU (gfx1103)
    Family(
        "RDNA3", "amd", ("gfx1100", "gfx1101", "gfx1102", "gfx1103"), runs_as={"gfx1103": "gfx1100"}, override="11.0.0"
    ),
    Family("RDNA3.5", "amd", ("gfx1150", "gfx1151")),  # Strix Point, Strix Halo
    Family("RDNA4", "amd", ("gfx1200", "gfx1201")),  # RX 9060, RX 9070
    Family("CDNA", "amd", ("gfx908", "gfx90a", "gfx942", "gfx950")),  # MI100, MI210/250, MI300, MI350
    Family("Turing", "nvidia", ("75",)),  # RTX 20xx, T4
    Family("Ampere", "nvidia", ("80", "86", "87")),  # A100, RTX 30xx, Orin
    Family("Ada", "nvidia", ("89",)),  # RTX 40xx, L4, L40
    Family("Hopper", "nvidia", ("90", "90a")),  # H100, H200
    Family("Blackwell", "nvidia", ("100", "100a", "103", "110", "120", "121")),  # B200 (100), RTX 50xx (120)
)

CUDA_MIN_BY_TOOLKIT = ((13, 75), (12, 50), (11, 35))
"""(toolkit major, lowest compute capability it compiles): CUDA 13 dropped Maxwell..Volta."""
CUDA_ERA_MAJOR = 13
"""The toolkit generation b11434-era hosts ship with, for checks made before any nvcc is seen."""

CUDA_ENV = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
"""CUDA numbers cards fastest-first by default; PCI order makes ``gpus: [i]`` the card
``nvidia-smi`` (and the host file) lists as i on a host with mixed cards."""

DEVICE_PREFIX = {"cuda": "CUDA", "hip": "ROCm", "vulkan": "Vulkan"}
"""llama.cpp's device names per backend (``CUDA0``, ``ROCm1``, ``Vulkan0``): ``--device`` takes
them, its log prints them, and the rendered config keys per-device memory by them."""


def device_name(backend: str, index: int) -> str:
    """llama.cpp's name of a host's ``index``-th GPU with every card visible (``CUDA1``)."""
    return f"{DEVICE_PREFIX.get(backend, 'GPU')}{index}"


def _base(arch: str) -> str:
    """``gfx90a:xnack-`` -> ``gfx90a``; ``sm_86`` -> ``86``."""
    return arch.strip().lower().split(":")[0].removeprefix("sm_").removeprefix("compute_")


def family_of(arch: str) -> Family | None:
    base = _base(arch)
    return next((f for f in FAMILIES if base in f.archs), None)


def runs_as(arch: str) -> str:
    """The architecture the runtime reports for ``arch`` once :func:`runtime_env` is applied."""
    family = family_of(arch)
    base = _base(arch)
    return family.runs_as.get(base, base) if family else base


def build_target(arch: str) -> str:
    """What to compile for a card of ``arch``: the kernels it runs as (features kept)."""
    features = arch.strip().lower().split(":")[1:]
    return ":".join([runs_as(arch), *features])


def runtime_env(backend: str, archs: list[str]) -> dict[str, str]:
    """Environment for a process using cards of ``archs`` on ``backend`` (empty: none needed).

    Raises ValueError when the cards need different HSA overrides (one process has one env)."""
    if backend == "cuda":
        return dict(CUDA_ENV)
    if backend != "hip":
        return {}
    # each card's acceptable overrides: its family's for the cards that need it; the family's
    # target arch (gfx1030) runs the same with or without it; any other card wants none
    allowed: list[set[str | None]] = []
    for arch in archs:
        family, base = family_of(arch), _base(arch)
        if family and base in family.runs_as:
            allowed.append({family.override})
        elif family and base in family.runs_as.values():
            allowed.append({None, family.override})
        else:
            allowed.append({None})
    common = set.intersection(*allowed) if allowed else {None}
    if not common:
        raise ValueError("the GPUs need different HSA_OVERRIDE_GFX_VERSION values")
    value = None if None in common else common.pop()  # no override unless a card needs one
    return {"HSA_OVERRIDE_GFX_VERSION": value} if value else {}


def cuda_number(arch: str) -> int | None:
    """``86`` / ``sm_90a`` / ``120`` -> 86 / 90 / 120 (the compute capability times ten)."""
    m = re.fullmatch(r"(\d{2,3})[af]?", _base(arch))
    return int(m[1]) if m else None


def cuda_min_for(toolkit_major: int) -> int:
    """The lowest compute capability (times ten) a CUDA toolkit of ``toolkit_major`` compiles."""
    for major, lowest in CUDA_MIN_BY_TOOLKIT:
        if toolkit_major >= major:
            return lowest
    return CUDA_MIN_BY_TOOLKIT[-1][1]


def nvcc_archs(list_gpu_arch: str) -> frozenset[int]:
    """``nvcc --list-gpu-arch`` output (``compute_75`` per line) -> {75, 80, ...}."""
    return frozenset(int(m) for m in re.findall(r"compute_(\d+)", list_gpu_arch))
