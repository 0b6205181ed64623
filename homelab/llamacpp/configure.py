"""From a host to the cmake command line: one pure function (:func:`plan_cmake`).

Inputs are plain data (backend, GPU architectures, the host's extra ``cmake`` options, the
pinned build number and commit, the KV cache type pairs the host's recipes use, what the
toolchain probe found); the output is a :class:`CMakePlan` whose ``defines`` and ``env`` are
part of the build key. Things that do not change the binary (ccache, the generator, ``-j``)
are kept apart so that installing ccache does not trigger a rebuild.

Options that upstream renamed or removed are chosen from one table, :data:`OPTION_CHANGES`,
by the pinned build number; when the source tree is at hand we read the options it declares
(:func:`declared_options`) and trust that over the table.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import HomelabError
from ..gpuarch import build_target, cuda_min_for, cuda_number, nvcc_archs

Backend = Literal["hip", "cuda", "vulkan", "cpu"]


class ToolchainError(HomelabError):
    pass


# --------------------------------------------------------------------------------------------
# Options that changed names across llama.cpp versions


@dataclass(frozen=True)
class OptionChange:
    old: str
    new: str | None
    """The replacement (None: removed without one)."""
    since: int
    """First build number with the new spelling."""
    exact: bool
    """Whether ``since`` was checked against the tree; else it is an estimate and the tree wins."""
    note: str


OPTION_CHANGES: tuple[OptionChange, ...] = (
    OptionChange(
        old="GGML_CUDA_FA_ALL_QUANTS",
        new="GGML_CUDA_FA_QUANTS",
        since=11200,
        exact=False,
        note="K-V pairs to compile FlashAttention for ('q4_0-q4_0;q8_0-q8_0' or 'all'); "
        "b11434 still accepts the old boolean as a deprecated alias for 'all'",
    ),
    OptionChange(
        old="GGML_HIP_ROCWMMA_FATTN",
        new=None,
        since=10500,
        exact=False,
        note="rocWMMA FlashAttention was folded into the regular HIP kernels (absent in b11434)",
    ),
)

FA_TYPES = ("f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
"""KV cache types the CUDA/HIP FlashAttention kernels are compiled for (ggml/cmake/common.cmake)."""
FA_DEFAULT_PAIRS = ("q4_0-q4_0", "q8_0-q8_0", "f16-f16", "bf16-bf16")
"""What upstream compiles by default (old trees: the same four without ALL_QUANTS)."""


def declared_options(tree: Path) -> frozenset[str]:
    """Every ``option(NAME`` / ``set(NAME ... CACHE`` in the top and ggml CMakeLists of ``tree``."""
    texts = []
    for rel in CMAKE_FILES:
        try:
            texts.append((tree / rel).read_text(errors="replace"))
        except OSError:
            continue
    return declared_in(texts)


CMAKE_FILES = ("CMakeLists.txt", "ggml/CMakeLists.txt")

RPC_SERVER = "rpc-server"
RPC_CMAKE_FILES = ("tools/rpc/CMakeLists.txt", "examples/rpc/CMakeLists.txt")
"""Where trees of different ages define the rpc-server program (its target was renamed
``ggml-rpc-server`` upstream; we keep calling it ``rpc-server``)."""


def cmake_target_in(text: str) -> str | None:
    """The program a llama.cpp tool's CMakeLists builds: ``set(TARGET name)``."""
    m = re.search(r"^\s*set\s*\(\s*TARGET\s+([A-Za-z0-9_.-]+)\s*\)", text, re.M)
    return m.group(1) if m else None


def declared_in(texts: Iterable[str]) -> frozenset[str]:
    names: set[str] = set()
    for text in texts:
        names.update(re.findall(r"^\s*option\s*\(\s*([A-Z0-9_]+)", text, re.M))
        names.update(re.findall(r"^\s*set\s*\(\s*([A-Z0-9_]+)\s[^)]*\bCACHE\b", text, re.M))
    return frozenset(names)


def _has(option: OptionChange, name: str, build_number: int, declared: frozenset[str] | None) -> bool:
    """Whether the pinned tree knows ``name`` (one of ``option``'s spellings)."""
    if declared:
        return name in declared
    return build_number >= option.since if name == option.new else build_number < option.since


# --------------------------------------------------------------------------------------------
# Toolchain


@dataclass(frozen=True)
class CudaLibrary:
    """Where cuBLAS is; one outside the toolkit (a pip wheel's ``nvidia/cu13``) is named to cmake."""

    include: str
    cublas: str
    cublas_lt: str
    in_toolkit: bool


@dataclass(frozen=True)
class Toolchain:
    """What the build needs, as found on this machine (:func:`probe_toolchain`)."""

    cmake: str | None = None
    cxx: str | None = None
    ninja: str | None = None
    ccache: str | None = None
    hipconfig: str | None = None
    hip_clang_dir: str | None = None
    """``hipconfig -l``: the directory of ROCm's clang."""
    hip_path: str | None = None
    """``hipconfig -R``: the ROCm root."""
    nvcc: str | None = None
    cuda_root: str | None = None
    """The toolkit nvcc belongs to (its ``TOP``), where cmake looks for cuBLAS and the driver stub."""
    cuda_major: int | None = None
    cuda_archs: frozenset[int] = frozenset()
    """``nvcc --list-gpu-arch``: compute capabilities (times ten) this toolkit compiles."""
    cublas: CudaLibrary | None = None
    """Where cuBLAS headers and libraries are (the toolkit, or a ``nvidia-cublas`` wheel)."""
    cuda_driver: bool = False
    """Whether ``libcuda.so`` (the driver or the toolkit's stub) is there to link against."""
    hip_blas: bool = False
    """hipBLAS and rocBLAS headers and libraries under the ROCm root."""
    glslc: str | None = None
    vulkan_headers: bool = False


def _which(name: str, *extra_dirs: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in extra_dirs:
        if os.access(Path(d) / name, os.X_OK):
            return str(Path(d) / name)
    return None


def _output(cmd: list[str]) -> str | None:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def _lib_dirs(root: Path) -> list[Path]:
    return [root / "lib64", root / "lib", *sorted(root.glob("targets/*/lib"))]


def _include_dirs(root: Path) -> list[Path]:
    return [root / "include", *sorted(root.glob("targets/*/include"))]


def find_cublas(cuda_root: Path | None, major: int | None, extra_roots: Iterable[Path] = ()) -> CudaLibrary | None:
    """cuBLAS as cmake's FindCUDAToolkit would see it in the toolkit (``libcublas.so``, the dev
    link), else a ``nvidia-cublas`` wheel's ``nvidia/cu<major>`` in ``extra_roots`` (versioned
    ``.so.<major>`` only, which cmake does not look for: we name the files to it)."""
    if cuda_root is not None:
        headers = [d for d in _include_dirs(cuda_root) if (d / "cublas_v2.h").is_file()]
        libs = [d for d in _lib_dirs(cuda_root) if (d / "libcublas.so").exists() and (d / "libcublasLt.so").exists()]
        if headers and libs:
            return CudaLibrary(str(headers[0]), str(libs[0] / "libcublas.so"), str(libs[0] / "libcublasLt.so"), True)
    for root in extra_roots:
        wheel = root / "nvidia" / f"cu{major}" if major else root
        for base in (wheel, root / "nvidia" / "cublas"):
            blas = next(iter(sorted((base / "lib").glob("libcublas.so*"))), None)
            lt = next(iter(sorted((base / "lib").glob("libcublasLt.so*"))), None)
            if blas and lt and (base / "include" / "cublas_v2.h").is_file():
                return CudaLibrary(str(base / "include"), str(blas), str(lt), False)
    return None


DRIVER_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")


def find_cuda_driver(cuda_root: Path | None, system_dirs: Iterable[str] = DRIVER_DIRS) -> bool:
    """``libcuda.so`` where FindCUDAToolkit looks: the toolkit (and its stubs), then the system."""
    dirs = [*_lib_dirs(cuda_root), *(d / "stubs" for d in _lib_dirs(cuda_root))] if cuda_root else []
    return any((d / "libcuda.so").exists() for d in [*dirs, *map(Path, system_dirs)])


def _python_roots() -> list[Path]:
    """Where ``pip install nvidia-cublas`` (into homelab's environment) puts the wheel."""
    import sys

    return [Path(p) for p in sys.path if p and Path(p, "nvidia").is_dir()]


def probe_cuda(
    nvcc: str, extra_roots: Iterable[Path] | None = None, system_dirs: Iterable[str] = DRIVER_DIRS
) -> dict[str, object]:
    """The toolkit behind ``nvcc``: its root (nvcc's own ``TOP``, wrappers included), version,
    the archs it compiles, cuBLAS and the driver library."""
    top = None
    dry = _output_all([nvcc, "--dryrun", "-v", "-c", "homelab-probe.cu"]) or ""
    if m := re.search(r"^#\$ TOP=(.+)$", dry, re.MULTILINE):
        top = Path(m[1].strip()).resolve()
    if top is None:
        top = Path(os.path.realpath(nvcc)).parent.parent
    version = _output([nvcc, "--version"]) or ""
    m = re.search(r"release (\d+)\.", version)
    major = int(m[1]) if m else None
    return {
        "cuda_root": str(top),
        "cuda_major": major,
        "cuda_archs": nvcc_archs(_output([nvcc, "--list-gpu-arch"]) or ""),
        "cublas": find_cublas(top, major, _python_roots() if extra_roots is None else extra_roots),
        "cuda_driver": find_cuda_driver(top, system_dirs),
    }


def _output_all(cmd: list[str]) -> str | None:
    """stdout and stderr of a command whatever its exit code (``nvcc --dryrun`` of a missing file)."""
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout + result.stderr


def hip_blas_present(hip_path: str | None) -> bool:
    """hipBLAS and rocBLAS (headers and libraries) under the ROCm root ggml-hip links against."""
    if not hip_path:
        return False
    root = Path(hip_path)
    libs = _lib_dirs(root)
    return all(
        any((d / f"lib{name}.so").exists() for d in libs) and (root / "include" / name / f"{name}.h").is_file()
        for name in ("hipblas", "rocblas")
    )


def probe_toolchain(backend: Backend) -> Toolchain:
    """Look for the tools ``backend`` needs (only those: no hipconfig call on a CUDA box)."""
    found: dict[str, object] = {
        "cmake": _which("cmake"),
        "cxx": _which("c++") or _which("g++") or _which("clang++"),
        "ninja": _which("ninja"),
        "ccache": _which("ccache"),
    }
    if backend == "hip":
        hipconfig = _which("hipconfig", "/opt/rocm/bin")
        found["hipconfig"] = hipconfig
        if hipconfig:
            found["hip_clang_dir"] = _output([hipconfig, "-l"])
            found["hip_path"] = _output([hipconfig, "-R"])
            found["hip_blas"] = hip_blas_present(found["hip_path"])  # type: ignore[arg-type]  # found holds mixed values
    elif backend == "cuda":
        nvcc = _which("nvcc", "/usr/local/cuda/bin", "/opt/cuda/bin")
        found["nvcc"] = nvcc
        if nvcc:
            found.update(probe_cuda(nvcc))
    elif backend == "vulkan":
        found["glslc"] = _which("glslc")
        found["vulkan_headers"] = any(
            Path(d, "vulkan", "vulkan.h").is_file()
            for d in ("/usr/include", "/usr/local/include", os.environ.get("VULKAN_SDK", "/nonexistent") + "/include")
        )
    return Toolchain(**found)  # type: ignore[arg-type]  # found: dict[str, object] of its fields


def missing_tools(backend: Backend, tools: Toolchain, cmake_extra: Mapping[str, object] | None = None) -> list[str]:
    """What to install before building for ``backend`` (Debian/Ubuntu package names), checked
    before cmake so a partial toolkit is named instead of failing deep in configure."""
    missing: list[str] = []
    if not tools.cmake:
        missing.append("cmake (apt install cmake)")
    if not tools.cxx:
        missing.append("a C/C++ compiler (apt install build-essential)")
    if backend == "hip" and not (tools.hipconfig and tools.hip_clang_dir and tools.hip_path):
        missing.append(
            "ROCm >= 6.1 with hipconfig/hipcc (apt install hipcc libamdhip64-dev libhipblas-dev "
            "librocblas-dev, or AMD's rocm-dev; /opt/rocm/bin is searched too)"
        )
    if backend == "hip" and tools.hip_path and not tools.hip_blas:
        missing.append(
            f"hipBLAS and rocBLAS under {tools.hip_path} (apt install libhipblas-dev librocblas-dev, "
            "or AMD's hipblas-dev rocblas-dev)"
        )
    if backend == "cuda" and not tools.nvcc:
        missing.append(
            "the CUDA toolkit with nvcc (apt install nvidia-cuda-toolkit, or NVIDIA's cuda-toolkit; /usr/local/cuda/bin is searched too)"
        )
    if backend == "cuda" and tools.nvcc:
        extra = cmake_extra or {}
        major = tools.cuda_major or 13
        if tools.cublas is None and "CUDA_cublas_LIBRARY" not in extra:
            missing.append(
                f"cuBLAS headers and libraries (not in {tools.cuda_root}): apt install "
                f"libcublas-dev-{major}-0 (NVIDIA's repository) or cuda-libraries-dev-{major}-0, "
                f"or `pip install nvidia-cublas` (CUDA {major} wheels) into homelab's Python environment"
            )
        no_vmm = str(extra.get("GGML_CUDA_NO_VMM", "")).upper() in ("ON", "1", "TRUE", "YES")
        if not tools.cuda_driver and not no_vmm:
            missing.append(
                f"the CUDA driver library libcuda.so (not in {tools.cuda_root} or its stubs, nor the system): "
                "install the NVIDIA driver (apt install libcuda1 or nvidia-driver), or build without it "
                "by adding `GGML_CUDA_NO_VMM: ON` to the host's llama_cpp.cmake"
            )
    if backend == "vulkan":
        if not tools.glslc:
            missing.append("glslc (apt install glslc)")
        if not tools.vulkan_headers:
            missing.append("Vulkan headers and loader (apt install libvulkan-dev spirv-headers)")
    return missing


def require_toolchain(
    backend: Backend, tools: Toolchain, host: str = "", cmake_extra: Mapping[str, object] | None = None
) -> None:
    missing = missing_tools(backend, tools, cmake_extra)
    if missing:
        who = f"host {host!r} " if host else ""
        raise ToolchainError(f"cannot build llama.cpp for {who}backend {backend}: missing " + "; ".join(missing))


# --------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class CMakePlan:
    defines: dict[str, str]
    """``-D`` options that shape the binary (part of the build key), in command-line order."""
    env: dict[str, str]
    """Environment for configure that shapes the binary (HIPCXX, HIP_PATH, CUDACXX)."""
    incidental: dict[str, str] = field(default_factory=dict)
    """``-D`` options that do not change the binary (GGML_CCACHE): not in the key."""
    generator: str | None = None
    targets: tuple[str, ...] = ("llama-server",)
    """What we call the programs (``rpc-server``), which is also their name in the build's bin/."""
    cmake_targets: dict[str, str] = field(default_factory=dict)
    """Our name -> the pinned tree's cmake target where they differ (``ggml-rpc-server`` in b11434)."""
    jobs: int = 1
    notes: tuple[str, ...] = ()
    """What the plan changed or assumed, for the log (a renamed option, no GPU arch given)."""

    def configure_command(self, source: Path, build: Path) -> list[str]:
        cmd = ["cmake", "-S", str(source), "-B", str(build)]
        if self.generator:
            cmd += ["-G", self.generator]
        cmd += [f"-D{k}={v}" for k, v in {**self.defines, **self.incidental}.items()]
        return cmd

    def build_command(self, build: Path) -> list[str]:
        return [
            "cmake",
            "--build",
            str(build),
            "--config",
            "Release",
            "-j",
            str(self.jobs),
            "--target",
            *(self.cmake_target(t) for t in self.targets),
        ]

    def dry_run(self, source: Path, build: Path) -> str:
        """The exact configure environment and commands, as a shell could run them."""
        import shlex

        lines = [f"export {k}={shlex.quote(v)}" for k, v in self.env.items()]
        lines += [f"# note: {n}" for n in self.notes]
        lines.append(shlex.join(self.configure_command(source, build)))
        lines.append(shlex.join(self.build_command(build)))
        return "\n".join(lines)

    def cmake_target(self, target: str) -> str:
        return self.cmake_targets.get(target, target)

    def key_material(self) -> dict[str, object]:
        return {"defines": self.defines, "env": self.env, "targets": list(self.targets)}


def _cmake_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "ON" if value else "OFF"
    return str(value)


def cuda_arch(arch: str) -> str:
    """``86``, ``sm_86``, ``8.6`` -> ``86`` (CMAKE_CUDA_ARCHITECTURES spelling)."""
    text = arch.strip().lower().removeprefix("sm_").removeprefix("compute_")
    if re.fullmatch(r"\d+\.\d", text):
        text = text.replace(".", "")
    if not re.fullmatch(r"\d{2,3}[a-z]?", text):
        raise ToolchainError(f"gpus[].arch {arch!r} is not a CUDA architecture like 86, sm_89 or 8.6")
    return text


def hip_arch(arch: str) -> str:
    text = arch.strip().lower()
    if not re.fullmatch(r"gfx[0-9a-f]{3,4}(:[a-z+-]+)*", text):
        raise ToolchainError(f"gpus[].arch {arch!r} is not an AMD GPU target like gfx1100")
    return text


def kv_pairs_of(servers: Iterable[Mapping[str, object]]) -> frozenset[tuple[str, str]]:
    """The (K type, V type) pairs that recipes' server flags use (f16 when unset)."""
    pairs = set()
    for server in servers:
        k = server.get("cache-type-k") or server.get("ctk") or "f16"
        v = server.get("cache-type-v") or server.get("ctv") or "f16"
        pairs.add((str(k).lower(), str(v).lower()))
    return frozenset(pairs)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def plan_cmake(
    *,
    backend: Backend,
    gpu_archs: Iterable[str | None] = (),
    build_number: int,
    commit: str,
    cmake_extra: Mapping[str, str | int | bool] | None = None,
    kv_pairs: Iterable[tuple[str, str]] = (),
    targets: Iterable[str] = (),
    jobs: int | None = None,
    tools: Toolchain | None = None,
    declared: frozenset[str] | None = None,
    cmake_targets: Mapping[str, str] | None = None,
) -> CMakePlan:
    """The cmake configure/build plan for one host. Pure: same inputs, same plan."""
    tools = tools or Toolchain()
    notes: list[str] = []
    archs = [a for a in gpu_archs if a]
    wanted_targets = tuple(_unique(["llama-server", *targets]))

    defines: dict[str, str] = {
        "CMAKE_BUILD_TYPE": "Release",
        "BUILD_SHARED_LIBS": "OFF",
        # offline and reproducible: no UI download, version info injected (tarballs have no .git)
        "LLAMA_USE_PREBUILT_UI": "OFF",
        "LLAMA_BUILD_NUMBER": str(build_number),
        "LLAMA_BUILD_COMMIT": commit[:7],
        "LLAMA_BUILD_TESTS": "OFF",
        "LLAMA_BUILD_EXAMPLES": "OFF",
    }
    env: dict[str, str] = {}

    if backend == "hip":
        defines["GGML_HIP"] = "ON"
        if archs:
            targets_of = {a: build_target(hip_arch(a)) for a in archs}
            defines["GPU_TARGETS"] = ";".join(_unique(targets_of.values()))
            for arch, target in targets_of.items():
                if target != hip_arch(arch):
                    notes.append(f"{arch} runs as {target} (HSA_OVERRIDE_GFX_VERSION): compiling {target}")
        else:
            notes.append("no gpus[].arch given: building for the AMD GPUs present on this machine")
        if tools.hip_clang_dir:
            env["HIPCXX"] = f"{tools.hip_clang_dir}/clang"
        if tools.hip_path:
            env["HIP_PATH"] = tools.hip_path
    elif backend == "cuda":
        defines["GGML_CUDA"] = "ON"
        if archs:
            defines["CMAKE_CUDA_ARCHITECTURES"] = ";".join(_unique(cuda_arch(a) for a in archs))
            _check_cuda_archs(archs, tools)
        else:
            notes.append("no gpus[].arch given: CUDA builds for the GPUs present (slow, large)")
        if tools.nvcc and not shutil.which("nvcc"):
            env["CUDACXX"] = tools.nvcc
        if tools.cublas is not None and not tools.cublas.in_toolkit:
            # a pip wheel: cmake's FindCUDAToolkit neither searches it nor finds unversioned names
            defines["CUDA_cublas_LIBRARY"] = tools.cublas.cublas
            defines["CUDA_cublasLt_LIBRARY"] = tools.cublas.cublas_lt
            defines["CMAKE_CUDA_FLAGS"] = f"-I{tools.cublas.include}"
            notes.append(f"cuBLAS from {Path(tools.cublas.include).parent} (outside the toolkit)")
    elif backend == "vulkan":
        defines["GGML_VULKAN"] = "ON"

    if RPC_SERVER in wanted_targets:
        defines["GGML_RPC"] = "ON"

    if backend in ("cuda", "hip"):
        _flash_attention_quants(defines, kv_pairs, build_number, declared, notes)

    for name, value in (cmake_extra or {}).items():
        _apply_extra(defines, name, _cmake_value(value), build_number, declared, notes)

    incidental = {"GGML_CCACHE": "ON" if tools.ccache else "OFF"}
    return CMakePlan(
        defines=defines,
        env=env,
        incidental=incidental,
        generator="Ninja" if tools.ninja else None,
        targets=wanted_targets,
        cmake_targets={k: v for k, v in (cmake_targets or {}).items() if k in wanted_targets and k != v},
        jobs=jobs or os.cpu_count() or 1,
        notes=tuple(notes),
    )


def _check_cuda_archs(archs: list[str], tools: Toolchain) -> None:
    """Refuse compute capabilities the toolkit cannot compile, before cmake does."""
    for arch in archs:
        number = cuda_number(cuda_arch(arch))
        if number is None:
            continue
        if tools.cuda_archs:
            if number not in tools.cuda_archs:
                lowest = min(tools.cuda_archs)
                raise ToolchainError(
                    f"gpus[].arch {arch!r}: this CUDA {tools.cuda_major or ''} toolkit ({tools.nvcc}) cannot "
                    f"compile compute capability {number / 10:.1f} (nvcc --list-gpu-arch: "
                    f"{', '.join(str(a) for a in sorted(tools.cuda_archs))}); "
                    + (
                        "use backend: vulkan for this card or a CUDA 12 toolkit"
                        if number < lowest
                        else "use a newer toolkit"
                    )
                )
        elif tools.cuda_major and number < cuda_min_for(tools.cuda_major):
            raise ToolchainError(
                f"gpus[].arch {arch!r}: CUDA {tools.cuda_major} cannot compile compute capability "
                f"{number / 10:.1f} (lowest: {cuda_min_for(tools.cuda_major) / 10:.1f})"
            )


def _fa_change() -> OptionChange:
    return next(c for c in OPTION_CHANGES if c.old == "GGML_CUDA_FA_ALL_QUANTS")


def _flash_attention_quants(
    defines: dict[str, str],
    kv_pairs: Iterable[tuple[str, str]],
    build_number: int,
    declared: frozenset[str] | None,
    notes: list[str],
) -> None:
    """Compile the FlashAttention kernels for the KV pairs recipes use (else: silent f16 fallback)."""
    used = sorted({f"{k}-{v}" for k, v in kv_pairs if k in FA_TYPES and v in FA_TYPES})
    extra = [p for p in used if p not in FA_DEFAULT_PAIRS]
    change = _fa_change()
    if change.new and _has(change, change.new, build_number, declared):
        defines[change.new] = ";".join([*FA_DEFAULT_PAIRS, *extra])
    elif extra:
        defines[change.old] = "ON"
        notes.append(f"KV pairs {', '.join(extra)} need {change.old}=ON in this build (compiles every pair)")


def _apply_extra(
    defines: dict[str, str],
    name: str,
    value: str,
    build_number: int,
    declared: frozenset[str] | None,
    notes: list[str],
) -> None:
    """A host's own ``cmake:`` option, translated when the pinned build spells it differently."""
    for change in OPTION_CHANGES:
        if name == change.old and change.new is None and not _has(change, change.old, build_number, declared):
            notes.append(f"dropped {name}: {change.note}")
            return
        if name == change.old and change.new and not _has(change, change.old, build_number, declared):
            if change.old == "GGML_CUDA_FA_ALL_QUANTS":
                if value == "ON":
                    defines[change.new] = "all"
                    notes.append(f"{name}=ON is spelled {change.new}=all in this build")
                return
            defines[change.new] = value
            notes.append(f"{name} is spelled {change.new} in this build")
            return
        if name == change.new and change.new and not _has(change, change.new, build_number, declared):
            if change.new == "GGML_CUDA_FA_QUANTS":
                pairs = {p for p in re.split(r"[;,]", value.lower()) if p}
                if value.lower() == "all" or not pairs <= set(FA_DEFAULT_PAIRS):
                    defines[change.old] = "ON"
                    notes.append(f"{name}={value} needs {change.old}=ON in this older build")
                defines.pop(change.new, None)
                return
            defines[change.old] = value
            return
    defines[name] = value
