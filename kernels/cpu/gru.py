"""CPU kernels of one GRU layer in one direction, checked against reference.py.

Dimensions: T steps, B batch, I input features, H hidden units, G = 3H; Hp is H
padded to a multiple of U = 64 units, Gp = 3 Hp.

Two paths, chosen when the weights are packed (pack_gru_cpu):

  float32 with reset_after=True, "tiled": lstm.py's design (read its docstring)
      for three gates, with no BLAS. A block of U hidden units owns three
      consecutive tile blocks of CB = U columns, [r | z | n], so a thread's
      slice of the recurrent product h @ W_hh^T is the input of its own gate
      math; the step is one parallel region, each thread owning a range of
      unit blocks, when it is large enough (else one thread). r multiplies only
      the recurrent part of n, so the product starts from b_hh instead of the
      projected inputs (as the LSTM's does) and the gate pass adds those.
  float64, and reset_after=False in either dtype, "blas": per step two
      products and serial gate passes. reset_after=False needs r before W_hn
      (r * h) can start, a second barrier in every step both ways; it is
      Keras's older form, so it takes this simple path. In float64 every
      product is SciPy's BLAS (np.dot in the loop, lstm._dot around it); in
      float32 none is: the tiled products on Numba's threads
      (lstm._step_product, lstm._tiled_dot), as everywhere else in float32.
      Two thread pools in one call, or BLAS's beside the other layers'
      Numba threads, slowed each other: T=128, B=16, H=256 inference took
      48 ms alone and 124 ms alternating with a tiled GRU, which it slowed
      from 8.5 to 33 ms; now 18 ms either way.

Hidden units are padded with zero weights and zero state: with the default
activations a padded unit has r = z = 1/2 and n = 0, so its state stays exactly
zero; with others (n = activation(0) may not be 0) it can move, but W_hh's
padded columns are zero, so it feeds nothing, and it is cut from every output
and gradient.

The path of a call:
    forward:  xw = x @ W_ih^T + b_ih for all steps (one product), then the time
              loop in one compiled function. The training forward writes the
              activated gates r, z, n over xw and keeps the n gate's recurrent
              term hn = W_hn h + b_hn of every step (its product with r's
              derivative is dr); h of every step is y.
    backward: the time loop writes dG_hh = [dr dz dn*r], the gradients of the
              recurrent pre-activations, over the gates (one product dG_hh[t] @
              W_hh per step) and dn over hn, and (the batch split, as it goes)
              both in the weight gradients' blocked layout; after it, dW_hh
              comes from dG_hh and dx and dW_ih from dG_ih = [dr dz dn], each
              one product over all T*B rows (the weight gradients computed
              transposed, as the LSTM's are: _weight_gradients).
"""
import numpy as np
from numba import njit, prange

from ..gates import DEFAULT_ACTS, activate, dactivate, for_dtype
from .threads import (POLICY, SMALL_REGION, clock_ns, finished, parallel_ok, region_done,
                      serial_if)
from .threads import run as thread_policy
from .lstm import (_NO_ARRAY, _NO_MASK, _NO_ZONE, CB, _FAST, _blocks, _first_step_dh, _ones,
                   _first_steps, _input_gradient, _lengths_or_full, _matmul_rows, _norm_grad,
                   _normalise_row, _pad, _rows_plan, _step_product, _times_mask,
                   _weight_gradients as _lstm_weight_gradients, _zone_weights, mask_buffers,
                   masked_product, normalised_input, normalised_input_gradient, product_for,
                   step_before, step_tiles)
from .rnn import (_blas_recurrent_gradient, _empty, _project, _run_in_chunks, _state_buffers,
                  _threads, _tiled_bias, _tiled_weights, _unpadded)

U = CB  # hidden units per block: each of its three gates fills one tile block


@njit(inline="always", cache=True)
def _state_before(y, h0, lengths, reverse, t, b):
    """The state row b entered step t with: h0 at its first step, else y of the
    step before in the forward's order."""
    first = t == lengths[b] - 1 if reverse else t == 0
    return h0[b] if first else y[t + 1 if reverse else t - 1, b]


# -- forward, float32 tiled ------------------------------------------------------------
@njit(**_FAST)
def _fwd_pointwise(rec, xw_t, h_old, h_new, y_t, hn_t, lengths, t, training, k0, k1, acts):
    """Gate math of unit blocks [k0, k1) at step t. rec [B,Gp]: h @ W_hh^T + b_hh;
    xw_t [B,Gp]: x @ W_ih^T + b_ih, receives the activated gates when training;
    hn_t [B,Hp] receives W_hn h + b_hn when training; acts: gates.make_acts's tuple
    (r and z's activation, n's). Each row works on views of
    the thread's units, indexed from 0 (see lstm._fwd_pointwise: at B=32, H=128
    this was 20-30% faster than offsets from k0; at B=1, H=64 about 10% slower)."""
    j0, j1, n = U * k0, U * k1, k1 - k0
    for r in range(rec.shape[0]):
        ho, hnew, out = h_old[r, j0:j1], h_new[r, j0:j1], y_t[r, j0:j1]
        if t >= lengths[r]:  # past this sequence's length: hold the state, output zero
            for v in range(j1 - j0):
                hnew[v] = ho[v]
                out[v] = 0
            continue
        a, x3 = rec[r, 3 * j0:3 * j1], xw_t[r, 3 * j0:3 * j1]
        if training:
            hn_r = hn_t[r, j0:j1]
            for k in range(n):
                for u in range(U):
                    q, v = 3 * U * k + u, U * k + u
                    rg = activate(acts[0], x3[q] + a[q])
                    z = activate(acts[0], x3[q + U] + a[q + U])
                    hn = a[q + 2 * U]
                    nn = activate(acts[2], x3[q + 2 * U] + rg * hn)
                    h = nn + z * (ho[v] - nn)  # (1 - z) n + z h
                    hnew[v], out[v] = h, h
                    x3[q], x3[q + U], x3[q + 2 * U], hn_r[v] = rg, z, nn, hn
        else:
            for k in range(n):
                for u in range(U):
                    q, v = 3 * U * k + u, U * k + u
                    rg = activate(acts[0], x3[q] + a[q])
                    z = activate(acts[0], x3[q + U] + a[q + U])
                    nn = activate(acts[2], x3[q + 2 * U] + rg * a[q + 2 * U])
                    h = nn + z * (ho[v] - nn)
                    hnew[v], out[v] = h, h


@njit(**_FAST)
def _zoneout(h_new, h_old, y_t, zh_t, lengths, t, j0, j1):
    """Zoneout of units [j0, j1) of the rows valid at step t, after the gate math
    left h~ in h_new: h' = h~ + zh (h - h~), into h_new and y_t."""
    for r in range(h_new.shape[0]):
        if t < lengths[r]:
            for j in range(j0, j1):
                h = h_new[r, j] + zh_t[r, j] * (h_old[r, j] - h_new[r, j])
                h_new[r, j] = h
                y_t[r, j] = h


@njit(**_FAST)
def _fwd_step(xw_t, W, bias, h_in, h_old, h_new, y_t, hn_t, rec, lengths, training, t, k0, k1,
              hm_new, mask, acts, zh_t):
    """Step t for unit blocks [k0, k1): their slice of the recurrent product h_in @
    W_hh^T, then their gate math, then zoneout (zh_t [B,Hp]: its weights at step t;
    [*,0]: none) (and, with a recurrent dropout mask, hm_new = h' * mask for these
    units: the next step's h_in). (Taking the step's slices as arguments, rather
    than the whole buffers and s, measured 25% faster on one thread at B=32,
    H=128.)"""
    _matmul_rows(h_in, W, rec, bias, False, 0, rec.shape[0], 3 * k0, 3 * k1)
    _fwd_pointwise(rec, xw_t, h_old, h_new, y_t, hn_t, lengths, t, training, k0, k1, acts)
    if zh_t.shape[1] > 0:
        _zoneout(h_new, h_old, y_t, zh_t, lengths, t, U * k0, U * k1)
    if mask.shape[0] > 0:
        _times_mask(h_new, mask, hm_new, U * k0, U * k1)


@njit(parallel=True, **_FAST)
def _forward_tiled(xw, W, bias, hbuf, hmbuf, mask, y, hn, rec, lengths, reverse, training, P,
                   acts, zh, gate):
    """xw [T,B,Gp]: x @ W_ih^T + b_ih, receives the activated gates when training;
    W [Gp/CB, Hp, CB]: W_hh^T in blocks; bias [1,Gp]: b_hh; hbuf [2,B,Hp]: h0 in
    hbuf[0], then alternating (threads read all of h_old while writing their part
    of h_new), final h in hbuf[T % 2]; y [T,B,Hp] out; hn [T,B,Hp] out when
    training; rec [B,Gp] scratch; P threads per step. mask [B,Hp]: the recurrent
    dropout mask, or [0,0] for none; with one, the product reads hmbuf, h * mask,
    alternating as hbuf does. acts: gates.make_acts's tuple. zh [T or 1,B,Hp]:
    zoneout's weights (of every step, or one for all), [1,1,0] for none. gate: the
    thread policy's (threads.py), checked every step."""
    T = xw.shape[0]
    nk = W.shape[0] // 3
    masked = mask.shape[0] > 0
    for s in range(T):
        t = T - 1 - s if reverse else s
        h_old, h_new, hn_t = hbuf[s & 1], hbuf[(s + 1) & 1], hn[t if training else 0]
        h_in, hm_new = (hmbuf[s & 1], hmbuf[(s + 1) & 1]) if masked else (h_old, h_old)
        zh_t = zh[t if zh.shape[0] > 1 else 0]
        if P == 1 or not parallel_ok(gate):  # (even prange(1) pays a fork and join)
            _fwd_step(xw[t], W, bias, h_in, h_old, h_new, y[t], hn_t, rec, lengths, training, t,
                      0, nk, hm_new, mask, acts, zh_t)
        else:
            start = clock_ns()
            for p in prange(P):
                _fwd_step(xw[t], W, bias, h_in, h_old, h_new, y[t], hn_t, rec, lengths,
                          training, t, p * nk // P, (p + 1) * nk // P, hm_new, mask, acts, zh_t)
                finished(gate, p)
            region_done(gate, start)


@njit(parallel=True, **_FAST)
def _forward_rows(xw, W, bias, hbuf, hmbuf, mask, y, hn, rec, lengths, reverse, training, P,
                  acts, zh, gate):
    """_forward_tiled with the batch shared out instead of the units: thread p runs
    its rows through all T steps with all of W_hh, in one parallel region with no
    barrier between steps (lstm._forward_rows). Arguments as _forward_tiled's."""
    T, B = xw.shape[0], rec.shape[0]
    nk = W.shape[0] // 3
    masked = mask.shape[0] > 0
    start = clock_ns()
    for p in prange(P):
        r0, r1 = p * B // P, (p + 1) * B // P
        for s in range(T):
            t = T - 1 - s if reverse else s
            h_old, h_new, hn_t = hbuf[s & 1], hbuf[(s + 1) & 1], hn[t if training else 0]
            h_in, hm_new = (hmbuf[s & 1], hmbuf[(s + 1) & 1]) if masked else (h_old, h_old)
            _fwd_step(xw[t][r0:r1], W, bias, h_in[r0:r1], h_old[r0:r1], h_new[r0:r1],
                      y[t][r0:r1], hn_t[r0:r1], rec[r0:r1], lengths[r0:r1], training, t, 0, nk,
                      hm_new[r0:r1], mask[r0:r1], acts, zh[t if zh.shape[0] > 1 else 0][r0:r1])
        finished(gate, p)
    region_done(gate, start)


@njit(**_FAST)
def _step_tiled(x, w_in, b_in, w_fwd, b_rec, h, h_new, y, xw, rec, lengths, no_mask, acts,
                no_zone):
    """One inference step on one thread, for streaming: xw = x @ W_ih^T + b_ih,
    then the step's product and gate math; h' goes to h_new and y (a scratch, as
    in lstm._step_tiled). no_mask, no_zone: an empty mask and zoneout's [1,0], made
    once by the caller (this runs once a streamed step)."""
    B, nblk = x.shape[0], w_fwd.shape[0]
    _matmul_rows(x, w_in, xw, b_in, False, 0, B, 0, nblk)
    _fwd_step(xw, w_fwd, b_rec, h, h, h_new, y, y, rec, lengths, False, 0, 0, nblk // 3, h,
              no_mask, acts, no_zone)


# -- backward, float32 tiled -----------------------------------------------------------
@njit(**_FAST)
def _bwd_pointwise(dg_t, hn_t, y_prev, h0, dy_t, rec, carry, dh_n, lengths, reverse, t, k0, k1,
                   acts):
    """Gate gradients of unit blocks [k0, k1) at step t. dg_t [B,Gp]: activated
    gates in, dG_hh = [dr dz dn*r] out; hn_t [B,Hp]: W_hn h + b_hn in, dn out;
    rec [B,Hp]: dG_hh of the step after @ W_hh; carry [B,Hp]: dh * z of the step
    after (h' = ... + z h), replaced by this step's. y_prev [B,Hp]: the outputs of
    the step before in the forward's order (h0 where there is none; each row's
    first step reads h0 in any case)."""
    for r in range(dg_t.shape[0]):
        if t >= lengths[r]:  # padding: no gradient flows, the carried dh stays
            for j in range(3 * U * k0, 3 * U * k1):
                dg_t[r, j] = 0
            for j in range(U * k0, U * k1):
                hn_t[r, j] = 0
            continue
        # The forward's last step of this row starts the backward from dh_n (its
        # carry is still zero there).
        last = t == 0 if reverse else t == lengths[r] - 1
        dh_in = dh_n[r] if last else rec[r]
        h_prev = h0[r] if (t == lengths[r] - 1 if reverse else t == 0) else y_prev[r]
        j0, j1 = U * k0, U * k1  # views of the row's units, as in _fwd_pointwise
        g3, hn_r, carry_r = dg_t[r, 3 * j0:3 * j1], hn_t[r, j0:j1], carry[r, j0:j1]
        dy_r, dh_r, hp = dy_t[r, j0:j1], dh_in[j0:j1], h_prev[j0:j1]
        for k in range(k1 - k0):
            for u in range(U):
                q, v = 3 * U * k + u, U * k + u
                rg, z, n = g3[q], g3[q + U], g3[q + 2 * U]
                d = dy_r[v] + dh_r[v] + carry_r[v]
                dn = (d - d * z) * dactivate(acts[3], n)
                g3[q] = dn * hn_r[v] * dactivate(acts[1], rg)
                g3[q + U] = d * (hp[v] - n) * dactivate(acts[1], z)
                g3[q + 2 * U] = dn * rg
                hn_r[v] = dn
                carry_r[v] = d * z


@njit(**_FAST)
def _bwd_step(dg_next, dg_t, hn_t, y_prev, h0, dy_t, W, rec, zero, carry, dh_n, lengths, reverse,
              s, t, k0, k1, mask, acts, zh_t, dhz, kept, zb):
    """Step t for unit blocks [k0, k1): dh from the step after (dg_next, the
    forward's next step; times the recurrent dropout mask, if any), then the gate
    gradients. Zoneout (zh_t [B,Hp], its weights at step t; [*,0]: none): h' = h~ +
    zh (h - h~), so the part zh of dh' passes straight to the step before (kept),
    the rest (dhz) enters the gate gradients; zb [B,Hp]: zeros, for the dh those
    then read besides dhz."""
    if s > 0:
        masked_product(dg_next, W, rec, zero, mask, k0, k1)  # (U = CB: blocks are units)
    if zh_t.shape[1] == 0:
        _bwd_pointwise(dg_t, hn_t, y_prev, h0, dy_t, rec, carry, dh_n, lengths, reverse, t, k0,
                       k1, acts)
        return
    j0, j1 = U * k0, U * k1
    for r in range(dg_t.shape[0]):
        n = lengths[r]
        if t < n:
            dh_in = dh_n[r] if (t == 0 if reverse else t == n - 1) else rec[r]
            for j in range(j0, j1):
                d = dy_t[r, j] + dh_in[j] + carry[r, j]
                kept[r, j] = zh_t[r, j] * d
                dhz[r, j] = d - kept[r, j]
                carry[r, j] = 0
    _bwd_pointwise(dg_t, hn_t, y_prev, h0, dhz, zb, carry, zb, lengths, reverse, t, k0, k1, acts)
    for r in range(dg_t.shape[0]):
        if t < lengths[r]:
            for j in range(j0, j1):
                carry[r, j] += kept[r, j]


@njit(parallel=True, **_FAST)
def _backward_tiled(dg, hn, y, h0, dy, W, rec, carry, dh_n, lengths, reverse, P, mask, acts,
                    zh, dhz, kept, zb, gate):
    """dg [T,B,Gp]: activated gates in, dG_hh out; hn [T,B,Hp]: W_hn h + b_hn in,
    dn out; y, dy [T,B,Hp]; h0, dh_n [B,Hp]; W [Hp/CB, Gp, CB]: W_hh in blocks of
    output units; rec [B,Hp] scratch; carry [B,Hp]: zero in, dh0's direct part
    (dh * z of each row's first step, and zoneout's kept part) out; mask: the
    forward's [B,Hp], or [0,0]; zh: the forward's zoneout weights ([1,1,0]: none),
    dhz, kept, zb [B,Hp]: _bwd_step's scratch (unread without zoneout); gate: the
    thread policy's (threads.py), checked every step."""
    T, nk = dg.shape[0], W.shape[0]
    zero = np.zeros((1, rec.shape[1]), rec.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        t_next = max(0, min(T - 1, t - 1 if reverse else t + 1))  # unread at s = 0
        y_prev = step_before(y, h0, reverse, t)
        zh_t = zh[t if zh.shape[0] > 1 else 0]
        if P == 1 or not parallel_ok(gate):
            _bwd_step(dg[t_next], dg[t], hn[t], y_prev, h0, dy[t], W, rec, zero, carry, dh_n,
                      lengths, reverse, s, t, 0, nk, mask, acts, zh_t, dhz, kept, zb)
        else:
            start = clock_ns()
            for p in prange(P):
                _bwd_step(dg[t_next], dg[t], hn[t], y_prev, h0, dy[t], W, rec, zero, carry, dh_n,
                          lengths, reverse, s, t, p * nk // P, (p + 1) * nk // P, mask, acts,
                          zh_t, dhz, kept, zb)
                finished(gate, p)
            region_done(gate, start)


@njit(parallel=True, **_FAST)
def _backward_rows(dg, hn, y, h0, dy, W, rec, carry, dh_n, lengths, reverse, P, mask, acts,
                   zh, dhz, kept, zb, store, gate):
    """_backward_tiled with the batch shared out instead of the units (see
    _forward_rows). Arguments as _backward_tiled's, and store [4, Hp/U, T*B, U],
    which receives the weight gradients' operands (_gate_blocks's), each row
    copied while it is in cache (a pass of its own after the loop took 6 ms at
    T=128, B=128, H=256, of a 217 ms training step)."""
    T, B, nk = dg.shape[0], rec.shape[0], W.shape[0]
    zero = np.zeros((1, rec.shape[1]), rec.dtype)
    start = clock_ns()
    for p in prange(P):
        r0, r1 = p * B // P, (p + 1) * B // P
        for s in range(T):
            t = s if reverse else T - 1 - s
            t_next = max(0, min(T - 1, t - 1 if reverse else t + 1))  # unread at s = 0
            _bwd_step(dg[t_next][r0:r1], dg[t][r0:r1], hn[t][r0:r1],
                      step_before(y, h0, reverse, t)[r0:r1], h0[r0:r1], dy[t][r0:r1], W,
                      rec[r0:r1], zero, carry[r0:r1], dh_n[r0:r1], lengths[r0:r1], reverse, s,
                      t, 0, nk, mask[r0:r1], acts, zh[t if zh.shape[0] > 1 else 0][r0:r1],
                      dhz[r0:r1], kept[r0:r1], zb[r0:r1])
            for r in range(r0, r1):
                _gate_row(dg[t, r], hn[t, r], store, t * B + r)
        finished(gate, p)
    region_done(gate, start)


# -- float64 and reset_after=False: BLAS per step ----------------------------------------
@njit(cache=True, error_model="numpy")
def _forward_blas(xw, w_rz_t, w_n_t, b_hh, mask, h, lengths, reverse, training, reset_after,
                  y, hn, acts, tiles, zh):
    """xw [T,B,3H]: x @ W_ih^T + b_ih, receives the activated gates when training;
    w_rz_t [H,2H], w_n_t [H,H]: W_hh^T split at the n gate; b_hh [3H]; mask [B,H]:
    the recurrent dropout mask on h where W_hh reads it (none when its size is 0);
    h [B,H] in/out; y [T,B,H] out; hn [T,B,H] out when training: W_hn h + b_hn
    (reset_after), else r * h (h times the mask, if any); acts: gates.make_acts's
    tuple; tiles: None (np.dot's products), or float32's on Numba's threads: (W_hh^T's
    r-z and n parts in lstm._blocks's layout, a zero row as wide as their outputs,
    and each product's lstm._step_product plan); zh [T or 1,B,H]: zoneout's
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
            _step_product(h_in, tiles[0], rz, tiles[2], tiles[3])
        for b in range(B):
            for j in range(H):
                r = activate(acts[0], xw[t, b, j] + rz[b, j] + b_hh[j])
                rz[b, j] = r
                rz[b, H + j] = activate(acts[0], xw[t, b, H + j] + rz[b, H + j] + b_hh[H + j])
                rh[b, j] = r * h_in[b, j]
        if tiles is None:
            np.dot(h_in if reset_after else rh, w_n_t, a_n)
        else:
            _step_product(h_in if reset_after else rh, tiles[1], a_n, tiles[2], tiles[4])
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
def _backward_blas(dy, dg, hn, y, h0, w_rz, w_n, mask, lengths, reverse, reset_after, dh,
                   dnh, acts, tiles, zh):
    """dg [T,B,3H]: activated gates in, dG_ih = [dr dz dn] out; hn [T,B,H]: as the
    forward left it; w_rz [2H,H], w_n [H,H]: W_hh's rows split at the n gate;
    mask [B,H]: the forward's recurrent dropout mask (none when its size is 0);
    dh [B,H]: dh_n in, dh0 out; dnh [T,B,H] out: the gradient of the n gate's
    recurrent pre-activation (dn * r when reset_after, else dn); tiles: None, or as
    _forward_blas's, for W_hh's r-z and n rows (dG_rz @ W_rz, dnh @ W_n); zh: the
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
            h_prev = _state_before(y, h0, lengths, reverse, t, b)
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
                _step_product(dnh[t], tiles[1], d_rh, tiles[2], tiles[4])
            for b in range(B):
                if t >= lengths[b]:
                    continue
                h_prev = _state_before(y, h0, lengths, reverse, t, b)
                for j in range(H):
                    r = dg[t, b, j]
                    m = mask[b, j] if masked else 1.0
                    dg[t, b, j] = d_rh[b, j] * h_prev[j] * m * dactivate(acts[1], r)
                    carry[b, j] += d_rh[b, j] * r * m
        g_rz[:] = dg[t, :, :2 * H]
        if tiles is None:
            np.dot(g_rz, w_rz, rec)
        else:
            _step_product(g_rz, tiles[0], rec, tiles[2], tiles[3])
        if reset_after:
            if tiles is None:
                np.dot(dnh[t], w_n, d_rh)
            else:
                _step_product(dnh[t], tiles[1], d_rh, tiles[2], tiles[4])
            rec += d_rh
        for b in range(B):
            if t < lengths[b]:
                for j in range(H):
                    dh[b, j] = (rec[b, j] * mask[b, j] if masked else rec[b, j]) + carry[b, j]


# -- layer_norm: BLAS per step, each row normalised ---------------------------------------
@njit(**_FAST)
def _norm_gates_row(x3, a, gain, b_hh, h_old, h_new, hn, keep, acts):
    """One row's gate math of the layer-normalised GRU: x3 [3H] the input part
    (LN(W_ih x) * gain + b_ih), a [3H] the normalised recurrent product; h' into
    h_new [H]; with keep, the activated gates over x3 and the n gate's recurrent
    term into hn [H]. A function of its own, on its rows alone, so that LLVM
    vectorises it (as lstm._gates_row; written inline in the time loop, the
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


@njit(**_FAST)
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
def _forward_norm(xw, w_hh_t, b_hh, gain, mask, h, lengths, reverse, training, y, hn, h_hat,
                  rstd_h, acts, tiles, zh):
    """The layer-normalised GRU (reset_after): per step the whole recurrent product
    h_in @ W_hh^T [B,3H], each valid row normalised over its 3H entries (kept in
    h_hat [T,B,3H] and rstd_h [T,B] when training), times gain [3H], plus b_hh;
    then _forward_blas's gate math. xw [T,B,3H]: LN(x @ W_ih^T) * gain + b_ih,
    receives the activated gates when training; hn [T,B,H]: the n gate's
    recurrent term when training; tiles: None (np.dot), or (W_hh^T in blocks,
    unused, a zero row, the product's plan) for float32; other arguments as
    _forward_blas's."""
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
            _step_product(h_in, tiles[0], rec, tiles[2], tiles[3])
        for b in range(B):
            if t >= lengths[b]:
                y[t, b] = 0
                if training:
                    hn[t, b] = 0
                    h_hat[t, b] = 0
                    rstd_h[t, b] = 0
                continue
            a = rec[b, :G]
            rstd = _normalise_row(a)
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
def _backward_norm(dy, dg, hn, y, h0, w_hh, gain, h_hat, rstd_h, dgain, dbias, mask, lengths,
                   reverse, dh, acts, tiles, zh):
    """Backward of _forward_norm. dg [T,B,3H]: activated gates in, dG_ih = [dr dz dn]
    out (the gradient of the input product's LN output); h_hat [T,B,3H]: the
    normalised recurrent products in, their raw products' gradients out (dW_hh's
    operand); dgain, dbias [3H]: ln_hh's and b_hh's gradients out (zero in); dh
    [B,H]: dh_n in, dh0 out; tiles: None, or as _forward_norm's for W_hh [3H,H]."""
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
            _norm_grads_row(dg[t, b], hn[t, b], _state_before(y, h0, lengths, reverse, t, b), d,
                            dv, carry[b], acts)
            v_hat = h_hat[t, b]
            for k in range(G):
                dgain[k] += dv[k] * v_hat[k]
                dbias[k] += dv[k]
                dv[k] *= gain[k]
            _norm_grad(dv, v_hat, rstd_h[t, b])
            v_hat[:] = dv
        if tiles is None:
            np.dot(h_hat[t], w_hh, rec)
        else:
            _step_product(h_hat[t], tiles[0], rec, tiles[2], tiles[3])
        for b in range(B):
            if t < lengths[b]:
                for j in range(H):
                    dh[b, j] = (rec[b, j] * mask[b, j] if masked else rec[b, j]) + carry[b, j]


# -- packing and the Python-level wrappers ---------------------------------------------
def _gate_columns(H):
    """cols[j]: the tiled column of torch's gate column j (gate k = j // H, unit j % H)."""
    k, u = np.divmod(np.arange(3 * H), H)
    return (u // U) * 3 * U + k * U + u % U


def pack_gru_cpu(w_ih, w_hh, b_ih, b_hh, reset_after=True, acts=DEFAULT_ACTS, ln_ih=None,
                 ln_hh=None):
    """One cell's torch-layout weights (w_ih [3H,I], w_hh [3H,H], b_ih, b_hh [3H],
    gates r, z, n) and options (acts: gates.make_acts's tuple; ln_ih, ln_hh [3H]:
    layer_norm's gains, reset_after only) -> the layout these kernels read: a dict,
    "norm" with layer_norm, "tiled" for float32 with reset_after, "blas" else."""
    H = w_ih.shape[0] // 3
    acts = for_dtype(acts, w_ih.dtype)
    if ln_ih is not None:  # a row's statistics span all 3H columns: one product a step
        if not reset_after:
            raise ValueError("layer_norm: the GRU with reset_after=True only")
        tiles = None if w_ih.dtype != np.float32 else dict(w_hh=_blocks(w_hh.T),
                                                           w_hh_bwd=_blocks(w_hh))
        return dict(kind="norm", H=H, reset_after=True, acts=acts, w_ih=w_ih, b_ih=b_ih,
                    b_hh=b_hh, w_hh=np.ascontiguousarray(w_hh),
                    w_hh_t=np.ascontiguousarray(w_hh.T), ln=(ln_ih, ln_hh), tiles=tiles)
    if w_ih.dtype != np.float32 or not reset_after:
        # float32 keeps off BLAS, as the tiled loops do: its products run on Numba's
        # threads (lstm.product_for's reasons)
        w_rz, w_n = w_hh[:2 * H], w_hh[2 * H:]
        tiles = None if w_ih.dtype != np.float32 else dict(
            w_rz=_blocks(w_rz.T), w_n=_blocks(w_n.T), w_rz_bwd=_blocks(w_rz),
            w_n_bwd=_blocks(w_n))
        return dict(kind="blas", H=H, reset_after=bool(reset_after), acts=acts, w_ih=w_ih,
                    tiles=tiles, b_ih=b_ih,
                    b_hh=b_hh, w_rz=np.ascontiguousarray(w_hh[:2 * H]),
                    w_n=np.ascontiguousarray(w_hh[2 * H:]),
                    w_rz_t=np.ascontiguousarray(w_hh[:2 * H].T),
                    w_n_t=np.ascontiguousarray(w_hh[2 * H:].T))
    Hp = -(-H // U) * U
    cols = _gate_columns(H)
    return dict(kind="tiled", H=H, Hp=Hp, reset_after=True, cols=cols, acts=acts,
                b_in=_tiled_bias(b_ih, cols, 3 * Hp), b_rec=_tiled_bias(b_hh, cols, 3 * Hp),
                **_tiled_weights(w_ih, w_hh, cols, 3 * Hp, Hp))


def gru_forward_cpu(x, packed, h0, lengths=None, reverse=False, training=False, h_mask=None,
                    zone_h=None):
    """One GRU layer and direction on the CPU.

    x: [T,B,I] C-contiguous; packed: pack_gru_cpu(...) of the same dtype;
    h0: [B,H]; lengths: [B] ints in [0, T], or None for all T; h_mask: None, or
    [B,H] multiplying h wherever W_hh reads it (recurrent dropout,
    reference.gru_forward_ref); zone_h: None, or zoneout's weights [T,B,H] (or
    [1,B,H], the same at every step; reference.gru_forward_ref).
    Returns y [T,B,H], h_n [B,H] and, when training, the cache that
    gru_backward_cpu consumes (else None).
    """
    T, B, _ = x.shape
    H = packed["H"]
    lens = _lengths_or_full(lengths, T, B)
    if packed["kind"] == "norm":
        return _forward_norm_wrap(x, packed, h0, lens, reverse, training, h_mask, zone_h)
    if packed["kind"] == "blas":
        xw = _project(x, packed["w_ih"], packed["b_ih"])
        h = h0.copy()
        y = np.empty((T, B, H), x.dtype)
        hn = np.empty((T, B, H) if training else (1, 1, 1), x.dtype)
        mask = np.zeros((0, 0), x.dtype) if h_mask is None else np.ascontiguousarray(h_mask)
        zh = _zone_weights(zone_h, H, x.dtype)
        _forward_blas(xw, packed["w_rz_t"], packed["w_n_t"], packed["b_hh"], mask, h, lens,
                      reverse, training, packed["reset_after"], y, hn, packed["acts"],
                      step_tiles(packed, B, "w_rz", "w_n"), zh)
        y_out, h0_kept = y, h0
    else:
        Hp = packed["Hp"]
        hbuf, y = _state_buffers(h0, T, Hp)
        hn = _empty((T, B, Hp) if training else (1, 1, 1))
        rec = _empty((B, 3 * Hp))
        P, rows = _rows_plan(T, B, Hp, _threads(B, Hp, 3 * Hp, Hp // U), 3)
        mask, hmbuf = mask_buffers(h_mask, hbuf)
        zh = _zone_weights(zone_h, Hp, np.float32)

        def run(xw, t0, t1):  # training runs all steps in one chunk, so hn needs no slice
            loop = _forward_rows if rows else _forward_tiled
            loop(xw, packed["w_fwd"], packed["b_rec"], hbuf, hmbuf, mask, y[t0:t1], hn, rec,
                 lens - t0, reverse, training, P, packed["acts"],
                 zh if zh.shape[0] == 1 else zh[t0:t1], POLICY.gate())
            if (t1 - t0) & 1 and h_mask is not None:  # as _run_in_chunks moves hbuf
                hmbuf[0] = hmbuf[1]

        xw = _run_in_chunks(x, packed["w_in"], packed["b_in"], 3 * Hp, hbuf, reverse,
                            training, run)
        y_out, h = _unpadded(y, hbuf, H)
        h0_kept = _pad(h0, Hp) if training else None
    if not training:
        return y_out, h, None
    cache = dict(x=x, h0=h0_kept, lengths=lens, reverse=reverse, gates=xw, hn=hn, y=y,
                 mask=mask, zh=zh)
    return y_out, h, cache


def gru_step_cpu(x, packed, h):
    """One inference step, for streaming: x [B,I], h [B,H] -> h' [B,H] (a new
    array). Equal to gru_forward_cpu on one step, without its parallel regions."""
    if packed["kind"] != "tiled":  # (a one-step forward: the thread policy's)
        return thread_policy(gru_forward_cpu, x[None], packed, h)[1]
    H, Hp = packed["H"], packed["Hp"]
    B = x.shape[0]
    h_new = np.empty((B, Hp), np.float32)
    y = np.empty((B, Hp), np.float32)
    xw = np.empty((B, 3 * Hp), np.float32)
    rec = np.empty((B, 3 * Hp), np.float32)
    _step_tiled(x, packed["w_in"], packed["b_in"], packed["w_fwd"], packed["b_rec"],
                _pad(h, Hp), h_new, y, xw, rec, _ones(B), _NO_MASK, packed["acts"],
                _NO_ZONE[np.dtype(np.float32)][0])
    return h_new[:, :H]


def gru_backward_cpu(dy, dh_n, cache, packed):
    """Backward of gru_forward_cpu; consumes (overwrites) the cache's gates and hn.

    dy: [T,B,H]; dh_n: [B,H]; packed: the weights the forward used.
    Returns dx [T,B,I], dh0 [B,H] and {"w_ih", "w_hh", "b_ih", "b_hh"} in
    torch's layout.
    """
    if packed["kind"] == "norm":
        return _backward_norm_wrap(dy, dh_n, cache, packed)
    if packed["kind"] == "blas":
        return _backward_blas_wrap(dy, dh_n, cache, packed)
    x, y, h0, lens = cache["x"], cache["y"], cache["h0"], cache["lengths"]
    dg, hn, reverse = cache["gates"], cache["hn"], cache["reverse"]
    T, B, _ = x.shape
    Gp, Hp = dg.shape[2], y.shape[2]
    dh_np = _pad(dh_n, Hp)
    carry = _empty((B, Hp))
    carry[:] = 0
    rec = _empty((B, Hp))
    P, rows = _rows_plan(T, B, Hp, _threads(B, Hp, Gp, Hp // U), 3)
    mask, zh = cache["mask"], cache["zh"]
    # zoneout's scratch: the parts of dh kept and passed to the gates, and zeros
    dhz, kept, zb = ((np.zeros((B, Hp), np.float32) for _ in range(3)) if zh.shape[2] else
                     (_NO_ARRAY,) * 3)
    # dG's and dn's rows in the weight gradients' layout (_gate_blocks), which the
    # rows split writes as it goes
    store = np.empty((4, Hp // U, T * B, U), np.float32)
    if rows:
        _backward_rows(dg, hn, y, h0, _pad(dy, Hp), packed["w_bwd"], rec, carry, dh_np, lens,
                       reverse, P, mask, packed["acts"], zh, dhz, kept, zb, store,
                       POLICY.gate())
    else:
        _backward_tiled(dg, hn, y, h0, _pad(dy, Hp), packed["w_bwd"], rec, carry, dh_np, lens,
                        reverse, P, mask, packed["acts"], zh, dhz, kept, zb, POLICY.gate())
        serial_if(dg.size <= SMALL_REGION, _gate_blocks, dg.reshape(T * B, Gp),
                  hn.reshape(T * B, Hp), store)
    dh0 = _first_step_dh(dg, lens, reverse, packed["w_bwd"])
    if mask.shape[0] > 0:  # W_hh read h times the recurrent dropout mask
        dh0 *= mask
    dh0 += carry
    empty = lens == 0
    dh0[empty] = dh_np[empty]
    dg2, dn = dg.reshape(T * B, Gp), hn.reshape(T * B, Hp)
    grads = _weight_gradients(store, x, y, h0, _first_steps(lens, reverse), mask, reverse,
                              packed["H"])
    # dx reads dG_ih, which differs from dG_hh in the n gate only: dn for dn * r.
    nk = Hp // U
    dg2.reshape(T * B, nk, 3, U)[:, :, 2] = dn.reshape(T * B, nk, U)
    dx = _input_gradient(dg2, packed["w_dx"]).reshape(T, B, -1)[:, :, :x.shape[2]]
    return np.ascontiguousarray(dx), np.ascontiguousarray(dh0[:, :packed["H"]]), grads


def _weight_gradients(store, x, y, h0, first_steps, mask, reverse, H):
    """{"w_ih", "w_hh", "b_ih", "b_hh"} in torch's layout from the gate gradients
    in _gate_blocks's layout (store [4, Hp/U, T*B, U]: [dn*r | dr | dz | dn]), the
    forward's x, y and h0 [B,Hp], each row's first step in the forward's order
    and the recurrent dropout mask ([B,Hp] or [0,0]).

    lstm._weight_gradients's products, dW^T = X^T @ dG, with the gate gradients
    re-laid in the products' blocked layout gate by gate, so that W_hh's product
    reads the store's first three gates (columns n, r, z) and W_ih's its last
    three (r, z, n), without a copy. Measured on 2 Zen 4 cores at T=128, B=128,
    I=H=256 against transposing dG and dn (both ways with lstm._transpose's
    256 x 8 tiles), median of 7: the training step 226 -> 212 ms (217 with
    _gate_blocks a pass of its own rather than in the loop)."""
    _, nk, M, _ = store.shape
    Hp = nk * U
    gate, unit = np.divmod(np.arange(3 * H), H)
    return _lstm_weight_gradients(
        store[1:].reshape(3 * nk, M, U), x, y, h0, first_steps, mask, reverse,
        gate * Hp + unit, H, hh=(store[:3].reshape(3 * nk, M, U), (gate + 1) % 3 * Hp + unit))


@njit(parallel=True, **_FAST)
def _gate_blocks(dg, dn, out):
    """out [4, nk, M, U] = [dn*r | dr | dz | dn] in the products' blocked layout
    (lstm._to_blocks's), from dg [M, 3*nk*U] ([dr dz dn*r] of each block of U
    units side by side, the tiled loops' columns) and dn [M, nk*U]: out[0, k]
    is dg's n block of unit block k, out[1, k] its r block, out[2, k] its z
    block, out[3, k] dn's block k. Chunks of 256 rows a task."""
    M = dg.shape[0]
    for chunk in prange((M + 255) // 256):
        for m in range(chunk * 256, min(chunk * 256 + 256, M)):
            _gate_row(dg[m], dn[m], out, m)


@njit(inline="always", **_FAST)
def _gate_row(g, dn, out, m):
    """Row m of _gate_blocks's out from one row of dg (g) and of dn."""
    for k in range(out.shape[1]):
        for slot in range(3):
            src, dst = g[(3 * k + (slot + 2) % 3) * U:], out[slot, k, m]
            for j in range(U):
                dst[j] = src[j]
        src, dst = dn[k * U:], out[3, k, m]
        for j in range(U):
            dst[j] = src[j]


def _backward_blas_wrap(dy, dh_n, cache, packed):
    x, y, h0, lens = cache["x"], cache["y"], cache["h0"], cache["lengths"]
    dg, hn, reverse = cache["gates"], cache["hn"], cache["reverse"]
    reset_after = packed["reset_after"]
    T, B, I = x.shape
    H = packed["H"]
    dh = dh_n.copy()
    dnh = np.empty((T, B, H), x.dtype)
    mask = cache["mask"]
    _backward_blas(dy, dg, hn, y, h0, packed["w_rz"], packed["w_n"], mask, lens, reverse,
                   reset_after, dh, dnh, packed["acts"],
                   step_tiles(packed, B, "w_rz_bwd", "w_n_bwd"), cache["zh"])
    if mask.size:  # W_hh read h times the recurrent dropout mask (hn holds r * that)
        y, h0 = y * mask, h0 * mask
    dg2 = dg.reshape(T * B, 3 * H)
    mm = product_for(dg.dtype)
    dx = mm(dg2, packed["w_ih"]).reshape(T, B, I)
    dw_ih = mm(dg2.T, x.reshape(T * B, I))
    db_ih = dg2.sum(axis=0)
    dw_hh = np.empty((3 * H, H), x.dtype)
    dw_hh[:2 * H] = _blas_recurrent_gradient(dg[:, :, :2 * H], y, h0, lens, reverse)
    if reset_after:  # W_hn multiplies h
        dw_hh[2 * H:] = _blas_recurrent_gradient(dnh, y, h0, lens, reverse)
    else:            # W_hn multiplies r * h, which the forward kept in hn
        dw_hh[2 * H:] = mm(dnh.reshape(-1, H).T, hn.reshape(-1, H))
    db_hh = db_ih.copy()
    db_hh[2 * H:] = dnh.reshape(-1, H).sum(axis=0)
    return dx, dh, dict(w_ih=dw_ih, w_hh=dw_hh, b_ih=db_ih, b_hh=db_hh)


def _forward_norm_wrap(x, packed, h0, lens, reverse, training, h_mask, zone_h):
    """gru_forward_cpu of the layer-normalised GRU (_forward_norm)."""
    T, B, _ = x.shape
    H, G = packed["H"], 3 * packed["H"]
    ln_ih, ln_hh = packed["ln"]
    x_hat, rstd_x = normalised_input(x, packed["w_ih"])
    xw = x_hat * ln_ih + packed["b_ih"]
    h = h0.copy()
    y = np.empty((T, B, H), x.dtype)
    hn = np.empty((T, B, H) if training else (1, 1, 1), x.dtype)
    h_hat = np.empty((T, B, G) if training else (1, 1, 1), x.dtype)
    rstd_h = np.empty((T, B) if training else (1, 1), x.dtype)
    mask = np.zeros((0, 0), x.dtype) if h_mask is None else np.ascontiguousarray(h_mask)
    zh = _zone_weights(zone_h, H, x.dtype)
    _forward_norm(xw, packed["w_hh_t"], packed["b_hh"], ln_hh, mask, h, lens, reverse,
                  training, y, hn, h_hat, rstd_h, packed["acts"],
                  step_tiles(packed, B, "w_hh", "w_hh"), zh)
    if not training:
        return y, h, None
    return y, h, dict(x=x, h0=h0, lengths=lens, reverse=reverse, gates=xw, hn=hn, y=y,
                      mask=mask, zh=zh, x_hat=x_hat, rstd_x=rstd_x, h_hat=h_hat,
                      rstd_h=rstd_h)


def _backward_norm_wrap(dy, dh_n, cache, packed):
    """gru_backward_cpu of the layer-normalised GRU (_backward_norm)."""
    x, y, h0, lens = cache["x"], cache["y"], cache["h0"], cache["lengths"]
    reverse = cache["reverse"]
    T, B, I = x.shape
    G = 3 * packed["H"]
    ln_ih, ln_hh = packed["ln"]
    dg, h_hat, mask = cache["gates"], cache["h_hat"], cache["mask"]
    dh = dh_n.copy()
    d_ln_hh, db_hh = np.zeros(G, x.dtype), np.zeros(G, x.dtype)
    _backward_norm(dy, dg, cache["hn"], y, h0, packed["w_hh"], ln_hh, h_hat, cache["rstd_h"],
                   d_ln_hh, db_hh, mask, lens, reverse, dh, packed["acts"],
                   step_tiles(packed, B, "w_hh_bwd", "w_hh_bwd"), cache["zh"])
    if mask.size:  # W_hh read h times the recurrent dropout mask
        y, h0 = y * mask, h0 * mask
    dw_hh = _blas_recurrent_gradient(h_hat, y, h0, lens, reverse)
    db_ih = dg.reshape(T * B, G).sum(axis=0)
    dv, d_ln_ih = normalised_input_gradient(dg, ln_ih, cache["x_hat"], cache["rstd_x"])
    mm = product_for(dg.dtype)
    dx = mm(dv, packed["w_ih"]).reshape(T, B, I)
    dw_ih = mm(dv.T, x.reshape(T * B, I))
    return dx, dh, dict(w_ih=dw_ih, w_hh=dw_hh, b_ih=db_ih, b_hh=db_hh, ln_ih=d_ln_ih,
                        ln_hh=d_ln_hh)
