"""CPU kernels of one LSTM layer in one direction, checked against reference.py.

Dimensions: T steps, B batch, I input features, H hidden units, G = 4H; Hp is H
padded to a multiple of HB, Gp = 4 Hp.

Two paths, chosen by dtype when the weights are packed (pack_lstm_cpu):

  float32, "tiled": the fast path, with no BLAS in it. Weights are laid out in
      blocks of U hidden units, each block's CB = 4U columns holding its
      [i f g o] gates, so one thread's slice of the recurrent product is also
      the input of its own gate math. Every product is one register-tiled
      kernel (microkernel.tile_block: tiles of ROWS rows x CB columns of
      accumulators, 24 zmm registers on AVX-512, written in LLVM IR):
      - the time loop runs one parallel region per step, each of P threads
        owning a range of blocks (product, then gate math), so a step waits only
        at the region's end; or, from 8 rows a thread while W_hh fits in a
        core's L2, one region for all the steps, each thread running its rows
        of the batch with all of W_hh (_forward_rows, _backward_rows);
      - the products before the loop (input projection) and after it (dx, the
        weight gradients) are parallel loops over (row chunk, block) tasks.
      All of it runs in Numba's OpenMP pool. BLAS kept out on purpose: NumPy's
      OpenBLAS workers spin after each call and took the cores from the time
      loop (projection + loop cost 28 ms where the two alone cost 12). (torch
      ships its own copy of libgomp, so in one process with torch there are two
      OpenMP pools: alternating their calls, as the benchmark does, made both
      15-20% slower at the character model than either alone.)
  float64, "blas": the exact path the gradient checks use: per step a BLAS
      product (SciPy's, through np.dot) and a serial gate pass, with libm's
      exp and tanh; the same BLAS for the products around the loop (_dot: with
      NumPy's there, its pool and SciPy's took the cores from each other).
      Layer normalisation (ln_* weights) takes this loop in float32 too: its
      per-row statistics over all 4H gate columns sit between the product and
      the gate math, which the tiled loops split among threads by units. The
      input product is normalised for all steps before the loop and its
      gradient after it; the loop normalises the recurrent product per step
      (keeping it normalised, h_hat, for the backward, which writes its
      gradient there) and the cell state before h' reads it. In float32 its
      products are the tiled ones on Numba's threads (_step_product,
      _tiled_dot), in torch's column order, not BLAS: SciPy's OpenBLAS threads
      in the loop and Numba's in the layers around it, called in turn, slowed
      each other 2x to 8x. The gate math is in functions of one row's arrays
      (_gates_row, ...), which LLVM vectorises, as it did not in the loop.

Hidden units are padded to a multiple of HB with zero weights and zero state:
a padded unit stays exactly zero and feeds nothing, so padding changes no value.

A recurrent projection (torch's proj_size P: h = W_hr (o * tanh(c)), h and y of
P units, padded to Pp) adds a second parallel region to each step: the gate math
writes m = o * tanh(c), then each thread projects its blocks of h. The backward
mirrors it (the gradient of h into dhs, then dm = dhs[t] @ W_hr feeds the gate
gradients), and dW_hr is one product over all T*B rows after the loop, with m
recomputed from the stored gates and c before the loop overwrites them.

Recurrent dropout (a [B,P] mask on h where it enters the recurrent product, the
same at every step) keeps a second double buffer, h * mask, which each thread
writes for its own units at the end of a step: no extra barrier. The backward
multiplies dh by the mask after each product, and dW_hh reads h * mask.

Zoneout keeps each thread's units of c before the step and mixes the old values
of c and h back in after it; the backward splits dh and dc into the parts kept
(passed to the step before) and the parts that reach the gates.

Peepholes add the state to the gate pre-activations; they too take the
options' loops, and their gradient is a sum over steps and rows after the loop
(_peephole_gradients). The activations (gates.make_acts) are part of every
kernel's argument types: each pair compiles to its own loops, the default ones
exactly the plain layer's.

The options run in _forward_tiled_options and _backward_tiled_options; the plain
layer keeps _forward_tiled and _backward_tiled, whose per-step calls take only
what it needs (at B=1, H=64 the options' arguments cost it 10-20%).

The path of a call (both paths):
    forward:  xw = x @ W_ih^T + b for all steps (one product); then the time loop
              in one compiled function. The training forward writes the
              activated gates over xw and keeps c of every step; h of every step
              is y. In the batch split, where _fuse_input says so, each step's
              product reads x[t] and h together instead (_forward_rows, fused),
              and nothing is projected before the loop.
    backward: the time loop writes the pre-activation gradients dG over the
              stored gates (one recurrent product dG[t] @ W_hh per step); then
              dx is one product over all T*B rows, and the weight gradients two
              more, computed transposed with dG in blocks (_weight_gradients;
              the batch split's loop writes those blocks as it goes).
"""
import numba
import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..gates import (DEFAULT_ACTS, activate, clip_gate, dactivate, for_dtype, gate_clip_bounds,
                     lstm_cell, lstm_cell_grads, lstm_gate_grads, peephole_at)
from ..reference import LAYER_NORM_EPS, apply_activation, layer_norm
from .microkernel import CB, ROWS, TT, address, tile_block, transpose_tile
from .threads import (POLICY, SMALL_REGION, clock_ns, finished, numba_threads, parallel_ok,
                      region_done, serial_if)
from .threads import run as thread_policy

U = CB // 4     # hidden units per gate block; CB = 4U columns per block: [i(U) f(U) g(U) o(U)]
HB = 64         # H is padded to a multiple of this (the backward's output block)
# A step runs on one thread when it is small on both counts: two threads win from
# 256 hidden units (W_hh is then too large for one core's caches, even at B=1) or
# from 2 MFLOP a step (measured on 2 cores; below, the barrier costs more).
PARALLEL_MIN_UNITS = 256
PARALLEL_MIN_FLOPS = 2_000_000
# A product before or after the time loop runs on one thread below this: it is then a
# few tens of microseconds, and a parallel region waits for the slowest thread, which
# on a busy machine may be one the OS has descheduled for a tick (threads.py).
PRODUCT_PARALLEL_MIN_FLOPS = 4_000_000
ROWS_PER_TASK = 120  # rows of one task of the large products (a multiple of ROWS;
                     # 120 beat 60 by 20-35% at T*B >= 2048, level below)
ROW_SPLIT = None  # tests force one split of the plain time loops: True (rows), False (units)
ROW_SPLIT_MAX_BYTES = 1 << 20  # the largest W_hh (float32) the rows split runs
ROW_SPLIT_SMALL_BYTES = 1 << 18  # a W_hh this small takes the rows split from 2 rows a thread
FUSE_INPUT = None  # tests force the input projection inside the rows loop: True or False
FUSED_MIN_ROWS = 32  # (_fuse_input)
KC = 1024           # K chunk of the products: KC x CB of W is 256 KiB, held in L2 across a
                    # task's row tiles (measured against 256: 15-30% faster at K >= 512)
# Inference projects and runs this many bytes of steps at a time, so the
# projected inputs stay in cache instead of making a T*B*4H buffer (512 MiB at
# T=1024, B=128, H=256).
INFERENCE_CHUNK_BYTES = 4 << 20

# No "nnan"/"ninf": a NaN in must come out as a NaN, not as whatever a clamp makes.
_FAST = dict(cache=True, error_model="numpy", fastmath={"contract", "arcp", "nsz"})


def _stack_f32(n):
    """An intrinsic returning a pointer to n float32 on the stack: a fixed-size
    scratch that LLVM can keep in registers (a heap array it cannot)."""
    @intrinsic
    def stack(typingctx):
        def codegen(context, builder, signature, args):
            return cgutils.alloca_once(builder, context.get_value_type(types.float32), size=n)
        return types.CPointer(types.float32)(), codegen
    return stack


TR_ROWS = 256  # the rows of one of _transpose's bands
_column_sums = _stack_f32(TT)


# -- the register-tiled product --------------------------------------------------------
@njit(**_FAST)
def _matmul_rows(A, W, out, init, per_row, r_begin, r_end, b0, b1):
    """out[r_begin:r_end, blk*CB:(blk+1)*CB] = init + A[r_begin:r_end] @ W[blk] for
    blk in [b0, b1). A: [M,K] (C or F order); W: [nblk,K,CB], each block's
    columns contiguous; out: [M, nblk*CB]; init: [M or 1, nblk*CB].
    K is walked in chunks of KC so that a chunk of W stays in cache across the
    row tiles (the weight gradients have K = T*B)."""
    K = A.shape[1]
    for k0 in range(0, max(K, 1), KC):
        k1 = min(k0 + KC, K)
        for blk in range(b0, b1):
            if k0 == 0:
                tile_block(A, W, out, blk, r_begin, r_end, init, per_row, k0, k1)
            else:  # later chunks add to what the earlier ones left in out
                tile_block(A, W, out, blk, r_begin, r_end, out, True, k0, k1)


def _matmul(A, W, out, init, per_row):
    """out = init + A @ W over all rows, the (row chunk, block) pairs shared among
    Numba's threads: the large products before and after the time loop; on one
    thread, with no parallel region, when the product is small or the thread
    policy's gate holds (threads.py). Every element is the same sum either way.
    (A Python function: asked from compiled code, numba.get_num_threads() keeps
    the function out of the cache.)"""
    M, nblk = A.shape[0], W.shape[0]
    P = numba_threads()
    gate = POLICY.gate()
    if P == 1 or 2 * M * A.shape[1] * nblk * CB < PRODUCT_PARALLEL_MIN_FLOPS or (
            not parallel_ok(gate)):
        _matmul_rows(A, W, out, init, per_row, 0, M, 0, nblk)
        return
    rows, chunks = _row_chunks(M, nblk, P)
    start = clock_ns()
    _matmul_tasks(A, W, out, init, per_row, rows, chunks, gate)
    region_done(gate, start)


@njit(parallel=True, **_FAST)
def _matmul_tasks(A, W, out, init, per_row, rows, chunks, gate):
    M, nblk = A.shape[0], W.shape[0]
    for task in prange(chunks * nblk):
        # (prange's index is unsigned: mixed with int64 it would become a float)
        blk, chunk = divmod(np.int64(task), chunks)  # neighbouring tasks share a W block
        r0 = chunk * rows
        _matmul_rows(A, W, out, init, per_row, r0, min(r0 + rows, M), blk, blk + 1)
        finished(gate, numba.get_thread_id())


def _row_chunks(M, nblk, P):
    """(rows per task, tasks per block) for _matmul: about ROWS_PER_TASK rows, in as
    many chunks as make the tasks a multiple of the P threads, of equal size. prange
    deals each thread a contiguous range of tasks: 5 chunks of 120 rows of a
    512-row, one-block product gave one thread 360 rows and the other 152
    (0.73 ms; 0.61 ms in 6 chunks of 90)."""
    chunks = max(1, -(-M // ROWS_PER_TASK))
    while True:
        rows = max(ROWS, -(-(-(-M // chunks)) // ROWS) * ROWS)  # (whole register tiles)
        tasks = -(-M // rows)
        if (tasks * nblk) % P == 0 or rows == ROWS:
            return rows, tasks
        chunks += 1


@njit(parallel=True, **_FAST)
def _transpose(a, out, part, col0=0):
    """out = a.T for a [M,N], in bands of TR_ROWS rows by TT columns of a shared
    among the threads, each band in transpose_tile's TT x TT register tiles (the
    band's last rows, and a last band narrower than TT, one float at a time): the
    weight gradients then read the transpose row by row (reading a transposed
    view strides a page per element and ran at a third of the speed). Median of
    15 on 2 Zen 4 cores, against the 256 x 8 tiles through a stack buffer that
    moved one float at a time: 16384 x 768 with the sums 18 -> 7-9 ms (a copy of
    it takes 4.6-5.7), 16384 x 256 7.0 -> 1.2-2.5, 2048 x 768 with the sums 2.8
    -> 0.7.
    part: [ceil(M/TR_ROWS), N] receives each band's column sums (the bias
    gradients, without a pass of their own over a: each tile's rows are summed
    right after the tile, from L1), or [0,0] for none.
    col0: a goes to out's columns [col0, col0 + M) (out may be wider).
    Where a's or out's columns are not adjacent, all one float at a time."""
    M, N = a.shape
    tm, tn = (M + TR_ROWS - 1) // TR_ROWS, (N + TT - 1) // TT
    a_row, o_row = a.strides[0] // 4, out.strides[0] // 4
    a_at, o_at = address(a), address(out)
    sum_up = part.shape[0] > 0
    tiles = a.strides[1] == 4 and out.strides[1] == 4
    for task in prange(tm * tn):
        ti, tj = divmod(np.int64(task), tn)
        i0, j0 = ti * TR_ROWS, tj * TT
        mi, mj = min(TR_ROWS, M - i0), min(TT, N - j0)
        full = mi // TT * TT if mj == TT and tiles else 0  # rows through the tiles
        sums = carray(_column_sums(), TT)  # one running sum per column
        sums[:] = 0
        for i in range(i0, i0 + full, TT):
            transpose_tile(a_at + 4 * (i * a_row + j0), a_row,
                           o_at + 4 * (j0 * o_row + col0 + i), o_row)
            if sum_up:
                for r in range(i, i + TT):
                    src = a[r, j0:j0 + TT]
                    for j in range(TT):
                        sums[j] += src[j]
        for j in range(mj):
            dst = out[j0 + j]
            for i in range(i0 + full, i0 + mi):
                dst[col0 + i] = a[i, j0 + j]
        if sum_up:
            for r in range(i0 + full, i0 + mi):
                src = a[r, j0:j0 + mj]
                for j in range(mj):
                    sums[j] += src[j]
            for j in range(mj):
                part[ti, j0 + j] = sums[j]


def transposed_with_sums(a):
    """a [M,N] float32 -> (a.T as a C-contiguous [N,M], the column sums [N])."""
    M, N = a.shape
    out = np.empty((N, M), np.float32)
    part = np.empty((-(-M // TR_ROWS), N), np.float32)
    serial_if(a.size <= SMALL_REGION, _transpose, a, out, part)
    return out, part.sum(axis=0)


@njit(parallel=True, **_FAST)
def _to_blocks(a, out):
    """out[blk, m, :] = a[m, blk*CB:(blk+1)*CB]: a [M, nblk*CB] in the layout the
    products read as their second operand ([nblk, M, CB])."""
    M, nblk = a.shape[0], out.shape[0]
    chunks = (M + 255) // 256
    for task in prange(chunks * nblk):
        blk, chunk = divmod(np.int64(task), chunks)
        for m in range(chunk * 256, min(chunk * 256 + 256, M)):
            src, dst = a[m, blk * CB:(blk + 1) * CB], out[blk, m]
            for j in range(CB):
                dst[j] = src[j]


@njit(parallel=True, **_FAST)
def _untile(a_t, cols, out):
    """out[j, i] = a_t[i, cols[j]]: a weight gradient computed transposed, in the
    kernels' gate columns (a_t [n(+), Gp(+)]), to torch's layout (out [len(cols), n]),
    in tiles of TT x TT, each a band of TT rows of out shared among the threads.
    Where a band's columns of a_t are consecutive (TT units of one gate, always
    when TT divides H) its tiles go through transpose_tile's registers, the rest
    (edges, gates straddling a band) one float at a time. a_t's rows should not
    be a multiple of 4 KiB apart (_padded_cols): TT rows of a_t at such a distance
    share one L1 set. At H = 256 on 2 Zen 4 cores: 0.17-0.48 ms one float at a
    time in bands of 16, 0.04 now; at H = 1024, 7-9 ms, now 2.1."""
    n, G = out.shape[1], out.shape[0]
    a_row, o_row = a_t.strides[0] // 4, out.strides[0] // 4
    a_at, o_at = address(a_t), address(out)
    for band in prange((G + TT - 1) // TT):
        j0 = band * TT
        mj = min(TT, G - j0)
        c0 = cols[j0]
        run = mj == TT
        for j in range(j0, j0 + mj):
            run = run and cols[j] == c0 + j - j0
        full = n // TT * TT if run else 0
        for i0 in range(0, full, TT):
            transpose_tile(a_at + 4 * (i0 * a_row + c0), a_row, o_at + 4 * (j0 * o_row + i0),
                           o_row)
        for j in range(j0, j0 + mj):
            c, dst = cols[j], out[j]
            for i in range(full, n):
                dst[i] = a_t[i, c]


def _padded_cols(G):
    """A row length of at least G float32 that is not a multiple of 1 KiB, so that
    rows read down a column fall into different L1 sets (_untile)."""
    return G + TT if G % 256 == 0 else G


# -- forward, float32 tiled ------------------------------------------------------------
@njit(**_FAST)
def _fwd_pointwise(rec, xw_t, h_old, h_new, c, y_t, cs_t, lengths, t, training, b0, b1,
                   clip, coupled, gclip, acts, peep):
    """Gate math of blocks [b0, b1) for step t; rec holds the pre-activations.
    acts: gates.make_acts's tuple; peep: None, or the peephole weights [3,Hp] (i, f, o rows).
    Each row works on views of the thread's units (and their gate columns),
    indexed from 0: indexing the whole rows at offsets from b0 measured 20-30%
    slower at B=32, H=128 (and as fast as this when b0 was a compile-time 0).
    A view per row, not per block: at B=1, H=64 views per block made the time
    loop 10% slower."""
    j0, j1, n = b0 * U, b1 * U, b1 - b0
    for r in range(rec.shape[0]):
        c_r, hn, out = c[r, j0:j1], h_new[r, j0:j1], y_t[r, j0:j1]
        if t >= lengths[r]:  # past this sequence's length: hold the state, output zero
            ho = h_old[r, j0:j1]
            for u in range(j1 - j0):
                hn[u] = ho[u]
                out[u] = 0
            if training:
                cs_t[r, j0:j1] = c_r
            continue
        a = rec[r, b0 * CB:b1 * CB]
        if peep is not None:  # ONNX's peepholes: i and f read the old state
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
        if peep is not None:  # o reads the new state: o and h again, with it
            for k in range(n):
                for u in range(U):
                    q, v = k * CB + u, k * U + u
                    o = activate(acts[0], clip_gate(a[q + 3 * U] + peep[2, j0 + v] * c_r[v],
                                                    gclip))
                    hn[v] = out[v] = o * activate(acts[2], c_r[v])
                    if training:
                        xw_t[r, b0 * CB + q + 3 * U] = o


@njit(**_FAST)
def _times_mask(a, mask, out, j0, j1):
    """out[:, j0:j1] = a[:, j0:j1] * mask[:, j0:j1] (the recurrent dropout mask)."""
    for r in range(a.shape[0]):
        for j in range(j0, j1):
            out[r, j] = a[r, j] * mask[r, j]


@njit(**_FAST)
def masked_product(dg_next, W, rec, zero, mask, b0, b1):
    """rec's output blocks [b0, b1) = dG of the step after @ W_hh, times the recurrent
    dropout mask when there is one (h entered the product times it): the gradient
    that reaches a step's h through the recurrent product (LSTM and GRU backward)."""
    _matmul_rows(dg_next, W, rec, zero, False, 0, rec.shape[0], b0, b1)
    if mask.shape[0] > 0:
        _times_mask(rec, mask, rec, b0 * CB, b1 * CB)


@njit(**_FAST)
def _fwd_step(xw, W, hbuf, c, y, cs, rec, lengths, training, s, t, p, P, clip, coupled,
              gclip, acts):
    """Thread p's blocks of step t of the plain layer (no projection, recurrent dropout
    or zoneout): the product, then the gate math. Kept apart from _fwd_step_in, which
    serves the options: at B=1, H=64 each array argument of a per-step call showed."""
    nblk = W.shape[0]
    b0, b1 = p * nblk // P, (p + 1) * nblk // P
    h_old, h_new = hbuf[s & 1], hbuf[(s + 1) & 1]
    _matmul_rows(h_old, W, rec, xw[t], True, 0, rec.shape[0], b0, b1)
    _fwd_pointwise(rec, xw[t], h_old, h_new, c, y[t], cs[t if training else 0], lengths, t,
                   training, b0, b1, clip, coupled, gclip, acts, None)


@njit(parallel=True, **_FAST)
def _forward_tiled(xw, W, hbuf, c, y, cs, rec, lengths, reverse, training, P, clip, coupled,
                   gclip, acts, gate):
    """The plain layer's time loop. xw [T,B,Gp]: x @ W_ih^T + b, receives the
    activated gates when training; W [Gp/CB, Hp, CB]: W_hh^T in blocks; hbuf
    [2,B,Hp]: h0 in hbuf[0], h alternates between the two (threads read all of
    h_old while writing their part of h_new), final h in hbuf[T % 2]; c [B,Hp]
    in/out; y [T,B,Hp] out; cs [T,B,Hp] out when training; rec [B,Gp] scratch; P
    threads per step; clip, coupled: the cell options of gates.lstm_cell; gclip:
    gates.clip_gate's; gate: the thread policy's (threads.py), checked every step.
    _forward_tiled_options adds the projection, recurrent dropout and zoneout."""
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


@njit(**_FAST)
def _matmul_xh(X, Wx, Hm, W, out, bias, r_begin, r_end):
    """Rows [r_begin, r_end) of out = bias + X @ Wx + Hm @ W, every block: the input
    projection fused into the recurrent product (both K short enough for one chunk);
    the second product adds to what the first left in out, still in L1."""
    for blk in range(W.shape[0]):
        tile_block(X, Wx, out, blk, r_begin, r_end, bias, False, 0, X.shape[1])
        tile_block(Hm, W, out, blk, r_begin, r_end, out, True, 0, Hm.shape[1])


@njit(parallel=True, **_FAST)
def _forward_rows(xw, x, W_in, bias, W, hbuf, c, y, cs, rec, lengths, reverse, training, P,
                  clip, coupled, gclip, acts, fused, gate):
    """_forward_tiled with the batch shared out instead of the units: thread p runs
    its rows through all T steps with all of W_hh (the rows of a batch never meet),
    so the steps need no barrier and no thread touches another's cache lines.
    Arguments as _forward_tiled's, and x [T,B,I], W_in [Gp/CB, I, CB] (W_ih^T in
    blocks) and bias [1,Gp]. fused: each step's product reads x[t] and h together
    (_matmul_xh), so no [T,B,Gp] projection is written and read back, and xw
    only receives the activated gates when training (where _fuse_input says);
    else xw holds the projection made before the loop, as for _forward_tiled.
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
                _matmul_rows(h_old, W, rec, xw[t], True, r0, r1, 0, nblk)
            gates = xw[t if training or not fused else 0]
            _fwd_pointwise(rec[r0:r1], gates[r0:r1], h_old[r0:r1], h_new[r0:r1], c[r0:r1],
                           y[t][r0:r1], cs[t if training else 0][r0:r1], lengths[r0:r1], t,
                           training, 0, nblk, clip, coupled, gclip, acts, None)
        finished(gate, p)
    region_done(gate, start)


@njit(**_FAST)
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
        _times_mask(h_new, mask, hm_new, j0, j1)


@njit(**_FAST)
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


@njit(**_FAST)
def _fwd_step_in(xw, W, h_in, h_old, h_new, y_t, c, cs, rec, lengths, training, t, p, P,
                 clip, coupled, gclip, acts, peep, hm_new, mask, mask_here):
    """Thread p's blocks of step t: rec = xw[t] + h_in @ W_hh^T, then the gate math
    (_fwd_pointwise, which writes o * tanh(c) to h_new and y_t); with mask_here,
    also hm_new = h_new * mask for its units, the next step's h_in."""
    nblk = W.shape[0]
    b0, b1 = p * nblk // P, (p + 1) * nblk // P
    _matmul_rows(h_in, W, rec, xw[t], True, 0, rec.shape[0], b0, b1)
    _fwd_pointwise(rec, xw[t], h_old, h_new, c, y_t, cs[t if training else 0], lengths, t,
                   training, b0, b1, clip, coupled, gclip, acts, peep)
    if mask_here:
        _times_mask(h_new, mask, hm_new, b0 * U, b1 * U)


@njit(**_FAST)
def _proj_step(m, Wp, h_old, h_new, y_t, zero, lengths, t, p, P, hm_new, mask, masked, zh_t):
    """Thread p's blocks of the projection, h' = m @ W_hr^T, then zoneout's
    h' <- h' + zh (h - h') (zh_t [B,Pp], or [1,0]: none); rows past their length
    hold h and output zero; when masked, hm_new = h' * mask for these blocks."""
    nblk = Wp.shape[0]
    b0, b1 = p * nblk // P, (p + 1) * nblk // P
    _matmul_rows(m, Wp, h_new, zero, False, 0, m.shape[0], b0, b1)
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
        _times_mask(h_new, mask, hm_new, b0 * CB, b1 * CB)


@njit(parallel=True, **_FAST)
def _forward_tiled_options(xw, W, Wp, hbuf, hmbuf, mask, m, c, y, cs, rec, zero, lengths,
                           reverse, training, P, clip, coupled, gclip, acts, peep, czs, zc, zh,
                           c_old, gate):
    """xw [T,B,Gp]: x @ W_ih^T + b, receives the activated gates when training;
    W [Gp/CB, Pp, CB]: W_hh^T in blocks; hbuf [2,B,Pp]: h0 in hbuf[0], h
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


@njit(**_FAST)
def _step_tiled(x, w_in, bias, w_fwd, h, c, h_new, y, rec, lengths, clip, coupled, gclip, acts):
    """One inference step on one thread, for streaming: rec = bias + x @ W_ih^T +
    h @ W_hh^T, then the gate math; c is updated in place, h' goes to h_new and y
    (a scratch: with y = h_new the unit loop's stores overlap, and a step at B=1,
    H=64 took about 1 us more)."""
    B, nblk = x.shape[0], w_fwd.shape[0]
    _matmul_rows(x, w_in, rec, bias, False, 0, B, 0, nblk)
    _matmul_rows(h, w_fwd, rec, rec, True, 0, B, 0, nblk)
    _fwd_pointwise(rec, rec, h, h_new, c, y, c, lengths, 0, False, 0, nblk, clip, coupled, gclip,
                   acts, None)


# -- backward, float32 tiled -----------------------------------------------------------
@njit(inline="always", **_FAST)
def step_before(seq, first, reverse, t):
    """seq [T,B,N] at the step before t in the forward's order, or first [B,N] where t
    is the first step (the backward's gate gradients read a row's initial state at
    its first step in any case): the cell states for the LSTM, the outputs for the
    GRU."""
    if reverse:
        return seq[t + 1] if t + 1 < seq.shape[0] else first
    return seq[t - 1] if t > 0 else first


@njit(**_FAST)
def _bwd_pointwise(dg_t, cs_t, cz_prev, c0, dy_t, rec, dh_n, dc, lengths, reverse, t, b0, b1,
                   clip, coupled, gclip, acts, peep):
    """Gate gradients of step t for the hidden units of output blocks [b0, b1)
    (HB units each). dg_t [B,Gp] holds the activated gates and receives dG; cs_t
    [B,Hp]: step t's new cell values; cz_prev [B,Hp]: the state the step before
    (in the forward's order) passed on (cs there, unless zoneout kept part of
    the old one; c0 when there is none), c0 where it is a row's first step.
    acts, peep: as _fwd_pointwise's."""
    gated = gclip < np.inf
    bounds = gate_clip_bounds(gclip, np.float32(0), acts)  # (the tiled kernels are float32)
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
        # views of the row's units [j0, j1) and their gate columns (see _fwd_pointwise)
        j0, j1 = b0 * HB, b1 * HB
        gates, dc_r = dg_t[r, 4 * j0:4 * j1], dc[r, j0:j1]
        c_r, cp, dy_r, dh_r = cs_t[r, j0:j1], c_prev[j0:j1], dy_t[r, j0:j1], dh_in[j0:j1]
        for k in range(b1 * HB // U - b0 * HB // U):
            for u in range(U):
                q, v = k * CB + u, k * U + u
                i, f, g, o = gates[q], gates[q + U], gates[q + 2 * U], gates[q + 3 * U]
                cc = c_r[v]
                di, df, dg, do, dcc = lstm_cell_grads(
                    dc_r[v], dy_r[v] + dh_r[v], i, f, g, o, activate(acts[2], cc), cp[v], cc,
                    clip, coupled, acts, peephole_at(peep, j0 + v), bounds, gated)
                gates[q], gates[q + U], gates[q + 2 * U], gates[q + 3 * U] = di, df, dg, do
                dc_r[v] = dcc


@njit(**_FAST)
def _bwd_step(dg, cs, c0, dy, W, rec, zero, dh_n, dc, lengths, reverse, s, t, t_prev, p, P,
              clip, coupled, gclip, acts):
    nblk = W.shape[0]
    b0, b1 = p * nblk // P, (p + 1) * nblk // P
    if s > 0:
        _matmul_rows(dg[t_prev], W, rec, zero, False, 0, rec.shape[0], b0, b1)
    _bwd_pointwise(dg[t], cs[t], step_before(cs, c0, reverse, t), c0, dy[t], rec, dh_n, dc,
                   lengths, reverse, t, b0, b1, clip, coupled, gclip, acts, None)


@njit(parallel=True, **_FAST)
def _backward_tiled(dg, cs, c0, dy, W, rec, dh_n, dc, lengths, reverse, P, clip, coupled,
                    gclip, acts, gate):
    """The plain layer's backward loop. dg [T,B,Gp]: activated gates in, dG out;
    cs [T,B,Hp]; c0, dh_n [B,Hp]; dy [T,B,Hp]; W [Hp/CB, Gp, CB]: W_hh in blocks of
    output units; rec [B,Hp] scratch (dh from the step after); dc [B,Hp]: dc_n in,
    dc0 out; gate: the thread policy's. _backward_tiled_options adds the options."""
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


@njit(parallel=True, **_FAST)
def _backward_rows(dg, cs, c0, dy, W, rec, dh_n, dc, lengths, reverse, P, clip, coupled,
                   gclip, acts, dgb, gate):
    """_backward_tiled with the batch shared out instead of the units (see
    _forward_rows). Arguments as _backward_tiled's, and dgb [Gp/CB, T*B, CB],
    which receives dG in the products' blocked layout (_to_blocks's), each row
    copied while it is in cache (the weight gradients read it; a pass of its
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
                _matmul_rows(dg[t - 1 if reverse else t + 1], W, rec, zero, False, r0, r1, 0,
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


@njit(**_FAST)
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


@njit(**_FAST)
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


@njit(**_FAST)
def _bwd_proj_cell(dg, cs, czs, c0, dhs, Wpb, dm, zero, zero_b, dc, lengths, reverse, t, p, P,
                   clip, coupled, gclip, acts, peep, zc, kc):
    """With a projection, thread p's blocks of hidden units: dm = dhs[t] @ W_hr, the
    gradient of o * tanh(c), then the gate gradients from it. With zoneout (zc
    [T or 1,B,Hp]; [1,1,0] none), the part zc of dc passes to the step before
    unchanged (kc: scratch)."""
    nblk = Wpb.shape[0]
    b0, b1 = p * nblk // P, (p + 1) * nblk // P
    _matmul_rows(dhs[t], Wpb, dm, zero, False, 0, dm.shape[0], b0, b1)
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


@njit(parallel=True, **_FAST)
def _backward_tiled_options(dg, cs, c0, dy, W, Wpb, rec, dhs, dm, dh_n, dc, lengths, reverse,
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


@njit(parallel=True, **_FAST)
def _cell_outputs(gates, cs, lengths, acts, out):
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


# -- float64 (and layer_norm): BLAS per step ---------------------------------------------
def _dot(a, b):
    """a @ b with the BLAS the time loop's np.dot calls (SciPy's, through Numba), not
    NumPy's: two OpenBLAS thread pools, one spinning after its call while the other
    starts, made the layer-normalised forward at T=128, B=16, H=256 2.6x slower
    (57 ms in the loop against 22 alone). Either operand may be a transpose."""
    a = a if a.flags.c_contiguous or a.flags.f_contiguous else np.ascontiguousarray(a)
    b = b if b.flags.c_contiguous or b.flags.f_contiguous else np.ascontiguousarray(b)
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
    if out.size:
        _dot_into(a, b, out)
    return out


def _tiled_dot(a, b):
    """a @ b (float32) on Numba's threads, in the tiled product (_matmul), b copied to
    _blocks's layout first; for the products around the layer-normalised float32
    loop, which keeps off BLAS (see _dot)."""
    a = a if a.flags.c_contiguous or a.flags.f_contiguous else np.ascontiguousarray(a)
    w = _blocks(b)
    out = np.empty((a.shape[0], w.shape[0] * CB), np.float32)
    _matmul(a, w, out, np.zeros((1, out.shape[1]), np.float32), False)
    return out[:, :b.shape[1]]


def product_for(dtype):
    """The matrix product the BLAS paths use around their loops: _tiled_dot (Numba's
    threads) for float32, whose loops keep off BLAS, _dot (SciPy's BLAS, the one
    their np.dot calls) for float64."""
    return _tiled_dot if np.dtype(dtype) == np.float32 else _dot


def _step_plan(B, units, blocks):
    """_step_product's plan for B rows and a W of `blocks` blocks: (rows a task,
    tasks a block, threads (_threads's), the thread policy's gate)."""
    P = _threads(B, units, max(1, blocks))
    rows, chunks = _row_chunks(B, max(1, blocks), P)
    return rows, chunks, P, POLICY.gate()


def step_tiles(packed, B, recurrent, projection):
    """The BLAS loops' tiles argument (this module's _forward_blas and _backward_blas,
    gru.py's): None where packed["tiles"] is (float64), else (the two weights
    packed["tiles"][recurrent] and [projection] in blocks, a zero row as wide as
    their outputs, and each product's _step_product plan for B rows)."""
    tiles = packed["tiles"]
    if tiles is None:
        return None
    w, wp = tiles[recurrent], tiles[projection]
    zero = np.zeros((1, max(w.shape[0], wp.shape[0], 1) * CB), np.float32)
    return (w, wp, zero, _step_plan(B, packed["H"], w.shape[0]),
            _step_plan(B, packed["H"], wp.shape[0]))


@njit(cache=True)
def _dot_into(a, b, out):
    if a.shape[1] == 0:  # (BLAS leaves out alone for an empty sum)
        out[:] = 0
    else:
        np.dot(a, b, out)


@njit(**_FAST)
def _step_product(A, W, out, zero, plan):
    """out = A @ W (W in _blocks's layout) on Numba's threads, for a step of the
    layer-normalised float32 loop: plan (rows a task, tasks a block, threads, the
    thread policy's gate), on one thread where _threads says so or the gate holds."""
    rows, chunks, P, gate = plan
    if P == 1 or not parallel_ok(gate):
        _matmul_rows(A, W, out, zero, False, 0, A.shape[0], 0, W.shape[0])
    else:
        start = clock_ns()
        _matmul_tasks(A, W, out, zero, False, rows, chunks, gate)
        region_done(gate, start)


@njit(cache=True, error_model="numpy")
def _norm_stats(v):
    """(mean, 1 / sqrt(var + LAYER_NORM_EPS)) of the vector v (the biased variance),
    summed in float64, returned in v's type."""
    mu = 0.0
    for j in range(v.size):
        mu += v[j]
    mu /= v.size
    var = 0.0
    for j in range(v.size):
        var += (v[j] - mu) * (v[j] - mu)
    return v.dtype.type(mu), v.dtype.type(1 / np.sqrt(var / v.size + LAYER_NORM_EPS))


@njit(cache=True, error_model="numpy")
def _normalise_row(v):
    """Layer normalisation without gain, in place: v <- (v - mean) / sigma; returns
    1 / sigma (_norm_stats)."""
    mu, rstd = _norm_stats(v)
    for j in range(v.size):
        v[j] = (v[j] - mu) * rstd
    return rstd


@njit(cache=True, error_model="numpy")
def _normalise_rows(v):
    """_normalise_row of each row of v [N,G], in place (the input product of all the
    steps: no temporary of its size); returns 1 / sigma [N]."""
    rstd = np.empty(v.shape[0], v.dtype)
    for n in range(v.shape[0]):
        rstd[n] = _normalise_row(v[n])
    return rstd


@njit(cache=True, error_model="numpy")
def _norm_grad_rows(dv, v_hat, rstd):
    """_norm_grad of each row of dv [N,G] (v_hat [N,G], rstd [N] as _normalise_rows
    left them), in place."""
    for n in range(dv.shape[0]):
        _norm_grad(dv[n], v_hat[n], rstd[n])


def normalised_input(x, w_ih):
    """The input product of every step, each row layer-normalised without gain
    (the caller's gain and bias follow): x_hat [T,B,G] and 1 / sigma [T*B]."""
    T, B, I = x.shape
    xw = np.ascontiguousarray(product_for(x.dtype)(x.reshape(T * B, I), w_ih.T))
    rstd = _normalise_rows(xw)  # (in place)
    return xw.reshape(T, B, -1), rstd


def normalised_input_gradient(dout, gain, x_hat, rstd):
    """The backward of x_hat * gain + bias (x_hat, rstd: normalised_input's) from dout
    [T,B,G], its gradient: the raw input product's gradient [T*B,G] and the gain's
    [G]."""
    G = dout.shape[-1]
    d2, hat2 = dout.reshape(-1, G), x_hat.reshape(-1, G)
    dv = d2 * gain
    _norm_grad_rows(dv, hat2, rstd)
    return dv, np.einsum("ng,ng->g", d2, hat2)


@njit(**_FAST)
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


@njit(**_FAST)
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
def _forward_blas(xw, w_hh_t, w_hr_t, mask, h, c, lengths, reverse, training, y, cs, clip,
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
    _blocks's layout, a zero row as wide as their outputs, and the two
    products' _step_product plans)."""
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
            _step_product(h_in, tiles[0], rec, tiles[2], tiles[3])
        for b in range(B):
            if t >= lengths[b]:
                y[t, b] = 0
                if training:
                    cs[t, b] = c[b]
                continue
            a, r = xw[t, b], rec[b]
            if ln is not None:  # r <- gain * LN(r)
                rstd = _normalise_row(r[:G])
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
                _normalise_row(n_c)
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
                _step_product(m, tiles[1], hp, tiles[2], tiles[4])
        for b in range(B):
            if t < lengths[b]:
                if proj:
                    if zoned:  # h' = h~ + zh (h - h~), of the projected h~
                        _zone_row(hp[b], h[b], zh[zt, b])
                    h[b] = hp[b, :h.shape[1]]
                y[t, b] = h[b]


@njit(**_FAST)
def _zone_row(new, old, z):
    """new[j] += z[j] (old[j] - new[j]) for j < z.size (zoneout of one row)."""
    for j in range(z.size):
        new[j] += z[j] * (old[j] - new[j])


@njit(cache=True, error_model="numpy")
def _norm_grad(dv, v_hat, rstd):
    """LN's backward, in place: dv (the gradient of v_hat) becomes that of v
    (reference.layer_norm_grad); the means summed in float64, as _norm_stats's."""
    n = dv.size
    mean_dv = 0.0
    mean_dvv = 0.0
    for j in range(n):
        mean_dv += dv[j]
        mean_dvv += dv[j] * v_hat[j]
    mean_dv, mean_dvv = dv.dtype.type(mean_dv / n), dv.dtype.type(mean_dvv / n)
    for j in range(n):
        dv[j] = rstd * (dv[j] - mean_dv - v_hat[j] * mean_dvv)


@njit(**_FAST)
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


@njit(**_FAST)
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


@njit(**_FAST)
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
def _backward_blas(dy, dg, cs, c0, w_hh, w_hr, mask, dhs, lengths, reverse, dh, dc, clip,
                   coupled, gclip, acts, peep, czs, zc, zh, ln, tiles):
    """dg [T,B,G]: activated gates in, dG out; w_hh [G,P]; dh [B,P], dc [B,H]: the
    final state's gradient in, the initial state's out. With a projection (w_hr
    [P,H] of size > 0), dhs [T,B,P] receives the gradient of each step's h; mask
    [B,P]: the forward's recurrent dropout mask (none when its size is 0); czs,
    zc, zh: the forward's zoneout arrays (_forward_blas). ln: None, or (the
    recurrent product's gain [G], the cell's gain and bias [H], h_hat [T,B,G] and
    rstd_h [T,B] as the forward wrote them, and the gradients of the three
    gains and the bias, [G], [H], [H], accumulated); h_hat receives the
    gradient of the (raw) recurrent product, which the step's dh is made from.
    tiles: None, or as _forward_blas's, for W_hh and W_hr (dG @ W_hh, dh @ W_hr)."""
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
                _step_product(dhs[t], tiles[1], dm_wide, tiles[2], tiles[4])
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
                rstd = _normalise_row(c_hat)
                _norm_output_grads_row(a, c_hat, ln[1], ln[2], dm[b], ln[6], ln[7], dcn, acts,
                                       bounds, gated)
                _norm_grad(dcn, c_hat, rstd)
                _norm_grads_row(a, cs[t, b], c_prev, dc[b], dcn, clip, coupled, acts, peep,
                                bounds, gated)
                dr = ln[3][t, b]  # r_hat in, the raw product's gradient out
                for j in range(G):
                    r_hat[j] = dr[j]
                    ln[5][j] += a[j] * dr[j]
                    dr[j] = a[j] * ln[0][j]
                _norm_grad(dr, r_hat, ln[4][t, b])
            if zoned:
                dc[b] += kc[b]
        d_rec = dg[t] if ln is None else ln[3][t]
        if tiles is None:
            np.dot(d_rec, w_hh, rec)
        else:
            _step_product(d_rec, tiles[0], rec, tiles[2], tiles[3])
        for b in range(B):
            if t < lengths[b]:
                dh[b] = rec[b, :P] * mask[b] if mask.size > 0 else rec[b, :P]
                if zoned:
                    dh[b] += kh[b]


# -- packing and the Python-level wrappers ---------------------------------------------
def _gate_columns(H):
    """cols[j]: the tiled column of torch's gate column j (gate k = j // H, unit j % H)."""
    k, u = np.divmod(np.arange(4 * H), H)
    return (u // U) * CB + k * U + u % U


_SMALL = 1 << 15  # elements: below, layout copies use NumPy (no parallel region's few us)


def _blocks(a):
    """[K,N] -> [N/CB, K, CB]: the columns of each block of CB contiguous, as
    _tile reads them. N is padded with zeros to a multiple of CB. Past _SMALL
    elements and one block the copy is _to_blocks's parallel one (dG at T=64,
    B=32, H=128, [2048 x 512]: 0.28 ms, NumPy's strided copy 0.52 ms); one block
    is a itself (padded), no copy."""
    a = _pad(a, -(-a.shape[1] // CB) * CB)
    K, N = a.shape
    if a.size <= _SMALL or N == CB:
        return np.ascontiguousarray(a.reshape(K, N // CB, CB).transpose(1, 0, 2))
    out = np.empty((N // CB, K, CB), a.dtype)
    serial_if(a.size <= SMALL_REGION, _to_blocks, a, out)
    return out


def pack_lstm_cpu(w_ih, w_hh, b_ih, b_hh, w_hr=None, peephole=None, ln_ih=None, ln_hh=None,
                  ln_c=None, ln_c_bias=None, cell_clip=None, input_forget=False,
                  gate_clip=None, acts=DEFAULT_ACTS):
    """One cell's torch-layout weights (w_ih [G,I], w_hh [G,P], b_ih, b_hh [G], the
    projection w_hr [P,H] or None (P = H), the peepholes [3H] (i, f, o) or None,
    layer normalisation's gains ln_ih, ln_hh [G], ln_c [H] and bias ln_c_bias [H],
    or None) and options (gates.lstm_cell's and lstm_cell_grads's; acts
    gates.make_acts's tuple) -> the layout these kernels read: a dict, "tiled" for
    float32, "blas" for float64 and for layer normalisation in either dtype."""
    G, I = w_ih.shape
    H = G // 4
    P = H if w_hr is None else w_hr.shape[0]
    bias = b_ih + b_hh
    options = dict(clip=float(np.inf if cell_clip is None else cell_clip),
                   coupled=bool(input_forget),
                   gclip=float(np.inf if gate_clip is None else gate_clip),
                   proj=w_hr is not None, acts=for_dtype(acts, w_ih.dtype))
    if w_ih.dtype != np.float32 or ln_ih is not None:
        no_proj = np.zeros((0, 0), w_ih.dtype)
        norms = None if ln_ih is None else tuple(
            np.ascontiguousarray(a) for a in (ln_ih, ln_hh, ln_c, ln_c_bias))
        # float32's layer_norm keeps off BLAS: its products run on Numba's threads, as
        # every other float32 loop's do (see _dot).
        tiles = None if w_ih.dtype != np.float32 else dict(
            w_fwd=_blocks(w_hh.T), w_bwd=_blocks(w_hh),
            w_proj=_blocks(w_hr.T) if w_hr is not None else np.zeros((0, 1, CB), np.float32),
            w_proj_bwd=(_blocks(w_hr) if w_hr is not None else
                        np.zeros((0, 1, CB), np.float32)))
        return dict(kind="blas", H=H, P=P, w_ih=w_ih, w_hh=w_hh, bias=bias, ln=norms,
                    tiles=tiles,
                    w_hh_t=np.ascontiguousarray(w_hh.T),
                    w_hr=no_proj if w_hr is None else np.ascontiguousarray(w_hr),
                    w_hr_t=no_proj if w_hr is None else np.ascontiguousarray(w_hr.T),
                    peep=None if peephole is None else np.array(peephole.reshape(3, H)),
                    **options)
    Hp = -(-H // HB) * HB
    Pp = -(-P // HB) * HB
    Gp = 4 * Hp
    cols = _gate_columns(H)
    w_ih_p = np.zeros((Gp, I), np.float32)
    w_ih_p[cols] = w_ih
    bias_p = np.zeros((1, Gp), np.float32)
    bias_p[0, cols] = bias
    w_hh_p = np.zeros((Gp, Pp), np.float32)
    w_hh_p[cols, :P] = w_hh
    w_hr_p = np.zeros((Pp, Hp), np.float32)
    if w_hr is not None:
        w_hr_p[:P, :H] = w_hr
    no_blocks = np.zeros((0, 1, CB), np.float32)
    return dict(
        kind="tiled", H=H, Hp=Hp, P=P, Pp=Pp, cols=cols, bias=bias_p, **options,
        peep=None if peephole is None else _pad(peephole.reshape(3, H).astype(np.float32), Hp),
        w_in=_blocks(w_ih_p.T),   # [Gp/CB, I, CB]: x @ W_ih^T
        w_fwd=_blocks(w_hh_p.T),  # [Gp/CB, Pp, CB]: h @ W_hh^T
        w_bwd=_blocks(w_hh_p),    # [Pp/CB, Gp, CB]: dG @ W_hh
        w_dx=_blocks(w_ih_p),     # [Ip/CB, Gp, CB]: dG @ W_ih, I padded to Ip
        # [Pp/CB, Hp, CB]: m @ W_hr^T and [Hp/CB, Pp, CB]: dh @ W_hr (no blocks: none)
        w_proj=no_blocks if w_hr is None else _blocks(w_hr_p.T),
        w_proj_bwd=no_blocks if w_hr is None else _blocks(w_hr_p))


def _threads(B, Hp, nblk):
    """Threads per step: all of Numba's, unless the step is too small to share."""
    if Hp < PARALLEL_MIN_UNITS and 2 * B * Hp * 4 * Hp < PARALLEL_MIN_FLOPS:
        return 1
    return max(1, min(numba_threads(), nblk))


def _split_rows(B, Hp, P, gates=4):
    """Whether the plain layer's time loops share the batch among the P threads
    (_forward_rows) rather than the units (_forward_tiled): from 8 rows a thread,
    while W_hh fits in a core's L2 (ROW_SPLIT_MAX_BYTES), and from 2 rows a thread
    while it is small (ROW_SPLIT_SMALL_BYTES: H <= 128), where streaming all of it
    per thread costs less than a barrier per step. Measured on 2 cores, training
    step: B=32, H=128 20% and B=128, H=256 9% faster; B=8 and H >= 512 no
    faster, B=16, H=1024 19% slower (each thread streams all of W_hh). On 2 Zen 3
    cores (AVX2), medians of 3 rounds, units -> rows: T=200, B=8, I=40, H=96
    inference 4.77 -> 3.48 ms, training 16.4 -> 12.7 ms; T=100, B=4, I=64, H=128
    inference 1.41 -> 0.93, training 5.0 -> 3.7; B=8, H=256 training 18.2 ->
    20.9 (so not there). gates: W_hh's rows per hidden unit (4: LSTM, 3: GRU)."""
    if ROW_SPLIT is not None:
        return P > 1 and ROW_SPLIT
    w_bytes = Hp * gates * Hp * 4
    return P > 1 and ((B >= 8 * P and w_bytes <= ROW_SPLIT_MAX_BYTES)
                      or (B >= 2 * P and w_bytes <= ROW_SPLIT_SMALL_BYTES))


def _rows_plan(T, B, Hp, P, gates=4):
    """(threads, whether to share out the batch) for a plain time loop of T steps,
    given P, the units split's threads (_threads): the batch split, where
    _split_rows allows it, runs on all of Numba's threads whatever the size of a
    step, as it pays one parallel region for all the steps rather than a barrier
    per step (T=1024, B=16, H=64 inference: 15.7 ms on one thread, 6.1 on two),
    unless all the steps' recurrent products together are under
    PARALLEL_MIN_FLOPS: work that fits one thread enters no parallel region."""
    pool = numba_threads()
    if _split_rows(B, Hp, pool, gates) and 2 * T * B * gates * Hp * Hp >= PARALLEL_MIN_FLOPS:
        return pool, True
    return P, False


def _fuse_input(B, I, Hp, P):
    """Whether the rows split projects the inputs inside its loop (_forward_rows)
    rather than in one product before it: while W_ih and W_hh together fit in L2
    (ROW_SPLIT_MAX_BYTES), or from FUSED_MIN_ROWS rows a thread. Measured on 2
    cores, T=128, median ms, before -> fused: B=32, I=32, H=128 (T=64) training
    9.4 -> 8.2, inference 2.7 -> 1.8; B=128, I=H=64 inference 10.1 -> 5.8;
    B=128, I=H=256 training 330 -> 293; B=16, I=H=128 inference 3.7 -> 3.3. With
    I=H=256 at B=16 and 32 (a 2 MiB W streamed for 8 or 16 rows) inference was
    10-30% slower fused, and at B=64 10% faster."""
    if FUSE_INPUT is not None:
        return FUSE_INPUT
    return (I + Hp) * 4 * Hp * 4 <= ROW_SPLIT_MAX_BYTES or B >= FUSED_MIN_ROWS * P


def _pad(a, Hp):
    """[..., H] -> [..., Hp] with zeros (the array itself when H == Hp)."""
    H = a.shape[-1]
    if H == Hp:
        return np.ascontiguousarray(a)
    out = np.zeros(a.shape[:-1] + (Hp,), a.dtype)
    out[..., :H] = a
    return out


def mask_buffers(h_mask, hbuf):
    """The tiled loops' recurrent dropout arguments: the mask padded to hbuf's units
    and the double buffer of h * mask the products read (h0's in its first half);
    for h_mask None, an empty mask and hbuf itself (unread)."""
    if h_mask is None:
        return _NO_MASK, hbuf
    mask = _pad(h_mask.astype(np.float32), hbuf.shape[2])
    hmbuf = np.empty_like(hbuf)
    hmbuf[0] = hbuf[0] * mask
    return mask, hmbuf


def _lengths_or_full(lengths, T, B):
    if lengths is None:
        return np.full(B, T, np.int64)
    return np.ascontiguousarray(lengths, dtype=np.int64)


def lstm_forward_cpu(x, packed, h0, c0, lengths=None, reverse=False, training=False,
                     h_mask=None, zone_c=None, zone_h=None):
    """One LSTM layer and direction on the CPU.

    x: [T,B,I] C-contiguous; packed: pack_lstm_cpu(...) of the same dtype;
    h0 [B,P], c0 [B,H] (P = H without a projection); lengths: [B] ints in [0, T],
    or None for all T; h_mask: None, or [B,P] multiplying h where it enters the
    recurrent product at every step (recurrent dropout, reference.lstm_forward_ref);
    zone_c, zone_h: None, or zoneout's weights of c [T,B,H] and h [T,B,P] (or [1,B,H]
    and [1,B,P], the same at every step).
    Returns y [T,B,P], h_n [B,P], c_n [B,H] and, when training, the cache that
    lstm_backward_cpu consumes (else None).
    """
    T, B, I = x.shape
    H, Pu = packed["H"], packed["P"]
    if (T == 1 and not training and lengths is None and h_mask is None and zone_c is None
            and packed["kind"] == "tiled" and not packed["proj"] and packed["peep"] is None):
        # One inference step: the streaming step's single compiled call (the same sums).
        h, c = lstm_step_cpu(x[0], packed, h0, c0)
        return h[None], h.copy(), c, None
    lens = _lengths_or_full(lengths, T, B)
    ln_cache = None  # layer_norm's arrays for the backward
    if packed["kind"] == "blas":
        norms, ln = packed["ln"], None
        if norms is None:
            xw = product_for(x.dtype)(x.reshape(T * B, I), packed["w_ih"].T).reshape(T, B, -1)
        else:  # the input product normalised before the loop
            x_hat, rstd_x = normalised_input(x, packed["w_ih"])
            G = x_hat.shape[2]
            xw = x_hat * norms[0]
            h_hat, rstd_h = (np.empty((T, B, G), x.dtype), np.empty((T, B), x.dtype)) if (
                training) else (np.empty((0, 0, 0), x.dtype), np.empty((0, 0), x.dtype))
            ln = norms[1:] + (h_hat, rstd_h)
            ln_cache = dict(x_hat=x_hat, rstd_x=rstd_x, h_hat=h_hat, rstd_h=rstd_h)
        xw += packed["bias"]
        h, c = h0.copy(), c0.copy()
        y = np.empty((T, B, Pu), x.dtype)
        cs = np.empty((T, B, H) if training else (0, 0, 0), x.dtype)
        mask = np.zeros((0, 0), x.dtype) if h_mask is None else np.ascontiguousarray(h_mask)
        zc, zh = _zone_weights(zone_c, H, x.dtype), _zone_weights(zone_h, Pu, x.dtype)
        czs = np.empty_like(cs) if training and zone_c is not None else cs
        _forward_blas(xw, packed["w_hh_t"], packed["w_hr_t"], mask, h, c, lens, reverse,
                      training, y, cs, packed["clip"], packed["coupled"], packed["gclip"],
                      packed["acts"], packed["peep"], czs, zc, zh, ln,
                      step_tiles(packed, B, "w_fwd", "w_proj"))
        y_out, c0_kept = y, c0
    else:
        Hp, Pp = packed["Hp"], packed["Pp"]
        hbuf = np.zeros((2, B, Pp), np.float32)
        hbuf[0, :, :Pu] = h0
        c0_kept = _pad(c0, Hp)
        c = c0_kept.copy()
        y = np.empty((T, B, Pp), np.float32)
        cs = np.empty((T, B, Hp) if training else (1, 1, 1), np.float32)
        rec = np.empty((B, 4 * Hp), np.float32)
        plain = (h_mask is None and zone_c is None and not packed["proj"]
                 and packed["peep"] is None)
        P, rows = _threads(B, Hp, packed["w_fwd"].shape[0]), False
        gate = POLICY.gate()
        if plain:
            P, rows = _rows_plan(T, B, Hp, P)
        mask, zc, zh, czs = _NO_MASK, _NO_ZONE[np.dtype(np.float32)], None, cs
        if not plain:  # (at B=1 a plain call's microseconds show: it makes none of these)
            m = np.empty((B, Hp) if packed["proj"] else (1, 1), np.float32)
            zero = np.zeros((1, Pp), np.float32)
            mask, hmbuf = mask_buffers(h_mask, hbuf)
            zc, zh = _zone_weights(zone_c, Hp, np.float32), _zone_weights(zone_h, Pp,
                                                                           np.float32)
            czs = np.empty_like(cs) if training and zone_c is not None else cs
            c_old = np.empty((B, Hp), np.float32) if zone_c is not None else _NO_ARRAY
        if rows and _fuse_input(B, I, Hp, P):
            # one loop with the input projection inside it; xw receives the gates
            xw = np.empty((T if training else 1, B, 4 * Hp), np.float32)
            _forward_rows(xw, x, packed["w_in"], packed["bias"], packed["w_fwd"], hbuf, c, y,
                          cs, rec, lens, reverse, training, P, packed["clip"],
                          packed["coupled"], packed["gclip"], packed["acts"], True, gate)
            if T & 1:  # the state ended in hbuf[1]
                hbuf[0] = hbuf[1]
        else:
            steps = T if training else max(1, INFERENCE_CHUNK_BYTES // (B * 4 * Hp * 4))
            xw = np.empty((min(steps, T), B, 4 * Hp), np.float32)
            # Chunks in the order the direction walks the steps; the state carries over.
            starts = range(0, T, steps)
            for t0 in (reversed(starts) if reverse else starts):
                t1 = min(t0 + steps, T)
                chunk = xw[:t1 - t0]
                _matmul(x[t0:t1].reshape(-1, I), packed["w_in"], chunk.reshape(-1, 4 * Hp),
                        packed["bias"], False)
                if rows:
                    _forward_rows(chunk, x[t0:t1], packed["w_in"], packed["bias"],
                                  packed["w_fwd"], hbuf, c, y[t0:t1],
                                  cs[t0:t1] if training else cs, rec, lens - t0, reverse,
                                  training, P, packed["clip"], packed["coupled"],
                                  packed["gclip"], packed["acts"], False, gate)
                elif plain:
                    _forward_tiled(chunk, packed["w_fwd"], hbuf, c, y[t0:t1],
                                   cs[t0:t1] if training else cs, rec, lens - t0, reverse,
                                   training, P, packed["clip"], packed["coupled"],
                                   packed["gclip"], packed["acts"], gate)
                else:
                    _forward_tiled_options(
                        chunk, packed["w_fwd"], packed["w_proj"], hbuf, hmbuf, mask, m, c,
                        y[t0:t1], cs[t0:t1] if training else cs, rec, zero, lens - t0, reverse,
                        training, P, packed["clip"], packed["coupled"], packed["gclip"],
                        packed["acts"], packed["peep"], czs,
                        zc if zc.shape[0] == 1 else zc[t0:t1],
                        zh if zh.shape[0] == 1 else zh[t0:t1], c_old, gate)
                if (t1 - t0) & 1:  # the state ended in hbuf[1]; the next chunk reads hbuf[0]
                    hbuf[0] = hbuf[1]
                    if not plain:
                        hmbuf[0] = hmbuf[1]
        h = hbuf[0, :, :Pu].copy()
        c = c[:, :H].copy()
        y_out = y if Pp == Pu else np.ascontiguousarray(y[:, :, :Pu])
    if not training:
        return y_out, h, c, None
    cache = dict(x=x, h0=h0, c0=c0_kept, lengths=lens, reverse=reverse, gates=xw, cs=cs, y=y,
                 mask=mask, czs=czs, zc=zc, zh=zh, ln=ln_cache)
    return y_out, h, c, cache


# Stand-ins for the arrays of an option not in use (read by no kernel): made once,
# since at B=1 a call's few microseconds of allocations show.
_NO_ARRAY = np.zeros((1, 1), np.float32)
_NO_MASK = np.zeros((0, 0), np.float32)  # (a recurrent dropout mask of size 0: none)
_NO_ZONE = {np.dtype(d): np.ones((1, 1, 0), d) for d in (np.float32, np.float64)}


def _zone_weights(zone, width, dtype):
    """Zoneout's weights of one state for the kernels, padded to `width` units, or
    [1,1,0] meaning none (no unit: H = 1 is a real width, on the unpadded paths)."""
    if zone is None:
        return _NO_ZONE[np.dtype(dtype)]
    return _pad(np.asarray(zone).astype(dtype, copy=False), width)


def _ones(B, _cache={}):
    """np.ones(B, int64), the full lengths of a step, made once per B (read only)."""
    ones = _cache.get(B)
    if ones is None:
        ones = _cache[B] = np.ones(B, np.int64)
    return ones


def lstm_step_cpu(x, packed, h, c):
    """One inference step, for streaming: x [B,I], h, c [B,H] -> h', c' [B,H]
    (new arrays; the inputs are not modified). Equal to lstm_forward_cpu on one
    step, without its parallel regions and training buffers: a few microseconds
    at B=1, H=64."""
    if packed["kind"] == "blas" or packed["proj"] or packed["peep"] is not None:
        # (a one-step forward, which may enter parallel regions: the thread policy's)
        _, h, c, _ = thread_policy(lstm_forward_cpu, x[None], packed, h, c)
        return h, c
    H, Hp = packed["H"], packed["Hp"]
    B = x.shape[0]
    c_new = np.zeros((B, Hp), np.float32)
    c_new[:, :H] = c
    h_new = np.empty((B, Hp), np.float32)
    _step_tiled(x, packed["w_in"], packed["bias"], packed["w_fwd"], _pad(h, Hp), c_new, h_new,
                np.empty((B, Hp), np.float32), np.empty((B, 4 * Hp), np.float32),
                _ones(B), packed["clip"], packed["coupled"], packed["gclip"], packed["acts"])
    return h_new[:, :H], c_new[:, :H]


def lstm_backward_cpu(dy, dh_n, dc_n, cache, packed):
    """Backward of lstm_forward_cpu; consumes (overwrites) the cache's gates.

    dy: [T,B,P]; dh_n [B,P], dc_n [B,H]; packed: the weights the forward used.
    Returns dx [T,B,I], dh0 [B,P], dc0 [B,H] and {"w_ih", "w_hh", "b_ih", "b_hh"}
    (and "w_hr" with a projection) in torch's layout.
    """
    if packed["kind"] == "blas":
        return _backward_blas_wrap(dy, dh_n, dc_n, cache, packed)
    x, y, lens, reverse = cache["x"], cache["y"], cache["lengths"], cache["reverse"]
    T, B, I = x.shape
    H, Hc, Pu, proj = packed["H"], packed["Hp"], packed["P"], packed["proj"]
    dg = cache["gates"]
    Gp, Hp = dg.shape[2], y.shape[2]  # Hp: the units of h (Pp with a projection)
    Ip = packed["w_dx"].shape[0] * CB
    dh_np = _pad(dh_n, Hp)
    dc = _pad(dc_n, Hc).copy()
    rec = np.empty((B, Hp), np.float32)
    P = _threads(B, Hc, packed["w_bwd"].shape[0])
    if proj:  # the projection's input, before the loop overwrites the gates
        m_all = np.empty((T, B, Hc), np.float32)
        serial_if(m_all.size <= SMALL_REGION, _cell_outputs, dg, cache["cs"], lens, packed["acts"],
                  m_all)
    dhs = np.empty((T, B, Hp) if proj else (1, 1, 1), np.float32)
    dm = np.empty((B, Hc) if proj else (1, 1), np.float32)
    mask = cache["mask"]
    masked = mask.shape[0] > 0
    zoned = cache["zc"].shape[2] > 0
    kh, dhz, zb = ((np.zeros((B, Hp), np.float32) for _ in range(3)) if zoned else
                   (_NO_ARRAY,) * 3)
    kc = np.zeros((B, Hc), np.float32) if zoned else _NO_ARRAY
    dgb = None  # dG in blocks, the weight gradients' operand (_blocks's layout)
    P_rows, rows = _rows_plan(T, B, Hc, P)
    peep = packed["peep"]
    if proj or masked or zoned or peep is not None:
        _backward_tiled_options(dg, cache["cs"], cache["c0"], _pad(dy, Hp), packed["w_bwd"],
                                packed["w_proj_bwd"], rec, dhs, dm, dh_np, dc, lens, reverse, P,
                                packed["clip"], packed["coupled"], packed["gclip"],
                                packed["acts"], peep, mask,
                                cache["czs"], cache["zc"], cache["zh"], kh, kc, dhz, zb,
                                POLICY.gate())
    elif rows:  # (the loop writes dgb as it goes)
        dgb = np.empty((Gp // CB, T * B, CB), np.float32)
        _backward_rows(dg, cache["cs"], cache["c0"], _pad(dy, Hp), packed["w_bwd"], rec, dh_np,
                       dc, lens, reverse, P_rows, packed["clip"], packed["coupled"],
                       packed["gclip"], packed["acts"], dgb, POLICY.gate())
    else:
        _backward_tiled(dg, cache["cs"], cache["c0"], _pad(dy, Hp), packed["w_bwd"], rec, dh_np,
                        dc, lens, reverse, P, packed["clip"], packed["coupled"], packed["gclip"],
                        packed["acts"], POLICY.gate())
    dh = _first_step_dh(dg, lens, reverse, packed["w_bwd"])
    if masked:
        dh *= mask
    if zoned:
        dh += kh  # zoneout's kept part of the first steps' dh
    empty = lens == 0
    dh[empty] = dh_np[empty]
    dg2 = dg.reshape(T * B, Gp)
    dx = _input_gradient(dg2, packed["w_dx"])
    if dgb is None:
        dgb = _blocks(dg2)
    grads = _weight_gradients(dgb, x, y, cache["h0"], _first_steps(lens, reverse), mask,
                              reverse, packed["cols"], Pu)
    if peep is not None:
        gate = dg.reshape(T, B, Gp // CB, 4, U)  # [..., gate, unit of the block]
        grads["peephole"] = _peephole_gradients(
            gate[:, :, :, 0], gate[:, :, :, 1], gate[:, :, :, 3], cache["cs"], cache["czs"],
            cache["c0"], lens, reverse, (T, B, Hc // U, U))[:, :H].reshape(-1)
    if proj:  # dW_hr = sum over steps and rows of dh^T m
        dhs_t = np.empty((Hp, T * B), np.float32)
        serial_if(dhs.size <= SMALL_REGION, _transpose, dhs.reshape(T * B, Hp), dhs_t, _NO_MASK)
        dw_hr = np.empty((Hp, Hc), np.float32)
        _matmul(dhs_t, _blocks(m_all.reshape(T * B, Hc)), dw_hr, np.zeros((1, Hc), np.float32),
                False)
        grads["w_hr"] = dw_hr[:Pu, :H]
    dx = dx.reshape(T, B, Ip)[:, :, :I]
    return (np.ascontiguousarray(dx), np.ascontiguousarray(dh[:, :Pu]),
            np.ascontiguousarray(dc[:, :H]), grads)


def _transpose_into(a, out, col0, small):
    """out[:N, col0:col0 + M] = a.T for a [M,N]."""
    if small:
        out[:a.shape[1], col0:col0 + a.shape[0]] = a.T
    else:
        serial_if(a.size <= SMALL_REGION, _transpose, a, out, _NO_MASK, col0)


def _weight_gradients(dgb, x, y, h0, first_steps, mask, reverse, cols, n_h, hh=None):
    """{"w_ih", "w_hh", "b_ih", "b_hh"} in torch's layout from the gate gradients
    dgb [Gp/CB, T*B, CB] (_to_blocks's layout), the inputs x [T,B,I] and outputs
    y [T,B,Hp] of the forward, h0 [B,n_h], each row's first step in the forward
    (the one that read h0) and the recurrent dropout mask ([B,Hp], or [0,0]);
    cols[j]: the column of dgb's product that holds torch's row j; n_h: the units
    of h that W_hh reads (P with a projection). hh: None, or (dgb_hh, cols_hh)
    where W_hh's gate gradients differ from W_ih's (the GRU's n gate): W_hh's
    product then reads dgb_hh, and its bias gradient comes from a row of ones
    under h.

    Computed transposed, dW^T = X^T @ dG, with dG as the products' blocked second
    operand: the rows are I + 1 (the bias: a row of ones) and Hp rather than Gp,
    so I is not padded to a block, and only x and y (a quarter of dG's size with
    I = H) are transposed. Measured on 2 cores against dW = dG^T @ X with dG
    transposed: 3.8 -> 2.6 ms at T=64, B=32, I=32, H=128; 137 -> 120 ms at T=128,
    B=128, I=H=256."""
    dgb_hh, cols_hh = (dgb, cols) if hh is None else hh
    Gp = dgb.shape[0] * CB
    zeros = np.zeros((1, Gp), np.float32)
    T, B, I = x.shape
    x_t = np.empty((I + 1, T * B), np.float32)  # x^T and a row of ones
    _transpose_into(x.reshape(T * B, I), x_t, 0, x.size <= _SMALL)
    x_t[I] = 1
    # [dW_ih^T; db_ih], and dW_hh^T (and db_hh, with hh), in rows of _padded_cols
    dw_ih = np.empty((I + 1, _padded_cols(Gp)), np.float32)
    _matmul(x_t, dgb, dw_ih, zeros, False)
    h_t = _transposed_states(y, h0, first_steps, mask, reverse, hh is not None)
    dw_hh = np.empty((h_t.shape[0], _padded_cols(Gp)), np.float32)
    _matmul(h_t, dgb_hh, dw_hh, zeros, False)
    w_ih, w_hh = np.empty((len(cols), I), np.float32), np.empty((len(cols), n_h), np.float32)
    serial_if(w_ih.size <= SMALL_REGION, _untile, dw_ih, cols, w_ih)
    serial_if(w_hh.size <= SMALL_REGION, _untile, dw_hh, cols_hh, w_hh)
    db = dw_ih[I, cols]
    db_hh = db.copy() if hh is None else dw_hh[-1, cols_hh]
    return dict(w_ih=w_ih, w_hh=w_hh, b_ih=db, b_hh=db_hh)


def _transposed_states(y, h0, first_steps, mask, reverse, ones):
    """The h entering each step, transposed: [Hp (+ 1 with ones: a row of ones), T*B],
    column t*B + b. That is y [T,B,Hp] at the step before it in the forward's
    order, and h0 [B, <= Hp] at each row's first step (first_steps [B]). Where
    that first step is not the direction's first (the reverse direction, with
    lengths), the slot holds y past the row's length, which is zero. Rows past
    their length meet zero gradients. With recurrent dropout (mask [B,Hp], or
    [0,0] for none), the products read h times the mask."""
    T, B, Hp = y.shape
    M = T * B
    small = M * Hp <= _SMALL  # (NumPy's copies: no parallel region's few microseconds)
    h_t = np.empty((Hp + ones, M), np.float32)
    if reverse:
        _transpose_into(y[1:].reshape(-1, Hp), h_t, 0, small)
        h_t[:Hp, M - B:] = 0
    else:
        _transpose_into(y[:-1].reshape(-1, Hp), h_t, B, small)
    h_t[:Hp, first_steps * B + np.arange(B)] = _pad(h0, Hp).T
    if mask.shape[0] > 0:
        h_t[:Hp].reshape(Hp, T, B)[...] *= mask.T[:, None, :]
    if ones:
        h_t[Hp] = 1
    return h_t


def _first_steps(lens, reverse):
    """Each row's first step in the forward's order (the one that read h0)."""
    return np.clip(lens - 1, 0, None) if reverse else np.zeros(len(lens), np.int64)


def _first_step_gradients(dg, lens, reverse):
    """dG at each row's first forward step (the one that read h0), zero for rows
    of length 0, and the mask of those rows."""
    B = dg.shape[1]
    dg_first = dg[_first_steps(lens, reverse), np.arange(B)]
    empty = lens == 0
    dg_first[empty] = 0
    return dg_first, empty


def _first_step_dh(dg, lens, reverse, w_bwd):
    """W_hh's part of dh0 [B,Hp]: dG [T,B,Gp] at each row's first forward step
    (the one that read h0) @ W_hh (w_bwd, its blocks); zero for rows of length 0.
    (The LSTM's, the GRU's.)"""
    dg_first, _ = _first_step_gradients(dg, lens, reverse)
    dh0 = np.empty((dg.shape[1], w_bwd.shape[0] * CB), np.float32)
    _matmul(dg_first, w_bwd, dh0, np.zeros((1, dh0.shape[1]), np.float32), False)
    return dh0


def _input_gradient(dg2, w_dx):
    """dx [T*B,Ip] = dG [T*B,Gp] @ W_ih (w_dx, its blocks; I padded to Ip): every
    cell's input gradient."""
    dx = np.empty((dg2.shape[0], w_dx.shape[0] * CB), np.float32)
    _matmul(dg2, w_dx, dx, np.zeros((1, dx.shape[1]), np.float32), False)
    return dx


def _backward_blas_wrap(dy, dh_n, dc_n, cache, packed):
    x, y, lens, reverse = cache["x"], cache["y"], cache["lengths"], cache["reverse"]
    T, B, I = x.shape
    dg = cache["gates"]
    G = dg.shape[2]
    dh, dc = dh_n.copy(), dc_n.copy()
    H, proj = packed["H"], packed["proj"]
    norms, ln_cache = packed["ln"], cache["ln"]
    if proj:  # the projection's input, before the loop overwrites the gates
        cs = cache["cs"] if norms is None else layer_norm(cache["cs"], *norms[2:])[0]
        m_all = dg[:, :, 3 * H:] * apply_activation(packed["acts"][2], cs)
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
    _backward_blas(dy, dg, cache["cs"], cache["c0"], packed["w_hh"], packed["w_hr"], mask, dhs,
                   lens, reverse, dh, dc, packed["clip"], packed["coupled"], packed["gclip"],
                   packed["acts"], packed["peep"],
                   cache["czs"], cache["zc"], cache["zh"], ln,
                   step_tiles(packed, B, "w_bwd", "w_proj_bwd"))
    if norms is not None:
        dg_x, ln_ih = normalised_input_gradient(dg, norms[0], ln_cache["x_hat"],
                                                ln_cache["rstd_x"])
    dg_first, _ = _first_step_gradients(dg_h, lens, reverse)
    dgx2 = dg_x.reshape(T * B, G)
    mm = product_for(dg.dtype)
    dx = mm(dgx2, packed["w_ih"]).reshape(T, B, I)
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
    if packed["peep"] is not None:
        grads["peephole"] = _peephole_gradients(
            dg[:, :, :H], dg[:, :, H:2 * H], dg[:, :, 3 * H:], cache["cs"], cache["czs"],
            cache["c0"], lens, reverse, (T, B, H)).reshape(-1)
    return dx, dh, dc, grads


def _peephole_gradients(dg_i, dg_f, dg_o, cs, czs, c0, lens, reverse, shape):
    """The peephole weights' gradients [3, units] (i, f, o): each gate's dG [T,B,...]
    times the state it read, summed over steps and rows: the state entering the
    step (c0 at a row's first step; czs, the states passed on, elsewhere) for i
    and f, the step's new state cs for o. shape: the gates' views' shape, to
    which the states [T,B,units] are reshaped; a step past a row's length has
    dG zero."""
    T, B = cs.shape[:2]
    c_prev = np.empty_like(czs)
    if reverse:
        c_prev[:-1], c_prev[-1] = czs[1:], c0
    else:
        c_prev[1:], c_prev[0] = czs[:-1], c0
    c_prev[_first_steps(lens, reverse), np.arange(B)] = c0
    # (every slot is set: a held step's dG is zero, but zero times stale memory can be NaN)
    c_prev, c_new = c_prev.reshape(shape), cs.reshape(shape)
    dims = "tbkj,tbkj->kj" if len(shape) == 4 else "tbj,tbj->j"
    return np.stack([np.einsum(dims, dg_i, c_prev).reshape(-1),
                     np.einsum(dims, dg_f, c_prev).reshape(-1),
                     np.einsum(dims, dg_o, c_new).reshape(-1)])
