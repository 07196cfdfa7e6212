"""CUDA kernels of the layer-normalised LSTM (LSTM(layer_norm=True)), one layer in
one direction, checked against reference.py.

Dimensions: T steps, B batch, I input features, H hidden units, G = 4H (gate
blocks i, f, g, o), P the units of h (H without a projection).

Equations (reference.lstm_forward_ref), each LN over one row's entries, G of
them for the products and H for c':
    a = LN(W_ih x; g_ih) + b_ih + LN(W_hh h; g_hh) + b_hh
    h' = o * cell(LN(c'; g_c) + b_c)

A row's statistics span every unit of the row, so a step cannot be the plain
kernels' one pass over the units (lstm.py). The persistent kernel runs a step
in three phases with a grid barrier after each (a fourth, lstm_cell.project_step,
with a projection):
    1. _norm_product: the raw recurrent product of the block's units, all four
       gates, into r [B,G];
    2. _norm_gates: each unit's gates from its row of r, normalised, then c';
    3. _norm_output: h' from the row's c', normalised.
In phases 2 and 3 each thread computes its row's mean and deviation itself: G
or H reads, the order of its share of the product, where a phase of its own
would cost a barrier. The input product's normalisation is one kernel over
all T*B rows before the loop (normalise_rows).

The backward, per reversed step, three phases with a barrier after each:
    1. _norm_back_output: h's gradient, o's, and dn, the gradient of LN(c')'s
       output [T*B,H];
    2. _norm_back_cell: c's gradient through the normalisation (row sums of dn),
       then i, f, g and c_prev (gates.lstm_gate_grads);
    3. _norm_back_product: the raw recurrent product's gradient dr [T*B,G],
       LN's backward of the gates' (row sums over G);
then dh = dr[t] @ W_hh (common.dh_product). After the loop: the input
product's gradient through its normalisation (norm_grad_rows), dx, dW_ih,
dW_hh, the biases, and the gains' gradients as column sums of products.

The training forward keeps, besides the plain kernels' gates, cs, cin and hin,
the normalised products and their deviations (x_hat, h_hat [T*B,G], sd_x,
sd_h [T*B]); the backward recomputes only each row's statistics of c'.
"""
import math

from numba import cuda

from ..gates import activate, dactivate, gate_clip_bounds, lstm_gate_grads
from ..gates import LAYER_NORM_EPS
from .common import (back_slots, block_items, column_sums, copy, device_array, dh_one,
                     dh_product, item_at, load_columns, load_rows, matmul, ones, plan,
                     step_slots)
from .lstm_cell import (ROWS, cell_update, extra_gradients, gate_products, h_gradient,
                        options, project_step)
from .norm import (column_dots, grad_means, normalised_input, normalised_input_gradients,
                   row_stats)


# -- forward ---------------------------------------------------------------------------
# Besides lstm_cell's groups (walk, opts, extras, state), the kernels take
#     saved   the forward's (cn [T or 1,B,H], gates [T or 1,B,G], cin [T,B,H],
#             hin [T,B,P]): c' before zoneout and the activated gates (all steps'
#             when training, else one step's, which phase 3 reads), the c entering
#             each step and the h W_hh read (training)
#     normed  the forward's (hhat [T*B,G], sdh [T*B]): the recurrent product
#             normalised and its row's deviation (training); the backward's
#             (dn, chat [T*B,H], sdc [T*B], hhat, sdh, dr [T*B,G])
#     ln      (ln_hh [G], ln_c [H], ln_c_bias [H], 1/G, 1/H, epsilon)
@cuda.jit(device=True)
def _norm_product(s, w_hh, w_sh, cached, lengths, h, r, T, walk, zero, mask):
    """Phase 1 of step s: r[b, g*H + u] = W_hh's row of gate g and unit u times
    h[cur, b] (times the mask), for the block's units of valid rows."""
    reverse, units, _ = walk
    B = r.shape[0]
    H = r.shape[1] // ROWS
    KP = w_hh.shape[1] + 1
    t, cur, _ = step_slots(s, T, reverse)
    stride = units * KP
    for n in range(*block_items(H, B, units)):
        j, b, ul, u = item_at(n, B, units)
        if u < H and t < lengths[b]:
            r[b, u], r[b, H + u], r[b, 2 * H + u], r[b, 3 * H + u] = gate_products(
                zero, zero, zero, zero, w_hh, w_sh, cached, j * ROWS * stride + ul * KP,
                stride, h, cur, b, u, mask)


@cuda.jit(device=True)
def _norm_gates(s, xp, r, lengths, c, saved, normed, ln, T, walk, opts, extras):
    """Phase 2 of step s for the block's units: the gates from xp (the input
    product, normalised, with both biases) and r's row normalised; c' into
    cn[i] (i = t when training, else 0: the c' of all units phase 3 reads) and
    into c (after zoneout), the gates into gates[i]. Training: hhat[t*B + b] and
    sdh, the row's normalised product and deviation; cin. Past a row's length the
    state is held."""
    cn, gates, cin, _ = saved
    hhat, sdh = normed
    ln_hh, _, _, inv_g, _, eps = ln
    reverse, units, training = walk
    zero = opts[0]
    peep, _, zc, _ = extras
    B = r.shape[0]
    G = r.shape[1]
    H = G // ROWS
    t, _, _ = step_slots(s, T, reverse)
    i_s = t if training else 0
    for n in range(*block_items(H, B, units)):
        _, b, _, u = item_at(n, B, units)
        if u >= H:
            continue
        c_in = c[b, u]
        row = t * B + b
        if t < lengths[b]:
            mean, sd = row_stats(r[b], G, inv_g, zero, eps)
            hi = (r[b, u] - mean) / sd
            hf = (r[b, H + u] - mean) / sd
            hg = (r[b, 2 * H + u] - mean) / sd
            ho = (r[b, 3 * H + u] - mean) / sd
            if training:
                hhat[row, u] = hi
                hhat[row, H + u] = hf
                hhat[row, 2 * H + u] = hg
                hhat[row, 3 * H + u] = ho
                if u == 0:
                    sdh[row] = sd
            ai = xp[row, u] + ln_hh[u] * hi
            af = xp[row, H + u] + ln_hh[H + u] * hf
            ag = xp[row, 2 * H + u] + ln_hh[2 * H + u] * hg
            ao = xp[row, 3 * H + u] + ln_hh[3 * H + u] * ho
            i, f, g, o, c_new = cell_update(ai, af, ag, ao, c_in, peep, u, opts)
            gates[i_s, b, u] = i
            gates[i_s, b, H + u] = f
            gates[i_s, b, 2 * H + u] = g
            gates[i_s, b, 3 * H + u] = o
            cn[i_s, b, u] = c_new
            if zc.shape[0] > 0:  # zoneout keeps part of the old state
                c_new += zc[t if zc.shape[0] > 1 else 0, b, u] * (c_in - c_new)
            c[b, u] = c_new
        else:
            cn[i_s, b, u] = c_in
            gates[i_s, b, u] = zero
            gates[i_s, b, H + u] = zero
            gates[i_s, b, 2 * H + u] = zero
            gates[i_s, b, 3 * H + u] = zero
            if training:  # (sdh is not read past a row's length)
                for g4 in range(ROWS):
                    hhat[row, g4 * H + u] = zero
        if training:
            cin[t, b, u] = c_in


@cuda.jit(device=True)
def _norm_output(s, w_hr, m, lengths, state, saved, ln, walk, opts, extras):
    """Phase 3 of step s for the block's units: h' = o * cell(LN(c') + b_c) of
    valid rows (zoneout on it), into h[nxt] and y[t] or, with a projection
    (w_hr [P,H]; [0,0] for none), into m[i] (project_step then zones the
    projected h); hin[t] (training, without a projection: project_step writes it
    with one) the h entering the step times the mask."""
    h, _, y = state
    cn, gates, _, hin = saved
    _, ln_c, ln_c_bias, _, inv_h, eps = ln
    reverse, units, training = walk
    zero, acts = opts[0], opts[4]
    _, mask, _, zh = extras
    B = y.shape[1]
    H = cn.shape[2]
    projected = w_hr.shape[0] > 0
    t, cur, nxt = step_slots(s, y.shape[0], reverse)
    i_s = t if training else 0
    for n in range(*block_items(H, B, units)):
        _, b, _, u = item_at(n, B, units)
        if u >= H:
            continue
        h_in = zero if projected else h[cur, b, u]
        if t < lengths[b]:
            mean, sd = row_stats(cn[i_s, b], H, inv_h, zero, eps)
            v = ln_c[u] * ((cn[i_s, b, u] - mean) / sd) + ln_c_bias[u]
            h_new = gates[i_s, b, 3 * H + u] * activate(acts[2], v)
            if zh.shape[0] > 0 and not projected:  # (else project_step zones h')
                h_new += zh[t if zh.shape[0] > 1 else 0, b, u] * (h_in - h_new)
            if projected:
                m[i_s, b, u] = h_new
            else:
                h[nxt, b, u] = h_new
                y[t, b, u] = h_new
        elif projected:
            m[i_s, b, u] = zero
        else:
            h[nxt, b, u] = h_in
            y[t, b, u] = zero
        if training and not projected:
            hin[t, b, u] = h_in * mask[b, u] if mask.shape[0] > 0 else h_in


@cuda.jit(device=True)
def _forward_phase(s, phase, xp, w_hh, w_sh, cached, w_hr, m, r, lengths, state, saved,
                   normed, ln, walk, opts, extras):
    """Phase `phase` (1 to 4) of step s for the block's units."""
    h, c, y = state
    T = y.shape[0]
    if phase == 1:
        _norm_product(s, w_hh, w_sh, cached, lengths, h, r, T, walk, opts[0], extras[1])
    elif phase == 2:
        _norm_gates(s, xp, r, lengths, c, saved, normed, ln, T, walk, opts, extras)
    elif phase == 3:
        _norm_output(s, w_hr, m, lengths, state, saved, ln, walk, opts, extras)
    else:
        project_step(s, w_hr, m, lengths, h, y, saved[3], walk, opts[0], extras[1],
                     extras[3])


@cuda.jit
def _forward_norm_persistent(xp, w_hh, w_hr, m, r, lengths, state, saved, normed, ln, walk,
                             opts, extras):
    """All T steps in one cooperative launch, the block's rows of W_hh on chip, a
    grid barrier after each phase."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    load_rows(w_hh, w_sh, ROWS, walk[1])
    cuda.syncthreads()
    grid = cuda.cg.this_grid()
    phases = 4 if w_hr.shape[0] > 0 else 3
    for s in range(state[2].shape[0]):
        for phase in range(1, phases + 1):
            _forward_phase(s, phase, xp, w_hh, w_sh, True, w_hr, m, r, lengths, state, saved,
                           normed, ln, walk, opts, extras)
            grid.sync()


@cuda.jit
def _forward_norm_one(s, phase, xp, w_hh, w_hr, m, r, lengths, state, saved, normed, ln,
                      walk, opts, extras):
    """Phase `phase` (1 to 4, as the persistent kernel's) of step s alone, W_hh read
    from global memory (the per-step path)."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    _forward_phase(s, phase, xp, w_hh, w_sh, False, w_hr, m, r, lengths, state, saved,
                   normed, ln, walk, opts, extras)


def norm_forward(x, cell, h0, c0, lens, reverse, training, mask, zc, zh, units, blocks,
                 persistent):
    """lstm.lstm_forward_cuda for a cell with layer normalisation (cell.ln: the
    device gains g_ih, g_hh [G], g_c and bias b_c [H]); lens, mask, zc, zh as that
    function prepares them. Returns y, h_n, c_n and the training cache."""
    T, B, _ = x.shape
    H, P = cell.H, cell.P
    G = 4 * H
    projected = cell.w_hr.shape[0] > 0
    dtype = x.dtype
    eps = dtype.type(LAYER_NORM_EPS)
    inv_g, inv_h = dtype.type(1 / G), dtype.type(1 / H)
    ln_ih, ln_hh, ln_c, ln_c_bias = cell.ln
    xp, xhat, sdx = normalised_input(x, cell.w_ih, ln_ih, cell.bias, training)
    steps = T if training else 1
    h = device_array((2, B, P), dtype)
    copy(h0, h[0])
    c = device_array((B, H), dtype)
    copy(c0, c)
    y = device_array((T, B, P), dtype)
    r = device_array((B, G), dtype)
    cn = device_array((steps, B, H), dtype)  # c' before zoneout: the cache's cs
    gates = device_array((steps, B, G), dtype)
    cin = device_array((T, B, H) if training else (1, 1, 1), dtype)
    hin = device_array((T, B, P) if training else (1, 1, 1), dtype)
    hhat = device_array((T * B, G) if training else (1, 1), dtype)
    sdh = device_array(T * B if training else 1, dtype)
    m = device_array((steps, B, H) if projected else (1, 1, 1), dtype)
    state, saved, normed = (h, c, y), (cn, gates, cin, hin), (hhat, sdh)
    ln = (ln_hh, ln_c, ln_c_bias, inv_g, inv_h, eps)
    opts, extras = options(cell, dtype), (cell.peep, mask, zc, zh)

    def args(units):
        return (xp, cell.w_hh, cell.w_hr, m, r, lens, state, saved, normed, ln,
                (bool(reverse), units, bool(training)), opts, extras)

    p = plan(_forward_norm_persistent, args(1), H, B, ROWS, P + 1, dtype.itemsize, units,
             blocks, persistent)
    if p.persistent:
        _forward_norm_persistent[p.blocks, p.threads, 0, p.shared](*args(p.units))
    else:
        for s in range(T):
            for phase in ((1, 2, 3, 4) if projected else (1, 2, 3)):
                _forward_norm_one[p.blocks, p.threads](s, phase, *args(p.units))
    cache = None
    if training:
        cache = dict(x=x, lengths=lens, reverse=bool(reverse), gates=gates, cs=cn, cin=cin,
                     hin=hin, mask=mask, zc=zc, zh=zh, m=m, xhat=xhat, sdx=sdx, hhat=hhat,
                     sdh=sdh)
    return y, h[T % 2], c, cache


# -- backward --------------------------------------------------------------------------
# The kernels take lstm.py's backward groups, saved (gates, cs, cin) and grads
# (dgates [T*B,G], dh [2,B,P], dc [B,H]), and the groups above, normed being the
# backward's (dn, chat, sdc, hhat, sdh, dr).
@cuda.jit(device=True)
def _norm_back_output(k, dy, w_hr, dhs, lengths, saved, grads, normed, ln, walk, opts,
                      extras):
    """Phase 1 of the k-th step of the backward walk (forward step T-1-k) for the
    block's units: h's gradient (lstm.h_gradient: with a projection, whose dhs
    keeps it, or zoneout, which starts dh[nxt]); o's gradient into
    dgates[t*B + b]; dn, that of LN(c')'s output; chat and sdc, c' normalised
    and the row's deviation."""
    gates, cs, _ = saved
    dgates, dh, _ = grads
    dn, chat, sdc = normed[0], normed[1], normed[2]
    _, ln_c, ln_c_bias, _, inv_h, eps = ln
    reverse, units, _ = walk
    zero, _, _, gclip, acts = opts
    zh = extras[3]
    B = dy.shape[1]
    H = cs.shape[2]
    t, cur, _ = back_slots(k, dy.shape[0], reverse)
    gated = gclip < math.inf
    # (only a gate clip reads them; a user's activation of inf may be NaN)
    bounds = gate_clip_bounds(gclip, zero, acts) if gated else (zero, zero, zero, zero)
    for n in range(*block_items(H, B, units)):
        _, b, _, u = item_at(n, B, units)
        if u >= H:
            continue
        row = t * B + b
        if t < lengths[b]:
            dh_t = h_gradient(dy, w_hr, dhs, dh, zh, t, b, u, cur, zero)
            mean, sd = row_stats(cs[t, b], H, inv_h, zero, eps)
            c_hat = (cs[t, b, u] - mean) / sd
            tc = activate(acts[2], ln_c[u] * c_hat + ln_c_bias[u])
            o = gates[t, b, 3 * H + u]
            do = dh_t * tc * dactivate(acts[1], o)
            if gated and not bounds[0] < o < bounds[1]:
                do = zero
            dgates[row, 3 * H + u] = do
            dn[row, u] = dh_t * o * dactivate(acts[3], tc)
            chat[row, u] = c_hat
            if u == 0:
                sdc[row] = sd
        else:
            dgates[row, 3 * H + u] = zero
            dn[row, u] = zero
            chat[row, u] = zero
            if w_hr.shape[0] > 0 and u < dy.shape[2]:
                dhs[row, u] = zero


@cuda.jit(device=True)
def _norm_back_cell(k, T, lengths, saved, grads, normed, ln, walk, opts, extras):
    """Phase 2 for the block's units: d, the gradient reaching c' (dc from the step
    after, less zoneout's kept part; dn through LN(c'), whose backward reads the
    row's dn and chat; o's peephole), then the gradients of i, f, g into dgates
    and of c_prev into dc."""
    gates, cs, cin = saved
    dgates, _, dc = grads
    dn, chat, sdc = normed[0], normed[1], normed[2]
    ln_c, inv_h = ln[1], ln[4]
    reverse, units, _ = walk
    zero, clip, coupled, gclip, acts = opts
    peep, _, zc, _ = extras
    B = lengths.shape[0]
    H = cs.shape[2]
    t, _, _ = back_slots(k, T, reverse)
    gated = gclip < math.inf
    bounds = gate_clip_bounds(gclip, zero, acts) if gated else (zero, zero, zero, zero)
    for n in range(*block_items(H, B, units)):
        _, b, _, u = item_at(n, B, units)
        if u >= H:
            continue
        row = t * B + b
        if t < lengths[b]:
            s1, s2 = grad_means(dn[row], ln_c, chat[row], H, inv_h, zero)
            d = (dn[row, u] * ln_c[u] - s1 - chat[row, u] * s2) / sdc[row]
            kept = zero
            if zc.shape[0] > 0:
                kept = zc[t if zc.shape[0] > 1 else 0, b, u] * dc[b, u]
            d += dc[b, u] - kept
            if peep.shape[0] > 0:
                d += dgates[row, 3 * H + u] * peep[2, u]
                pp = (peep[0, u], peep[1, u], peep[2, u])
                di, df, dg, dcp = lstm_gate_grads(
                    d, gates[t, b, u], gates[t, b, H + u], gates[t, b, 2 * H + u],
                    cin[t, b, u], cs[t, b, u], clip, coupled, acts, pp, bounds, gated)
            else:
                di, df, dg, dcp = lstm_gate_grads(
                    d, gates[t, b, u], gates[t, b, H + u], gates[t, b, 2 * H + u],
                    cin[t, b, u], cs[t, b, u], clip, coupled, acts, None, bounds, gated)
            dgates[row, u] = di
            dgates[row, H + u] = df
            dgates[row, 2 * H + u] = dg
            dc[b, u] = dcp + kept
        else:
            dgates[row, u] = zero
            dgates[row, H + u] = zero
            dgates[row, 2 * H + u] = zero


@cuda.jit(device=True)
def _norm_back_product(k, T, lengths, dgates, normed, ln, walk, zero):
    """Phase 3 for the block's units: dr[t*B + b], the gradient of the raw
    recurrent product, from the row's gate gradients through LN's backward (row
    sums over G); zero past a row's length."""
    hhat, sdh, dr = normed[3], normed[4], normed[5]
    ln_hh, inv_g = ln[0], ln[3]
    reverse, units, _ = walk
    G = dgates.shape[1]
    H = G // ROWS
    B = lengths.shape[0]
    t, _, _ = back_slots(k, T, reverse)
    for n in range(*block_items(H, B, units)):
        _, b, _, u = item_at(n, B, units)
        if u >= H:
            continue
        row = t * B + b
        if t < lengths[b]:
            s1, s2 = grad_means(dgates[row], ln_hh, hhat[row], G, inv_g, zero)
            for g4 in range(ROWS):
                j = g4 * H + u
                dr[row, j] = (dgates[row, j] * ln_hh[j] - s1 - hhat[row, j] * s2) / sdh[row]
        else:
            for g4 in range(ROWS):
                dr[row, g4 * H + u] = zero


@cuda.jit(device=True)
def _backward_phase(k, phase, dy, w_hr, dhs, lengths, saved, grads, normed, ln, walk, opts,
                    extras):
    """Phase `phase` (1 to 3) of backward step k for the block's units."""
    if phase == 1:
        _norm_back_output(k, dy, w_hr, dhs, lengths, saved, grads, normed, ln, walk, opts,
                          extras)
    elif phase == 2:
        _norm_back_cell(k, dy.shape[0], lengths, saved, grads, normed, ln, walk, opts, extras)
    else:
        _norm_back_product(k, dy.shape[0], lengths, grads[0], normed, ln, walk, opts[0])


@cuda.jit
def _backward_norm_persistent(dy, w_hh, w_hr, dhs, lengths, saved, grads, normed, ln, walk,
                              opts, extras):
    """All T steps backwards in one cooperative launch, the block's columns of W_hh
    on chip: the three phases, then dh, each after a grid barrier (and one more
    with a projection, whose phase 1 reads dh whole)."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    load_columns(w_hh, w_sh, walk[1])
    cuda.syncthreads()
    grid = cuda.cg.this_grid()
    for k in range(dy.shape[0]):
        for phase in range(1, 4):
            _backward_phase(k, phase, dy, w_hr, dhs, lengths, saved, grads, normed, ln, walk,
                            opts, extras)
            grid.sync()
        dh_product(k, normed[5], w_hh, w_sh, True, lengths, grads[1], walk, 0, w_hh.shape[0],
                   extras[1], opts[0])
        if w_hr.shape[0] > 0:
            grid.sync()


@cuda.jit
def _backward_norm_one(k, phase, dy, w_hh, w_hr, dhs, lengths, saved, grads, normed, ln,
                       walk, opts, extras):
    """Phase `phase` (1 to 3) of backward step k alone (the per-step path; dh_one
    then makes dh; w_hh unused)."""
    _backward_phase(k, phase, dy, w_hr, dhs, lengths, saved, grads, normed, ln, walk, opts,
                    extras)


def norm_backward(dy, dh_n, dc_n, cache, cell, units, blocks, persistent):
    """lstm.lstm_backward_cuda for a cell with layer normalisation: dx, dh0, dc0 and
    the gradients, those of the gains and bias included ("ln_ih", "ln_hh",
    "ln_c", "ln_c_bias")."""
    x, lens, reverse = cache["x"], cache["lengths"], cache["reverse"]
    T, B, _ = x.shape
    H, P = cell.H, cell.P
    G = 4 * H
    w_hh, w_hr = cell.w_hh, cell.w_hr
    projected = w_hr.shape[0] > 0
    dtype = x.dtype
    eps = dtype.type(LAYER_NORM_EPS)
    inv_g, inv_h = dtype.type(1 / G), dtype.type(1 / H)
    ln_ih, ln_hh, ln_c, ln_c_bias = cell.ln
    dgates = device_array((T * B, G), dtype)  # the gate pre-activations' gradients
    dr = device_array((T * B, G), dtype)      # the raw recurrent product's
    dn = device_array((T * B, H), dtype)      # LN(c')'s output's
    chat = device_array((T * B, H), dtype)
    sdc = device_array(T * B, dtype)
    dhs = device_array((T * B, P) if projected else (1, 1), dtype)
    dh = device_array((2, B, P), dtype)
    copy(dh_n, dh[0])
    dc = device_array((B, H), dtype)
    copy(dc_n, dc)
    mask = cache["mask"]
    saved = (cache["gates"], cache["cs"], cache["cin"])
    normed = (dn, chat, sdc, cache["hhat"], cache["sdh"], dr)
    ln = (ln_hh, ln_c, ln_c_bias, inv_g, inv_h, eps)
    opts = options(cell, dtype)
    extras = (cell.peep, mask, cache["zc"], cache["zh"])

    def args(units):
        return (dy, w_hh, w_hr, dhs, lens, saved, (dgates, dh, dc), normed, ln,
                (reverse, units, True), opts, extras)

    p = plan(_backward_norm_persistent, args(1), H, B, 1, G + 1, dtype.itemsize, units,
             blocks, persistent)
    if p.persistent:
        _backward_norm_persistent[p.blocks, p.threads, 0, p.shared](*args(p.units))
    else:
        walk = (reverse, p.units, True)
        for k in range(T):
            for phase in (1, 2, 3):
                _backward_norm_one[p.blocks, p.threads](k, phase, *args(p.units))
            dh_one[p.blocks, p.threads](k, dr, w_hh, lens, dh, walk, 0, G, mask, opts[0])
    # The input product's gradient through its normalisation, then the products.
    dx, dw_ih, d_ln_ih = normalised_input_gradients(dgates, x, cell.w_ih, ln_ih,
                                                    cache["xhat"], cache["sdx"])
    one = ones(T * B, dtype)
    db = column_sums(dgates, device_array(G, dtype), one)
    grads = dict(w_ih=dw_ih,
                 w_hh=matmul(dr, cache["hin"].reshape(T * B, P), device_array((G, P), dtype),
                             trans_a=True),
                 b_ih=db, b_hh=copy(db, device_array(G, dtype)), ln_ih=d_ln_ih,
                 ln_hh=column_dots(dgates, cache["hhat"]), ln_c=column_dots(dn, chat))
    grads["ln_c_bias"] = column_sums(dn, device_array(H, dtype), one)
    return dx, dh[T % 2], dc, extra_gradients(grads, cell, cache, dgates, dhs)
