"""The LSTM's reduced-precision inference on the CPU: int8 and bfloat16 weights
(numlstm.quantize_dynamic), checked against reference.lstm_forward_quantized_ref.

Dimensions: T steps, B batch, I input features, H hidden units; Hq is H padded
to a multiple of U = 16, Gq = 4 Hq gate columns in blocks of CB = 64, each
block [i f g o] of 16 units as in the float32 tiled layout (lstm.py), so a
thread's blocks of columns are also its units for the gate math.

int8 (torch's dynamic quantization, with per-channel weights where torch's
default has one scale a matrix):
    weights: symmetric, one scale per output channel (gate row):
        s_w[n] = max_k |W[n,k]| / 127,  W_q = rint(W / s_w) in [-127, 127]
    activations: symmetric, one scale per row, made when they are used (x for
    each step and sequence, h for each step): quantize_rows.
    products: exact int32 sums of int8 x int8 (qtile.int8_rows: VNNI, AVX2 or a
    loop, by the CPU; the activations go in as uint8, value + 128, and the sums
    start from -128 * sum_k W_q[n,k]), scaled in float32:
        xw[t,b,n] = bias[n] + float32(sum_k xq W_q) * (s_x[t,b] * s_w[n])
        pre       = xw[t] + float32(sum_k hq W_q) * (s_h[b] * s_hh[n])
    then the gate math in float32 (sigmoid, tanh), as the float32 layer's.
bfloat16: the weights, and x and h when they are used (bf16_activations: x each
    step, h each step), rounded to bfloat16 (to nearest, ties to even); their
    products, exact in float32, accumulate in float32 (qtile.bf16_rows:
    vdpbf16ps, or widened and fused multiply-adds in its order, the same sums),
    from the bias (the input part) and from the input part (the recurrent one).

The quantization and the scaling are compiled without fastmath (no reciprocal
for a division, no contraction), so the integer sums and the float32 values
built from them are the reference's to the bit; the gate math is the float32
layer's (gates.py, with fastmath's contractions), so outputs match the reference
to float32 rounding (the tests).

The time loop (loop_plan): one thread, with no parallel region, when a step is
small or the thread policy holds (threads.py); else the batch shared among the
threads, each running its rows through all the steps in one region (a row's
quantization and sums never meet another's), or at a batch too small to share
(B = 1, large H) each step's blocks of units shared, one region a step.
The GRU (torch's form, reset after) runs on the same loop as a four-slot cell:
the input product fills slots [r, z, n_x, 0] and the recurrent one [r, z, 0, n_h]
(pack_gru_quantized puts zero rows where a slot has nothing), so that after the
two products pre = [r_x + r_h, z_x + z_h, n_x, n_h] with the biases, and the gate
math (_gates with gru) is r = s(pre_r), z = s(pre_z), n = tanh(pre_nx + r * pre_nh),
h' = (1 - z) n + z h. The empty slots cost a third more multiply-adds than three
gates would, and keep one tile, one layout and one loop for both cells.

Inference only: no training cache, no backward.
"""
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..gates import sigmoid, tanh
from .jit import FAST
from .microkernel import CB
from .qtile import (BF16_ROWS, BF16_VARIANT, INT8_ROWS, PAIR_BYTES, VARIANT, bf16_variant,
                    int8_variant)
from .threads import POLICY, clock_ns, finished, numba_threads, parallel_ok, region_done

U = CB // 4                         # units per block
EXACT = dict(cache=True, error_model="numpy")   # no fastmath (module docstring)
int8_rows = INT8_ROWS[VARIANT]
bf16_rows = BF16_ROWS[BF16_VARIANT]
# Multiply-adds from which work is shared among threads (loop_plan): an input
# product; a call's steps in the batch split (one region for the call); one step in
# the units split (a region a step, each a wake-up and a join of some microseconds:
# at B = 16, H = 128, 1M a step, a step() call on two threads took 0.10 ms against
# 0.02 ms on one; at B = 1, H = 1024, 4M, int8 took 1.31 ms for T = 30 on two, 1.72
# on one, and bfloat16 on vdpbf16ps 2.2 against 3.2).
PARALLEL_MIN_MACS = 1 << 20
ROWS_PARALLEL_MIN_MACS = 1 << 22
STEP_PARALLEL_MIN_MACS = 1 << 22
# A call of one step (step()) enters a region only from this many: its threads have
# slept since the last call, and waking them costs up to some hundreds of
# microseconds on these virtual machines (B = 1, H = 1024, int8: 0.57 ms a step()
# on two threads, 0.07 on one); the float32 step's threshold (plan.py) is the same.
ONE_STEP_PARALLEL_MIN_MACS = 1 << 24
ROWS_PER_TASK = 48                  # rows of one task of the input product
ROWS_SPLIT_MIN = 2                  # rows a thread for the time loop's batch split
ALONE_MAX_MACS = 1 << 23            # input products up to this run step by step alone
_ROUND = np.float32(1.5 * 2 ** 23)

__all__ = ["QuantLSTM", "pack_lstm_quantized", "pack_gru_quantized",
           "lstm_forward_quantized", "lstm_forward_quantized_into", "gru_forward_quantized",
           "gru_forward_quantized_into", "quantize_rows", "bf16_pairs", "bf16_values",
           "int8_blocks", "bf16_blocks", "int8_variant", "bf16_variant", "to_bfloat16_bits"]


class QuantLSTM(NamedTuple):
    """One packed LSTM cell (or GRU cell: gru), int8 or bfloat16 (module docstring)."""
    dtype: str              # "int8" or "bfloat16"
    H: int
    Hq: int
    I: int
    bias: np.ndarray        # [1,Gq] float32: b_ih + b_hh in the tiled columns
    # int8: [nblk, Kq/4, CB, 4] int8 (Kq: I padded to 4, H to Hq); bfloat16:
    # [nblk, K2, CB] uint32, pairs of bfloat16 (bf16_blocks; K2: I or Hq over 2, up)
    w_in: np.ndarray
    w_hh: np.ndarray
    s_in: np.ndarray        # [Gq] float32 per-channel scales (int8; empty for bfloat16)
    s_hh: np.ndarray
    off_in: np.ndarray      # [Gq] int32: -128 sum_k W_q[n,k] (int8; empty for bfloat16)
    off_hh: np.ndarray
    gru: bool = False       # a GRU cell in four slots (pack_gru_quantized)


def _columns(H):
    """cols[j]: the tiled column of torch's gate row j (gate j // H, unit j % H)."""
    k, u = np.divmod(np.arange(4 * H), H)
    return (u // U) * CB + k * U + u % U


def to_bfloat16_bits(w):
    """float32 -> bfloat16's bits (uint16), rounded to nearest, ties to even (NaN stays NaN)."""
    bits = np.ascontiguousarray(w, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(w)
    rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def _quantize_channels(w):
    """w [N,K] float32 -> (W_q [N,K] int8, s [N] float32): one symmetric scale a row."""
    m = np.abs(w).max(axis=1) if w.shape[1] else np.zeros(w.shape[0], np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(m > 0, np.float32(127) / m, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(w * inv[:, None]), -127, 127).astype(np.int8)
    return q, (m / np.float32(127)).astype(np.float32)


def _pack_int8(w, Gq, cols, Kq):
    """torch-layout w [4H,K] -> (W_q [nblk, Kq/4, CB, 4], s [Gq], -128 * the
    columns' sums [Gq], qtile.int8_rows's off); K is padded with zeros to Kq (a
    multiple of 4)."""
    K = w.shape[1]
    q, s = _quantize_channels(w.astype(np.float32))
    qp = np.zeros((Gq, Kq), np.int8)
    qp[cols, :K] = q
    sp = np.zeros(Gq, np.float32)
    sp[cols] = s
    blocks, off = int8_blocks(qp)
    return blocks, sp, off


def int8_blocks(q):
    """q [N,Kq] int8 (N a multiple of CB, Kq of 4) -> what qtile.int8_rows reads:
    (q in its layout [N/CB, Kq/4, CB, 4], off [N] int32 = -128 * each row's sum)."""
    N, Kq = q.shape
    blocks = np.ascontiguousarray(q.reshape(N // CB, CB, Kq // 4, 4).transpose(0, 2, 1, 3))
    return blocks, (-128 * q.sum(axis=1, dtype=np.int64)).astype(np.int32)


def bf16_blocks(bits):
    """bits [N,K] uint16, bfloat16 (N a multiple of CB) -> what qtile.bf16_rows
    reads: [N/CB, K2, CB] uint32, K2 = ceil(K/2), k 2j in the low half of pair j
    and 2j + 1 in the high one (zero past K)."""
    N, K = bits.shape
    even = np.zeros((N, -(-K // 2) * 2), np.uint32)
    even[:, :K] = bits
    pairs = even[:, 0::2] | (even[:, 1::2] << 16)
    return np.ascontiguousarray(pairs.reshape(N // CB, CB, -1).transpose(0, 2, 1))


def _pack_bf16(w, Gq, cols, K):
    """torch-layout w [4H,k] -> bf16_blocks of its bfloat16 bits, k padded to K."""
    wp = np.zeros((Gq, K), np.float32)
    wp[cols, :w.shape[1]] = w
    return bf16_blocks(to_bfloat16_bits(wp))


def pack_lstm_quantized(w_ih, w_hh, b_ih, b_hh, dtype):
    """One cell's torch-layout float weights (w_ih [4H,I], w_hh [4H,H], b_ih, b_hh
    [4H]) -> QuantLSTM of dtype "int8" or "bfloat16"."""
    G, I = w_ih.shape
    H = G // 4
    Hq = -(-H // U) * U
    Gq = 4 * Hq
    cols = _columns(H)
    bias = np.zeros((1, Gq), np.float32)
    bias[0, cols] = (np.asarray(b_ih, np.float32) + np.asarray(b_hh, np.float32))
    empty_f, empty_i = np.zeros(0, np.float32), np.zeros(0, np.int32)
    if dtype == "int8":
        w_in, s_in, off_in = _pack_int8(w_ih, Gq, cols, -(-I // 4) * 4)
        w_rec, s_hh, off_hh = _pack_int8(w_hh, Gq, cols, Hq)  # (h is quantized Hq wide)
        return QuantLSTM("int8", H, Hq, I, bias, w_in, w_rec, s_in, s_hh, off_in, off_hh)
    if dtype == "bfloat16":
        return QuantLSTM("bfloat16", H, Hq, I, bias, _pack_bf16(w_ih, Gq, cols, I),
                         _pack_bf16(w_hh, Gq, cols, Hq),  # (h is rounded Hq wide)
                         empty_f, empty_f, empty_i, empty_i)
    raise ValueError(f"dtype: expected 'int8' or 'bfloat16', got {dtype!r}")


def pack_gru_quantized(w_ih, w_hh, b_ih, b_hh, dtype):
    """One GRU cell's torch-layout float weights (w_ih [3H,I], w_hh [3H,H], b_ih,
    b_hh [3H], gates r, z, n) -> QuantLSTM of four slots (module docstring):
    the input rows [r, z, n, 0], the recurrent rows [r, z, 0, n], the biases
    [b_ir + b_hr, b_iz + b_hz, b_in, b_hn]."""
    H = w_hh.shape[1]
    f32 = np.float32
    w_ih, w_hh = np.asarray(w_ih, f32), np.asarray(w_hh, f32)
    b_ih, b_hh = np.asarray(b_ih, f32), np.asarray(b_hh, f32)
    zero_i, zero_h, zero_b = (np.zeros((H, w_ih.shape[1]), f32), np.zeros((H, H), f32),
                              np.zeros(H, f32))
    cell = pack_lstm_quantized(np.concatenate([w_ih, zero_i]),
                               np.concatenate([w_hh[:2 * H], zero_h, w_hh[2 * H:]]),
                               np.concatenate([b_ih, zero_b]),
                               np.concatenate([b_hh[:2 * H], zero_b, b_hh[2 * H:]]), dtype)
    return cell._replace(gru=True)


# -- quantizing activations, scaling sums -----------------------------------------------
@njit(**EXACT)
def quantize_rows(a, q, s, r0, r1):
    """Rows [r0, r1) of a [M,K] float32, C-contiguous rows -> q [M,Kq] uint8
    (rint(a / s) + 128, columns past K: 128, a zero) and s [M] float32, s = max_k
    |a[r,k]| / 127 (0 for a zero row, whose q is all 128; NaN for a row holding a
    NaN or an inf, which makes its outputs NaN)."""
    K, Kq = a.shape[1], q.shape[1]
    for r in range(r0, r1):
        row, out = a[r], q[r]
        # The largest |a| from the bits: for non-negative floats the integer order is
        # the float order, and inf and NaN sort above every finite value. (An integer
        # reduction vectorises without fastmath; a float one would not.)
        bits = row.view(np.int32)
        top = np.int32(0)
        for k in range(K):
            top = max(top, bits[k] & np.int32(0x7FFFFFFF))
        if top >= np.int32(0x7F800000) or top == 0:
            s[r] = np.float32(np.nan) if top != 0 else np.float32(0)
            out[:] = 128
            continue
        m = abs(row[0])
        for k in range(K):  # (the element whose bits were the largest)
            if (bits[k] & np.int32(0x7FFFFFFF)) == top:
                m = abs(row[k])
                break
        inv = np.float32(127) / m
        s[r] = m / np.float32(127)
        for k in range(K):
            # rint(v), ties to even, for |v| < 2^22: adding and taking off 1.5 * 2^23
            # rounds in float32's own mode (no libm call, so the loop vectorises)
            v = (row[k] * inv + _ROUND) - _ROUND
            v = np.float32(127) if v > 127 else (np.float32(-127) if v < -127 else v)
            out[k] = np.uint8(np.int32(v) + 128)
        for k in range(K, Kq):
            out[k] = 128


@njit(inline="always", **EXACT)
def _bf16_bits(b):
    """A float32's bits (uint32) -> bfloat16's (rounded to nearest, ties to even;
    a NaN stays a NaN), in an int64."""
    v = np.int64(b)
    if (v & 0x7FFFFFFF) > 0x7F800000:
        return (v >> 16) | 0x40
    return (v + 0x7FFF + ((v >> 16) & 1)) >> 16


@njit(**EXACT)
def bf16_pairs(a, q, r0, r1):
    """Rows [r0, r1) of a [M,K] float32, C-contiguous rows -> q [M, 4 K2] uint8,
    each row K2 uint32 pairs of bfloat16 (qtile.bf16_rows's A): a[r, 2j] rounded
    (to_bfloat16_bits's rule) in the low half of pair j, a[r, 2j + 1] in the high
    one; zero past K."""
    K = a.shape[1]
    for r in range(r0, r1):
        bits, out = a[r].view(np.uint32), q[r].view(np.uint32)
        for j in range(K // 2):
            out[j] = np.uint32(_bf16_bits(bits[2 * j]) | (_bf16_bits(bits[2 * j + 1]) << 16))
        for j in range(K // 2, out.shape[0]):
            out[j] = np.uint32(_bf16_bits(bits[2 * j]) if 2 * j < K else 0)


@njit(**EXACT)
def bf16_values(a, q, r0, r1):
    """Rows [r0, r1) of a [M,K] float32, C-contiguous rows -> q [M, 8 K2] uint8,
    each row 2 K2 float32 (qtile.bf16_rows's A for its "widen" variant): a's
    values rounded to bfloat16 (to_bfloat16_bits's rule), as float32; zero past K."""
    K = a.shape[1]
    for r in range(r0, r1):
        bits, out = a[r].view(np.uint32), q[r].view(np.uint32)
        for k in range(K):
            out[k] = np.uint32(_bf16_bits(bits[k]) << 16)
        for k in range(K, out.shape[0]):
            out[k] = 0


# The activations as each bfloat16 variant reads them (qtile.bf16_rows), and their bytes
# for a pair of k; this machine's.
BF16_ACTIVATIONS = {"avx512bf16": bf16_pairs, "widen": bf16_values}
bf16_activations = BF16_ACTIVATIONS[BF16_VARIANT]
BF16_PAIR_BYTES = PAIR_BYTES[BF16_VARIANT]


@njit(inline="always", **EXACT)
def _activations(a, q, s, r0, r1, int8):
    """Rows [r0, r1) of a into what the cell's product reads: quantize_rows's int8
    (q and s), or bf16_activations's bfloat16 (q)."""
    if int8:
        quantize_rows(a, q, s, r0, r1)
    else:
        bf16_activations(a, q, r0, r1)


@njit(**EXACT)
def _scaled(acc, s_row, s_col, init, out, r0, r1, c0, c1):
    """out[r, c] = init[r, c] + float32(acc[r, c]) * (s_row[r] * s_col[c]) over rows
    [r0, r1), columns [c0, c1) (init may be out, or a [1,..] bias row, read for
    every row)."""
    per_row = init.shape[0] > 1
    for r in range(r0, r1):
        a, o, i = acc[r, c0:c1], out[r, c0:c1], init[r if per_row else 0, c0:c1]
        s = s_col[c0:c1]
        sr = s_row[r]
        for n in range(c1 - c0):  # (row views: LLVM vectorises this loop)
            o[n] = i[n] + np.float32(a[n]) * (sr * s[n])


# -- the input product for all steps ---------------------------------------------------
@njit(**EXACT)
def _input_task(x2, packed_w, s_w, off, bias, xq, xs, acc, xw2, r0, r1, b0, b1, int8):
    if int8:
        int8_rows(xq, packed_w, acc, r0, r1, b0, b1, off)
        _scaled(acc, xs, s_w, bias, xw2, r0, r1, b0 * CB, b1 * CB)
    else:
        bf16_rows(xq, packed_w, xw2, bias, False, r0, r1, b0, b1)


@njit(parallel=True, **EXACT)
def _input_tasks(x2, packed_w, s_w, off, bias, xq, xs, acc, xw2, chunks, int8):
    M, nblk = x2.shape[0], packed_w.shape[0]
    rows = -(-M // chunks)
    for c in prange(chunks):
        _activations(x2, xq, xs, c * rows, min(M, (c + 1) * rows), int8)
    for task in prange(chunks * nblk):
        blk, c = divmod(np.int64(task), chunks)
        _input_task(x2, packed_w, s_w, off, bias, xq, xs, acc, xw2, c * rows,
                    min(M, (c + 1) * rows), blk, blk + 1, int8)


def _input_product(x, cell, parallel):
    """xw [T,B,Gq] = bias + x @ W_ih^T in the cell's precision."""
    T, B, I = x.shape
    M, Gq = T * B, cell.bias.shape[1]
    x2 = x.reshape(M, I)
    int8 = cell.dtype == "int8"
    xw = np.empty((T, B, Gq), np.float32)
    xq = np.empty((M, cell.w_in.shape[1] * (4 if int8 else BF16_PAIR_BYTES)), np.uint8)
    xs = np.empty(M if int8 else 0, np.float32)
    acc = np.empty((M, Gq) if int8 else (0, 0), np.int32)
    nblk = cell.w_in.shape[0]
    if not parallel or M * Gq * I < PARALLEL_MIN_MACS:
        _activations(x2, xq, xs, 0, M, int8)
        _input_task(x2, cell.w_in, cell.s_in, cell.off_in, cell.bias, xq, xs, acc,
                    xw.reshape(M, Gq), 0, M, 0, nblk, int8)
    else:
        chunks = max(1, -(-M // ROWS_PER_TASK))
        _input_tasks(x2, cell.w_in, cell.s_in, cell.off_in, cell.bias, xq, xs,
                     acc, xw.reshape(M, Gq), chunks, int8)
    return xw


# -- the time loop -----------------------------------------------------------------------
@njit(**FAST)
def _gates(pre, h, c, y_t, lengths, t, r0, r1, b0, b1, gru):
    """The gate math of rows [r0, r1) and blocks [b0, b1): pre [B,Gq] holds the
    pre-activations (gru: the GRU's four slots, module docstring); writes h and,
    for the LSTM, c [B,Hq] (held past a sequence's length) and y_t [B,Hq] (zero
    there). (One loop for both cells: the branch on gru is the same for every
    unit, and it measured as fast as a function each.)"""
    one = np.float32(1)
    for r in range(r0, r1):
        live = t < lengths[r]
        for b in range(b0, b1):
            for u in range(U):
                q, j = b * CB + u, b * U + u
                if not live:
                    y_t[r, j] = 0
                    continue
                if gru:
                    rg = sigmoid(pre[r, q])
                    z = sigmoid(pre[r, q + U])
                    n = tanh(pre[r, q + 2 * U] + rg * pre[r, q + 3 * U])
                    hh = (one - z) * n + z * h[r, j]
                else:
                    i = sigmoid(pre[r, q])
                    f = sigmoid(pre[r, q + U])
                    g = tanh(pre[r, q + 2 * U])
                    o = sigmoid(pre[r, q + 3 * U])
                    cc = f * c[r, j] + i * g
                    hh = o * tanh(cc)
                    c[r, j] = cc
                h[r, j], y_t[r, j] = hh, hh


@njit(**EXACT)
def _step(cell_w, s_hh, off, xw_t, h, c, y_t, lengths, t, hq, hs, acc, pre, r0, r1, b0, b1,
          int8, gru):
    """Rows [r0, r1) x blocks [b0, b1) of step t: the recurrent product of hq (and
    hs: h of those rows quantized, _activations) into pre, then the gate math (the
    LSTM's, or with gru the GRU's, which leaves c alone), which writes h in place."""
    if int8:
        int8_rows(hq, cell_w, acc, r0, r1, b0, b1, off)
        _scaled(acc, hs, s_hh, xw_t, pre, r0, r1, b0 * CB, b1 * CB)
    else:
        bf16_rows(hq, cell_w, pre, xw_t, True, r0, r1, b0, b1)
    _gates(pre, h, c, y_t, lengths, t, r0, r1, b0, b1, gru)


@njit(**EXACT)
def _input_rows(x_t, w_in, s_in, off_in, bias, xq, xs, acc, xw_t, r0, r1, int8):
    """Rows [r0, r1) of one step's input part, xw_t = bias + x_t @ W_ih^T (the same
    sums and scaling as _input_product's)."""
    nblk = w_in.shape[0]
    _activations(x_t, xq, xs, r0, r1, int8)
    if int8:
        int8_rows(xq, w_in, acc, r0, r1, 0, nblk, off_in)
        _scaled(acc, xs, s_in, bias, xw_t, r0, r1, 0, nblk * CB)
    else:
        bf16_rows(xq, w_in, xw_t, bias, False, r0, r1, 0, nblk)


@njit(**EXACT)
def _rows_steps(x, ins, xw, w_hh, s_hh, off_hh, h, c, y, lengths, reverse, scratch, r0,
                r1, int8, gru):
    """All T steps of rows [r0, r1), every block (the rows of a batch never meet).
    ins: (w_in, s_in, off_in, bias); xw: the input part of every step [T,B,Gq], or
    [0,..]: each step's made here (no [T,B,Gq] array to write and read back);
    scratch: (xq, xs, hq, hs, acc, xw_t, pre), [B,..] each."""
    w_in, s_in, off_in, bias = ins
    xq, xs, hq, hs, acc, xw_t, pre = scratch
    T, nblk = y.shape[0], pre.shape[1] // CB
    for s in range(T):
        t = T - 1 - s if reverse else s
        if xw.shape[0] == 0:
            _input_rows(x[t], w_in, s_in, off_in, bias, xq, xs, acc, xw_t, r0, r1, int8)
            init = xw_t
        else:
            init = xw[t]
        _activations(h, hq, hs, r0, r1, int8)
        _step(w_hh, s_hh, off_hh, init, h, c, y[t], lengths, t, hq, hs, acc, pre, r0,
              r1, 0, nblk, int8, gru)


@njit(parallel=True, **EXACT)
def _time_loop(x, ins, xw, w_hh, s_hh, off_hh, h, c, y, lengths, reverse, scratch, P,
               split, int8, gru, gate):
    """All T steps (x [T,B,I]; the rest as _rows_steps's): h, c [B,Hq] (h0 and c0
    in, the last state out); y [T,B,Hq]. P threads (1: no parallel region); split
    "rows": each thread its rows of the batch through all the steps (one region);
    "units" (xw given): each step's blocks shared among the threads (a region a
    step; gate: threads.py's, which sends a lagging machine's steps to one
    thread)."""
    T, B = y.shape[0], y.shape[1]
    nblk = w_hh.shape[0]
    if P == 1:
        _rows_steps(x, ins, xw, w_hh, s_hh, off_hh, h, c, y, lengths, reverse, scratch,
                    0, B, int8, gru)
    elif split == "rows":
        start = clock_ns()
        for p in prange(P):
            _rows_steps(x, ins, xw, w_hh, s_hh, off_hh, h, c, y, lengths, reverse,
                        scratch, p * B // P, (p + 1) * B // P, int8, gru)
            finished(gate, p)
        region_done(gate, start)
    else:
        xq, xs, hq, hs, acc, xw_t, pre = scratch
        for s in range(T):
            t = T - 1 - s if reverse else s
            _activations(h, hq, hs, 0, B, int8)
            if not parallel_ok(gate):
                _step(w_hh, s_hh, off_hh, xw[t], h, c, y[t], lengths, t, hq, hs, acc,
                      pre, 0, B, 0, nblk, int8, gru)
                continue
            start = clock_ns()
            for p in prange(P):
                _step(w_hh, s_hh, off_hh, xw[t], h, c, y[t], lengths, t, hq, hs, acc,
                      pre, 0, B, p * nblk // P, (p + 1) * nblk // P, int8, gru)
                finished(gate, p)
            region_done(gate, start)


def loop_plan(T, B, H, Gq, threads):
    """(P, split) of the time loop: one thread for a single step under
    ONE_STEP_PARALLEL_MIN_MACS; the batch split (one region for the call) from
    ROWS_SPLIT_MIN rows a thread and ROWS_PARALLEL_MIN_MACS in all the steps; else
    each step's units split (a region a step) from STEP_PARALLEL_MIN_MACS a step;
    else one thread."""
    if T == 1 and B * Gq * H < ONE_STEP_PARALLEL_MIN_MACS:
        return 1, "rows"
    if threads > 1 and B >= ROWS_SPLIT_MIN * 2 and T * B * Gq * H >= ROWS_PARALLEL_MIN_MACS:
        return min(threads, B // ROWS_SPLIT_MIN), "rows"
    if threads > 1 and B * Gq * H >= STEP_PARALLEL_MIN_MACS:
        return min(threads, Gq // CB), "units"
    return 1, "rows"


def runs_alone(T, B, I, H, threads):
    """Whether an inference call runs whole on one thread (forward_into): one
    thread for the steps (loop_plan) and an input product under ALONE_MAX_MACS."""
    Gq = 4 * (-(-H // U) * U)
    return (loop_plan(T, B, H, Gq, threads)[0] == 1
            and T * B * Gq * I < ALONE_MAX_MACS)


@njit(**EXACT)
def _scratch(B, w_in, w_hh, int8):
    """_rows_steps's scratch for B rows: (xq, xs, hq, hs, acc, xw_t, pre)."""
    Gq = w_hh.shape[0] * CB
    per = 4 if int8 else BF16_PAIR_BYTES  # (x and h as the products read them)
    return (np.empty((B, w_in.shape[1] * per), np.uint8), np.empty(B, np.float32),
            np.empty((B, w_hh.shape[1] * per), np.uint8), np.empty(B, np.float32),
            np.empty((B, Gq if int8 else 0), np.int32), np.empty((B, Gq), np.float32),
            np.empty((B, Gq), np.float32))


@njit(**EXACT)
def _buffers(T, w_in, w_hh, h0, c0, int8):
    """(h, c, y, scratch) of a call of T steps from the state h0, c0 [B,H]: h and c
    [B,Hq] holding h0 and c0, y [T,B,Hq], and _scratch's; padded units zero.
    Compiled: a step() makes its buffers in the same compiled call as its loop
    (_alone)."""
    B, H = h0.shape
    Hq = w_hh.shape[0] * U
    h = np.zeros((B, Hq), np.float32)
    h[:, :H] = h0
    c = np.zeros((B, Hq), np.float32)
    c[:, :H] = c0
    return h, c, np.empty((T, B, Hq), np.float32), _scratch(B, w_in, w_hh, int8)


def _run(x, cell, h0, c0, lengths, reverse, xw, P, split):
    T, B, _ = x.shape
    H, int8 = cell.H, cell.dtype == "int8"
    h, c, y, scratch = _buffers(T, cell.w_in, cell.w_hh, h0, c0, int8)
    lens = (np.full(B, T, np.int64) if lengths is None
            else np.ascontiguousarray(lengths, np.int64))
    _time_loop(x, (cell.w_in, cell.s_in, cell.off_in, cell.bias), xw, cell.w_hh, cell.s_hh,
               cell.off_hh, h, c, y, lens, reverse, scratch, P, split, int8, cell.gru,
               POLICY.gate())
    return y[:, :, :H], h[:, :H], c[:, :H]


_NO_XW = np.zeros((0, 1, 1), np.float32)


@njit(**EXACT)
def _alone(x, ins, w_hh, s_hh, off_hh, h0, c0, y, h, c, int8, gru):
    """_run on one thread, as one compiled call into the caller's arrays (y [T,B,H],
    h, c [B,H]): a step() at B = 1 is a few microseconds of work, and making its
    buffers and passing them in from Python took as long again."""
    T, B, H = x.shape[0], x.shape[1], h0.shape[1]
    lengths = np.full(B, T, np.int64)
    if H == w_hh.shape[0] * U:  # (no padded units: the loop runs in the caller's arrays)
        h[:] = h0
        c[:] = c0
        _rows_steps(x, ins, _NO_XW, w_hh, s_hh, off_hh, h, c, y, lengths, False,
                    _scratch(B, ins[0], w_hh, int8), 0, B, int8, gru)
        return
    hq, cq, yq, scratch = _buffers(T, ins[0], w_hh, h0, c0, int8)
    _rows_steps(x, ins, _NO_XW, w_hh, s_hh, off_hh, hq, cq, yq, lengths, False, scratch, 0,
                B, int8, gru)
    y[:] = yq[:, :, :H]
    h[:] = hq[:, :H]
    c[:] = cq[:, :H]


def lstm_forward_quantized_into(x, cell, h0, c0, y, h, c):
    """The kernel tables' forward_into for a quantized cell (table.py): True after
    writing y [T,B,H], h, c [B,H] of an inference call without lengths on one
    thread, with no parallel region and no input product before the loop; False,
    writing nothing, for a call that lstm_forward_quantized runs otherwise."""
    T, B, I = x.shape
    if not runs_alone(T, B, I, cell.H, numba_threads()):
        return False
    _alone(x, (cell.w_in, cell.s_in, cell.off_in, cell.bias), cell.w_hh, cell.s_hh,
           cell.off_hh, h0, c0, y, h, c, cell.dtype == "int8", cell.gru)
    return True


def lstm_forward_quantized(x, cell, h0, c0, lengths=None, reverse=False):
    """One quantized LSTM layer and direction, inference.

    x: [T,B,I] float32; cell: pack_lstm_quantized(...); h0, c0: [B,H] float32;
    lengths: [B] ints in [0, T] or None (all T). Returns y [T,B,H], h_n, c_n [B,H]."""
    x = np.ascontiguousarray(x, np.float32)
    T, B, I = x.shape
    threads = numba_threads()  # (the thread policy's count for this call: threads.run)
    P, split = loop_plan(T, B, cell.H, 4 * cell.Hq, threads)
    # The input part: for all steps before the loop where the loop shares each step's
    # units, or where one thread runs a large input product (shared here); else
    # each step's, in the loop.
    xw = (_input_product(x, cell, threads > 1)
          if split == "units" or (P == 1 and not runs_alone(T, B, I, cell.H, threads))
          else _NO_XW)
    return tuple(np.ascontiguousarray(a) for a in _run(x, cell, h0, c0, lengths, reverse, xw,
                                                       P, split))


def gru_forward_quantized_into(x, cell, h0, y, h):
    """lstm_forward_quantized_into for a GRU cell (pack_gru_quantized): no c."""
    c = np.zeros_like(h)
    return lstm_forward_quantized_into(x, cell, h0, c, y, h, c)


def gru_forward_quantized(x, cell, h0, lengths=None, reverse=False):
    """One quantized GRU layer and direction, inference: lstm_forward_quantized's
    with no c. Returns y [T,B,H], h_n [B,H]."""
    y, h, _ = lstm_forward_quantized(x, cell, h0, np.zeros_like(h0), lengths, reverse)
    return y, h
