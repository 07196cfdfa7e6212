"""The LSTM's per-step BLAS loops (lstm.py's "blas" path): float64, which the
gradient checks use, and layer normalisation in either precision. Per step a
product (SciPy's BLAS in float64; in float32 the tiled product on Numba's
threads, products.step_product) and a serial gate pass over each row
(_gates_row, ...), which LLVM vectorises.
"""
import numpy as np
from numba import njit

from ..gates import (activate, clip_gate, dactivate, gate_clip_bounds, lstm_cell, lstm_cell_grads,
                     lstm_gate_grads, peephole_at)
from .gradients import peephole_gradients
from .jit import FAST
from .microkernel import CB
from .norm import layer_normalised, norm_grad, normalise_row, normalised_input_gradient
from .products import product_for, step_product, step_tiles
from .sequence import first_step_gradients


@njit(**FAST)
def _gates_row(a, r, c_old, c_new, o_new, keep, clip, coupled, gclip, acts, peep):
    """One row's gate math on the BLAS path: a, r [G] the input and recurrent parts of
    the pre-activations, c_old [H] the state; writes c' to c_new and o to o_new, and
    with keep the activated gates over a. A function of its own, on its rows alone,
    so that LLVM vectorises it (written inline in the time loop, among its many
    arrays, it did not: 35x slower in float32 at H=256)."""
    H = c_old.size
    for j in range(H):
        ai, af, ao = a[j] + r[j], a[H + j] + r[H + j], a[3 * H + j] + r[3 * H + j]
        if peep is not None:  # ONNX's peepholes: i, f the old state, o the new
            ai += peep[0, j] * c_old[j]
            af += peep[1, j] * c_old[j]
        i = activate(acts[0], clip_gate(ai, gclip))
        g = activate(acts[2], clip_gate(a[2 * H + j] + r[2 * H + j], gclip))
        f, cj = lstm_cell(i, activate(acts[0], clip_gate(af, gclip)), g, c_old[j], clip,
                          coupled)
        if peep is not None:
            ao += peep[2, j] * cj
        o = activate(acts[0], clip_gate(ao, gclip))
        c_new[j], o_new[j] = cj, o
        if keep:
            a[j], a[H + j], a[2 * H + j], a[3 * H + j] = i, f, g, o


@njit(**FAST)
def _outputs_row(c_new, o_new, n_c, c, m, zc, zh, zone_c, zone_m, acts):
    """One row's new state c and output m = o * cell(n_c) (n_c: c' or its layer
    normalised value), zoneout keeping part of the old ones: of c (zc [H]) when
    zone_c, of m (zh [H]) when zone_m (with a projection, h is zoned after it)."""
    for j in range(c_new.size):
        cj, mj = c_new[j], o_new[j] * activate(acts[2], n_c[j])
        if zone_c:
            cj += zc[j] * (c[j] - cj)
        if zone_m:
            mj += zh[j] * (m[j] - mj)
        c[j] = cj
        m[j] = mj


@njit(cache=True, error_model="numpy")
def forward_blas(xw, w_hh_t, w_hr_t, mask, h, c, lengths, reverse, training, y, cs, clip,
                  coupled, gclip, acts, peep, czs, zc, zh, ln, tiles):
    """xw [T,B,G] (receives the activated gates when training); w_hh_t [P,G];
    w_hr_t [H,P], the projection (ignored when its size is 0: P = H); mask [B,P],
    the recurrent dropout mask (none when its size is 0); h [B,P], c [B,H] in/out;
    y [T,B,P] out; cs [T,B,H] out when training: the new cell values. Zoneout: zc
    [T or 1,B,H], zh [T or 1,B,P] ([1,1,0]: none), and czs [T,B,H] receives the
    states after it when training (cs itself without zoneout). ln: None, or layer
    normalisation's (gain of the recurrent product [G], the cell's gain and bias
    [H], h_hat [T,B,G] and rstd_h [T,B]: the normalised product and its
    1 / sigma, written when training); xw then holds the normalised input
    product with its gain, plus the biases. tiles: None (the products are
    np.dot's), or float32's products on Numba's threads: (W_hh^T and W_hr^T in
    in_blocks's layout, a zero row as wide as their outputs, and the two
    products' step_product plans)."""
    T, B, G = xw.shape
    H = G // 4
    proj = w_hr_t.size > 0
    zoned = zc.shape[2] > 0
    if tiles is None:
        rec = np.empty((B, G), xw.dtype)
        hp = np.empty(h.shape, xw.dtype)
    else:  # (the blocks' outputs are padded to whole blocks)
        rec = np.empty((B, tiles[0].shape[0] * CB), xw.dtype)
        hp = np.empty((B, max(1, tiles[1].shape[0]) * CB), xw.dtype)
    m = np.empty((B, H), xw.dtype) if proj else h  # o * tanh(c), before the projection
    c_new = np.empty(H, xw.dtype)  # a row's new cell values and o
    o_new = np.empty(H, xw.dtype)
    n_c = np.empty(H, xw.dtype)  # what h' reads: c' or, with layer_norm, its normalised value
    for s in range(T):
        t = T - 1 - s if reverse else s
        zt = t if zc.shape[0] > 1 else 0
        h_in = h * mask if mask.size > 0 else h
        if tiles is None:
            np.dot(h_in, w_hh_t, rec)
        else:
            step_product(h_in, tiles[0], rec, tiles[2], tiles[3])
        for b in range(B):
            if t >= lengths[b]:
                y[t, b] = 0
                if training:
                    cs[t, b] = c[b]
                continue
            a, r = xw[t, b], rec[b]
            if ln is not None:  # r <- gain * LN(r)
                rstd = normalise_row(r[:G])
                if training:
                    ln[3][t, b] = r[:G]
                    ln[4][t, b] = rstd
                for j in range(G):
                    r[j] *= ln[0][j]
            _gates_row(a, r, c[b], c_new, o_new, training, clip, coupled, gclip, acts, peep)
            if training:
                cs[t, b] = c_new
            if ln is not None:
                n_c[:] = c_new
                normalise_row(n_c)
                for j in range(H):
                    n_c[j] = ln[1][j] * n_c[j] + ln[2][j]
            zb = b if zoned else 0
            _outputs_row(c_new, o_new, n_c if ln is not None else c_new, c[b], m[b], zc[zt, zb],
                         zh[zt, zb], zoned, zoned and not proj, acts)
            if training:
                czs[t, b] = c[b]
        if proj:
            if tiles is None:
                np.dot(m, w_hr_t, hp)
            else:
                step_product(m, tiles[1], hp, tiles[2], tiles[4])
        for b in range(B):
            if t < lengths[b]:
                if proj:
                    if zoned:  # h' = h~ + zh (h - h~), of the projected h~
                        _zone_row(hp[b], h[b], zh[zt, b])
                    h[b] = hp[b, :h.shape[1]]
                y[t, b] = h[b]


@njit(**FAST)
def _zone_row(new, old, z):
    """new[j] += z[j] (old[j] - new[j]) for j < z.size (zoneout of one row)."""
    for j in range(z.size):
        new[j] += z[j] * (old[j] - new[j])


@njit(**FAST)
def _grads_row(a, cs, c_prev, dc, dm, clip, coupled, acts, peep, bounds, gated):
    """One row's gate gradients on the BLAS path (lstm_cell_grads over its units):
    a [G] the activated gates in, dG out; cs [H] c', c_prev the state before; dc [H]
    in/out; dm [H] the gradient of h'. A function of its own so that it vectorises
    (see _gates_row)."""
    H = cs.size
    for j in range(H):
        tc = activate(acts[2], cs[j])
        a[j], a[H + j], a[2 * H + j], a[3 * H + j], dc[j] = lstm_cell_grads(
            dc[j], dm[j], a[j], a[H + j], a[2 * H + j], a[3 * H + j], tc, c_prev[j], cs[j],
            clip, coupled, acts, peephole_at(peep, j), bounds, gated)


@njit(**FAST)
def _norm_output_grads_row(a, c_hat, gain, bias, dm, dgain, dbias, dcn, acts, bounds, gated):
    """layer_norm's h' = o * cell(gain * c_hat + bias) backward for one row: adds to the
    gradients of gain and bias, writes that of c_hat (times gain) to dcn and the
    gradient of o's pre-activation over o in a."""
    H = c_hat.size
    for j in range(H):
        o = a[3 * H + j]
        tc = activate(acts[2], gain[j] * c_hat[j] + bias[j])
        dn = dm[j] * o * dactivate(acts[3], tc)
        dgain[j] += dn * c_hat[j]
        dbias[j] += dn
        dcn[j] = dn * gain[j]
        do = dm[j] * tc * dactivate(acts[1], o)
        a[3 * H + j] = do if not gated or bounds[0] < o < bounds[1] else do * 0


@njit(**FAST)
def _norm_grads_row(a, cs, c_prev, dc, dcn, clip, coupled, acts, peep, bounds, gated):
    """The rest of a layer-normalised row's gate gradients: d = dc + dcn (the part
    through h', already normalised back) goes to i, f, g and c_prev. a holds the
    activated i, f, g and o's gradient (_norm_output_grads_row's)."""
    H = cs.size
    for j in range(H):
        do, d = a[3 * H + j], dc[j] + dcn[j]
        if peep is not None:  # o read the new state
            d += do * peep[2, j]
        a[j], a[H + j], a[2 * H + j], dc[j] = lstm_gate_grads(
            d, a[j], a[H + j], a[2 * H + j], c_prev[j], cs[j], clip, coupled, acts,
            peephole_at(peep, j), bounds, gated)


@njit(cache=True, error_model="numpy")
def backward_blas(dy, dg, cs, c0, w_hh, w_hr, mask, dhs, lengths, reverse, dh, dc, clip,
                   coupled, gclip, acts, peep, czs, zc, zh, ln, tiles):
    """dg [T,B,G]: activated gates in, dG out; w_hh [G,P]; dh [B,P], dc [B,H]: the
    final state's gradient in, the initial state's out. With a projection (w_hr
    [P,H] of size > 0), dhs [T,B,P] receives the gradient of each step's h; mask
    [B,P]: the forward's recurrent dropout mask (none when its size is 0); czs,
    zc, zh: the forward's zoneout arrays (forward_blas). ln: None, or (the
    recurrent product's gain [G], the cell's gain and bias [H], h_hat [T,B,G] and
    rstd_h [T,B] as the forward wrote them, and the gradients of the three
    gains and the bias, [G], [H], [H], accumulated); h_hat receives the
    gradient of the (raw) recurrent product, which the step's dh is made from.
    tiles: None, or as forward_blas's, for W_hh and W_hr (dG @ W_hh, dh @ W_hr)."""
    T, B, G = dg.shape
    H = G // 4
    P = dh.shape[1]
    proj = w_hr.size > 0
    zoned = zc.shape[2] > 0
    if tiles is None:
        rec = np.empty(dh.shape, dg.dtype)
        dm_wide = np.empty((B, H), dg.dtype)
    else:  # (the blocks' outputs are padded to whole blocks)
        rec = np.empty((B, tiles[0].shape[0] * CB), dg.dtype)
        dm_wide = np.empty((B, max(1, tiles[1].shape[0]) * CB), dg.dtype)
    dm = np.empty((B, H), dg.dtype)  # the gradient of o * tanh(c)
    kh = np.zeros(dh.shape, dg.dtype)  # zoneout: the parts of dh and dc kept
    kc = np.zeros((B, H), dg.dtype)
    dcn = np.zeros(H, dg.dtype)  # layer_norm: the gradient reaching c' through h'
    c_hat = np.zeros(H, dg.dtype)  # layer_norm: a row's normalised c'
    r_hat = np.zeros(G, dg.dtype)  # and its normalised recurrent product
    zero = dg.dtype.type(0)
    gated = gclip < np.inf
    bounds = gate_clip_bounds(gclip, zero, acts)
    for s in range(T):
        t = s if reverse else T - 1 - s
        zt = t if zc.shape[0] > 1 else 0
        if proj:
            for b in range(B):
                if t < lengths[b]:
                    dhs[t, b] = dh[b] + dy[t, b]
                    if zoned:  # the kept part of h's gradient passes to the step before
                        kh[b] = zh[zt, b] * dhs[t, b]
                        dhs[t, b] -= kh[b]
                else:
                    dhs[t, b] = 0
            if tiles is None:
                np.dot(dhs[t], w_hr, dm)
            else:
                step_product(dhs[t], tiles[1], dm_wide, tiles[2], tiles[4])
                dm[:] = dm_wide[:, :H]
        else:
            for b in range(B):
                dm[b] = dh[b] + dy[t, b]
        for b in range(B):
            n = lengths[b]
            a = dg[t, b]
            if t >= n:
                a[:] = 0
                if ln is not None:
                    ln[3][t, b] = 0
                continue
            if zoned:  # h' = h~ + zh (h - h~), c' = c~ + zc (c - c~)
                if not proj:
                    kh[b] = zh[zt, b] * dm[b]
                    dm[b] -= kh[b]
                kc[b] = zc[zt, b] * dc[b]
                dc[b] -= kc[b]
            first = t == n - 1 if reverse else t == 0
            c_prev = c0[b] if first else czs[t + 1 if reverse else t - 1, b]
            if ln is None:
                _grads_row(a, cs[t, b], c_prev, dc[b], dm[b], clip, coupled, acts, peep,
                           bounds, gated)
            else:  # h' = o * cell(gain * c_hat + bias): the state's part goes through LN
                c_hat[:] = cs[t, b]
                rstd = normalise_row(c_hat)
                _norm_output_grads_row(a, c_hat, ln[1], ln[2], dm[b], ln[6], ln[7], dcn, acts,
                                       bounds, gated)
                norm_grad(dcn, c_hat, rstd)
                _norm_grads_row(a, cs[t, b], c_prev, dc[b], dcn, clip, coupled, acts, peep,
                                bounds, gated)
                dr = ln[3][t, b]  # r_hat in, the raw product's gradient out
                for j in range(G):
                    r_hat[j] = dr[j]
                    ln[5][j] += a[j] * dr[j]
                    dr[j] = a[j] * ln[0][j]
                norm_grad(dr, r_hat, ln[4][t, b])
            if zoned:
                dc[b] += kc[b]
        d_rec = dg[t] if ln is None else ln[3][t]
        if tiles is None:
            np.dot(d_rec, w_hh, rec)
        else:
            step_product(d_rec, tiles[0], rec, tiles[2], tiles[3])
        for b in range(B):
            if t < lengths[b]:
                dh[b] = rec[b, :P] * mask[b] if mask.size > 0 else rec[b, :P]
                if zoned:
                    dh[b] += kh[b]


@njit(**FAST)
def _projection_inputs(gates, n_c, acts, out):
    """out [T,B,H] = o * cell(n_c): the projection's input of every step, from the
    activated gates [T,B,4H] (o the last H columns) and the cell states that h'
    read, n_c [T,B,H] (c' or, with layer_norm, its normalised value)."""
    T, B, H = n_c.shape
    for t in range(T):
        for r in range(B):
            for j in range(H):
                out[t, r, j] = gates[t, r, 3 * H + j] * activate(acts[2], n_c[t, r, j])


def backward_blas_wrap(dy, dh_n, dc_n, cache, packed):
    x, y, lens, reverse = cache["x"], cache["y"], cache["lengths"], cache["reverse"]
    T, B, I = x.shape
    dg = cache["gates"]
    G = dg.shape[2]
    dh, dc = dh_n.copy(), dc_n.copy()
    H, proj = packed.H, packed.proj
    norms, ln_cache = packed.ln, cache["ln"]
    if proj:  # the projection's input, before the loop overwrites the gates
        cs = cache["cs"] if norms is None else layer_normalised(cache["cs"], *norms[2:])
        m_all = np.empty(cs.shape, dg.dtype)
        _projection_inputs(dg, cs, packed.acts, m_all)
    dhs = np.empty(y.shape if proj else (1, 1, 1), dg.dtype)
    # The loop leaves dh = dG at each row's first step @ W_hh (rows of length 0
    # keep dh_n). With layer_norm, the products' gradients differ from dG: the
    # loop writes the recurrent one over h_hat, and the input one is made after it.
    ln, dg_h, dg_x = None, dg, dg
    if norms is not None:
        dg_h = ln_cache["h_hat"]
        ln = (norms[1], norms[2], norms[3], dg_h, ln_cache["rstd_h"]) + tuple(
            np.zeros_like(a) for a in norms[1:])
    mask = cache["mask"]
    backward_blas(dy, dg, cache["cs"], cache["c0"], packed.w_hh, packed.w_hr, mask, dhs,
                   lens, reverse, dh, dc, packed.clip, packed.coupled, packed.gclip,
                   packed.acts, packed.peep,
                   cache["czs"], cache["zc"], cache["zh"], ln,
                   step_tiles(packed, B, "w_bwd", "w_proj_bwd"))
    if norms is not None:
        dg_x, ln_ih = normalised_input_gradient(dg, norms[0], ln_cache["x_hat"],
                                                ln_cache["rstd_x"])
    dg_first, _ = first_step_gradients(dg_h, lens, reverse)
    dgx2 = dg_x.reshape(T * B, G)
    mm = product_for(dg.dtype)
    dx = mm(dgx2, packed.w_ih).reshape(T, B, I)
    dw_ih = mm(dgx2.T, x.reshape(T * B, I))
    dg_prev, y_prev = (dg_h[:-1], y[1:]) if reverse else (dg_h[1:], y[:-1])
    h0 = cache["h0"]
    if mask.size:  # the product read h times the recurrent dropout mask
        y_prev, h0 = y_prev * mask, h0 * mask
    dw_hh = mm(dg_prev.reshape(-1, G).T, y_prev.reshape(-1, y.shape[2]))
    dw_hh += mm(dg_first.T, h0)
    db = dg.reshape(T * B, G).sum(axis=0)
    grads = dict(w_ih=dw_ih, w_hh=dw_hh, b_ih=db, b_hh=db.copy())
    if norms is not None:
        grads.update(ln_ih=ln_ih, ln_hh=ln[5], ln_c=ln[6], ln_c_bias=ln[7])
    if proj:  # (dhs is zero past each row's length)
        grads["w_hr"] = mm(dhs.reshape(T * B, -1).T, m_all.reshape(T * B, H))
    if packed.peep is not None:
        grads["peephole"] = peephole_gradients(
            dg[:, :, :H], dg[:, :, H:2 * H], dg[:, :, 3 * H:], cache["cs"], cache["czs"],
            cache["c0"], lens, reverse, (T, B, H)).reshape(-1)
    return dx, dh, dc, grads
