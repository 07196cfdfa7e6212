#!/usr/bin/env bash
# The CUDA backend on a machine with an NVIDIA GPU, in one command: every kernel
# against the NumPy reference at real sizes (float32 and float64, the persistent
# and the per-step launches), the layer against the CPU backend and torch, arrays
# from CuPy and torch CUDA tensors in and out with no copy, and `numlstm bench
# --backend cuda` against torch's cuDNN LSTM and GRU over the bench grid
# (GFLOP/s, ratios). Each step has a time limit, 650 s in all; it is meant to take
# under 8 minutes on one H100 (not yet run on one). Everything it prints goes to
# the output file too; skipped GPU tests are listed with their reasons.
#
#   python3 -m pip install -e ".[cuda,test,bench]" cupy-cuda12x
#   tools/gpu_check.sh [OUTPUT]            # default: gpu_check-<UTC time>.txt
#   tools/gpu_check.sh --simulate [OUTPUT] # no GPU: the same steps in Numba's
#                                          # simulator at tiny shapes (the tests run it)
#
# Exit status: 0 when every step passed, else the number of steps that failed.
set -uo pipefail
cd "$(dirname "$0")/.."

simulate=0
if [[ "${1:-}" == "--simulate" ]]; then
    simulate=1
    shift
fi
out=${1:-gpu_check-$(date -u +%Y%m%dT%H%MZ).txt}
: > "$out"
failed=0

say() { echo "$*" | tee -a "$out"; }

# step NAME SECONDS COMMAND...: run it with a time limit, its output to the screen and $out
step() {
    local name=$1 limit=$2
    shift 2
    say ""
    say "== $name (at most ${limit} s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$out"
    local rc=${PIPESTATUS[0]}
    say "== $name: exit status $rc after $((SECONDS - start)) s"
    if [[ $rc -ne 0 ]]; then
        failed=$((failed + 1))
    fi
}

say "numlstm GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [[ $simulate -eq 1 ]]; then
    export NUMBA_ENABLE_CUDASIM=1
    say "simulate: Numba's CUDA simulator at tiny shapes (no GPU; checks this script's steps)"
else
    step "the GPU" 60 nvidia-smi
fi
step "the packages" 120 python3 - <<'EOF'
import importlib, os, numba
from numba import cuda
print("numba", numba.__version__, "| numba.cuda from", os.path.dirname(cuda.__file__))
for name in ("numba_cuda", "torch", "cupy"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"))
    except ImportError:
        print(name, "not installed")
if not numba.config.ENABLE_CUDASIM:
    cuda.detect()
    from numba.cuda.cudadrv import driver, nvvm
    try:
        print("NVVM", nvvm.NVVM().get_version(), "| the driver's CUDA",
              driver.driver.get_version())
    except Exception as exc:  # (the versions are for the record; the steps below test)
        print("versions not read:", type(exc).__name__, exc)
EOF

if [[ $simulate -eq 1 ]]; then
    # (the LSTM's variants only: the simulator runs kernels as Python, and the
    # tests run every kernel under it already; this rehearses the step)
    step "kernels against the reference" 900 python3 -m numlstm.kernels.harness --backend cuda \
        --quick --options plain --dtype float32 --cell lstm
    say ""
    say "simulate: the layer tests (pytest -m gpu) and the benchmark need a GPU; not run"
    say "steps failed: $failed"
    exit $failed
fi

# Every kernel (persistent, per-step, auto) at shapes spanning T in 16, 128, 1024,
# B in 1, 16, 128 and H in 64, 256, 1024, plain and with lengths, both dtypes; then
# every option family at one shape.
step "kernels against the reference at real sizes" 200 python3 -m numlstm.kernels.harness \
    --backend cuda --options plain lengths \
    --shapes 16,1,64,64 16,128,64,64 128,16,256,256 16,16,1024,1024 1024,1,64,64
step "every option family" 60 python3 -m numlstm.kernels.harness --backend cuda --plan auto \
    --dtype float32 --shapes 64,16,64,256
# The layer on the GPU: against the CPU backend (float64, 2 layers, bidirectional,
# lengths), CuPy arrays and torch CUDA tensors with no copy, against cuDNN.
step "the layer: parity, zero-copy, cuDNN" 90 python3 -m pytest -q -rs -p no:cacheprovider -m gpu \
    tests/test_cuda_backend.py
# The benchmark: T in 16, 128, 1024 x H in 64, 256, 1024 x B in 1, 16, 128, against
# torch's cuDNN modules.
step "bench LSTM against cuDNN" 60 numlstm bench --backend cuda --full --cell lstm --repeats 3 \
    --json "${out%.txt}-lstm.json"
step "bench GRU against cuDNN" 60 numlstm bench --backend cuda --full --cell gru --repeats 3 \
    --json "${out%.txt}-gru.json"
say ""
say "steps failed: $failed; output in $out"
exit $failed
