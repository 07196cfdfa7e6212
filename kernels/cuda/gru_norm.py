"""CUDA kernels of the layer-normalised GRU (GRU(layer_norm=True), reset_after), one
layer in one direction, checked against reference.py.

Dimensions: T steps, B batch, I input features, H hidden units, G = 3H (gate
blocks r, z, n).

Equations (reference.gru_forward_ref), each LN over one row's G entries:
    [x_r x_z x_n] = LN(W_ih x; g_ih) + b_ih,  [a_r a_z a_n] = LN(W_hh h; g_hh) + b_hh
    r = s(x_r + a_r), z = s(x_z + a_z), n = tanh(x_n + r * a_n), h' = n + z (h - n)

A row's statistics span all three gates of every unit, so a step is launched as
three kernels, each finishing before the next starts: the recurrent product
(common.matmul), its rows normalised (norm.normalise_rows, which keeps
h_hat and the deviations when training), and the gate math (_gates). The
backward, per reversed step: the gate gradients (_gate_grads), the recurrent
product's gradient through its normalisation (norm.norm_grad_rows), then
dh = dr[t] @ W_hh (times the recurrent dropout mask) added to the direct part.
After the loop, as the LSTM's (lstm_norm.py): the input product's gradient
through its normalisation, dx, the weights', the biases' and the gains'
gradients over all T*B rows.

This is the simple form: per-step launches with W_hh read from global memory,
not the persistent kernel of the plain GRU (gru.py). Recurrent dropout's mask
and zoneout's weights are as gru.py takes them.
"""
from numba import cuda

from ..gates import activate, dactivate
from ..gates import LAYER_NORM_EPS
from .common import (back_time, column_sums, combine, copy, device_array, flat_launch, matmul,
                     ones, scale_rows, step_time)
from .norm import (column_dots, norm_grad_rows, normalise_rows, normalised_input,
                   normalised_input_gradients)


def _grid(B, H):
    return flat_launch(B * H)


@cuda.jit
def _gates(t, xp, a, lengths, h_in, h_out, hm, y, gates, hn, hin, training, zero, acts, mask,
           zh):
    """Step t's gate math, a thread per (row, unit): xp [T*B,G] the normalised input
    product (its biases in), a [B,G] the normalised recurrent one (b_hh in); h_in
    [B,H] -> h_out [B,H] and y[t]; with a mask [B,H] ([0,0]: none) also hm = h' *
    mask, the next product's input. Training keeps the activated gates, the n
    gate's recurrent term a_n (hn) and h (hin) of the step. zh: zoneout's weights
    [T or 1,B,H], or [0,0,0] for none."""
    i = cuda.grid(1)
    B = h_in.shape[0]
    H = h_in.shape[1]
    if i >= B * H:
        return
    b = i // H
    u = i - b * H
    hold = h_in[b, u]
    if t < lengths[b]:
        row = t * B + b
        r = activate(acts[0], xp[row, u] + a[b, u])
        z = activate(acts[0], xp[row, H + u] + a[b, H + u])
        an = a[b, 2 * H + u]
        n = activate(acts[2], xp[row, 2 * H + u] + r * an)
        h_new = n + z * (hold - n)
        if zh.shape[0] > 0:
            h_new += zh[t if zh.shape[0] > 1 else 0, b, u] * (hold - h_new)
        y[t, b, u] = h_new
        if training:
            gates[t, b, u] = r
            gates[t, b, H + u] = z
            gates[t, b, 2 * H + u] = n
            hn[t, b, u] = an
    else:  # past this row's length: hold the state, output zero
        h_new = hold
        y[t, b, u] = zero
    h_out[b, u] = h_new
    if training:
        hin[t, b, u] = hold
    if mask.shape[0] > 0:
        hm[b, u] = h_new * mask[b, u]


def norm_forward(x, cell, h0, lens, reverse, training, mask, zh):
    """gru.gru_forward_cuda for a cell with layer normalisation (cell.ln: the
    device gains g_ih, g_hh [G]); lens, mask and zh as that function prepares them.
    Returns y, h_n and the training cache."""
    T, B, _ = x.shape
    H = cell.H
    G = 3 * H
    dtype = x.dtype
    zero = dtype.type(0)
    eps = dtype.type(LAYER_NORM_EPS)
    inv_g = dtype.type(1 / G)
    ln_ih, ln_hh = cell.ln
    xp, xhat, sdx = normalised_input(x, cell.w_ih, ln_ih, cell.b_ih, training)
    h = device_array((2, B, H), dtype)
    copy(h0, h[0])
    masked = mask.shape[0] > 0
    hm = combine(h0, mask, "mul") if masked else device_array((1, 1), dtype)
    y = device_array((T, B, H), dtype)
    a = device_array((B, G), dtype)
    gates = device_array((T, B, G) if training else (1, 1, 1), dtype)
    hn = device_array((T, B, H) if training else (1, 1, 1), dtype)
    hin = device_array((T, B, H) if training else (1, 1, 1), dtype)
    hhat = device_array((T * B, G) if training else (1, 1), dtype)
    sdh = device_array(T * B if training else 1, dtype)
    for s in range(T):
        t = step_time(s, T, reverse)
        cur = h[s % 2]
        matmul(hm if masked else cur, cell.w_hh, a, trans_b=True)
        rows = slice(t * B, (t + 1) * B) if training else slice(0, 1)
        normalise_rows[flat_launch(B)](a, ln_hh, cell.b_hh, a, hhat[rows], sdh[rows],
                                       inv_g, zero, eps, training)
        _gates[_grid(B, H)](t, xp, a, lens, cur, h[1 - s % 2], hm, y, gates, hn, hin,
                            bool(training), zero, cell.acts, mask, zh)
    cache = None
    if training:
        cache = dict(x=x, lengths=lens, reverse=bool(reverse), gates=gates, hn=hn, hin=hin,
                     mask=mask, zh=zh, xhat=xhat, sdx=sdx, hhat=hhat, sdh=sdh)
    return y, h[T % 2], cache


@cuda.jit
def _gate_grads(t, dy, lengths, gates, hn, hin, dh, dgi, dah, carry, zero, acts, zh):
    """Step t's gate gradients, a thread per (row, unit), from dh_t = dh + dy[t]:
    dgi[t*B + b] = [dr dz dn] (the input product's LN output's gradient), dah =
    [dr dz dn*r] (the recurrent one's), and carry = the part of dh_t that reaches h
    directly (dh_t z, and zoneout's kept part; dh itself for a row past its
    length, whose gradients are zero)."""
    i = cuda.grid(1)
    B = dh.shape[0]
    H = dh.shape[1]
    if i >= B * H:
        return
    b = i // H
    u = i - b * H
    row = t * B + b
    if t < lengths[b]:
        d = dh[b, u] + dy[t, b, u]
        kept = zero
        if zh.shape[0] > 0:
            kept = zh[t if zh.shape[0] > 1 else 0, b, u] * d
            d -= kept
        r = gates[t, b, u]
        z = gates[t, b, H + u]
        n = gates[t, b, 2 * H + u]
        dn = (d - d * z) * dactivate(acts[3], n)
        dr = dn * hn[t, b, u] * dactivate(acts[1], r)
        dz = d * (hin[t, b, u] - n) * dactivate(acts[1], z)
        dgi[row, u] = dr
        dgi[row, H + u] = dz
        dgi[row, 2 * H + u] = dn
        dah[row, u] = dr
        dah[row, H + u] = dz
        dah[row, 2 * H + u] = dn * r
        carry[b, u] = d * z + kept
    else:
        dgi[row, u] = zero
        dgi[row, H + u] = zero
        dgi[row, 2 * H + u] = zero
        dah[row, u] = zero
        dah[row, H + u] = zero
        dah[row, 2 * H + u] = zero
        carry[b, u] = dh[b, u]


@cuda.jit
def _add_masked(a, mask, out):
    """out += a * mask ([0,0]: no mask), a thread per entry of out [B,H]."""
    i = cuda.grid(1)
    H = out.shape[1]
    if i < out.shape[0] * H:
        b = i // H
        u = i - b * H
        out[b, u] += a[b, u] * mask[b, u] if mask.shape[0] > 0 else a[b, u]


def norm_backward(dy, dh_n, cache, cell):
    """gru.gru_backward_cuda for a cell with layer normalisation: dx, dh0 and the
    gradients, the gains' included ("ln_ih", "ln_hh")."""
    x, lens, reverse = cache["x"], cache["lengths"], cache["reverse"]
    T, B, _ = x.shape
    H = cell.H
    G = 3 * H
    dtype = x.dtype
    zero = dtype.type(0)
    inv_g = dtype.type(1 / G)
    ln_ih, ln_hh = cell.ln
    mask = cache["mask"]
    dgi = device_array((T * B, G), dtype)  # of the input product's LN output
    dah = device_array((T * B, G), dtype)  # of the recurrent product's LN output
    dr = device_array((T * B, G), dtype)   # of the raw recurrent product
    dh = device_array((2, B, H), dtype)
    copy(dh_n, dh[0])
    rec = device_array((B, H), dtype)
    for k in range(T):
        t = back_time(k, T, reverse)
        nxt = dh[1 - k % 2]
        _gate_grads[_grid(B, H)](t, dy, lens, cache["gates"], cache["hn"], cache["hin"],
                                 dh[k % 2], dgi, dah, nxt, zero, cell.acts, cache["zh"])
        rows = slice(t * B, (t + 1) * B)
        norm_grad_rows[flat_launch(B)](dah[rows], ln_hh, cache["hhat"][rows],
                                       cache["sdh"][rows], dr[rows], inv_g, zero)
        matmul(dr[rows], cell.w_hh, rec)
        _add_masked[_grid(B, H)](rec, mask, nxt)
    dx, dw_ih, d_ln_ih = normalised_input_gradients(dgi, x, cell.w_ih, ln_ih, cache["xhat"],
                                                    cache["sdx"])
    # What W_hh read: h, or h * mask with recurrent dropout (hin keeps h itself).
    hin = (cache["hin"] if mask.shape[0] == 0 else scale_rows(cache["hin"], mask)
           ).reshape(T * B, H)
    one = ones(T * B, dtype)
    grads = dict(w_ih=dw_ih, w_hh=matmul(dr, hin, device_array((G, H), dtype), trans_a=True),
                 b_ih=column_sums(dgi, device_array(G, dtype), one),
                 b_hh=column_sums(dah, device_array(G, dtype), one), ln_ih=d_ln_ih,
                 ln_hh=column_dots(dah, cache["hhat"]))
    return dx, dh[T % 2], grads
