"""CPU kernels of one LSTM layer in one direction, checked against reference.py.

Dimensions: T steps, B batch, I input features, H hidden units, G = 4H, gate
blocks i, f, g, o (reference.LSTM_GATE_ORDER).

Layout the CPU backend wants (built by numlstm.packing, cached on the layer):
    w_ih_t [I,G]  w_hh_t [H,G]  w_hh [G,H]  bias [G] = b_ih + b_hh

The path of a call:
    forward:  xw = x @ w_ih_t + bias for all steps (one product), then the time
              loop in one compiled function: rec = h @ w_hh_t, one fused pass
              over the gates. The training forward writes the activated gates
              over xw (no new buffer) and keeps c of every step; h of every
              step is y.
    backward: the time loop writes dgates (pre-activation gradients) over the
              stored gates, one product dgates[t] @ w_hh per step for dh; then
              dx, dW_ih, dW_hh and db are each one product over all T*B rows.
"""
import numpy as np
from numba import njit

from ..gates import dsigmoid, dtanh, sigmoid, tanh


def _lengths_or_full(lengths, T, B):
    if lengths is None:
        return np.full(B, T, np.int64)
    return np.ascontiguousarray(lengths, dtype=np.int64)


@njit(cache=True, error_model="numpy")
def _forward_loop(xw, w_hh_t, h, c, lengths, reverse, training, y, cs):
    """The recurrence. xw [T,B,G] holds x @ w_ih_t + bias and, when training,
    receives the activated gates; h, c [B,H] enter as the initial state and
    leave as the final one; y [T,B,H] receives h (zero past a length);
    cs [T,B,H] receives c when training (it may be empty otherwise)."""
    T, B, G = xw.shape
    H = G // 4
    rec = np.empty((B, G), xw.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        np.dot(h, w_hh_t, rec)
        for b in range(B):
            if t >= lengths[b]:
                for j in range(H):
                    y[t, b, j] = 0
                continue
            a = xw[t, b]
            r = rec[b]
            for j in range(H):
                i = sigmoid(a[j] + r[j])
                f = sigmoid(a[H + j] + r[H + j])
                g = tanh(a[2 * H + j] + r[2 * H + j])
                o = sigmoid(a[3 * H + j] + r[3 * H + j])
                cj = f * c[b, j] + i * g
                hj = o * tanh(cj)
                c[b, j] = cj
                h[b, j] = hj
                y[t, b, j] = hj
                if training:
                    a[j] = i
                    a[H + j] = f
                    a[2 * H + j] = g
                    a[3 * H + j] = o
                    cs[t, b, j] = cj


@njit(cache=True, error_model="numpy")
def _backward_loop(dy, gates, cs, c0, w_hh, lengths, reverse, dh, dc, dg_first):
    """The reversed recurrence. gates [T,B,G] holds the activated gates and
    receives the pre-activation gradients; dh, dc [B,H] enter as the gradient
    of the final state and leave as that of the initial state; dg_first [B,G]
    receives the gradient at each sequence's first step, whose h_prev is h0."""
    T, B, G = gates.shape
    H = G // 4
    rec = np.empty((B, H), gates.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        for b in range(B):
            n = lengths[b]
            a = gates[t, b]
            if t >= n:
                for k in range(G):
                    a[k] = 0
                continue
            # c entering step t: the previous valid step's, or c0 at the first step.
            if reverse:
                first = t == n - 1
                c_prev = c0[b] if first else cs[t + 1, b]
            else:
                first = t == 0
                c_prev = c0[b] if first else cs[t - 1, b]
            for j in range(H):
                i = a[j]
                f = a[H + j]
                g = a[2 * H + j]
                o = a[3 * H + j]
                tc = tanh(cs[t, b, j])
                dhj = dh[b, j] + dy[t, b, j]
                dcj = dc[b, j] + dhj * o * dtanh(tc)
                a[j] = dcj * g * dsigmoid(i)
                a[H + j] = dcj * c_prev[j] * dsigmoid(f)
                a[2 * H + j] = dcj * i * dtanh(g)
                a[3 * H + j] = dhj * tc * dsigmoid(o)
                dc[b, j] = dcj * f
            if first:
                dg_first[b] = a
        np.dot(gates[t], w_hh, rec)
        for b in range(B):
            if t < lengths[b]:
                dh[b] = rec[b]


def lstm_forward_cpu(x, w_ih_t, w_hh_t, bias, h0, c0, lengths=None, reverse=False,
                     training=False):
    """One LSTM layer and direction on the CPU.

    x: [T,B,I]; w_ih_t [I,G], w_hh_t [H,G], bias [G]; h0, c0: [B,H];
    lengths: [B] ints in [0, T] or None. All arrays C-contiguous, one dtype.
    Returns y [T,B,H], h_n [B,H], c_n [B,H] and, when training, the cache that
    lstm_backward_cpu consumes (else None).
    """
    T, B, I = x.shape
    H = w_hh_t.shape[0]
    xw = (x.reshape(T * B, I) @ w_ih_t).reshape(T, B, 4 * H)
    xw += bias
    h, c = h0.copy(), c0.copy()
    y = np.empty((T, B, H), x.dtype)
    cs = np.empty((T, B, H) if training else (0, 0, 0), x.dtype)
    lens = _lengths_or_full(lengths, T, B)
    _forward_loop(xw, w_hh_t, h, c, lens, reverse, training, y, cs)
    if not training:
        return y, h, c, None
    cache = dict(x=x, h0=h0, c0=c0, lengths=lens, reverse=reverse, gates=xw, cs=cs, y=y)
    return y, h, c, cache


def lstm_backward_cpu(dy, dh_n, dc_n, cache, w_ih, w_hh):
    """Backward of lstm_forward_cpu; consumes (overwrites) the cache's gates.

    dy: [T,B,H]; dh_n, dc_n: [B,H]; w_ih [G,I], w_hh [G,H] (torch orientation).
    Returns dx [T,B,I], dh0 [B,H], dc0 [B,H] and {"w_ih", "w_hh", "b_ih", "b_hh"}.
    """
    x, y, lens, reverse = cache["x"], cache["y"], cache["lengths"], cache["reverse"]
    T, B, I = x.shape
    H = w_hh.shape[1]
    G = 4 * H
    dgates = cache["gates"]
    dh, dc = dh_n.copy(), dc_n.copy()
    dg_first = np.zeros((B, G), x.dtype)
    _backward_loop(dy, dgates, cache["cs"], cache["c0"], w_hh, lens, reverse, dh, dc,
                   dg_first)
    dg = dgates.reshape(T * B, G)
    dx = (dg @ w_ih).reshape(T, B, I)
    dw_ih = dg.T @ x.reshape(T * B, I)
    # h_prev of step t is y at the step before it in processing order (zero rows
    # past a length meet zero gradients there); the first step's is h0.
    if reverse:
        dw_hh = dgates[:-1].reshape(-1, G).T @ y[1:].reshape(-1, H)
    else:
        dw_hh = dgates[1:].reshape(-1, G).T @ y[:-1].reshape(-1, H)
    dw_hh += dg_first.T @ cache["h0"]
    db = dg.sum(axis=0)
    grads = dict(w_ih=dw_ih, w_hh=dw_hh, b_ih=db, b_hh=db.copy())
    return dx, dh, dc, grads
