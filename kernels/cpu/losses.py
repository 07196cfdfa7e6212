"""CPU kernel of the softmax cross-entropy's value and gradient, one pass over the
logits (NumPy's version made eight, with a temporary each: 0.9 ms a step for
the character model's [2048, 82] logits). Checked against torch's value and
gradient, and finite differences, in tests/test_losses.py.

The exponentials are the gate math's (kernels/gates.py): in float32 the
vectorised exp_f32, within EXP_F32_MAX_REL_ERR of the exact value, as torch
computes them in the logits' dtype; the sums and the value in float64.
"""
import numpy as np
from numba import njit, prange

from ..gates import exp
from .threads import SMALL_REGION, serial_if


# (reassoc: the float64 sums vectorise; no "nnan"/"ninf": a NaN logit gives a NaN loss)
@njit(parallel=True, cache=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz"})
def _cross_entropy(z, target, ignore, scale, grad, losses):
    """Each row's loss into losses[r] (0 where ignored), summed by the caller in one
    order: a reduction inside prange would add the threads' partial sums, so the
    value would change with the thread count."""
    for r in prange(z.shape[0]):
        row, g, cls = z[r], grad[r], target[r]
        if cls == ignore:
            g[:] = 0
            losses[r] = 0
            continue
        top = row[0]
        for j in range(1, row.shape[0]):
            if not row[j] <= top:  # (a NaN goes through: the loss must come out NaN)
                top = row[j]
        for j in range(row.shape[0]):
            g[j] = exp(row[j] - top)
        s = 0.0
        for j in range(row.shape[0]):
            s += g[j]
        losses[r] = np.log(s) - np.float64(row[cls] - top)
        inv = scale / s  # (float64)
        for j in range(row.shape[0]):
            g[j] = g[j] * inv
        g[cls] -= scale


def cross_entropy_cpu(logits, target, ignore_index, n):
    """logits [M,C] float32 or float64, target [M] integers in [0, C) or
    ignore_index (checked by the caller), n the count to divide by -> (the mean
    of logsumexp(row) - row[target] over the rows not ignored, as a float64 sum
    divided by n; the gradient [M,C] in the logits' dtype: (softmax(row) -
    onehot(target)) / n, zero on ignored rows)."""
    z = np.ascontiguousarray(logits)
    grad = np.empty_like(z)
    losses = np.empty(z.shape[0], np.float64)
    serial_if(z.size <= SMALL_REGION, _cross_entropy, z, np.ascontiguousarray(target, np.int64),
              ignore_index, 1.0 / n, grad, losses)
    return float(losses.sum()) / n, grad
