"""The LSTM's float32 time loops, forward and backward (lstm.py's "tiled" path; its
docstring tells the design), and the streaming step.

Forward: forward_tiled (the units of each step shared among the threads, one
parallel region a step), forward_rows (the batch shared, one region for all
steps, the input projection fused where the plan says), forward_tiled_options
(the projection, recurrent dropout, zoneout and peepholes). Backward:
backward_tiled, backward_rows and backward_tiled_options, their mirrors.
A block of U hidden units owns CB = 4U columns, [i f g o]; H is padded to HB.
Every loop's argument shapes are in its docstring.
"""
import numpy as np
from numba import njit, prange

from ..gates import activate, clip_gate, gate_clip_bounds, lstm_cell, lstm_cell_grads, peephole_at
from .jit import BORROW, FAST
from .microkernel import CB, tile_block
from .products import masked_product, matmul_rows, times_mask
from .sequence import copy_units, step_before
from .threads import claim, clock_ns, finished, parallel_ok, region_done, split_done

U = CB // 4     # hidden units per gate block; CB = 4U columns per block: [i(U) f(U) g(U) o(U)]
HB = 64         # H is padded to a multiple of this (the backward's output block)
# The options' loops take the peepholes as an array whatever the options, with no rows
# for none (the plain loops take None): a loop compiles once for both, not twice (about
# 37 s of compiling for each pair of activations used both ways).
NO_PEEP = np.zeros((0, 0), np.float32)


@njit(inline="always", **FAST)
def _peepholes(peep):
    """Whether peep holds peepholes: False for None (known when compiling) or an
    array with no rows (NO_PEEP). Callers test `peep is not None and peeped`: the
    first test is what lets Numba drop the peephole code, which cannot be typed
    with None, from the plain loops' variant."""
    if peep is None:
        return False
    else:
        return peep.shape[0] > 0


# -- forward, float32 tiled ------------------------------------------------------------
@njit(**BORROW)
def fwd_pointwise(rec, xw_t, h_old, h_new, c, y_t, cs_t, lengths, t, training, b0, b1,
                   clip, coupled, gclip, acts, peep):
    """Gate math of blocks [b0, b1) for step t; rec holds the pre-activations.
    acts: gates.make_acts's tuple; peep: None, NO_PEEP, or the peephole weights [3,Hp]
    (i, f, o rows).
    Each row works on views of the thread's units (and their gate columns),
    indexed from 0: indexing the whole rows at offsets from b0 measured 20-30%
    slower at B=32, H=128 (and as fast as this when b0 was a compile-time 0).
    A view per row, not per block: at B=1, H=64 views per block made the time
    loop 10% slower."""
    j0, j1, n = b0 * U, b1 * U, b1 - b0
    peeped = _peepholes(peep)
    for r in range(rec.shape[0]):
        c_r, hn, out = c[r, j0:j1], h_new[r, j0:j1], y_t[r, j0:j1]
        if t >= lengths[r]:  # past this sequence's length: hold the state, output zero
            ho = h_old[r, j0:j1]
            for u in range(j1 - j0):
                hn[u] = ho[u]
                out[u] = 0
            if training:
                cs_r = cs_t[r, j0:j1]
                for u in range(j1 - j0):
                    cs_r[u] = c_r[u]
            continue
        a = rec[r, b0 * CB:b1 * CB]
        if peep is not None and peeped:  # ONNX's peepholes: i and f read the old state
            for k in range(n):
                for u in range(U):
                    q, v = k * CB + u, k * U + u
                    a[q] += peep[0, j0 + v] * c_r[v]
                    a[q + U] += peep[1, j0 + v] * c_r[v]
        # (the two branches repeat the gate math: one inline helper for both measured
        # 8-10% slower at B=1, H=64, and see gates.py on a shared one)
        if training:
            gates, cs_r = xw_t[r, b0 * CB:b1 * CB], cs_t[r, j0:j1]
            for k in range(n):
                for u in range(U):
                    q, v = k * CB + u, k * U + u
                    i = activate(acts[0], clip_gate(a[q], gclip))
                    g = activate(acts[2], clip_gate(a[q + 2 * U], gclip))
                    o = activate(acts[0], clip_gate(a[q + 3 * U], gclip))
                    f, cc = lstm_cell(i, activate(acts[0], clip_gate(a[q + U], gclip)), g,
                                      c_r[v], clip, coupled)
                    h = o * activate(acts[2], cc)
                    c_r[v], hn[v], out[v], cs_r[v] = cc, h, h, cc
                    gates[q], gates[q + U], gates[q + 2 * U], gates[q + 3 * U] = i, f, g, o
        else:
            for k in range(n):
                for u in range(U):
                    q, v = k * CB + u, k * U + u
                    i = activate(acts[0], clip_gate(a[q], gclip))
                    g = activate(acts[2], clip_gate(a[q + 2 * U], gclip))
                    o = activate(acts[0], clip_gate(a[q + 3 * U], gclip))
                    _, cc = lstm_cell(i, activate(acts[0], clip_gate(a[q + U], gclip)), g,
                                      c_r[v], clip, coupled)
                    h = o * activate(acts[2], cc)
                    c_r[v], hn[v], out[v] = cc, h, h
        if peep is not None and peeped:  # o reads the new state: o and h again, with it
            for k in range(n):
                for u in range(U):
                    q, v = k * CB + u, k * U + u
                    o = activate(acts[0], clip_gate(a[q + 3 * U] + peep[2, j0 + v] * c_r[v],
                                                    gclip))
                    hn[v] = out[v] = o * activate(acts[2], c_r[v])
                    if training:
                        xw_t[r, b0 * CB + q + 3 * U] = o


@njit(**BORROW)
def _fwd_step(xw, W, hbuf, c, y, cs, rec, lengths, training, s, t, p, P, clip, coupled,
              gclip, acts):
    """Thread p's blocks of step t of the plain layer (no projection, recurrent dropout
    or zoneout): the product, then the gate math. Kept apart from _fwd_step_in, which
    serves the options: at B=1, H=64 each array argument of a per-step call showed."""
    nblk = W.shape[0]
    b0, b1 = p * nblk // P, (p + 1) * nblk // P
    h_old, h_new = hbuf[s & 1], hbuf[(s + 1) & 1]
    matmul_rows(h_old, W, rec, xw[t], True, 0, rec.shape[0], b0, b1)
    fwd_pointwise(rec, xw[t], h_old, h_new, c, y[t], cs[t if training else 0], lengths, t,
                  training, b0, b1, clip, coupled, gclip, acts, None)


@njit(parallel=True, **BORROW)
def forward_tiled(xw, W, hbuf, c, y, cs, rec, lengths, reverse, training, P, clip, coupled,
                   gclip, acts, gate):
    """The plain layer's time loop. xw [T,B,Gp]: x @ W_ih^T + b, receives the
    activated gates when training; W [Gl/CB, H, CB]: W_hh^T in blocks; hbuf
    [2,B,Hp]: h0 in hbuf[0], h alternates between the two (threads read all of
    h_old while writing their part of h_new), final h in hbuf[T % 2]; c [B,Hp]
    in/out; y [T,B,Hp] out; cs [T,B,Hp] out when training; rec [B,Gp] scratch; P
    threads per step; clip, coupled: the cell options of gates.lstm_cell; gclip:
    gates.clip_gate's; gate: the thread policy's (threads.py), checked every step.
    forward_tiled_options adds the projection, recurrent dropout and zoneout."""
    T = xw.shape[0]
    for s in range(T):
        t = T - 1 - s if reverse else s
        if P == 1 or not parallel_ok(gate):  # (even prange(1) pays a fork and join)
            _fwd_step(xw, W, hbuf, c, y, cs, rec, lengths, training, s, t, 0, 1, clip, coupled,
                      gclip, acts)
        else:
            start = clock_ns()
            for p in prange(P):
                _fwd_step(xw, W, hbuf, c, y, cs, rec, lengths, training, s, t, p, P, clip,
                          coupled, gclip, acts)
                finished(gate, p)
            region_done(gate, start)


@njit(**BORROW)
def _matmul_xh(X, Wx, Hm, W, out, bias, r_begin, r_end):
    """Rows [r_begin, r_end) of out = bias + X @ Wx + Hm @ W, every block: the input
    projection fused into the recurrent product (both K short enough for one chunk);
    the second product adds to what the first left in out, still in L1. The h
    product sums over W's rows (the layer's units; Hm's padding is not read)."""
    for blk in range(W.shape[0]):
        tile_block(X, Wx, out, blk, r_begin, r_end, bias, False, 0, X.shape[1])
        tile_block(Hm, W, out, blk, r_begin, r_end, out, True, 0, W.shape[1])


@njit(parallel=True, **BORROW)
def forward_rows(xw, x, W_in, bias, W, hbuf, c, y, cs, rec, lengths, reverse, training, P,
                  clip, coupled, gclip, acts, fused, gate):
    """forward_tiled with the batch shared out instead of the units: thread p runs
    its rows through all T steps with all of W_hh (the rows of a batch never meet),
    so the steps need no barrier and no thread touches another's cache lines.
    Arguments as forward_tiled's, and x [T,B,I], W_in [Gl/CB, I, CB] (W_ih^T in
    blocks) and bias [1,Gp]. fused: each step's product reads x[t] and h together
    (_matmul_xh), so no [T,B,Gp] projection is written and read back, and xw
    only receives the activated gates when training (where fuse_input says);
    else xw holds the projection made before the loop, as for forward_tiled.
    gate: the thread policy's; a thread that lagged shows there for the next calls."""
    T, B = x.shape[0], rec.shape[0]
    nblk = W.shape[0]
    start = clock_ns()
    for p in prange(P):
        r0, r1 = p * B // P, (p + 1) * B // P
        for s in range(T):
            t = T - 1 - s if reverse else s
            h_old, h_new = hbuf[s & 1], hbuf[(s + 1) & 1]
            if fused:
                _matmul_xh(x[t], W_in, h_old, W, rec, bias, r0, r1)
            else:
                matmul_rows(h_old, W, rec, xw[t], True, r0, r1, 0, nblk)
            gates = xw[t if training or not fused else 0]
            fwd_pointwise(rec[r0:r1], gates[r0:r1], h_old[r0:r1], h_new[r0:r1], c[r0:r1],
                          y[t][r0:r1], cs[t if training else 0][r0:r1], lengths[r0:r1], t,
                          training, 0, nblk, clip, coupled, gclip, acts, None)
        finished(gate, p)
    region_done(gate, start)


@njit(**BORROW)
def _cell_step(xw, W, h_in, h_old, h_new, y_t, c, cs, rec, lengths, training, t, p, P, clip,
               coupled, gclip, acts, peep, hm_new, mask, c_old, czs, zc, zh, proj):
    """Thread p's blocks of step t (_fwd_step_in, which writes h_new and y_t: with a
    projection, m = o * cell(c') in both), with zoneout (zc [T or 1,B,Hp]; [1,1,0]
    none): thread p's units of c are kept in c_old, the step runs, then _zoneout
    mixes the old values back in, into c and, without a projection (_proj_step
    zones the projected h), into h_new and y_t; the mask, if any, follows."""
    if zc.shape[2] == 0:
        _fwd_step_in(xw, W, h_in, h_old, h_new, y_t, c, cs, rec, lengths, training, t, p, P,
                     clip, coupled, gclip, acts, peep, hm_new, mask,
                     mask.shape[0] > 0 and not proj)
        return
    nblk = W.shape[0]
    j0, j1 = p * nblk // P * U, (p + 1) * nblk // P * U
    for r in range(c.shape[0]):
        for j in range(j0, j1):
            c_old[r, j] = c[r, j]
    _fwd_step_in(xw, W, h_in, h_old, h_new, y_t, c, cs, rec, lengths, training, t, p, P, clip,
                 coupled, gclip, acts, peep, hm_new, mask, False)
    zt = t if zc.shape[0] > 1 else 0
    _zoneout(c, c_old, h_new, h_old, y_t, czs[t if training else 0], zc[zt], zh[zt], lengths,
             t, training, j0, j1, not proj)
    if mask.shape[0] > 0 and not proj:
        times_mask(h_new, mask, hm_new, j0, j1)


@njit(**BORROW)
def _zoneout(c, c_old, h_new, h_old, y_t, czs_t, zc_t, zh_t, lengths, t, training, j0, j1,
             zone_h):
    """Zoneout of units [j0, j1) of the rows valid at step t, after the gate math
    left the new values in c and h_new: c <- c + zc (c_old - c) and, with zone_h,
    h <- h + zh (h_old - h), y = h. Training keeps the states after it in czs_t
    (held rows too)."""
    for r in range(c.shape[0]):
        if t < lengths[r]:
            for j in range(j0, j1):
                c[r, j] += zc_t[r, j] * (c_old[r, j] - c[r, j])
            if zone_h:
                for j in range(j0, j1):
                    h_new[r, j] += zh_t[r, j] * (h_old[r, j] - h_new[r, j])
                    y_t[r, j] = h_new[r, j]
        if training:
            for j in range(j0, j1):
                czs_t[r, j] = c[r, j]


@njit(**BORROW)
def _fwd_step_in(xw, W, h_in, h_old, h_new, y_t, c, cs, rec, lengths, training, t, p, P,
                 clip, coupled, gclip, acts, peep, hm_new, mask, mask_here):
    """Thread p's blocks of step t: rec = xw[t] + h_in @ W_hh^T, then the gate math
    (fwd_pointwise, which writes o * tanh(c) to h_new and y_t); with mask_here,
    also hm_new = h_new * mask for its units, the next step's h_in."""
    nblk = W.shape[0]
    b0, b1 = p * nblk // P, (p + 1) * nblk // P
    matmul_rows(h_in, W, rec, xw[t], True, 0, rec.shape[0], b0, b1)
    fwd_pointwise(rec, xw[t], h_old, h_new, c, y_t, cs[t if training else 0], lengths, t,
                  training, b0, b1, clip, coupled, gclip, acts, peep)
    if mask_here:
        times_mask(h_new, mask, hm_new, b0 * U, b1 * U)


@njit(**BORROW)
def _proj_step(m, Wp, h_old, h_new, y_t, zero, lengths, t, p, P, hm_new, mask, masked, zh_t):
    """Thread p's blocks of the projection, h' = m @ W_hr^T, then zoneout's
    h' <- h' + zh (h - h') (zh_t [B,Pp], or [1,0]: none); rows past their length
    hold h and output zero; when masked, hm_new = h' * mask for these blocks."""
    nblk = Wp.shape[0]
    b0, b1 = p * nblk // P, (p + 1) * nblk // P
    matmul_rows(m, Wp, h_new, zero, False, 0, m.shape[0], b0, b1)
    zoned = zh_t.shape[1] > 0
    for r in range(m.shape[0]):
        valid = t < lengths[r]
        for j in range(b0 * CB, b1 * CB):
            if not valid:
                h_new[r, j] = h_old[r, j]
            elif zoned:
                h_new[r, j] += zh_t[r, j] * (h_old[r, j] - h_new[r, j])
            y_t[r, j] = h_new[r, j] if valid else 0
    if masked:
        times_mask(h_new, mask, hm_new, b0 * CB, b1 * CB)


@njit(parallel=True, **BORROW)
def forward_tiled_options(xw, W, Wp, hbuf, hmbuf, mask, m, c, y, cs, rec, zero, lengths,
                           reverse, training, P, clip, coupled, gclip, acts, peep, czs, zc, zh,
                           c_old, gate):
    """xw [T,B,Gp]: x @ W_ih^T + b, receives the activated gates when training;
    W [Gl/CB, P, CB]: W_hh^T in blocks; hbuf [2,B,Pp]: h0 in hbuf[0], h
    alternates between the two (threads read all of h_old while writing their
    part of h_new), final h in hbuf[T % 2]; c [B,Hp] in/out; y [T,B,Pp] out;
    cs [T,B,Hp] out when training; rec [B,Gp] scratch; P threads per step;
    clip, coupled: the cell options of gates.lstm_cell; gclip: gates.clip_gate's.
    Wp [Pp/CB, Hp, CB]: W_hr^T in blocks, or no blocks for no projection (Pp = Hp);
    with one, the gate math writes m = o * tanh(c) [B,Hp] and a second parallel
    region projects it (zero: a [1, Pp] row of zeros).
    mask [B,Pp]: the recurrent dropout mask, or [0,0] for none; with one, the
    product reads hmbuf[s % 2] = h * mask, which each thread writes for its units
    of the next step (hmbuf [2,B,Pp], hmbuf[0] = h0 * mask).
    Zoneout: zc [T or 1,B,Hp], zh [T or 1,B,Pp], its weights for c and h ([1,1,0]:
    none); czs [T,B,Hp] receives the states after it when training; c_old [B,Hp]
    scratch. gate: the thread policy's (threads.py), checked every step."""
    T = xw.shape[0]
    proj = Wp.shape[0] > 0
    masked = mask.shape[0] > 0
    for s in range(T):
        t = T - 1 - s if reverse else s
        h_old, h_new = hbuf[s & 1], hbuf[(s + 1) & 1]
        h_in, hm_new = (hmbuf[s & 1], hmbuf[(s + 1) & 1]) if masked else (h_old, h_old)
        m_old, m_new, y_t = (m, m, m) if proj else (h_old, h_new, y[t])
        zh_t = zh[t if zh.shape[0] > 1 else 0]
        if P == 1 or not parallel_ok(gate):  # (even prange(1) pays a fork and join)
            _cell_step(xw, W, h_in, m_old, m_new, y_t, c, cs, rec, lengths, training, t, 0, 1,
                       clip, coupled, gclip, acts, peep, hm_new, mask, c_old, czs, zc, zh, proj)
            if proj:
                _proj_step(m, Wp, h_old, h_new, y[t], zero, lengths, t, 0, 1, hm_new, mask,
                           masked, zh_t)
        else:
            start = clock_ns()
            for p in prange(P):
                _cell_step(xw, W, h_in, m_old, m_new, y_t, c, cs, rec, lengths, training, t, p,
                           P, clip, coupled, gclip, acts, peep, hm_new, mask, c_old, czs, zc, zh,
                           proj)
                finished(gate, p)
            region_done(gate, start)
            if proj:
                start = clock_ns()
                for p in prange(P):
                    _proj_step(m, Wp, h_old, h_new, y[t], zero, lengths, t, p, P, hm_new, mask,
                               masked, zh_t)
                    finished(gate, p)
                region_done(gate, start)


@njit(**FAST)
def steps_state(x, w_in, bias, w_fwd, h, c, y, h_out, c_out, Hp, chunk, clip, coupled, gclip,
                acts):
    """The time loop on one thread, for a call from Python (a streamed step, or a
    small inference call): the steps of x [T,B,I] from the state h, c [B,H]; y
    [T,B,H] receives each step's h, h_out and c_out [B,H] the last state. The
    input product runs `chunk` steps at a time, as the time loop's does, then each
    step's product and gate math: the sums of the time loop's, bit for bit. The
    padded buffers are made here, so the call is one compiled call
    (lstm.lstm_forward_into). (scratch is fwd_pointwise's y: with h_new there
    the unit loop's stores overlap, and a step at B=1, H=64 took about 1 us more.)
    From a zero h (every call that passes no state) the first step skips its
    recurrent product, which would add only zeros (a product of zeros, +0 or -0,
    changes no sum but a zero's sign, which no gate's output keeps): a one-step
    call at B=1, H=128 reads 256 KiB less of W_hh (2.5 us of 11). Only a W_hh
    holding inf or NaN would have made that step's sums NaN."""
    T, B, I = x.shape
    H, nblk = c.shape[1], w_fwd.shape[0]
    hp, cp = np.zeros((2, B, Hp), np.float32), np.zeros((B, Hp), np.float32)
    copy_units(h, hp[0], H)
    copy_units(c, cp, H)
    h_zero = not np.any(h)
    scratch, ones = np.empty((B, Hp), np.float32), np.ones(B, np.int64)
    xw, rows = np.empty((chunk * B, 4 * Hp), np.float32), x.reshape(T * B, I)
    for t0 in range(0, T, chunk):
        t1 = min(t0 + chunk, T)
        matmul_rows(rows[t0 * B:t1 * B], w_in, xw, bias, False, 0, (t1 - t0) * B, 0, nblk)
        for t in range(t0, t1):
            rec, h_old, h_new = xw[(t - t0) * B:(t - t0 + 1) * B], hp[t & 1], hp[1 - (t & 1)]
            step_units(rec, w_fwd, h_old, h_new, cp, scratch, ones, 0, nblk,
                       t == 0 and h_zero, clip, coupled, gclip, acts)
            copy_units(h_new, y[t], H)
    copy_units(y[T - 1], h_out, H)
    copy_units(cp, c_out, H)


@njit(**BORROW)
def step_units(rec, w_fwd, h_old, h_new, c, scratch, ones, b0, b1, skip, clip, coupled, gclip,
               acts):
    """Blocks [b0, b1) of an inference step after its input product, which rec [B,4Hp]
    holds: rec += h_old @ W_hh^T for their columns (unless skip: h_old is zero),
    then their gate math into h_new and c [B,Hp]. The one step of steps_state,
    _step_blocks (step_split's task) and the duet's halves (duet._duet_half): the
    same sums, so each gives the others' result, bit for bit."""
    if not skip:
        matmul_rows(h_old, w_fwd, rec, rec, True, 0, h_old.shape[0], b0, b1)
    fwd_pointwise(rec, rec, h_old, h_new, c, scratch, c, ones, 0, False, b0, b1, clip,
                  coupled, gclip, acts, None)


@njit(**BORROW)
def _step_blocks(x, w_in, bias, w_fwd, h_old, h_new, c, rec, scratch, ones, b0, b1, clip,
                 coupled, gclip, acts):
    """Blocks [b0, b1) of one step from x [B,I] and the padded state h_old, c [B,Hp]:
    rec = x @ W_ih^T + b for their columns, then step_units (step_split's task;
    steps_state's sums)."""
    matmul_rows(x, w_in, rec, bias, False, 0, x.shape[0], b0, b1)
    step_units(rec, w_fwd, h_old, h_new, c, scratch, ones, b0, b1, False, clip, coupled,
               gclip, acts)


@njit(parallel=True, **BORROW)
def _step_region(x, w_in, bias, w_fwd, h_old, h_new, c, rec, scratch, ones, counter, work,
                 clip, coupled, gclip, acts, gate):
    """step_split's parallel region: work.shape[0] threads take its blocks one at a
    time as they come (threads.claim), so that a thread the OS runs late costs the
    step little more than its own lateness (its blocks go to the thread that is
    running), where an even split would wait for its whole share; each notes in
    work [P,2] the blocks it did and their nanoseconds, from which
    threads.split_done tells a step that one thread would have run faster (and
    then holds the next ones to one thread). Apart from step_split, whose
    allocations parallel=True would turn into parallel regions of their own
    (counter: [1] int64, zero)."""
    nblk = w_fwd.shape[0]
    start = clock_ns()
    for p in prange(work.shape[0]):
        began, done = clock_ns(), 0
        blk = claim(counter)
        while blk < nblk:
            _step_blocks(x, w_in, bias, w_fwd, h_old, h_new, c, rec, scratch, ones, blk,
                         blk + 1, clip, coupled, gclip, acts)
            done += 1
            blk = claim(counter)
        work[p, 0], work[p, 1] = done, clock_ns() - began
        finished(gate, p)
    split_done(gate, start, work)


@njit(**FAST)
def step_split(x, w_in, bias, w_fwd, h, c, h_out, c_out, Hp, P, clip, coupled, gclip, acts,
               gate):
    """One streamed step, x [B,I] and the state h, c [B,H] -> h_out, c_out [B,H], with
    its blocks of units shared among P threads in one parallel region: a thread
    projects x and h for each block it takes (reading that part of W_ih and W_hh,
    which a large step streams from beyond L2) and runs its gate math. Each block is
    computed as steps_state computes it: its sums, bit for bit, whatever P and
    whichever thread took a block. gate: the thread policy's (threads.py); on a
    hold the step runs on one thread, and a step that a late thread made slower
    than one thread starts a hold (threads.split_done)."""
    B, H, nblk = x.shape[0], c.shape[1], w_fwd.shape[0]
    h_old, h_new = np.zeros((B, Hp), np.float32), np.empty((B, Hp), np.float32)
    cp = np.zeros((B, Hp), np.float32)
    copy_units(h, h_old, H)
    copy_units(c, cp, H)
    rec, scratch = np.empty((B, 4 * Hp), np.float32), np.empty((B, Hp), np.float32)
    ones = np.ones(B, np.int64)
    if P == 1 or not parallel_ok(gate):
        _step_blocks(x, w_in, bias, w_fwd, h_old, h_new, cp, rec, scratch, ones, 0, nblk,
                     clip, coupled, gclip, acts)
    else:
        _step_region(x, w_in, bias, w_fwd, h_old, h_new, cp, rec, scratch, ones,
                     np.zeros(1, np.int64), np.zeros((P, 2), np.int64), clip, coupled, gclip,
                     acts, gate)
    copy_units(h_new, h_out, H)
    copy_units(cp, c_out, H)


# -- backward, float32 tiled -----------------------------------------------------------
@njit(**BORROW)
def _bwd_pointwise(dg_t, cs_t, cz_prev, c0, dy_t, rec, dh_n, dc, lengths, reverse, t, b0, b1,
                   clip, coupled, gclip, acts, peep):
    """Gate gradients of step t for the hidden units of output blocks [b0, b1)
    (HB units each). dg_t [B,Gp] holds the activated gates and receives dG; cs_t
    [B,Hp]: step t's new cell values; cz_prev [B,Hp]: the state the step before
    (in the forward's order) passed on (cs there, unless zoneout kept part of
    the old one; c0 when there is none), c0 where it is a row's first step.
    acts, peep: as fwd_pointwise's."""
    gated = gclip < np.inf
    bounds = gate_clip_bounds(gclip, np.float32(0), acts)  # (the tiled kernels are float32)
    peeped = _peepholes(peep)
    for r in range(dg_t.shape[0]):
        n = lengths[r]
        if t >= n:  # padding: no gradient flows, the carried dh and dc stay
            for j in range(b0 * HB * 4, b1 * HB * 4):
                dg_t[r, j] = 0
            continue
        # The forward's last step of this row starts the backward from dh_n;
        # the forward's first step of this row read c0.
        last = t == 0 if reverse else t == n - 1
        first = t == n - 1 if reverse else t == 0
        dh_in = dh_n[r] if last else rec[r]
        c_prev = c0[r] if first else cz_prev[r]
        # views of the row's units [j0, j1) and their gate columns (see fwd_pointwise)
        j0, j1 = b0 * HB, b1 * HB
        gates, dc_r = dg_t[r, 4 * j0:4 * j1], dc[r, j0:j1]
        c_r, cp, dy_r, dh_r = cs_t[r, j0:j1], c_prev[j0:j1], dy_t[r, j0:j1], dh_in[j0:j1]
        n_blk = b1 * HB // U - b0 * HB // U
        if peep is not None and peeped:
            _bwd_units(gates, dc_r, c_r, cp, dy_r, dh_r, n_blk, peep, j0, clip, coupled, acts,
                       bounds, gated)
        else:
            _bwd_units(gates, dc_r, c_r, cp, dy_r, dh_r, n_blk, None, j0, clip, coupled, acts,
                       bounds, gated)


@njit(inline="always", **FAST)
def _bwd_units(gates, dc_r, c_r, cp, dy_r, dh_r, n_blk, peep, j0, clip, coupled, acts, bounds,
               gated):
    """_bwd_pointwise's units of one row, n_blk blocks of U (views from the row's
    unit j0; peep: None, or the peepholes [3,Hp])."""
    for k in range(n_blk):
        for u in range(U):
            q, v = k * CB + u, k * U + u
            i, f, g, o = gates[q], gates[q + U], gates[q + 2 * U], gates[q + 3 * U]
            cc = c_r[v]
            di, df, dg, do, dcc = lstm_cell_grads(
                dc_r[v], dy_r[v] + dh_r[v], i, f, g, o, activate(acts[2], cc), cp[v], cc,
                clip, coupled, acts, peephole_at(peep, j0 + v), bounds, gated)
            gates[q], gates[q + U], gates[q + 2 * U], gates[q + 3 * U] = di, df, dg, do
            dc_r[v] = dcc


@njit(**BORROW)
def _bwd_step(dg, cs, c0, dy, W, rec, zero, dh_n, dc, lengths, reverse, s, t, t_prev, p, P,
              clip, coupled, gclip, acts):
    nblk = W.shape[0]
    b0, b1 = p * nblk // P, (p + 1) * nblk // P
    if s > 0:
        matmul_rows(dg[t_prev], W, rec, zero, False, 0, rec.shape[0], b0, b1)
    _bwd_pointwise(dg[t], cs[t], step_before(cs, c0, reverse, t), c0, dy[t], rec, dh_n, dc,
                   lengths, reverse, t, b0, b1, clip, coupled, gclip, acts, None)


@njit(parallel=True, **FAST)
def backward_tiled(dg, cs, c0, dy, W, rec, dh_n, dc, lengths, reverse, P, clip, coupled,
                    gclip, acts, gate):
    """The plain layer's backward loop. dg [T,B,Gp]: activated gates in, dG out;
    cs [T,B,Hp]; c0, dh_n [B,Hp]; dy [T,B,Hp]; W [Hp/CB, Gl, CB]: W_hh in blocks of
    output units; rec [B,Hp] scratch (dh from the step after); dc [B,Hp]: dc_n in,
    dc0 out; gate: the thread policy's. backward_tiled_options adds the options."""
    T = dg.shape[0]
    zero = np.zeros((1, rec.shape[1]), rec.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        t_prev = t - 1 if reverse else t + 1
        if P == 1 or not parallel_ok(gate):
            _bwd_step(dg, cs, c0, dy, W, rec, zero, dh_n, dc, lengths, reverse, s, t, t_prev, 0,
                      1, clip, coupled, gclip, acts)
        else:
            start = clock_ns()
            for p in prange(P):
                _bwd_step(dg, cs, c0, dy, W, rec, zero, dh_n, dc, lengths, reverse, s, t,
                          t_prev, p, P, clip, coupled, gclip, acts)
                finished(gate, p)
            region_done(gate, start)


@njit(parallel=True, **FAST)
def backward_rows(dg, cs, c0, dy, W, rec, dh_n, dc, lengths, reverse, P, clip, coupled,
                   gclip, acts, dgb, gate):
    """backward_tiled with the batch shared out instead of the units (see
    forward_rows). Arguments as backward_tiled's, and dgb [Gl/CB, T*B, CB] (the
    blocks that hold units; Gl <= Gp), which receives dG in the products' blocked
    layout (copy_to_blocks's), each row copied while it is in cache (the weight
    gradients read it; a pass of its
    own after the loop took 0.37 ms at T=64, B=32, H=128 and 17 ms at T=128,
    B=128, H=256). gate: the thread policy's."""
    T, B = dg.shape[0], rec.shape[0]
    nblk = W.shape[0]
    zero = np.zeros((1, rec.shape[1]), rec.dtype)
    start = clock_ns()
    for p in prange(P):
        r0, r1 = p * B // P, (p + 1) * B // P
        for s in range(T):
            t = s if reverse else T - 1 - s
            if s > 0:
                matmul_rows(dg[t - 1 if reverse else t + 1], W, rec, zero, False, r0, r1, 0,
                            nblk)
            _bwd_pointwise(dg[t][r0:r1], cs[t][r0:r1], step_before(cs, c0, reverse, t)[r0:r1],
                           c0[r0:r1], dy[t][r0:r1], rec[r0:r1], dh_n[r0:r1], dc[r0:r1],
                           lengths[r0:r1], reverse, t, 0, nblk, clip, coupled, gclip, acts, None)
            for r in range(r0, r1):
                src = dg[t, r]
                for blk in range(dgb.shape[0]):
                    dst = dgb[blk, t * B + r]
                    for j in range(CB):
                        dst[j] = src[blk * CB + j]
        finished(gate, p)
    region_done(gate, start)


@njit(**BORROW)
def _bwd_step_options(dg, cs, czs, c0, dy, W, rec, zero, dh_n, dc, lengths, reverse, s, t,
                      t_prev, p, P, clip, coupled, gclip, acts, peep, mask, zc, zh, kh, kc, dhz,
                      zb):
    """_bwd_step with a recurrent dropout mask and zoneout (either may be absent)."""
    nblk = W.shape[0]
    b0, b1 = p * nblk // P, (p + 1) * nblk // P
    if s > 0:
        masked_product(dg[t_prev], W, rec, zero, mask, b0, b1)
    if zc.shape[2] == 0:  # no zoneout
        _bwd_pointwise(dg[t], cs[t], step_before(cs, c0, reverse, t), c0, dy[t], rec, dh_n,
                       dc, lengths, reverse, t, b0, b1, clip, coupled, gclip, acts, peep)
        return
    # Zoneout: h' = h~ + zh (h - h~), c' = c~ + zc (c - c~). The kept parts of dh
    # and dc pass to the step before (kh, kc); the rest enters the gate gradients.
    zt = t if zc.shape[0] > 1 else 0
    for r in range(rec.shape[0]):
        n = lengths[r]
        if t >= n:
            continue
        dh_in = dh_n[r] if (t == 0 if reverse else t == n - 1) else rec[r]
        for j in range(b0 * CB, b1 * CB):
            d = dy[t, r, j] + dh_in[j] + kh[r, j]
            kh[r, j] = zh[zt, r, j] * d
            dhz[r, j] = d - kh[r, j]
            kc[r, j] = zc[zt, r, j] * dc[r, j]
            dc[r, j] -= kc[r, j]
    _bwd_pointwise(dg[t], cs[t], step_before(czs, c0, reverse, t), c0, dhz, zb, zb, dc, lengths,
                   reverse, t, b0, b1, clip, coupled, gclip, acts, peep)
    for r in range(rec.shape[0]):
        if t < lengths[r]:
            for j in range(b0 * CB, b1 * CB):
                dc[r, j] += kc[r, j]


@njit(**BORROW)
def _bwd_proj_step(dg, dy, W, rec, zero, dh_n, dhs, lengths, reverse, s, t, t_prev, p, P,
                   mask, zh, kh):
    """With a projection, thread p's blocks of dhs[t], the gradient of step t's h
    (before zoneout): dy[t] plus dG of the step after @ W_hh (times the mask, if
    any; dh_n at a row's last step) plus kh, the part the step after kept; zero past
    a row's length. With zoneout (zh [T or 1,B,Pp]; [1,1,0] none), kh then
    receives this step's kept part, zh times that sum, and dhs[t] the rest."""
    nblk = W.shape[0]
    b0, b1 = p * nblk // P, (p + 1) * nblk // P
    if s > 0:
        masked_product(dg[t_prev], W, rec, zero, mask, b0, b1)
    zoned = zh.shape[2] > 0
    zt = t if zh.shape[0] > 1 else 0
    for r in range(rec.shape[0]):
        n = lengths[r]
        if t >= n:
            for j in range(b0 * CB, b1 * CB):
                dhs[t, r, j] = 0
            continue
        dh_in = dh_n[r] if (t == 0 if reverse else t == n - 1) else rec[r]
        for j in range(b0 * CB, b1 * CB):
            d = dy[t, r, j] + dh_in[j]
            if zoned:
                d += kh[r, j]
                kh[r, j] = zh[zt, r, j] * d
                d -= kh[r, j]
            dhs[t, r, j] = d


@njit(**BORROW)
def _bwd_proj_cell(dg, cs, czs, c0, dhs, Wpb, dm, zero, zero_b, dc, lengths, reverse, t, p, P,
                   clip, coupled, gclip, acts, peep, zc, kc):
    """With a projection, thread p's blocks of hidden units: dm = dhs[t] @ W_hr, the
    gradient of o * tanh(c), then the gate gradients from it. With zoneout (zc
    [T or 1,B,Hp]; [1,1,0] none), the part zc of dc passes to the step before
    unchanged (kc: scratch)."""
    nblk = Wpb.shape[0]
    b0, b1 = p * nblk // P, (p + 1) * nblk // P
    matmul_rows(dhs[t], Wpb, dm, zero, False, 0, dm.shape[0], b0, b1)
    zoned = zc.shape[2] > 0
    if zoned:
        zc_t = zc[t if zc.shape[0] > 1 else 0]
        for r in range(dc.shape[0]):
            if t < lengths[r]:
                for j in range(b0 * CB, b1 * CB):
                    kc[r, j] = zc_t[r, j] * dc[r, j]
                    dc[r, j] -= kc[r, j]
    _bwd_pointwise(dg[t], cs[t], step_before(czs, c0, reverse, t), c0, dm, zero_b, zero_b, dc,
                   lengths, reverse, t, b0, b1, clip, coupled, gclip, acts, peep)
    if zoned:
        for r in range(dc.shape[0]):
            if t < lengths[r]:
                for j in range(b0 * CB, b1 * CB):
                    dc[r, j] += kc[r, j]


@njit(parallel=True, **FAST)
def backward_tiled_options(dg, cs, c0, dy, W, Wpb, rec, dhs, dm, dh_n, dc, lengths, reverse,
                            P, clip, coupled, gclip, acts, peep, mask, czs, zc, zh, kh, kc, dhz,
                            zb, gate):
    """dg [T,B,Gp]: activated gates in, dG out; cs [T,B,Hp]; c0 [B,Hp]; dh_n
    [B,Pp]; dy [T,B,Pp]; W [Pp/CB, Gp, CB]: W_hh in blocks of output units; rec
    [B,Pp] scratch (dh from the step after); dc [B,Hp]: dc_n in, dc0 out.
    Wpb [Hp/CB, Pp, CB]: W_hr in blocks, or no blocks for no projection; with one,
    a first parallel region writes the gradient of h to dhs [T,B,Pp], a second
    projects it back, dm = dhs[t] @ W_hr [B,Hp], and runs the gate gradients.
    mask: the forward's recurrent dropout mask [B,Pp], or [0,0] for none.
    Zoneout: czs [T,B,Hp], the states after it; zc [T or 1,B,Hp], zh [T or 1,B,Pp],
    its weights ([1,1,0]: none); kh [B,Pp], zero in, out the part of dh0 that the
    first steps kept; kc [B,Hp], dhz [B,Pp] scratch, zb [B,Pp] zeros; gate: the
    thread policy's (threads.py), checked every step."""
    T = dg.shape[0]
    zero = np.zeros((1, max(rec.shape[1], dm.shape[1])), rec.dtype)
    proj = Wpb.shape[0] > 0
    zero_b = np.zeros(dm.shape if proj else (1, 1), rec.dtype)
    for s in range(T):
        t = s if reverse else T - 1 - s
        t_prev = t - 1 if reverse else t + 1
        one = P == 1 or not parallel_ok(gate)
        start = clock_ns()
        if proj and one:
            _bwd_proj_step(dg, dy, W, rec, zero, dh_n, dhs, lengths, reverse, s, t, t_prev, 0, 1,
                           mask, zh, kh)
            _bwd_proj_cell(dg, cs, czs, c0, dhs, Wpb, dm, zero, zero_b, dc, lengths, reverse, t,
                           0, 1, clip, coupled, gclip, acts, peep, zc, kc)
        elif proj:
            for p in prange(P):
                _bwd_proj_step(dg, dy, W, rec, zero, dh_n, dhs, lengths, reverse, s, t, t_prev,
                               p, P, mask, zh, kh)
                finished(gate, p)
            region_done(gate, start)
            start = clock_ns()
            for p in prange(P):
                _bwd_proj_cell(dg, cs, czs, c0, dhs, Wpb, dm, zero, zero_b, dc, lengths, reverse,
                               t, p, P, clip, coupled, gclip, acts, peep, zc, kc)
                finished(gate, p)
            region_done(gate, start)
        elif one:
            _bwd_step_options(dg, cs, czs, c0, dy, W, rec, zero, dh_n, dc, lengths, reverse, s,
                              t, t_prev, 0, 1, clip, coupled, gclip, acts, peep, mask, zc, zh, kh,
                              kc, dhz, zb)
        else:
            for p in prange(P):
                _bwd_step_options(dg, cs, czs, c0, dy, W, rec, zero, dh_n, dc, lengths, reverse,
                                  s, t, t_prev, p, P, clip, coupled, gclip, acts, peep, mask, zc,
                                  zh, kh, kc, dhz, zb)
                finished(gate, p)
            region_done(gate, start)


@njit(parallel=True, **BORROW)
def cell_outputs(gates, cs, lengths, acts, out):
    """out[t] = o * cell(c) of every valid row (zero past its length), from the
    activated gates and cell states a training forward kept: the input of the
    projection, for its weight gradient."""
    T, B, Hp = cs.shape
    for t in prange(T):
        for r in range(B):
            valid = t < lengths[r]
            for v in range(0, Hp, U):
                q = (v // U) * CB + 3 * U
                for u in range(U):
                    out[t, r, v + u] = (gates[t, r, q + u] * activate(acts[2], cs[t, r, v + u])
                                        if valid else 0)
