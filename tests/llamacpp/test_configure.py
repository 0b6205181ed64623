"""The cmake command for hip, cuda, vulkan and cpu hosts, checked on the rendered command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homelab.llamacpp.configure import (
    FA_TYPES,
    Toolchain,
    ToolchainError,
    cmake_target_in,
    declared_options,
    kv_pairs_of,
    missing_tools,
    plan_cmake,
    require_toolchain,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SRC, BUILD = Path("/src"), Path("/src/build")
FULL = Toolchain(
    cmake="/usr/bin/cmake",
    cxx="/usr/bin/c++",
    ninja="/usr/bin/ninja",
    ccache="/usr/bin/ccache",
    hipconfig="/opt/rocm/bin/hipconfig",
    hip_clang_dir="/opt/rocm/llvm/bin",
    hip_path="/opt/rocm",
    nvcc="/usr/bin/nvcc",
    glslc="/usr/bin/glslc",
    vulkan_headers=True,
)
B11434 = declared_options(Path(__file__).parent / "data" / "b11434-cmake")
"""The options of the real b11434 tree (its two CMakeLists.txt, copied from the sdist)."""


def rendered(**kwargs) -> list[str]:
    kwargs.setdefault("build_number", 11434)
    kwargs.setdefault("commit", COMMIT)
    kwargs.setdefault("tools", FULL)
    return plan_cmake(**kwargs).configure_command(SRC, BUILD)


COMMON = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_NUMBER=11434",
    "-DLLAMA_BUILD_COMMIT=0123456",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
]


def test_cpu_host() -> None:
    cmd = rendered(backend="cpu")
    assert cmd[:7] == ["cmake", "-S", "/src", "-B", "/src/build", "-G", "Ninja"]
    assert cmd[7:] == [*COMMON, "-DGGML_CCACHE=ON"]


def test_hip_host_with_hipconfig_environment() -> None:
    plan = plan_cmake(
        backend="hip", gpu_archs=["gfx1100"], build_number=11434, commit=COMMIT, tools=FULL,
        kv_pairs={("q8_0", "q8_0")},
    )
    cmd = plan.configure_command(SRC, BUILD)
    assert "-DGGML_HIP=ON" in cmd and "-DGPU_TARGETS=gfx1100" in cmd
    assert plan.env == {"HIPCXX": "/opt/rocm/llvm/bin/clang", "HIP_PATH": "/opt/rocm"}
    assert "-DGGML_CUDA_FA_QUANTS=q4_0-q4_0;q8_0-q8_0;f16-f16;bf16-bf16" in cmd
    assert not any("ROCWMMA" in a for a in cmd)


def test_cuda_host_architectures_and_recipe_kv_pairs() -> None:
    cmd = rendered(
        backend="cuda",
        gpu_archs=["sm_86", "8.6", "89"],
        kv_pairs=kv_pairs_of([{"cache-type-k": "q8_0", "cache-type-v": "q4_0"}, {"ctx-size": 1}, {"cache-type-k": "f32"}]),
    )
    assert "-DGGML_CUDA=ON" in cmd and "-DCMAKE_CUDA_ARCHITECTURES=86;89" in cmd
    # the mixed pair a recipe uses is compiled in on top of upstream's defaults; f32 has no FA kernel
    assert "-DGGML_CUDA_FA_QUANTS=q4_0-q4_0;q8_0-q8_0;f16-f16;bf16-bf16;q8_0-q4_0" in cmd


def test_vulkan_host() -> None:
    cmd = rendered(backend="vulkan")
    assert cmd[7:] == [*COMMON, "-DGGML_VULKAN=ON", "-DGGML_CCACHE=ON"]


def test_targets_jobs_and_no_ccache() -> None:
    plan = plan_cmake(
        backend="cpu", build_number=5, commit=COMMIT, targets=["rpc-server", "llama-fit-params"], jobs=3,
        tools=Toolchain(cmake="cmake", cxx="c++"),
    )
    assert plan.build_command(BUILD) == [
        "cmake", "--build", "/src/build", "--config", "Release", "-j", "3",
        "--target", "llama-server", "rpc-server", "llama-fit-params",
    ]
    cmd = plan.configure_command(SRC, BUILD)
    assert "-DGGML_RPC=ON" in cmd and "-DGGML_CCACHE=OFF" in cmd and "-G" not in cmd
    assert plan_cmake(backend="cpu", build_number=5, commit=COMMIT).jobs >= 1


def test_ccache_and_generator_are_not_part_of_the_key() -> None:
    with_tools = plan_cmake(backend="cpu", build_number=1, commit=COMMIT, tools=FULL)
    bare = plan_cmake(backend="cpu", build_number=1, commit=COMMIT, tools=Toolchain())
    assert with_tools.key_material() == bare.key_material()


def test_renamed_options_follow_the_build_number() -> None:
    old = rendered(backend="cuda", gpu_archs=["86"], build_number=9000, kv_pairs={("q8_0", "q4_0")},
                   cmake_extra={"GGML_HIP_ROCWMMA_FATTN": True})
    assert "-DGGML_CUDA_FA_ALL_QUANTS=ON" in old and not any("FA_QUANTS=" in a for a in old)
    assert "-DGGML_HIP_ROCWMMA_FATTN=ON" in old  # still exists in an old tree
    old_default = rendered(backend="cuda", gpu_archs=["86"], build_number=9000, kv_pairs={("q8_0", "q8_0")})
    assert not any("FA_" in a for a in old_default)
    new = rendered(backend="hip", gpu_archs=["gfx1100"], cmake_extra={"GGML_HIP_ROCWMMA_FATTN": True, "GGML_CUDA_FA_ALL_QUANTS": True})
    assert not any("ROCWMMA" in a for a in new)
    assert "-DGGML_CUDA_FA_QUANTS=all" in new and not any("ALL_QUANTS" in a for a in new)
    # the new spelling on an old tree is translated back
    back = rendered(backend="cuda", build_number=9000, cmake_extra={"GGML_CUDA_FA_QUANTS": "q8_0-q5_1"})
    assert "-DGGML_CUDA_FA_ALL_QUANTS=ON" in back and not any("FA_QUANTS=" in a for a in back)


def test_the_real_b11434_tree_decides_over_the_table() -> None:
    assert {"GGML_CUDA_FA_QUANTS", "GGML_CUDA_FA_ALL_QUANTS", "LLAMA_USE_PREBUILT_UI", "GGML_HIP"} <= B11434
    assert "GGML_HIP_ROCWMMA_FATTN" not in B11434
    # even with a build number the table would call old, the tree's own options win
    cmd = rendered(backend="cuda", build_number=100, declared=B11434, kv_pairs={("q5_0", "q5_0")},
                   cmake_extra={"GGML_HIP_ROCWMMA_FATTN": "ON"})
    assert "-DGGML_CUDA_FA_QUANTS=q4_0-q4_0;q8_0-q8_0;f16-f16;bf16-bf16;q5_0-q5_0" in cmd
    assert not any("ROCWMMA" in a for a in cmd)


def test_host_cmake_options_override_and_render_booleans() -> None:
    cmd = rendered(backend="cpu", cmake_extra={"GGML_NATIVE": False, "BUILD_SHARED_LIBS": True, "GGML_CPU_ARM_ARCH": "armv8.2-a"})
    assert "-DGGML_NATIVE=OFF" in cmd and "-DBUILD_SHARED_LIBS=ON" in cmd and "-DBUILD_SHARED_LIBS=OFF" not in cmd
    assert "-DGGML_CPU_ARM_ARCH=armv8.2-a" in cmd


def test_bad_architectures_are_user_errors() -> None:
    with pytest.raises(ToolchainError, match="gfx1100"):
        rendered(backend="hip", gpu_archs=["rdna3"])
    with pytest.raises(ToolchainError, match="CUDA architecture"):
        rendered(backend="cuda", gpu_archs=["ampere"])


def test_missing_toolchain_names_what_to_install() -> None:
    with pytest.raises(ToolchainError) as exc:
        require_toolchain("hip", Toolchain(cxx="c++"), "xtx")
    message = str(exc.value)
    assert "host 'xtx'" in message and "apt install cmake" in message and "hipcc" in message
    assert any("nvidia-cuda-toolkit" in m for m in missing_tools("cuda", Toolchain(cmake="c", cxx="c")))
    vulkan = missing_tools("vulkan", Toolchain(cmake="c", cxx="c"))
    assert any("glslc" in m for m in vulkan) and any("libvulkan-dev" in m for m in vulkan)
    assert missing_tools("cpu", Toolchain(cmake="c", cxx="c")) == []


pairs = st.sets(st.tuples(st.sampled_from(FA_TYPES + ("f32", "iq4_nl")), st.sampled_from(FA_TYPES + ("f32",))), max_size=6)


@settings(max_examples=40, deadline=None)
@given(pairs=pairs, backend=st.sampled_from(["cpu", "cuda", "hip", "vulkan"]))
def test_plan_is_deterministic_and_fa_list_is_valid(pairs, backend) -> None:
    a = plan_cmake(backend=backend, build_number=11434, commit=COMMIT, kv_pairs=pairs, gpu_archs=[])
    b = plan_cmake(backend=backend, build_number=11434, commit=COMMIT, kv_pairs=sorted(pairs, reverse=True), gpu_archs=[])
    assert a == b
    fa = a.defines.get("GGML_CUDA_FA_QUANTS")
    assert (fa is not None) == (backend in ("cuda", "hip"))
    if fa:
        listed = fa.split(";")
        assert len(listed) == len(set(listed)) and "f16-f16" in listed
        for pair in listed:
            k, v = pair.split("-")
            assert k in FA_TYPES and v in FA_TYPES
        for k, v in pairs:
            if k in FA_TYPES and v in FA_TYPES:
                assert f"{k}-{v}" in listed


def test_rpc_server_is_built_under_the_pinned_trees_target_name_and_keeps_our_name():
    assert cmake_target_in("set(TARGET ggml-rpc-server)\nadd_executable(${TARGET} rpc-server.cpp)\n") == "ggml-rpc-server"
    assert cmake_target_in("# no target here\n") is None
    plan = plan_cmake(
        backend="cpu", build_number=11434, commit="a" * 40, targets=["rpc-server"],
        cmake_targets={"rpc-server": "ggml-rpc-server"},
    )
    assert plan.defines["GGML_RPC"] == "ON"
    assert plan.targets == ("llama-server", "rpc-server")
    assert plan.build_command(Path("b"))[-2:] == ["llama-server", "ggml-rpc-server"]
    older = plan_cmake(backend="cpu", build_number=5000, commit="a" * 40, targets=["rpc-server"],
                       cmake_targets={"rpc-server": "rpc-server"})
    assert older.build_command(Path("b"))[-1] == "rpc-server" and older.cmake_targets == {}
