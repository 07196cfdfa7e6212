"""NumPy forward and backward of one LSTM layer in one direction: the oracle.

Every kernel in this package is tested against these functions, and these
functions are tested against central finite differences in float64. They are
written for clarity, one step at a time, and work in the dtype of their inputs.

Dimensions: T steps, B batch, I input features, H hidden units, G = 4H.
Weights use PyTorch's orientation and gate order (LSTM_GATE_ORDER):
    w_ih [G,I], w_hh [G,H], b_ih [G], b_hh [G], gate blocks i, f, g, o.

Equations of one step (s = sigmoid):
    i = s(W_ii x + b_ii + W_hi h + b_hi)      f = s(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = s(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g                        h' = o * tanh(c')

Variable lengths (lengths [B], 0 <= lengths[b] <= T): sequence b is valid at
steps t < lengths[b]. Past its length its state is held and its output is zero;
the reverse direction starts at its last valid step, t = lengths[b] - 1.
"""
import numpy as np

LSTM_GATE_ORDER = "ifgo"


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def lstm_forward_ref(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths=None, reverse=False):
    """One LSTM layer and direction.

    x: [T,B,I]; h0, c0: [B,H]; lengths: [B] ints or None (all T).
    Returns y [T,B,H], h_n [B,H], c_n [B,H], and a cache for lstm_backward_ref
    holding the inputs, the activated gates [T,B,G] and the cell states [T,B,H].
    """
    T, B, _ = x.shape
    H = w_hh.shape[1]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    h, c = h0.copy(), c0.copy()
    y = np.zeros((T, B, H), x.dtype)
    gates = np.zeros((T, B, 4 * H), x.dtype)
    cs = np.zeros((T, B, H), x.dtype)
    for t in _steps(T, reverse):
        valid = (t < lengths)[:, None]
        a = x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f = _sigmoid(a[:, :H]), _sigmoid(a[:, H:2 * H])
        g, o = np.tanh(a[:, 2 * H:3 * H]), _sigmoid(a[:, 3 * H:])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        c = np.where(valid, c_new, c)
        h = np.where(valid, h_new, h)
        y[t] = np.where(valid, h_new, 0)
        gates[t] = np.concatenate([i, f, g, o], axis=1)
        cs[t] = c
    cache = dict(x=x, w_ih=w_ih, w_hh=w_hh, h0=h0, c0=c0, lengths=lengths,
                 reverse=reverse, gates=gates, cs=cs, y=y)
    return y, h, c, cache


def lstm_backward_ref(dy, dh_n, dc_n, cache):
    """Backward of lstm_forward_ref.

    dy: [T,B,H]; dh_n, dc_n: [B,H] (gradients of the final state).
    Returns dx [T,B,I], dh0 [B,H], dc0 [B,H] and a dict of parameter gradients
    {"w_ih", "w_hh", "b_ih", "b_hh"} in the shapes of the weights.
    """
    x, w_ih, w_hh = cache["x"], cache["w_ih"], cache["w_hh"]
    h0, c0, lengths = cache["h0"], cache["c0"], cache["lengths"]
    gates, cs, y, reverse = cache["gates"], cache["cs"], cache["y"], cache["reverse"]
    T, B, _ = x.shape
    H = w_hh.shape[1]
    dx = np.zeros_like(x)
    grads = {k: np.zeros_like(cache[k]) for k in ("w_ih", "w_hh")}
    grads["b_ih"] = np.zeros(4 * H, x.dtype)
    dh, dc = dh_n.copy(), dc_n.copy()
    order = list(_steps(T, reverse))
    for n in range(T - 1, -1, -1):  # walk the forward's steps backwards
        t = order[n]
        valid = (t < lengths)[:, None]
        first = n == 0
        prev = order[n - 1] if not first else None
        # The state entering step t: the previous valid step, else the initial state.
        if first:
            h_prev, c_prev = h0, c0
        else:
            prev_valid = (prev < lengths)[:, None]
            h_prev = np.where(prev_valid, y[prev], h0)
            c_prev = np.where(prev_valid, cs[prev], c0)
        i, f = gates[t, :, :H], gates[t, :, H:2 * H]
        g, o = gates[t, :, 2 * H:3 * H], gates[t, :, 3 * H:]
        tc = np.tanh(cs[t])
        dh_t = dh + dy[t]
        dc_t = dc + dh_t * o * (1 - tc * tc)
        da = np.concatenate([dc_t * g * i * (1 - i), dc_t * c_prev * f * (1 - f),
                             dc_t * i * (1 - g * g), dh_t * tc * o * (1 - o)], axis=1)
        da = np.where(valid, da, 0)
        dx[t] = da @ w_ih
        grads["w_ih"] += da.T @ x[t]
        grads["w_hh"] += da.T @ h_prev
        grads["b_ih"] += da.sum(0)
        dh = np.where(valid, da @ w_hh, dh)
        dc = np.where(valid, dc_t * f, dc)
    grads["b_hh"] = grads["b_ih"].copy()
    return dx, dh, dc, grads
