"""A partial CUDA/ROCm toolkit is named before cmake runs, with how to get what is missing.

The toolkits are fake directory trees in tmp with a real executable ``nvcc`` script that answers
the three questions the probe asks (``--dryrun -v``, ``--version``, ``--list-gpu-arch``)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from homelab.llamacpp.configure import (
    Toolchain,
    ToolchainError,
    hip_blas_present,
    missing_tools,
    plan_cmake,
    probe_cuda,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_cuda(root: Path, *, major: int = 13, archs: tuple[int, ...] = (75, 80, 86, 89, 90, 120)) -> str:
    """A toolkit tree like NVIDIA's runfile layout with only nvcc in it; returns the nvcc path."""
    (root / "bin").mkdir(parents=True)
    (root / "targets/x86_64-linux/include").mkdir(parents=True)
    (root / "targets/x86_64-linux/lib").mkdir(parents=True)
    (root / "lib64").symlink_to("targets/x86_64-linux/lib")
    nvcc = root / "bin" / "nvcc"
    listing = "\\n".join(f"compute_{a}" for a in archs)
    nvcc.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        f'  --dryrun) echo "#\\$ _HERE_={root}/bin" >&2; echo "#\\$ TOP={root}/bin/.." >&2; exit 1;;\n'
        f'  --version) echo "Cuda compilation tools, release {major}.0, V{major}.0.88";;\n'
        f'  --list-gpu-arch) printf "{listing}\\n";;\n'
        "esac\n"
    )
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR)
    return str(nvcc)


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")


def cuda_tools(nvcc: str, extra_roots: list[Path] = [], system: list[str] = []) -> Toolchain:  # noqa: B006
    return Toolchain(cmake="cmake", cxx="c++", nvcc=nvcc, **probe_cuda(nvcc, extra_roots, system))  # type: ignore[arg-type]


def test_nvcc_alone_names_cublas_and_the_driver_library(tmp_path: Path) -> None:
    nvcc = fake_cuda(tmp_path / "cuda-13.0")
    tools = cuda_tools(nvcc, system=[str(tmp_path / "no-driver")])
    assert tools.cuda_root == str((tmp_path / "cuda-13.0").resolve()) and tools.cuda_major == 13
    assert tools.cuda_archs == frozenset({75, 80, 86, 89, 90, 120})
    missing = missing_tools("cuda", tools)
    assert len(missing) == 2
    assert "cuBLAS headers and libraries" in missing[0] and "libcublas-dev-13-0" in missing[0]
    assert "pip install nvidia-cublas" in missing[0]
    assert "libcuda.so" in missing[1] and "GGML_CUDA_NO_VMM: ON" in missing[1]
    # the way out this machine takes: no driver needed when VMM is off
    assert len(missing_tools("cuda", tools, {"GGML_CUDA_NO_VMM": True})) == 1


def test_a_full_toolkit_passes(tmp_path: Path) -> None:
    root = tmp_path / "cuda"
    nvcc = fake_cuda(root)
    lib = root / "targets/x86_64-linux/lib"
    for name in ("libcublas.so", "libcublasLt.so", "stubs/libcuda.so"):
        touch(lib / name)
    touch(root / "targets/x86_64-linux/include/cublas_v2.h")
    tools = cuda_tools(nvcc)
    assert tools.cublas is not None and tools.cublas.in_toolkit and tools.cuda_driver
    assert missing_tools("cuda", tools) == []
    plan = plan_cmake(backend="cuda", gpu_archs=["86"], build_number=11434, commit=COMMIT, tools=tools)
    assert not any(d.startswith("CUDA_cublas") for d in plan.defines)  # cmake finds it itself


def test_a_cublas_wheel_is_found_and_named_to_cmake(tmp_path: Path) -> None:
    nvcc = fake_cuda(tmp_path / "cuda")
    wheel = tmp_path / "site-packages"
    cu13 = wheel / "nvidia" / "cu13"
    for name in ("lib/libcublas.so.13", "lib/libcublasLt.so.13", "include/cublas_v2.h"):
        touch(cu13 / name)
    tools = cuda_tools(nvcc, [wheel])
    assert tools.cublas is not None and not tools.cublas.in_toolkit
    assert missing_tools("cuda", tools, {"GGML_CUDA_NO_VMM": "ON"}) == []
    plan = plan_cmake(backend="cuda", gpu_archs=["86"], build_number=11434, commit=COMMIT, tools=tools)
    assert plan.defines["CUDA_cublas_LIBRARY"] == str(cu13 / "lib/libcublas.so.13")
    assert plan.defines["CUDA_cublasLt_LIBRARY"] == str(cu13 / "lib/libcublasLt.so.13")
    assert plan.defines["CMAKE_CUDA_FLAGS"] == f"-I{cu13 / 'include'}"
    # a wheel for another CUDA major is not this toolkit's
    assert cuda_tools(nvcc, [tmp_path / "nowhere"]).cublas is None


@pytest.mark.parametrize(("arch", "fragment"), [("61", "cannot compile compute capability 6.1"), ("70", "7.0")])
def test_archs_the_toolkit_cannot_build_are_refused_before_cmake(tmp_path: Path, arch: str, fragment: str) -> None:
    tools = cuda_tools(fake_cuda(tmp_path / "cuda"))
    with pytest.raises(ToolchainError, match=fragment) as exc:
        plan_cmake(backend="cuda", gpu_archs=["86", arch], build_number=11434, commit=COMMIT, tools=tools)
    assert "nvcc --list-gpu-arch: 75, 80, 86, 89, 90, 120" in str(exc.value) and "vulkan" in str(exc.value)
    plan_cmake(backend="cuda", gpu_archs=["sm_90a", "8.9"], build_number=11434, commit=COMMIT, tools=tools)


def test_cuda_major_alone_sets_the_floor_when_nvcc_cannot_list(tmp_path: Path) -> None:
    tools = Toolchain(nvcc="nvcc", cuda_major=13)
    with pytest.raises(ToolchainError, match="lowest: 7.5"):
        plan_cmake(backend="cuda", gpu_archs=["61"], build_number=11434, commit=COMMIT, tools=tools)


def test_hip_needs_hipblas_and_rocblas(tmp_path: Path) -> None:
    rocm = tmp_path / "rocm"
    tools = Toolchain(cmake="c", cxx="c", hipconfig="h", hip_clang_dir=str(rocm / "llvm/bin"), hip_path=str(rocm))
    missing = missing_tools("hip", tools)
    assert len(missing) == 1 and "libhipblas-dev librocblas-dev" in missing[0] and str(rocm) in missing[0]
    for name in ("hipblas", "rocblas"):
        touch(rocm / "lib" / f"lib{name}.so")
        assert not hip_blas_present(str(rocm)) or name == "rocblas"
        touch(rocm / "include" / name / f"{name}.h")
    assert hip_blas_present(str(rocm))
    from dataclasses import replace

    assert missing_tools("hip", replace(tools, hip_blas=True)) == []


def test_dry_run_prints_environment_and_both_commands(tmp_path: Path) -> None:
    tools = Toolchain(cmake="cmake", cxx="c++", ninja="ninja", hip_clang_dir="/opt/rocm/llvm/bin", hip_path="/opt/rocm")
    plan = plan_cmake(backend="hip", gpu_archs=["gfx1031"], build_number=11434, commit=COMMIT, tools=tools, jobs=4)
    text = plan.dry_run(Path("/w"), Path("/w/build"))
    lines = text.splitlines()
    assert lines[0] == "export HIPCXX=/opt/rocm/llvm/bin/clang" and lines[1] == "export HIP_PATH=/opt/rocm"
    assert "# note: gfx1031 runs as gfx1030 (HSA_OVERRIDE_GFX_VERSION): compiling gfx1030" in lines
    assert lines[-2].startswith("cmake -S /w -B /w/build -G Ninja") and "-DGPU_TARGETS=gfx1030" in lines[-2]
    assert "'-DGGML_CUDA_FA_QUANTS=q4_0-q4_0;q8_0-q8_0;f16-f16;bf16-bf16'" in lines[-2]  # quoted for a shell
    assert lines[-1] == "cmake --build /w/build --config Release -j 4 --target llama-server"
