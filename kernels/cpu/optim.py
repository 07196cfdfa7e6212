"""CPU kernels of the optimizers: Adam's update and the sum of squares behind
gradient clipping, one pass over each array (NumPy's versions make seven and
two passes with a temporary each: 0.75 ms a step for the character model's 96k
parameters, where these take about 0.1 ms).

Adam's arithmetic is NumPy's, operation for operation, in the parameter's
dtype (the scalars come in that dtype too), so the results are the same bit
for bit; tests/kernels/test_cpu_optim.py checks them against the NumPy
formulas. Serial: the arrays of a step are small next to its products.
"""
import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def _adam(p, g, m, v, one_minus_b1, b2, one_minus_b2, root_c2, eps, step, wd, decay):
    for k in range(p.size):
        if decay != 1:  # AdamW: decoupled weight decay first
            p[k] *= decay
        gk = g[k] + p[k] * wd if wd != 0 else g[k]
        m[k] += (gk - m[k]) * one_minus_b1
        v[k] = v[k] * b2 + (gk * gk) * one_minus_b2
        p[k] -= (m[k] / (np.sqrt(v[k]) / root_c2 + eps)) * step


def adam_update(param, grad, m, v, beta1, beta2, eps, lr, t, weight_decay, decoupled):
    """One Adam (or AdamW, decoupled=True) update of param in place, at its t-th
    update, with the moments m and v (param's shape and dtype, updated in place);
    grad of param's shape. The rule is optim.Adam's docstring; all arrays
    C-contiguous."""
    cast = param.dtype.type
    wd = 0.0 if decoupled else weight_decay
    decay = 1 - lr * weight_decay if decoupled else 1.0
    _adam(param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1),
          cast(1 - beta1), cast(beta2), cast(1 - beta2), cast(np.sqrt(1 - beta2 ** t)),
          cast(eps), cast(lr / (1 - beta1 ** t)), cast(wd), cast(decay))


@njit(cache=True, error_model="numpy")
def _sum_of_squares(a):
    total = 0.0
    for k in range(a.size):
        x = np.float64(a[k])
        total += x * x
    return total


def sum_of_squares(a):
    """The sum of a's squares, accumulated in float64 (a float32 sum loses digits
    on large arrays); a C-contiguous float array."""
    return _sum_of_squares(a.reshape(-1))
