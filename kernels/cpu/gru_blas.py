"""The GRU's per-step BLAS loops (gru.py's "blas" and "norm" paths): float64,
reset_after=False in either precision (r * h must exist before W_hn's product),
and layer normalisation; each with its Python wrapper.
"""
import numpy as np
from numba import njit

from ..gates import activate, dactivate
from .gradients import blas_recurrent_gradient
from .gru_tiled import state_before
from .jit import FAST
from .microkernel import CB
from .norm import norm_grad, normalise_row, normalised_input, normalised_input_gradient
from .products import product_for, step_product, step_tiles
from .sequence import zone_weights


# -- float64 and reset_after=False: BLAS per step ----------------------------------------
@njit(cache=True, error_model="numpy")
def forward_blas(xw, w_rz_t, w_n_t, b_hh, mask, h, lengths, reverse, training, reset_after,
                  y, hn, acts, tiles, zh):
    """xw [T,B,3H]: x @ W_ih^T + b_ih, receives the activated gates when training;
    w_rz_t [H,2H], w_n_t [H,H]: W_hh^T split at the n gate; b_hh [3H]; mask [B,H]:
    the recurrent dropout mask on h where W_hh reads it (none when its size is 0);
    h [B,H] in/out; y [T,B,H] out; hn [T,B,H] out when training: W_hn h + b_hn
    (reset_after), else r * h (h times the mask, if any); acts: gates.make_acts's
    tuple; tiles: None (np.dot's products), or float32's on Numba's threads: (W_hh^T's
    r-z and n parts in products.in_blocks's layout, a zero row as wide as their outputs,
    and each product's products.step_product plan); zh [T or 1,B,H]: zoneout's
    weights, [1,1,0] for none."""
    T, B, G = xw.shape
    H = G // 3
    zoned = zh.shape[2] > 0
    if tiles is None:
        rz = np.empty((B, 2 * H), xw.dtype)
        a_n = np.empty((B, H), xw.dtype)
    else:  # (the blocks' outputs are padded to whole blocks)
        rz = np.empty((B, tiles[0].shape[0] * CB), xw.dtype)
        a_n = np.empty((B, tiles[1].shape[0] * CB), xw.dtype)
    rh = np.empty((B, H), xw.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        h_in = h * mask if mask.size > 0 else h
        if tiles is None:
            np.dot(h_in, w_rz_t, rz)
        else:
            step_product(h_in, tiles[0], rz, tiles[2], tiles[3])
        for b in range(B):
            for j in range(H):
                r = activate(acts[0], xw[t, b, j] + rz[b, j] + b_hh[j])
                rz[b, j] = r
                rz[b, H + j] = activate(acts[0], xw[t, b, H + j] + rz[b, H + j] + b_hh[H + j])
                rh[b, j] = r * h_in[b, j]
        if tiles is None:
            np.dot(h_in if reset_after else rh, w_n_t, a_n)
        else:
            step_product(h_in if reset_after else rh, tiles[1], a_n, tiles[2], tiles[4])
        for b in range(B):
            if t >= lengths[b]:
                y[t, b] = 0
                if training:
                    hn[t, b] = 0
                continue
            for j in range(H):
                r, z = rz[b, j], rz[b, H + j]
                a = a_n[b, j] + b_hh[2 * H + j]
                n = activate(acts[2], xw[t, b, 2 * H + j] + (r * a if reset_after else a))
                if training:
                    xw[t, b, j], xw[t, b, H + j], xw[t, b, 2 * H + j] = r, z, n
                    hn[t, b, j] = a if reset_after else rh[b, j]
                h_new = n + z * (h[b, j] - n)
                if zoned:  # h' = h~ + zh (h - h~)
                    h_new += zh[t if zh.shape[0] > 1 else 0, b, j] * (h[b, j] - h_new)
                h[b, j] = h_new
            y[t, b] = h[b]


@njit(cache=True, error_model="numpy")
def backward_blas(dy, dg, hn, y, h0, w_rz, w_n, mask, lengths, reverse, reset_after, dh,
                   dnh, acts, tiles, zh):
    """dg [T,B,3H]: activated gates in, dG_ih = [dr dz dn] out; hn [T,B,H]: as the
    forward left it; w_rz [2H,H], w_n [H,H]: W_hh's rows split at the n gate;
    mask [B,H]: the forward's recurrent dropout mask (none when its size is 0);
    dh [B,H]: dh_n in, dh0 out; dnh [T,B,H] out: the gradient of the n gate's
    recurrent pre-activation (dn * r when reset_after, else dn); tiles: None, or as
    forward_blas's, for W_hh's r-z and n rows (dG_rz @ W_rz, dnh @ W_n); zh: the
    forward's zoneout weights."""
    T, B, G = dg.shape
    H = G // 3
    masked = mask.size > 0
    zoned = zh.shape[2] > 0
    carry = np.empty((B, H), dg.dtype)  # dh * z: the direct path h' = ... + z h
    zero = dg.dtype.type(0)
    g_rz = np.empty((B, 2 * H), dg.dtype)
    if tiles is None:
        d_rh = np.empty((B, H), dg.dtype)
        rec = np.empty((B, H), dg.dtype)
    else:  # (the blocks' outputs are padded to whole blocks)
        d_rh = np.empty((B, tiles[1].shape[0] * CB), dg.dtype)
        rec = np.empty((B, tiles[0].shape[0] * CB), dg.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        for b in range(B):
            if t >= lengths[b]:
                dg[t, b] = 0
                dnh[t, b] = 0
                continue
            h_prev = state_before(y, h0, lengths, reverse, t, b)
            for j in range(H):
                r, z, n = dg[t, b, j], dg[t, b, H + j], dg[t, b, 2 * H + j]
                d = dh[b, j] + dy[t, b, j]
                kept = zero
                if zoned:  # the part zh of dh' passes straight to the step before
                    kept = zh[t if zh.shape[0] > 1 else 0, b, j] * d
                    d -= kept
                dn = (d - d * z) * dactivate(acts[3], n)
                dg[t, b, H + j] = d * (h_prev[j] - n) * dactivate(acts[1], z)
                dg[t, b, 2 * H + j] = dn
                carry[b, j] = d * z + kept
                if reset_after:
                    dg[t, b, j] = dn * hn[t, b, j] * dactivate(acts[1], r)
                    dnh[t, b, j] = dn * r
                else:  # r stays in dg until the gradient of r * h is known
                    dnh[t, b, j] = dn
        if not reset_after:
            if tiles is None:  # the gradient of r * h
                np.dot(dnh[t], w_n, d_rh)
            else:
                step_product(dnh[t], tiles[1], d_rh, tiles[2], tiles[4])
            for b in range(B):
                if t >= lengths[b]:
                    continue
                h_prev = state_before(y, h0, lengths, reverse, t, b)
                for j in range(H):
                    r = dg[t, b, j]
                    m = mask[b, j] if masked else 1.0
                    dg[t, b, j] = d_rh[b, j] * h_prev[j] * m * dactivate(acts[1], r)
                    carry[b, j] += d_rh[b, j] * r * m
        g_rz[:] = dg[t, :, :2 * H]
        if tiles is None:
            np.dot(g_rz, w_rz, rec)
        else:
            step_product(g_rz, tiles[0], rec, tiles[2], tiles[3])
        if reset_after:
            if tiles is None:
                np.dot(dnh[t], w_n, d_rh)
            else:
                step_product(dnh[t], tiles[1], d_rh, tiles[2], tiles[4])
            rec += d_rh
        for b in range(B):
            if t < lengths[b]:
                for j in range(H):
                    dh[b, j] = (rec[b, j] * mask[b, j] if masked else rec[b, j]) + carry[b, j]


# -- layer_norm: BLAS per step, each row normalised ---------------------------------------
@njit(**FAST)
def _norm_gates_row(x3, a, gain, b_hh, h_old, h_new, hn, keep, acts):
    """One row's gate math of the layer-normalised GRU: x3 [3H] the input part
    (LN(W_ih x) * gain + b_ih), a [3H] the normalised recurrent product; h' into
    h_new [H]; with keep, the activated gates over x3 and the n gate's recurrent
    term into hn [H]. A function of its own, on its rows alone, so that LLVM
    vectorises it (as lstm_blas._gates_row; written inline in the time loop, the
    inference forward took 1.5x as long at B=16, H=256)."""
    H = h_old.size
    for j in range(H):
        r = activate(acts[0], x3[j] + gain[j] * a[j] + b_hh[j])
        z = activate(acts[0], x3[H + j] + gain[H + j] * a[H + j] + b_hh[H + j])
        an = gain[2 * H + j] * a[2 * H + j] + b_hh[2 * H + j]
        n = activate(acts[2], x3[2 * H + j] + r * an)
        if keep:
            x3[j], x3[H + j], x3[2 * H + j] = r, z, n
            hn[j] = an
        h_new[j] = n + z * (h_old[j] - n)


@njit(**FAST)
def _norm_grads_row(g3, hn, h_prev, d, dv, carry, acts):
    """One row's gate gradients of the layer-normalised GRU: g3 [3H] the activated
    gates in, [dr dz dn] out; d [H] the gradient reaching the cell (zoneout's kept
    part taken out); dv [3H] out: [dr dz dn*r], that of the recurrent product's LN
    output; carry [H] += d z (a function of its own so that it vectorises)."""
    H = d.size
    for j in range(H):
        r, z, n = g3[j], g3[H + j], g3[2 * H + j]
        dn = (d[j] - d[j] * z) * dactivate(acts[3], n)
        dr = dn * hn[j] * dactivate(acts[1], r)
        dz = d[j] * (h_prev[j] - n) * dactivate(acts[1], z)
        g3[j], g3[H + j], g3[2 * H + j] = dr, dz, dn
        dv[j], dv[H + j], dv[2 * H + j] = dr, dz, dn * r
        carry[j] += d[j] * z


@njit(cache=True, error_model="numpy")
def forward_norm(xw, w_hh_t, b_hh, gain, mask, h, lengths, reverse, training, y, hn, h_hat,
                  rstd_h, acts, tiles, zh):
    """The layer-normalised GRU (reset_after): per step the whole recurrent product
    h_in @ W_hh^T [B,3H], each valid row normalised over its 3H entries (kept in
    h_hat [T,B,3H] and rstd_h [T,B] when training), times gain [3H], plus b_hh;
    then forward_blas's gate math. xw [T,B,3H]: LN(x @ W_ih^T) * gain + b_ih,
    receives the activated gates when training; hn [T,B,H]: the n gate's
    recurrent term when training; tiles: None (np.dot), or (W_hh^T in blocks,
    unused, a zero row, the product's plan) for float32; other arguments as
    forward_blas's."""
    T, B, G = xw.shape
    H = G // 3
    zoned = zh.shape[2] > 0
    rec = np.empty((B, G if tiles is None else tiles[0].shape[0] * CB), xw.dtype)
    h_new = np.empty(H, xw.dtype)
    for s in range(T):
        t = T - 1 - s if reverse else s
        h_in = h * mask if mask.size > 0 else h
        if tiles is None:
            np.dot(h_in, w_hh_t, rec)
        else:
            step_product(h_in, tiles[0], rec, tiles[2], tiles[3])
        for b in range(B):
            if t >= lengths[b]:
                y[t, b] = 0
                if training:
                    hn[t, b] = 0
                    h_hat[t, b] = 0
                    rstd_h[t, b] = 0
                continue
            a = rec[b, :G]
            rstd = normalise_row(a)
            if training:
                h_hat[t, b] = a
                rstd_h[t, b] = rstd
            hn_row = hn[t, b] if training else hn[0, 0]
            _norm_gates_row(xw[t, b], a, gain, b_hh, h[b], h_new, hn_row, training, acts)
            if zoned:
                zt = zh[t if zh.shape[0] > 1 else 0, b]
                for j in range(H):
                    h[b, j] = h_new[j] + zt[j] * (h[b, j] - h_new[j])
            else:
                h[b] = h_new
            y[t, b] = h[b]


@njit(cache=True, error_model="numpy")
def backward_norm(dy, dg, hn, y, h0, w_hh, gain, h_hat, rstd_h, dgain, dbias, mask, lengths,
                   reverse, dh, acts, tiles, zh):
    """Backward of forward_norm. dg [T,B,3H]: activated gates in, dG_ih = [dr dz dn]
    out (the gradient of the input product's LN output); h_hat [T,B,3H]: the
    normalised recurrent products in, their raw products' gradients out (dW_hh's
    operand); dgain, dbias [3H]: ln_hh's and b_hh's gradients out (zero in); dh
    [B,H]: dh_n in, dh0 out; tiles: None, or as forward_norm's for W_hh [3H,H]."""
    T, B, G = dg.shape
    H = G // 3
    masked = mask.size > 0
    zoned = zh.shape[2] > 0
    zero = dg.dtype.type(0)
    carry = np.empty((B, H), dg.dtype)
    dv = np.empty(G, dg.dtype)
    d = np.empty(H, dg.dtype)
    rec = np.empty((B, H if tiles is None else tiles[0].shape[0] * CB), dg.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        for b in range(B):
            if t >= lengths[b]:
                dg[t, b] = 0
                h_hat[t, b] = 0
                continue
            for j in range(H):
                d[j] = dh[b, j] + dy[t, b, j]
                carry[b, j] = zero
            if zoned:  # the part zh of dh' passes straight to the step before
                zt = zh[t if zh.shape[0] > 1 else 0, b]
                for j in range(H):
                    carry[b, j] = zt[j] * d[j]
                    d[j] -= carry[b, j]
            _norm_grads_row(dg[t, b], hn[t, b], state_before(y, h0, lengths, reverse, t, b), d,
                            dv, carry[b], acts)
            v_hat = h_hat[t, b]
            for k in range(G):
                dgain[k] += dv[k] * v_hat[k]
                dbias[k] += dv[k]
                dv[k] *= gain[k]
            norm_grad(dv, v_hat, rstd_h[t, b])
            v_hat[:] = dv
        if tiles is None:
            np.dot(h_hat[t], w_hh, rec)
        else:
            step_product(h_hat[t], tiles[0], rec, tiles[2], tiles[3])
        for b in range(B):
            if t < lengths[b]:
                for j in range(H):
                    dh[b, j] = (rec[b, j] * mask[b, j] if masked else rec[b, j]) + carry[b, j]


def backward_blas_wrap(dy, dh_n, cache, packed):
    x, y, h0, lens = cache["x"], cache["y"], cache["h0"], cache["lengths"]
    dg, hn, reverse = cache["gates"], cache["hn"], cache["reverse"]
    reset_after = packed.reset_after
    T, B, I = x.shape
    H = packed.H
    dh = dh_n.copy()
    dnh = np.empty((T, B, H), x.dtype)
    mask = cache["mask"]
    backward_blas(dy, dg, hn, y, h0, packed.w_rz, packed.w_n, mask, lens, reverse,
                   reset_after, dh, dnh, packed.acts,
                   step_tiles(packed, B, "w_rz_bwd", "w_n_bwd"), cache["zh"])
    if mask.size:  # W_hh read h times the recurrent dropout mask (hn holds r * that)
        y, h0 = y * mask, h0 * mask
    dg2 = dg.reshape(T * B, 3 * H)
    mm = product_for(dg.dtype)
    dx = mm(dg2, packed.w_ih).reshape(T, B, I)
    dw_ih = mm(dg2.T, x.reshape(T * B, I))
    db_ih = dg2.sum(axis=0)
    dw_hh = np.empty((3 * H, H), x.dtype)
    dw_hh[:2 * H] = blas_recurrent_gradient(dg[:, :, :2 * H], y, h0, lens, reverse)
    if reset_after:  # W_hn multiplies h
        dw_hh[2 * H:] = blas_recurrent_gradient(dnh, y, h0, lens, reverse)
    else:            # W_hn multiplies r * h, which the forward kept in hn
        dw_hh[2 * H:] = mm(dnh.reshape(-1, H).T, hn.reshape(-1, H))
    db_hh = db_ih.copy()
    db_hh[2 * H:] = dnh.reshape(-1, H).sum(axis=0)
    return dx, dh, dict(w_ih=dw_ih, w_hh=dw_hh, b_ih=db_ih, b_hh=db_hh)


def forward_norm_wrap(x, packed, h0, lens, reverse, training, h_mask, zone_h):
    """gru_forward_cpu of the layer-normalised GRU (forward_norm)."""
    T, B, _ = x.shape
    H, G = packed.H, 3 * packed.H
    ln_ih, ln_hh = packed.ln
    x_hat, rstd_x = normalised_input(x, packed.w_ih)
    xw = x_hat * ln_ih + packed.b_ih
    h = h0.copy()
    y = np.empty((T, B, H), x.dtype)
    hn = np.empty((T, B, H) if training else (1, 1, 1), x.dtype)
    h_hat = np.empty((T, B, G) if training else (1, 1, 1), x.dtype)
    rstd_h = np.empty((T, B) if training else (1, 1), x.dtype)
    mask = np.zeros((0, 0), x.dtype) if h_mask is None else np.ascontiguousarray(h_mask)
    zh = zone_weights(zone_h, H, x.dtype)
    forward_norm(xw, packed.w_hh_t, packed.b_hh, ln_hh, mask, h, lens, reverse,
                  training, y, hn, h_hat, rstd_h, packed.acts,
                  step_tiles(packed, B, "w_hh", "w_hh"), zh)
    if not training:
        return y, h, None
    return y, h, dict(x=x, h0=h0, lengths=lens, reverse=reverse, gates=xw, hn=hn, y=y,
                      mask=mask, zh=zh, x_hat=x_hat, rstd_x=rstd_x, h_hat=h_hat,
                      rstd_h=rstd_h)


def backward_norm_wrap(dy, dh_n, cache, packed):
    """gru_backward_cpu of the layer-normalised GRU (backward_norm)."""
    x, y, h0, lens = cache["x"], cache["y"], cache["h0"], cache["lengths"]
    reverse = cache["reverse"]
    T, B, I = x.shape
    G = 3 * packed.H
    ln_ih, ln_hh = packed.ln
    dg, h_hat, mask = cache["gates"], cache["h_hat"], cache["mask"]
    dh = dh_n.copy()
    d_ln_hh, db_hh = np.zeros(G, x.dtype), np.zeros(G, x.dtype)
    backward_norm(dy, dg, cache["hn"], y, h0, packed.w_hh, ln_hh, h_hat, cache["rstd_h"],
                   d_ln_hh, db_hh, mask, lens, reverse, dh, packed.acts,
                   step_tiles(packed, B, "w_hh_bwd", "w_hh_bwd"), cache["zh"])
    if mask.size:  # W_hh read h times the recurrent dropout mask
        y, h0 = y * mask, h0 * mask
    dw_hh = blas_recurrent_gradient(h_hat, y, h0, lens, reverse)
    db_ih = dg.reshape(T * B, G).sum(axis=0)
    dv, d_ln_ih = normalised_input_gradient(dg, ln_ih, cache["x_hat"], cache["rstd_x"])
    mm = product_for(dg.dtype)
    dx = mm(dv, packed.w_ih).reshape(T, B, I)
    dw_ih = mm(dv.T, x.reshape(T * B, I))
    return dx, dh, dict(w_ih=dw_ih, w_hh=dw_hh, b_ih=db_ih, b_hh=db_hh, ln_ih=d_ln_ih,
                        ln_hh=d_ln_hh)
