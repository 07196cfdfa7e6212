"""The machine's float32 multiply-add peak: the roof every CPU speed figure is
compared with.

A product can reach this rate and no more: per core, as many vector fused
multiply-adds per cycle as the core has FMA pipes, each on LANES float32
(microkernel._target). The loop below keeps ACC independent accumulators in
vector registers (enough to cover the FMA latency on every pipe) and touches no
memory, so it runs at that limit; it runs on every thread at once, since a
core's clock may drop when all of them work.

Why not NumPy's matmul: its OpenBLAS can be pinned to an older kernel
(OPENBLAS_CORETYPE=Haswell on these machines, for its own safety), which runs
at a fraction of what AVX-512 allows, so numlstm's tiled products came out above
"100%" of it on Zen 5.
"""
import time

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .microkernel import LANES, REGISTERS, accumulate, vector_fma

ACC = REGISTERS - 4   # accumulators: 12 on AVX2 (16 registers), 28 on AVX-512 and NEON
FLOPS_PER_ITERATION = 2 * LANES * ACC


@intrinsic
def _fma_loop(typingctx, n, a, b):
    """n iterations of acc[j] = acc[j] * a + b on ACC vectors of LANES float32; the
    sum of the accumulators' first lanes (so that nothing is optimised away). a and
    b arrive at run time, so LLVM cannot fold the arithmetic."""
    def codegen(context, builder, signature, args):
        n, a, b = args
        i32 = ir.IntType(32)
        vec, fma, broadcast = vector_fma(builder)
        va, vb = broadcast(a), broadcast(b)
        start = [ir.Constant(vec, [float(j + 1) / ACC] * LANES) for j in range(ACC)]
        acc = accumulate(builder, n, start,
                         lambda k, acc: [builder.call(fma, [v, va, vb]) for v in acc], "peak")
        total = builder.extract_element(acc[0], ir.Constant(i32, 0))
        for v in acc[1:]:
            total = builder.fadd(total, builder.extract_element(v, ir.Constant(i32, 0)))
        return total
    return types.float32(types.int64, types.float32, types.float32), codegen


@njit(cache=True)
def _one_thread(n, a, b):
    return _fma_loop(n, a, b)


@njit(parallel=True, cache=True)
def _all_threads(n, a, b, out):
    for p in prange(out.shape[0]):
        out[p] = _fma_loop(n, a, b)


def fma_peak(threads=None, seconds=0.2, repeats=8):
    """The float32 FMA rate in GFLOP/s with `threads` threads each running the
    register-only loop (None: Numba's thread count), the best of `repeats` runs of
    about `seconds` each (noise only slows a run down)."""
    P = numba.get_num_threads() if threads is None else threads
    a, b = np.float32(0.999999), np.float32(1e-6)
    n = 10_000
    _one_thread(n, a, b)
    t0 = time.perf_counter()
    _one_thread(n, a, b)
    per_iteration = max(time.perf_counter() - t0, 1e-7) / n
    n = max(10_000, int(seconds / per_iteration))
    out = np.empty(P, np.float32)
    best = np.inf
    for _ in range(repeats + 1):  # (the first wakes the threads)
        t0 = time.perf_counter()
        if P == 1:
            out[0] = _one_thread(n, a, b)
        else:
            _all_threads(n, a, b, out)
        best = min(best, time.perf_counter() - t0)
    if not np.all(np.isfinite(out)):
        raise ArithmeticError("the FMA loop produced a non-finite value")
    return P * n * FLOPS_PER_ITERATION / best / 1e9
