"""Compile every CUDA kernel to PTX with no GPU present, then check that every launch
fits on an A100, an L40S and an H100 (ptxas's registers and shared memory).

The CI has no GPU, so the simulator tests run the kernels as Python: they check
the arithmetic but not that Numba's CUDA target can type and compile the code
(a float64 literal in float32 math, a shared array of unknown size, an
unsupported call all pass the simulator), nor that a launch fits on a GPU.
This script compiles each kernel for both dtypes (every activation kind in
float32) with NVVM (the CUDA 12 toolkit's wheel, which the test extra's
numba-cuda[cu12] brings; the test sets CUDA_HOME to it) for sm_80, checks that the float32
kernels do no float64 arithmetic and that exactly the persistent kernels use
the grid barrier (which makes Numba launch them cooperatively), then prints
`python -m numlstm.kernels.harness --backend cuda --resources`'s report from
the same PTX (numlstm/kernels/cuda/resources.py).

    python tools/cuda_compile_check.py

tests/test_cuda_backend.py runs it in a subprocess (the simulator tests in the same
session have replaced numba.cuda). Prints one line per kernel, then the resources
report, and exits nonzero if any kernel failed or any launch does not fit.
"""
import os
import sys

from numba import types

from numlstm.kernels.cuda import resources
from numlstm.kernels.cuda.signatures import (activation_types, flat, kernel_name,
                                             kernel_signatures)


def main():
    failures = 0
    for dt in (types.float32, types.float64):
        # (the other activation kinds in float32 only: their device functions are the
        # same code in float64, and each kernel's compile takes about 1.5 s)
        for kernel, sig in kernel_signatures(dt, every_activation=dt == types.float32):
            # A user's function computes in the types it is written in (1 + |a| is
            # float64 for a float32 a, as on the CPU): the check is of our arithmetic.
            ours = activation_types()[2] not in flat(sig)
            name = kernel_name(kernel)
            try:
                ptx = resources.ptx_of(kernel, sig)
            except Exception as exc:  # report every kernel, then fail
                print(f"FAIL {dt} {name}: {type(exc).__name__}: {str(exc)[:400]}")
                failures += 1
                continue
            f64 = [line for line in ptx.splitlines()
                   if ".f64" in line and any(op in line for op in ("add.", "mul.", "fma."))]
            grid_sync = "cudaCGGetIntrinsicHandle" in ptx
            wants_sync = "persistent" in kernel.py_func.__name__
            problems = []
            if dt == types.float32 and f64 and ours:
                problems.append(f"{len(f64)} float64 operations, e.g. {f64[0].strip()}")
            if grid_sync != wants_sync:
                problems.append(f"grid barrier {'used' if grid_sync else 'missing'}")
            status = "FAIL" if problems else "ok"
            failures += bool(problems)
            print(f"{status} {dt} {name}: {len(ptx)} bytes of PTX"
                  + (f"; {'; '.join(problems)}" if problems else ""))
    print()
    try:
        failures += resources.report()
    except RuntimeError as exc:
        print(f"FAIL resources: {exc}")
        failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        sys.exit("run without NUMBA_ENABLE_CUDASIM: this compiles for a real GPU")
    sys.exit(main())
