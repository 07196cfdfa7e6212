"""The GRU's float32 time loops with reset_after (gru.py's "tiled" path), forward
and backward, and the streaming step: forward_tiled and backward_tiled share a
step's unit blocks among the threads, forward_rows and backward_rows the
batch. A block of U = CB hidden units owns three tile blocks, [r | z | n].
"""
import numpy as np
from numba import njit, prange

from ..gates import activate, dactivate
from .jit import BORROW, FAST
from .microkernel import CB
from .products import masked_product, matmul_rows, times_mask
from .sequence import copy_units, step_before
from .threads import claim, clock_ns, finished, parallel_ok, region_done, split_done

U = CB  # hidden units per block: each of its three gates fills one tile block


@njit(inline="always", cache=True)
def state_before(y, h0, lengths, reverse, t, b):
    """The state row b entered step t with: h0 at its first step, else y of the
    step before in the forward's order."""
    first = t == lengths[b] - 1 if reverse else t == 0
    return h0[b] if first else y[t + 1 if reverse else t - 1, b]


# -- forward, float32 tiled ------------------------------------------------------------
@njit(**BORROW)
def _fwd_pointwise(rec, xw_t, h_old, h_new, y_t, hn_t, lengths, t, training, k0, k1, acts):
    """Gate math of unit blocks [k0, k1) at step t. rec [B,Gp]: h @ W_hh^T + b_hh;
    xw_t [B,Gp]: x @ W_ih^T + b_ih, receives the activated gates when training;
    hn_t [B,Hp] receives W_hn h + b_hn when training; acts: gates.make_acts's tuple
    (r and z's activation, n's). Each row works on views of
    the thread's units, indexed from 0 (see lstm_tiled._fwd_pointwise: at B=32, H=128
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


@njit(**BORROW)
def _zoneout(h_new, h_old, y_t, zh_t, lengths, t, j0, j1):
    """Zoneout of units [j0, j1) of the rows valid at step t, after the gate math
    left h~ in h_new: h' = h~ + zh (h - h~), into h_new and y_t."""
    for r in range(h_new.shape[0]):
        if t < lengths[r]:
            for j in range(j0, j1):
                h = h_new[r, j] + zh_t[r, j] * (h_old[r, j] - h_new[r, j])
                h_new[r, j] = h
                y_t[r, j] = h


@njit(**BORROW)
def _fwd_step(xw_t, W, bias, h_in, h_old, h_new, y_t, hn_t, rec, lengths, training, t, k0, k1,
              hm_new, mask, acts, zh_t):
    """Step t for unit blocks [k0, k1): their slice of the recurrent product h_in @
    W_hh^T, then their gate math, then zoneout (zh_t [B,Hp]: its weights at step t;
    [*,0]: none) (and, with a recurrent dropout mask, hm_new = h' * mask for these
    units: the next step's h_in). (Taking the step's slices as arguments, rather
    than the whole buffers and s, measured 25% faster on one thread at B=32,
    H=128.)"""
    matmul_rows(h_in, W, rec, bias, False, 0, rec.shape[0], 3 * k0, 3 * k1)
    _fwd_pointwise(rec, xw_t, h_old, h_new, y_t, hn_t, lengths, t, training, k0, k1, acts)
    if zh_t.shape[1] > 0:
        _zoneout(h_new, h_old, y_t, zh_t, lengths, t, U * k0, U * k1)
    if mask.shape[0] > 0:
        times_mask(h_new, mask, hm_new, U * k0, U * k1)


@njit(parallel=True, **BORROW)
def forward_tiled(xw, W, bias, hbuf, hmbuf, mask, y, hn, rec, lengths, reverse, training, P,
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


@njit(parallel=True, **BORROW)
def forward_rows(xw, W, bias, hbuf, hmbuf, mask, y, hn, rec, lengths, reverse, training, P,
                  acts, zh, gate):
    """forward_tiled with the batch shared out instead of the units: thread p runs
    its rows through all T steps with all of W_hh, in one parallel region with no
    barrier between steps (lstm_tiled.forward_rows). Arguments as forward_tiled's."""
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


@njit(**FAST)
def steps_state(x, w_in, b_in, w_fwd, b_rec, h, y, h_out, Hp, chunk, no_mask, acts, no_zone):
    """The time loop on one thread, for a call from Python (a streamed step, or a
    small inference call): the steps of x [T,B,I] from the state h [B,H]; y
    [T,B,H] receives each step's h, h_out [B,H] the last. The input product runs
    `chunk` steps at a time, as the time loop's does, then each step's product and
    gate math: the sums of the time loop's, bit for bit. The padded buffers are
    made here, so the call is one compiled call (gru.gru_forward_into). no_mask,
    no_zone: an empty mask and zoneout's [1,0], made once by the caller; scratch
    is _fwd_step's y (as in lstm_tiled.steps_state)."""
    T, B, I = x.shape
    H, nblk = h.shape[1], w_fwd.shape[0]
    hp = np.zeros((2, B, Hp), np.float32)
    copy_units(h, hp[0], H)
    scratch, ones = np.empty((B, Hp), np.float32), np.ones(B, np.int64)
    rec = np.empty((B, 3 * Hp), np.float32)
    xw, rows = np.empty((chunk * B, 3 * Hp), np.float32), x.reshape(T * B, I)
    for t0 in range(0, T, chunk):
        t1 = min(t0 + chunk, T)
        matmul_rows(rows[t0 * B:t1 * B], w_in, xw, b_in, False, 0, (t1 - t0) * B, 0, nblk)
        for t in range(t0, t1):
            h_old, h_new = hp[t & 1], hp[1 - (t & 1)]
            _fwd_step(xw[(t - t0) * B:(t - t0 + 1) * B], w_fwd, b_rec, h_old, h_old, h_new,
                      scratch, scratch, rec, ones, False, 0, 0, nblk // 3, h_old, no_mask, acts,
                      no_zone)
            copy_units(h_new, y[t], H)
    copy_units(y[T - 1], h_out, H)


@njit(**BORROW)
def _step_blocks(x, w_in, b_in, w_fwd, b_rec, h_old, h_new, xw, rec, scratch, ones, k0, k1,
                 no_mask, acts, no_zone):
    """Unit blocks [k0, k1) of one step from x [B,I] and the padded state h_old [B,Hp]:
    xw = x @ W_ih^T + b_ih for their tile blocks, then _fwd_step (their share of h
    @ W_hh^T and their gate math) into h_new (step_split's task; steps_state's
    sums)."""
    matmul_rows(x, w_in, xw, b_in, False, 0, x.shape[0], 3 * k0, 3 * k1)
    _fwd_step(xw, w_fwd, b_rec, h_old, h_old, h_new, scratch, scratch, rec, ones, False, 0,
              k0, k1, h_old, no_mask, acts, no_zone)


@njit(parallel=True, **BORROW)
def _step_region(x, w_in, b_in, w_fwd, b_rec, h_old, h_new, xw, rec, scratch, ones, counter,
                 work, no_mask, acts, no_zone, gate):
    """step_split's parallel region, as lstm_tiled._step_region's: the threads take the
    unit blocks as they come (threads.claim) and note their share in work [P,2]
    for threads.split_done."""
    nk = w_fwd.shape[0] // 3
    start = clock_ns()
    for p in prange(work.shape[0]):
        began, done = clock_ns(), 0
        k = claim(counter)
        while k < nk:
            _step_blocks(x, w_in, b_in, w_fwd, b_rec, h_old, h_new, xw, rec, scratch, ones, k,
                         k + 1, no_mask, acts, no_zone)
            done += 1
            k = claim(counter)
        work[p, 0], work[p, 1] = done, clock_ns() - began
        finished(gate, p)
    split_done(gate, start, work)


@njit(**FAST)
def step_split(x, w_in, b_in, w_fwd, b_rec, h, h_out, Hp, P, no_mask, acts, no_zone, gate):
    """One streamed step, x [B,I] and the state h [B,H] -> h_out [B,H], with its unit
    blocks shared among P threads in one parallel region, as lstm_tiled.step_split
    shares the LSTM's: the sums of steps_state, bit for bit, whatever P; one thread
    on the gate's hold, and a step that a late thread made slower than one thread
    starts a hold (threads.split_done)."""
    B, H, nk = x.shape[0], h.shape[1], w_fwd.shape[0] // 3
    h_old, h_new = np.zeros((B, Hp), np.float32), np.empty((B, Hp), np.float32)
    copy_units(h, h_old, H)
    xw, rec = np.empty((B, 3 * Hp), np.float32), np.empty((B, 3 * Hp), np.float32)
    scratch, ones = np.empty((B, Hp), np.float32), np.ones(B, np.int64)
    if P == 1 or not parallel_ok(gate):
        _step_blocks(x, w_in, b_in, w_fwd, b_rec, h_old, h_new, xw, rec, scratch, ones, 0, nk,
                     no_mask, acts, no_zone)
    else:
        _step_region(x, w_in, b_in, w_fwd, b_rec, h_old, h_new, xw, rec, scratch, ones,
                     np.zeros(1, np.int64), np.zeros((P, 2), np.int64), no_mask, acts, no_zone,
                     gate)
    copy_units(h_new, h_out, H)


# -- backward, float32 tiled -----------------------------------------------------------
@njit(**BORROW)
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


@njit(**BORROW)
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


@njit(parallel=True, **FAST)
def backward_tiled(dg, hn, y, h0, dy, W, rec, carry, dh_n, lengths, reverse, P, mask, acts,
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


@njit(parallel=True, **FAST)
def backward_rows(dg, hn, y, h0, dy, W, rec, carry, dh_n, lengths, reverse, P, mask, acts,
                   zh, dhz, kept, zb, store, gate):
    """backward_tiled with the batch shared out instead of the units (see
    forward_rows). Arguments as backward_tiled's, and store [4, Hp/U, T*B, U],
    which receives the weight gradients' operands (gate_blocks's), each row
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


@njit(parallel=True, **BORROW)
def gate_blocks(dg, dn, out):
    """out [4, nk, M, U] = [dn*r | dr | dz | dn] in the products' blocked layout
    (products.copy_to_blocks's), from dg [M, 3*nk*U] ([dr dz dn*r] of each block of U
    units side by side, the tiled loops' columns) and dn [M, nk*U]: out[0, k]
    is dg's n block of unit block k, out[1, k] its r block, out[2, k] its z
    block, out[3, k] dn's block k. Chunks of 256 rows a task."""
    M = dg.shape[0]
    for chunk in prange((M + 255) // 256):
        for m in range(chunk * 256, min(chunk * 256 + 256, M)):
            _gate_row(dg[m], dn[m], out, m)


@njit(inline="always", **FAST)
def _gate_row(g, dn, out, m):
    """Row m of gate_blocks's out from one row of dg (g) and of dn."""
    for k in range(out.shape[1]):
        for slot in range(3):
            src, dst = g[(3 * k + (slot + 2) % 3) * U:], out[slot, k, m]
            for j in range(U):
                dst[j] = src[j]
        src, dst = dn[k * U:], out[3, k, m]
        for j in range(U):
            dst[j] = src[j]
