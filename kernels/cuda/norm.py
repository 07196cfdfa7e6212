"""Layer normalisation on the GPU, shared by the layer-normalised LSTM
(lstm_norm.py) and GRU (gru_norm.py): the row statistics and their gradient as
device functions, one kernel that normalises every row of a product (the input
product of all steps, before the loop; the GRU's recurrent product of a step),
its backward, and the gains' gradients as column sums of products.

LN(v) = gain * (v - mean(v)) / sqrt(var(v) + LAYER_NORM_EPS) + bias over a row's
n entries (the biased variance, as torch.nn.LayerNorm).
"""
import math

from numba import cuda

from ..gates import LAYER_NORM_EPS
from .common import device_array, flat_launch, matmul


@cuda.jit(device=True)
def row_stats(v, n, inv_n, zero, eps):
    """(mean, sd) of v[:n], sd = sqrt(var + eps) with the biased variance, as
    reference.layer_norm (inv_n = 1/n in v's type: no float64 in float32 math)."""
    s = zero
    for k in range(n):
        s += v[k]
    mean = s * inv_n
    q = zero
    for k in range(n):
        d = v[k] - mean
        q += d * d
    return mean, math.sqrt(q * inv_n + eps)


@cuda.jit(device=True)
def grad_means(d, gain, hat, n, inv_n, zero):
    """(mean(d g), mean(d g hat)) over a row's n entries, which LN's backward
    subtracts: the input's gradient is (d g - mean(d g) - hat mean(d g hat)) / sd
    (d: the gradient of the row's output gain * hat + bias)."""
    s1 = zero
    s2 = zero
    for j in range(n):
        dv = d[j] * gain[j]
        s1 += dv
        s2 += dv * hat[j]
    return s1 * inv_n, s2 * inv_n


@cuda.jit
def normalise_rows(a, gain, bias, out, hat, sd, inv_n, zero, eps, keep):
    """out[r] = gain * hat[r] + bias for each row r of a [R,N] (one thread a row),
    hat[r] = (a[r] - mean) / sd; keep: also write hat [R,N] and sd [R]. out may
    be a itself."""
    r = cuda.grid(1)
    N = a.shape[1]
    if r < a.shape[0]:
        mean, s = row_stats(a[r], N, inv_n, zero, eps)
        if keep:
            sd[r] = s
        for j in range(N):
            v = (a[r, j] - mean) / s
            if keep:
                hat[r, j] = v
            out[r, j] = gain[j] * v + bias[j]


@cuda.jit
def norm_grad_rows(d, gain, hat, sd, out, inv_n, zero):
    """out[r] = the gradient of row r's LN input from d[r], that of its output
    (gain * hat + bias; grad_means), one thread a row of d [R,N]."""
    r = cuda.grid(1)
    N = d.shape[1]
    if r < d.shape[0]:
        s1, s2 = grad_means(d[r], gain, hat[r], N, inv_n, zero)
        for j in range(N):
            out[r, j] = (d[r, j] * gain[j] - s1 - hat[r, j] * s2) / sd[r]


@cuda.jit
def column_dots_kernel(a, b, out, zero):
    """out[j] = sum over rows r of a[r, j] * b[r, j] (one thread a column)."""
    j = cuda.grid(1)
    if j < out.shape[0]:
        acc = zero
        for r in range(a.shape[0]):
            acc += a[r, j] * b[r, j]
        out[j] = acc


def column_dots(a, b):
    """A new [N]: the sum over rows of a [R,N] * b [R,N] (column_dots_kernel)."""
    out = device_array(a.shape[1], a.dtype)
    column_dots_kernel[flat_launch(a.shape[1])](a, b, out, a.dtype.type(0))
    return out


def normalised_input(x, w_ih, gain, bias, training):
    """The input product of every step, each row layer-normalised: xp [T*B,G] =
    LN(x @ W_ih^T) * gain + bias; and for the backward, when training, the
    normalised rows xhat [T*B,G] and their deviations sd [T*B] ([1,1] and [1]
    else). Returns (xp, xhat, sd)."""
    T, B, I = x.shape
    G = w_ih.shape[0]
    dtype = x.dtype
    xp = matmul(x.reshape(T * B, I), w_ih, device_array((T * B, G), dtype), trans_b=True)
    xhat = device_array((T * B, G) if training else (1, 1), dtype)
    sd = device_array(T * B if training else 1, dtype)
    normalise_rows[flat_launch(T * B)](xp, gain, bias, xp, xhat, sd, dtype.type(1 / G),
                                       dtype.type(0), dtype.type(LAYER_NORM_EPS), training)
    return xp, xhat, sd


def normalised_input_gradients(dout, x, w_ih, gain, xhat, sd):
    """The backward of normalised_input from dout [T*B,G], its output's gradient:
    dx [T,B,I], dW_ih [G,I] and the gain's gradient [G] (the bias's is dout's
    column sums)."""
    T, B, I = x.shape
    G = dout.shape[1]
    dtype = dout.dtype
    da = device_array((T * B, G), dtype)  # the raw product's gradient
    norm_grad_rows[flat_launch(T * B)](dout, gain, xhat, sd, da, dtype.type(1 / G),
                                       dtype.type(0))
    dx = matmul(da, w_ih, device_array((T * B, I), dtype)).reshape(T, B, I)
    dw_ih = matmul(da, x.reshape(T * B, I), device_array((G, I), dtype), trans_a=True)
    return dx, dw_ih, column_dots(dout, xhat)
