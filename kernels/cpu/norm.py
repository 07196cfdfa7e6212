"""Layer normalisation for the CPU kernels' BLAS-path loops (LSTM and GRU with
layer_norm): per-row statistics summed in float64, the normalised input product
of all steps, and the gradients back through the normalisation. Written here,
not taken from reference.py, so that the oracle and the kernels do not share
code a fault could hide in.

LN(v) = (v - mean(v)) / sqrt(var(v) + LAYER_NORM_EPS), the biased variance, over
a row's G entries (the caller's gain and bias follow).
"""
import numpy as np
from numba import njit

from ..gates import LAYER_NORM_EPS
from .products import product_for


@njit(cache=True, error_model="numpy")
def norm_stats(v):
    """(mean, 1 / sqrt(var + LAYER_NORM_EPS)) of the vector v (the biased variance),
    summed in float64, returned in v's type."""
    mu = 0.0
    for j in range(v.size):
        mu += v[j]
    mu /= v.size
    var = 0.0
    for j in range(v.size):
        var += (v[j] - mu) * (v[j] - mu)
    return v.dtype.type(mu), v.dtype.type(1 / np.sqrt(var / v.size + LAYER_NORM_EPS))


@njit(cache=True, error_model="numpy")
def normalise_row(v):
    """Layer normalisation without gain, in place: v <- (v - mean) / sigma; returns
    1 / sigma (norm_stats)."""
    mu, rstd = norm_stats(v)
    for j in range(v.size):
        v[j] = (v[j] - mu) * rstd
    return rstd


@njit(cache=True, error_model="numpy")
def normalise_rows(v):
    """normalise_row of each row of v [N,G], in place (the input product of all the
    steps: no temporary of its size); returns 1 / sigma [N]."""
    rstd = np.empty(v.shape[0], v.dtype)
    for n in range(v.shape[0]):
        rstd[n] = normalise_row(v[n])
    return rstd


@njit(cache=True, error_model="numpy")
def norm_grad_rows(dv, v_hat, rstd):
    """norm_grad of each row of dv [N,G] (v_hat [N,G], rstd [N] as normalise_rows
    left them), in place."""
    for n in range(dv.shape[0]):
        norm_grad(dv[n], v_hat[n], rstd[n])


def normalised_input(x, w_ih):
    """The input product of every step, each row layer-normalised without gain
    (the caller's gain and bias follow): x_hat [T,B,G] and 1 / sigma [T*B]."""
    T, B, I = x.shape
    xw = np.ascontiguousarray(product_for(x.dtype)(x.reshape(T * B, I), w_ih.T))
    rstd = normalise_rows(xw)  # (in place)
    return xw.reshape(T, B, -1), rstd


def normalised_input_gradient(dout, gain, x_hat, rstd):
    """The backward of x_hat * gain + bias (x_hat, rstd: normalised_input's) from dout
    [T,B,G], its gradient: the raw input product's gradient [T*B,G] and the gain's
    [G]."""
    G = dout.shape[-1]
    d2, hat2 = dout.reshape(-1, G), x_hat.reshape(-1, G)
    dv = d2 * gain
    norm_grad_rows(dv, hat2, rstd)
    return dv, np.einsum("ng,ng->g", d2, hat2)


@njit(cache=True, error_model="numpy")
def norm_grad(dv, v_hat, rstd):
    """LN's backward, in place: dv (the gradient of v_hat) becomes that of v
    (reference.layer_norm_grad); the means summed in float64, as norm_stats's."""
    n = dv.size
    mean_dv = 0.0
    mean_dvv = 0.0
    for j in range(n):
        mean_dv += dv[j]
        mean_dvv += dv[j] * v_hat[j]
    mean_dv, mean_dvv = dv.dtype.type(mean_dv / n), dv.dtype.type(mean_dvv / n)
    for j in range(n):
        dv[j] = rstd * (dv[j] - mean_dv - v_hat[j] * mean_dvv)


def layer_normalised(v, gain, bias):
    """gain * (v - mean) / sigma + bias over v's last axis (a new array), by the
    loops' own normalise_row: the cell states the layer-normalised forward's h'
    read, recomputed for the projection's weight gradient."""
    out = np.array(v, order="C").reshape(-1, v.shape[-1])
    normalise_rows(out)
    return (out * gain + bias).reshape(v.shape)
