"""A tiny CMake project that looks like llama.cpp to the build stage.

It declares the options our configure step reads (``GGML_CUDA_FA_QUANTS`` ...), honours
``LLAMA_BUILD_NUMBER``/``LLAMA_BUILD_COMMIT``, and builds a ``llama-server`` whose ``--help`` is
in llama.cpp's format (and ``--version`` prints the build number and commit), plus an optional
``llama-fit-params``. Compiles in about a second.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

CMAKELISTS = """\
cmake_minimum_required(VERSION 3.14)
project(fake_llama C)
option(LLAMA_BUILD_TESTS "llama: build tests" OFF)
option(LLAMA_BUILD_EXAMPLES "llama: build examples" OFF)
option(LLAMA_USE_PREBUILT_UI "llama: use prebuilt UI" ON)
set(LLAMA_BUILD_NUMBER 0 CACHE STRING "build number")
set(LLAMA_BUILD_COMMIT "unknown" CACHE STRING "commit")
add_subdirectory(ggml)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_executable(llama-server server.c)
target_compile_definitions(llama-server PRIVATE BUILD_NUMBER=${LLAMA_BUILD_NUMBER} BUILD_COMMIT="${LLAMA_BUILD_COMMIT}")
add_executable(llama-fit-params fit.c)
"""

GGML_CMAKELISTS = """\
option(GGML_CUDA "ggml: use CUDA" OFF)
option(GGML_CUDA_FA_ALL_QUANTS "ggml: compile all quants for FlashAttention" OFF)
set(GGML_CUDA_FA_QUANTS "q4_0-q4_0;q8_0-q8_0;f16-f16;bf16-bf16" CACHE STRING "K-V pairs")
option(GGML_HIP "ggml: use HIP" OFF)
option(GGML_VULKAN "ggml: use Vulkan" OFF)
option(GGML_CCACHE "ggml: use ccache if available" ON)
"""

SERVER_C = r"""#include <stdio.h>
#include <string.h>
static const char *HELP =
"----- common params -----\n"
"\n"
"-h,    --help, --usage                  print usage and exit\n"
"--version                               show version and build info\n"
"-c,    --ctx-size N                     size of the prompt context (default: 0)\n"
"                                        (env: LLAMA_ARG_CTX_SIZE)\n"
"-fa,   --flash-attn [on|off|auto]       set Flash Attention use\n"
"-ctk,  --cache-type-k TYPE              KV cache data type for K\n"
"                                        allowed values: f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1\n"
"--metrics                               enable prometheus compatible metrics endpoint\n"
"--spec-type none,draft-simple,draft-mtp\n"
"                                        types of speculative decoding\n"
"--spec-draft-n-max N                    number of tokens to draft\n"
"--draft, --draft-n, --draft-max N       the argument has been removed. use --spec-draft-n-max\n"
"--port PORT                             port to listen (default: 8080)\n"
"FAKE_EXTRA_HELP";
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help")) { fputs(HELP, stdout); fputs("\n", stdout); return 0; }
        if (!strcmp(argv[i], "--version")) { printf("version: %d (%s)\n", BUILD_NUMBER, BUILD_COMMIT); return 0; }
    }
    fprintf(stderr, "fake llama-server\n");
    return 1;
}
"""

FIT_C = "int main(void) { return 0; }\n"


def make_fake_llama(root: Path, *, extra_help: str = "") -> Path:
    """Write the project under ``root`` (help lines in ``extra_help`` end up in --help)."""
    (root / "ggml").mkdir(parents=True, exist_ok=True)
    (root / "CMakeLists.txt").write_text(CMAKELISTS)
    (root / "ggml" / "CMakeLists.txt").write_text(GGML_CMAKELISTS)
    (root / "server.c").write_text(SERVER_C.replace("FAKE_EXTRA_HELP", extra_help))
    (root / "fit.c").write_text(FIT_C)
    return root


def run_git(cwd: Path, *args: str) -> str:
    env_args = ["-c", "user.name=test", "-c", "user.email=test@localhost", "-c", "commit.gpgsign=false",
                "-c", "init.defaultBranch=main", "-c", "tag.gpgsign=false"]
    return subprocess.run(["git", *env_args, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_upstream(root: Path) -> Path:
    """A git repo with the fake project: tag b100 on the first commit, branch main ahead by one."""
    repo = make_fake_llama(root)
    run_git(repo, "init", "-q")
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-qm", "fake llama.cpp b100")
    run_git(repo, "tag", "b100")
    return repo


def commit_all(repo: Path, message: str) -> str:
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "-qm", message)
    return run_git(repo, "rev-parse", "HEAD")
