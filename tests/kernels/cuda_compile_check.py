"""Compile every CUDA kernel to PTX for a Hopper GPU (sm_90), with no GPU present.

The CI has no GPU, so the simulator tests run the kernels as Python: they check
the arithmetic but not that Numba's CUDA target can type and compile the code
(a float64 literal in float32 math, a shared array of unknown size, an
unsupported call all pass the simulator). This script compiles each kernel for
both dtypes with NVVM from the `nvidia-cuda-nvcc-cu12` wheel and checks that
the float32 kernels do no float64 arithmetic and that exactly the persistent
kernels use the grid barrier (which makes Numba launch them cooperatively).

Run by tests/kernels/test_cuda_compile.py in a subprocess (the simulator tests
in the same session have replaced numba.cuda). Prints one line per kernel and
exits nonzero on the first failure.
"""
import os
import sys
import types as pytypes

import numba.cuda.dispatcher as _dispatcher
from numba import cuda, typeof, types

# Device functions and overloads are compiled for "the current device"; there is
# none, so tell Numba it is an sm_90 one (the compute capability is all it asks).
_dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(9, 0))

from numlstm.kernels.cuda import (common, gru, gru_norm, lstm, lstm_cell, lstm_norm,  # noqa: E402
                                   norm, rnn)
from numlstm.kernels.gates import for_cuda, make_acts, user_activation  # noqa: E402


def arr(dt, nd):
    return types.Array(dt, nd, "C")


def common_signatures(dt):
    A1, A2 = arr(dt, 1), arr(dt, 2)
    A3 = arr(dt, 3)
    b = types.boolean
    return {
        common._matmul_kernel: (A2, A2, A2, A1, dt, b, b, b, b),
        common._copy_kernel: (A1, A1),
        common._combine_kernel: (A1, A1, A1, types.int64, dt),
        common._copy3_kernel: (types.Array(dt, 3, "A"), types.Array(dt, 3, "A"), b),
        common._copy2_kernel: (types.Array(dt, 2, "A"), types.Array(dt, 2, "A")),
        common._fill_kernel: (A1, dt),
        common._scale_rows_kernel: (A3, A2, A3),
        common.dh_one: (types.int64, types.int64, A2, A2, arr(types.int64, 1), A3,
                        types.int64, types.int64, types.int64, A2, dt),  # (A2: the mask)
    }


def lstm_signatures(dt, acts):
    A2, A3 = arr(dt, 2), arr(dt, 3)
    L, i64, b = arr(types.int64, 1), types.int64, types.boolean
    return {
        # (after xp and w_hh: the projection w_hr [P,H] or [0,0], and its input m; the
        # last eight: the cell options clip, coupled, gclip, the activations, the
        # peepholes, [3,H] or [0,1] for none, the recurrent dropout mask, [B,P] or
        # [0,0], and zoneout's weights of c and h, [T,B,H] or [0,0,0])
        lstm._forward_persistent: (A2, A2, A2, A3, L, A3, A2, A3, A3, A3, A3, A3, b, i64, b,
                                   dt, dt, b, dt, acts, A2, A2, A3, A3),
        lstm._forward_one: (i64, i64, A2, A2, A2, A3, L, A3, A2, A3, A3, A3, A3, A3, b, i64,
                            b, dt, dt, b, dt, acts, A2, A2, A3, A3),
        # (after dy and w_hh: w_hr and dhs, h's gradient per step with a projection)
        lstm._backward_persistent: (A3, A2, A2, A2, L, A3, A3, A3, A2, A3, A2, b, i64, dt, dt,
                                    b, dt, acts, A2, A2, A3, A3),
        lstm._backward_gates_one: (i64, A3, A2, A2, A2, L, A3, A3, A3, A2, A3, A2, b, i64, dt,
                                   dt, b, dt, acts, A2, A2, A3, A3),
        lstm_cell.peephole_gradients: (A2, A2, A2, A2, dt),
    }


def lstm_norm_signatures(dt, acts):
    """The layer-normalised LSTM's kernels (kernels/cuda/lstm_norm.py)."""
    A1, A2, A3 = arr(dt, 1), arr(dt, 2), arr(dt, 3)
    L, i64, b = arr(types.int64, 1), types.int64, types.boolean
    # (the options as lstm_signatures's, then 1/G, 1/H and LN's epsilon)
    options = (dt, dt, b, dt, acts, A2, A2, A3, A3, dt, dt, dt)
    fwd = (A2, A2, A2, A3, A2, L, A3, A2, A3, A3, A3, A3, A3, A2, A1, A1, A1, A1, b, i64,
           b) + options
    bwd = (A3, A2, A2, A2, L, A3, A3, A3, A2, A2, A2, A1, A2, A1, A2, A3, A2, A1, A1, A1, b,
           i64) + options
    return {
        norm.normalise_rows: (A2, A1, A1, A2, A2, A1, dt, dt, dt, b),
        norm.norm_grad_rows: (A2, A1, A2, A1, A2, dt, dt),
        norm.column_dots_kernel: (A2, A2, A1, dt),
        lstm_norm._forward_norm_persistent: fwd,
        lstm_norm._forward_norm_one: (i64, i64) + fwd,
        lstm_norm._backward_norm_persistent: bwd,
        lstm_norm._backward_norm_one: (i64, i64) + bwd,
    }


def _softsign(a):
    return a / (1 + abs(a))


def _softsign_grad(y):
    return (1 - abs(y)) ** 2


# The default activations, the other built-in kinds (hard_sigmoid gates, relu cells),
# and a user's function (softsign gates, as CUDA device functions: gates.for_cuda).
# (USER holds the device functions: their Numba type refers to them weakly)
USER = for_cuda(make_acts(user_activation(_softsign, _softsign_grad), "tanh"))
ACTS = [typeof(make_acts("sigmoid", "tanh")), typeof(make_acts("hard_sigmoid", "relu")),
        typeof(USER)]


def gru_signatures(dt, acts):
    """The GRU's kernels (kernels/cuda/gru.py) with the activations acts."""
    A1, A2, A3 = arr(dt, 1), arr(dt, 2), arr(dt, 3)
    L, i64, b = arr(types.int64, 1), types.int64, types.boolean
    # (the last two arguments: the recurrent dropout mask, [B,H] or [0,0], and zoneout's
    # weights, [T,B,H] or [0,0,0])
    gru_fwd = (A2, A2, A1, L, A3, A3, A3, A3, A3, A3, b, b, i64, b, dt, acts, A2, A3)
    gru_bwd = (A3, A2, L, A3, A3, A3, A2, A2, A3, b, b, i64, dt, acts, A2, A3)
    return {
        gru._forward_persistent: gru_fwd,
        gru._forward_one: (i64, i64) + gru_fwd,
        gru._backward_persistent: gru_bwd,
        gru._backward_gates_one: (i64,) + gru_bwd,
        gru._backward_n_one: (i64, i64, A2, L, A3, A3, A2, A2, A3, b, i64, dt, acts, A2),
    }


def gru_norm_signatures(dt, acts):
    """The layer-normalised GRU's kernels (kernels/cuda/gru_norm.py; it launches
    lstm_norm's row kernels too)."""
    A2, A3 = arr(dt, 2), arr(dt, 3)
    L, i64, b = arr(types.int64, 1), types.int64, types.boolean
    return {
        gru_norm._gates: (i64, A2, A2, L, A2, A2, A2, A3, A3, A3, A3, b, dt, acts, A2, A3),
        gru_norm._gate_grads: (i64, A3, L, A3, A3, A3, A2, A2, A2, A2, dt, acts, A3),
        gru_norm._add_masked: (A2, A2, A2),
    }


def rnn_signatures(dt):
    """The RNN's kernels (kernels/cuda/rnn.py)."""
    A2, A3 = arr(dt, 2), arr(dt, 3)
    L, i64, b = arr(types.int64, 1), types.int64, types.boolean
    rnn_fwd = (A2, A2, L, A3, A3, A3, b, b, i64, b, dt)
    rnn_bwd = (A3, A2, L, A3, A2, A3, b, b, i64, dt)
    return {
        rnn._forward_persistent: rnn_fwd,
        rnn._forward_one: (i64,) + rnn_fwd,
        rnn._backward_persistent: rnn_bwd,
        rnn._backward_act_one: (i64,) + rnn_bwd,
    }


def main():
    failures = 0
    for dt in (types.float32, types.float64):
        sigs = [*common_signatures(dt).items(), *rnn_signatures(dt).items()]
        for n, acts in enumerate(ACTS):
            cells = [*lstm_signatures(dt, acts).items(),
                     *lstm_norm_signatures(dt, acts).items(), *gru_signatures(dt, acts).items()]
            # Every kernel with the default activations; with the others, the persistent
            # ones, which call every device function the per-step ones call, and the
            # layer-normalised GRU's (per-step launches only).
            sigs += [(k, sig) for k, sig in cells
                     if n == 0 or "persistent" in k.py_func.__name__]
            sigs += [(k, sig) for k, sig in gru_norm_signatures(dt, acts).items()
                     if n == 0 or k is not gru_norm._add_masked]
        for kernel, sig in sigs:
            # A user's function computes in the types it is written in (1 + |a| is
            # float64 for a float32 a, as on the CPU): the check is of our arithmetic.
            ours = typeof(USER) not in sig
            name = f"{kernel.py_func.__module__.rsplit('.', 1)[-1]}.{kernel.py_func.__name__}"
            try:
                ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
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
    return 1 if failures else 0


if __name__ == "__main__":
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        sys.exit("run without NUMBA_ENABLE_CUDASIM: this compiles for a real GPU")
    sys.exit(main())
