"""CPU kernels of attention's core, forward and backward: scores, the softmax over
each sequence's source steps and the context, in one pass per query row (no
[B,T,S,Q] array is made for the additive score). Checked against
kernels/reference_attention.py in tests/kernels/test_cpu_attention.py.

Dimensions as there: B batch, T queries, S source steps, Q score width, K the
values' width. v of length 0 selects the multiplicative score q . k; v [Q] the
additive one, v . tanh(q + k). float32 and float64 (one compiled version each);
the exponentials and tanh are the gate math's (kernels/gates.py), the softmax's
sums in float64.

The forward splits the B*T query rows over threads, the backward the B
sequences (a sequence's key and value gradients sum over its queries, so one
thread owns them; the additive score's dv is summed per sequence, then over
sequences in one order, so results do not depend on the thread count). Work
below threads.SMALL_REGION multiply-adds runs on one thread: a decoding step
(T=1) is a few microseconds of work.
"""
import numpy as np
from numba import njit, prange

from ..gates import exp, tanh
from .threads import SMALL_REGION, serial_if

# (reassoc: the dot products over Q and K vectorise; each row is still summed by one
# thread in one order, so results do not depend on the thread count)
_OPTS = dict(cache=True, error_model="numpy", fastmath={"reassoc", "contract", "nsz"})


@njit(parallel=True, **_OPTS)
def _forward(q, keys, values, lengths, v, ctx, weights):
    B, T, Q = q.shape
    K = values.shape[2]
    for r in prange(B * T):
        b, t = r // T, r % T
        n = lengths[b]
        qr, a = q[b, t], weights[b, t]
        for s in range(n):
            kr = keys[b, s]
            e = qr[0] * 0
            if v.shape[0] == 0:
                for j in range(Q):
                    e += qr[j] * kr[j]
            else:
                for j in range(Q):
                    e += v[j] * tanh(qr[j] + kr[j])
            a[s] = e
        top = a[0]  # (in the dtype: exp of a float32 difference is the vectorised one)
        for s in range(1, n):
            top = max(top, a[s])
        total = 0.0
        for s in range(n):
            a[s] = exp(a[s] - top)
            total += a[s]
        inv = 1.0 / total
        for s in range(n):
            a[s] = a[s] * inv
        a[n:] = 0
        out = ctx[b, t]
        out[:] = 0
        for s in range(n):
            w, vr = a[s], values[b, s]
            for j in range(K):
                out[j] += w * vr[j]


@njit(parallel=True, **_OPTS)
def _backward(dctx, q, keys, values, weights, lengths, v, dq, dkeys, dvalues, dv_parts, de):
    B, T, Q = q.shape
    K = values.shape[2]
    for b in prange(B):
        n = lengths[b]
        dq[b] = 0
        dkeys[b] = 0
        dvalues[b] = 0
        dv_parts[b] = 0
        for t in range(T):
            a, g, d = weights[b, t], dctx[b, t], de[b, t]
            dot = 0.0
            for s in range(n):
                vr = values[b, s]
                da = g[0] * 0
                for j in range(K):
                    da += g[j] * vr[j]
                d[s] = da
                dot += a[s] * da
            for s in range(n):
                d[s] = a[s] * (d[s] - dot)
                dvr = dvalues[b, s]
                for j in range(K):
                    dvr[j] += a[s] * g[j]
            qr, dqr = q[b, t], dq[b, t]
            for s in range(n):
                kr, dkr, w = keys[b, s], dkeys[b, s], d[s]
                if v.shape[0] == 0:
                    for j in range(Q):
                        dqr[j] += w * kr[j]
                        dkr[j] += w * qr[j]
                else:
                    for j in range(Q):
                        u = tanh(qr[j] + kr[j])
                        gj = w * v[j] * (1 - u * u)
                        dqr[j] += gj
                        dkr[j] += gj
                        dv_parts[b, j] += w * u


def attention_forward_cpu(q, keys, values, lengths, v):
    """q [B,T,Q], keys [B,S,Q], values [B,S,K] (one float dtype), lengths [B]
    int64 in [1, S], v [Q] or [0] -> ctx [B,T,K], weights [B,T,S]."""
    B, T, _ = q.shape
    S, K = keys.shape[1], values.shape[2]
    ctx = np.empty((B, T, K), q.dtype)
    weights = np.empty((B, T, S), q.dtype)
    serial_if(B * T * S * (q.shape[2] + K) <= SMALL_REGION, _forward,
              q, keys, values, lengths, v, ctx, weights)
    return ctx, weights


def attention_backward_cpu(dctx, q, keys, values, weights, lengths, v):
    """The context's gradient dctx [B,T,K] and the forward's arrays -> dq [B,T,Q],
    dkeys [B,S,Q], dvalues [B,S,K], dv [Q] (length 0 for the multiplicative
    score)."""
    B, T, Q = q.shape
    S, K = keys.shape[1], values.shape[2]
    dq, dkeys, dvalues = np.empty_like(q), np.empty_like(keys), np.empty_like(values)
    dv_parts = np.empty((B, v.shape[0]), q.dtype)
    de = np.empty((B, T, S), q.dtype)
    serial_if(B * T * S * (Q + K) <= SMALL_REGION, _backward, dctx, q, keys, values, weights,
              lengths, v, dq, dkeys, dvalues, dv_parts, de)
    return dq, dkeys, dvalues, dv_parts.sum(axis=0)
