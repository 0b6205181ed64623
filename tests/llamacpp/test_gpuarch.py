"""Build targets, runtime environment and device list agree for every supported GPU family."""

from __future__ import annotations

import pytest

from homelab.gpuarch import FAMILIES, build_target, family_of, runs_as, runtime_env
from homelab.llamacpp.configure import Toolchain, plan_cmake

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOOLS = Toolchain(cmake="cmake", cxx="c++")

# (arch, family, compiled for, runtime environment): the table as a user would check it by hand
CASES = [
    ("gfx1030", "RDNA2", "gfx1030", {}),
    ("gfx1031", "RDNA2", "gfx1030", {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"}),
    ("gfx1032", "RDNA2", "gfx1030", {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"}),
    ("gfx1100", "RDNA3", "gfx1100", {}),
    ("gfx1101", "RDNA3", "gfx1101", {}),
    ("gfx1103", "RDNA3", "gfx1100", {"HSA_OVERRIDE_GFX_VERSION": "11.0.0"}),
    ("gfx1151", "RDNA3.5", "gfx1151", {}),
    ("gfx1201", "RDNA4", "gfx1201", {}),
    ("gfx90a:xnack-", "CDNA", "gfx90a:xnack-", {}),
    ("gfx942", "CDNA", "gfx942", {}),
    ("75", "Turing", "75", {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
    ("86", "Ampere", "86", {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
    ("89", "Ada", "89", {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
    ("90a", "Hopper", "90a", {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
    ("120", "Blackwell", "120", {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}),
]


@pytest.mark.parametrize(("arch", "family", "target", "env"), CASES)
def test_family_target_and_environment(arch: str, family: str, target: str, env: dict[str, str]) -> None:
    info = family_of(arch)
    assert info is not None and info.name == family
    backend = "hip" if info.vendor == "amd" else "cuda"
    assert build_target(arch) == target
    assert runtime_env(backend, [arch]) == env
    # the plan compiles exactly the kernels the card reports itself as under that environment
    plan = plan_cmake(backend=backend, gpu_archs=[arch], build_number=11434, commit=COMMIT, tools=TOOLS)
    compiled = plan.defines["GPU_TARGETS" if backend == "hip" else "CMAKE_CUDA_ARCHITECTURES"].split(";")
    assert runs_as(arch) in [c.split(":")[0] for c in compiled]


def test_every_table_arch_is_coherent() -> None:
    for family in FAMILIES:
        backend = "hip" if family.vendor == "amd" else "cuda"
        for arch in family.archs:
            plan = plan_cmake(backend=backend, gpu_archs=[arch], build_number=11434, commit=COMMIT, tools=TOOLS)
            compiled = plan.defines["GPU_TARGETS" if backend == "hip" else "CMAKE_CUDA_ARCHITECTURES"]
            assert runs_as(arch) in compiled.split(";"), (family.name, arch)
            if arch in family.runs_as:
                assert runtime_env(backend, [arch]) == {"HSA_OVERRIDE_GFX_VERSION": family.override}


def test_a_host_with_several_cards_compiles_each_and_one_override_at_most() -> None:
    plan = plan_cmake(backend="hip", gpu_archs=["gfx1031", "gfx1032", "gfx1030"], build_number=11434, commit=COMMIT, tools=TOOLS)
    assert plan.defines["GPU_TARGETS"] == "gfx1030"
    assert runtime_env("hip", ["gfx1031", "gfx1032", "gfx1030"]) == {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"}
    with pytest.raises(ValueError, match="different HSA_OVERRIDE_GFX_VERSION"):
        runtime_env("hip", ["gfx1100", "gfx1031"])
    assert runtime_env("vulkan", ["gfx1031"]) == {}


def test_unknown_archs_pass_through_unchanged() -> None:
    assert family_of("gfx906") is None and build_target("gfx906") == "gfx906"
    assert runtime_env("hip", ["gfx906"]) == {}
