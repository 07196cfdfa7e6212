"""Compile every CUDA kernel to PTX for a Hopper GPU (sm_90), with no GPU present.

The CI has no GPU, so the simulator tests run the kernels as Python: they check
the arithmetic but not that Numba's CUDA target can type and compile the code
(a float64 literal in float32 math, a shared array of unknown size, an
unsupported call all pass the simulator). This script compiles each kernel for
both dtypes with NVVM from the `nvidia-cuda-nvcc-cu12` wheel and checks that
the float32 kernels do no float64 arithmetic and that exactly the persistent
kernels use the grid barrier (which makes Numba launch them cooperatively).

    python tools/cuda_compile_check.py

tests/test_cuda_backend.py runs it in a subprocess (the simulator tests in the same
session have replaced numba.cuda). Prints one line per kernel and exits nonzero
if any failed.
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
        common.dh_one: (types.int64, A2, A2, arr(types.int64, 1), A3, WALK, types.int64,
                        types.int64, A2, dt),  # (A2: the mask)
    }


# The argument groups of the recurrence kernels (kernels/cuda/lstm_cell.py): walk is
# (reverse, units, training).
WALK = types.Tuple((types.boolean, types.int64, types.boolean))


def lstm_signatures(dt, acts):
    A2, A3 = arr(dt, 2), arr(dt, 3)
    L, i64 = arr(types.int64, 1), types.int64
    T = types.Tuple
    opts = T((dt, dt, types.boolean, dt, acts))   # (zero, clip, coupled, gclip, acts)
    extras = T((A2, A2, A3, A3))                  # (peep, mask, zc, zh)
    # (xp, w_hh, the projection w_hr [P,H] or [0,0] and its input m, lengths, then the
    # groups: state (h, c, y), saved (gates, cs, cin, hin))
    fwd = (A2, A2, A2, A3, L, T((A3, A2, A3)), T((A3, A3, A3, A3)), WALK, opts, extras)
    # (dy, w_hh, w_hr, dhs (h's gradient per step with a projection), lengths, then
    # saved (gates, cs, cin), grads (dgates, dh, dc))
    bwd = (A3, A2, A2, A2, L, T((A3, A3, A3)), T((A2, A3, A2)), WALK, opts, extras)
    return {
        lstm._forward_persistent: fwd,
        lstm._forward_one: (i64, i64) + fwd,
        lstm._backward_persistent: bwd,
        lstm._backward_gates_one: (i64,) + bwd,
        lstm_cell.peephole_gradients: (A2, A2, A2, A2, dt),
    }


def lstm_norm_signatures(dt, acts):
    """The layer-normalised LSTM's kernels (kernels/cuda/lstm_norm.py)."""
    A1, A2, A3 = arr(dt, 1), arr(dt, 2), arr(dt, 3)
    L, i64, b = arr(types.int64, 1), types.int64, types.boolean
    T = types.Tuple
    opts = T((dt, dt, b, dt, acts))
    extras = T((A2, A2, A3, A3))
    ln = T((A1, A1, A1, dt, dt, dt))  # (ln_hh, ln_c, ln_c_bias, 1/G, 1/H, epsilon)
    # (xp, w_hh, w_hr, m, r, lengths, state (h, c, y), saved (cn, gates, cin, hin),
    # normed (hhat, sdh))
    fwd = (A2, A2, A2, A3, A2, L, T((A3, A2, A3)), T((A3, A3, A3, A3)), T((A2, A1)), ln,
           WALK, opts, extras)
    # (dy, w_hh, w_hr, dhs, lengths, saved (gates, cs, cin), grads (dgates, dh, dc),
    # normed (dn, chat, sdc, hhat, sdh, dr))
    bwd = (A3, A2, A2, A2, L, T((A3, A3, A3)), T((A2, A3, A2)),
           T((A2, A2, A1, A2, A1, A2)), ln, WALK, opts, extras)
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
    T = types.Tuple
    opts, extras = T((dt, acts)), T((A2, A3))  # (zero, acts), (mask, zh)
    # (xp, w_hh, b_hh, lengths, state (h, y), saved (gates, hn, hin, rh), reset_after)
    gru_fwd = (A2, A2, A1, L, T((A3, A3)), T((A3, A3, A3, A3)), b, WALK, opts, extras)
    # (dy, w_hh, lengths, saved (gates, hn, hin), grads (dgi, drec, dh), reset_after)
    gru_bwd = (A3, A2, L, T((A3, A3, A3)), T((A2, A2, A3)), b, WALK, opts, extras)
    return {
        gru._forward_persistent: gru_fwd,
        gru._forward_one: (i64, i64) + gru_fwd,
        gru._backward_persistent: gru_bwd,
        gru._backward_gates_one: (i64,) + gru_bwd,
        gru._backward_n_one: (i64,) + gru_bwd,
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
    rnn_fwd = (A2, A2, L, A3, A3, A3, WALK, b, dt)
    rnn_bwd = (A3, A2, L, A3, A2, A3, WALK, b, dt)
    return {
        rnn._forward_persistent: rnn_fwd,
        rnn._forward_one: (i64,) + rnn_fwd,
        rnn._backward_persistent: rnn_bwd,
        rnn._backward_act_one: (i64,) + rnn_bwd,
    }


def flat(sig):
    """The types of a signature, those inside its tuples (argument groups) included."""
    out = []
    for t in sig:
        out += flat(t.types) if isinstance(t, types.BaseTuple) and t not in ACTS else [t]
    return out


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
            ours = typeof(USER) not in flat(sig)
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
