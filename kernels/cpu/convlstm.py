"""CPU kernels of the ConvLSTM layer (reference: reference.convlstm_forward_ref and
convlstm_backward_ref; tests: tests/kernels/test_cpu_convlstm.py).

Both convolutions of a step are one implicit GEMM: a task of `rows` output pixels
gathers each pixel's receptive field of x_t and of h (the rows of the GEMM, in
its thread's scratch, never a [T,B,R',C',K] array), multiplies them by the stacked
weights in the register tile (products.matmul_rows; a plain loop in float64), and
applies the gate math to those rows while they are in cache. The tasks of a step
are shared among Numba's threads; a step is milliseconds, so one parallel region
per step costs nothing measurable. The backward runs the same way: per step the
gate gradients, then the recurrent convolution's transpose (dz @ W_h^T added back
into dh, in bands of rows that no two tasks of a round share); after the loop the
weight gradients (patches^T @ dz, summed per thread, then across threads) and dx
(dz @ W_x^T added back into each frame, one task a frame). With 3x3 kernels,
stride 1 and no dilation in float32, the forward's convolutions, dh's and the
weight gradients run in Winograd's form instead (winograd.py: 2.25x fewer
multiply-adds).

Dimensions: T steps, B batch; R, C the input grid, I its channels; Ro, Co the
state's grid, F filters; N = B*Ro*Co pixels of a step. Kx = kh*kw*I and
Kh = kh*kw*F are the two receptive fields, K = Kx + Kh. F is padded to Fp (a
multiple of 16 units) and the gate columns are Gp = 4*Fp, in blocks of CB: block j
holds [i f g o] of units 16j..16j+15, as the LSTM's tiled kernels lay them out.

A convolution is described by `geo` (kernels/conv.py). Sources and outputs are
pixel-major 2-D arrays:
x_t [B*R*C, I], h [N, F], dz [N, Gp].
"""
import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ..conv import convlstm_convs
from ..gates import dsigmoid, dtanh, sigmoid, tanh
from .jit import FAST
from .microkernel import CB, ROWS
from .products import in_blocks, matmul_cols, matmul_rows
from .threads import numba_threads
from .winograd import (TILES, applies, gradient_weights, task_count, task_rows, tile_gradients,
                       tile_inputs, tile_rows, tile_rows_transposed, transposed_weights,
                       winograd_weights)

UNITS = 16          # units of one gate in a column block (CB = 4 * UNITS)
ROWS_PER_TASK = 96  # pixels of one task: its patches (96 x K) stay in L2 up to K ~ 2000
GRAD_ROWS = 384     # pixels of a weight-gradient task: the sum over them is the product's
                    # K, and each task reads and writes the thread's whole dW once


def padded_filters(F):
    return -(-F // UNITS) * UNITS


def gate_column(F):
    """[4F] -> the padded gate column of torch-order gate row g*F + u."""
    g, u = np.divmod(np.arange(4 * F), F)
    return (u // UNITS) * CB + g * UNITS + u % UNITS


# -- the product: the register tile in float32, a plain loop in float64 ----------------
def rows_product(A, W, out, init, per_row, r0, r1, b0, b1):
    """out[r0:r1, blocks b0..b1] = init + A @ W (products.matmul_rows's contract)."""


@njit(**FAST)
def _plain_rows(A, W, out, init, per_row, r0, r1, b0, b1):
    K = min(A.shape[1], W.shape[1])
    for r in range(r0, r1):
        ir = r if per_row else 0
        for blk in range(b0, b1):
            c0 = blk * CB
            for j in range(CB):
                out[r, c0 + j] = init[ir, c0 + j]
            for k in range(K):
                a = A[r, k]
                for j in range(CB):
                    out[r, c0 + j] += a * W[blk, k, j]


@overload(rows_product)
def _rows_product_impl(A, W, out, init, per_row, r0, r1, b0, b1):
    if A.dtype == types.float32:
        def tile(A, W, out, init, per_row, r0, r1, b0, b1):
            matmul_rows(A, W, out, init, per_row, r0, r1, b0, b1)
        return tile

    def plain(A, W, out, init, per_row, r0, r1, b0, b1):
        _plain_rows(A, W, out, init, per_row, r0, r1, b0, b1)
    return plain


def cols_product(A, W, out, zero, r0, r1, cols):
    """out[r0:r1, :cols] = A @ W (products.matmul_cols's contract, from zero: [1,
    nblk*CB] of zeros), for the transposed products, whose last block is mostly
    padding: 9 of 64 columns for dx at one input channel, 144 of 192 for dh at 16
    filters."""


@overload(cols_product)
def _cols_product_impl(A, W, out, zero, r0, r1, cols):
    if A.dtype == types.float32:
        def tile(A, W, out, zero, r0, r1, cols):
            matmul_cols(A, W, out, zero, False, r0, r1, cols)
        return tile

    def plain(A, W, out, zero, r0, r1, cols):
        _plain_rows(A, W, out, zero, False, r0, r1, 0, W.shape[0])
    return plain


def winograd_rows(x_t, h_in, gx, gh, V, bias, zero, b, ty, x0, x1, U, M, D, z):
    """winograd.tile_rows in float32; nothing in float64, which never takes the form
    (so that the float64 loops do not compile it: 17 s of compile time)."""


@overload(winograd_rows)
def _winograd_rows_impl(x_t, h_in, gx, gh, V, bias, zero, b, ty, x0, x1, U, M, D, z):
    if x_t.dtype == types.float32:
        def rows(x_t, h_in, gx, gh, V, bias, zero, b, ty, x0, x1, U, M, D, z):
            tile_rows(x_t, h_in, gx, gh, V, bias, zero, b, ty, x0, x1, U, M, D, z)
        return rows
    return lambda x_t, h_in, gx, gh, V, bias, zero, b, ty, x0, x1, U, M, D, z: None


def winograd_transposed(dz, gz, Vt, zero, cols, b, ty, x0, x1, U, M, D, z):
    """winograd.tile_rows_transposed in float32; nothing in float64 (as winograd_rows)."""


@overload(winograd_transposed)
def _winograd_transposed_impl(dz, gz, Vt, zero, cols, b, ty, x0, x1, U, M, D, z):
    if dz.dtype == types.float32:
        def rows(dz, gz, Vt, zero, cols, b, ty, x0, x1, U, M, D, z):
            tile_rows_transposed(dz, gz, Vt, zero, cols, b, ty, x0, x1, U, M, D, z)
        return rows
    return lambda dz, gz, Vt, zero, cols, b, ty, x0, x1, U, M, D, z: None


# -- gathering receptive fields ----------------------------------------------------------
@njit(inline="always", **FAST)
def _first_window(geo, p0):
    """(b, y, x) of output pixel p0: its frame, row and column."""
    b, rem = divmod(p0, geo[10] * geo[11])
    y, x = divmod(rem, geo[11])
    return b, y, x


@njit(inline="always", **FAST)
def _window(geo, b, y, x):
    """The window of output pixel (b, y, x): (y0, x0, inside, the next pixel's b, y,
    x): the input position of its top-left tap, whether every tap lies inside the
    frame, and the pixel after it in b, y, x order (stepped, not divided: a
    division a pixel made the gathers 20% slower)."""
    kh, kw, sh, sw, dh, dw, pt, pl, R, C, Ro, Co = (
        geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7], geo[8], geo[9],
        geo[10], geo[11])
    y0, x0 = y * sh - pt, x * sw - pl
    inside = y0 >= 0 and y0 + (kh - 1) * dh < R and x0 >= 0 and x0 + (kw - 1) * dw < C
    x += 1
    if x == Co:
        x = 0
        y += 1
        if y == Ro:
            y = 0
            b += 1
    return y0, x0, inside, b, y, x


@njit(**FAST)
def gather(src, geo, p0, p1, out, col0):
    """out[p - p0, col0 + (ky*kw + kx)*ch + c] = src[pixel under (ky, kx) of output
    pixel p, c], or 0 in the padding, for the output pixels p0..p1 (b, y, x in order).

    A pixel whose window lies inside the frame copies without bounds checks, each
    row of its window as one run of kw*ch values (without dilation across). The
    indices are kept provably non-negative (max(.., 0)): Numba wraps a negative
    index around, and the check for it stopped the copies vectorising. Measured on
    one Zen 4 thread, T=10, B=4, 64x64, 3x3: x (ch=1) 5.1 -> 1.7-1.9 ms, h (ch=16)
    6.0 -> 2.7 ms (15 ms while the check was in)."""
    kh, kw, dh, dw, R, C, ch = geo[0], geo[1], geo[4], geo[5], geo[8], geo[9], geo[12]
    zero = src.dtype.type(0)
    flat = src.reshape(-1)
    span = kw * ch
    runs = dw == 1
    col0 = max(col0, 0)  # (no index below is negative: see the docstring)
    b, y, x = _first_window(geo, p0)
    for p in range(p0, p1):
        r, pb = p - p0, b
        y0, x0, inside, b, y, x = _window(geo, b, y, x)
        if inside:
            for ky in range(kh):
                at = (pb * R + y0 + ky * dh) * C + x0
                if runs:
                    base, at = col0 + ky * span, max(at * ch, 0)
                    for c in range(span):
                        out[r, base + c] = flat[at + c]
                    continue
                for kx in range(kw):
                    base, s = col0 + (ky * kw + kx) * ch, at + kx * dw
                    for c in range(ch):
                        out[r, base + c] = src[s, c]
        else:
            for ky in range(kh):
                yy = y0 + ky * dh
                for kx in range(kw):
                    xx = x0 + kx * dw
                    base = col0 + (ky * kw + kx) * ch
                    if 0 <= yy < R and 0 <= xx < C:
                        s = (pb * R + yy) * C + xx
                        for c in range(ch):
                            out[r, base + c] = src[s, c]
                    else:
                        for c in range(ch):
                            out[r, base + c] = zero


@njit(**FAST)
def scatter_add(dp, geo, p0, p1, dst):
    """The adjoint of gather for a task's rows: dst[pixel under (ky, kx) of p, c] +=
    dp[p - p0, (ky*kw + kx)*ch + c] (the padding's entries dropped); the same fast
    paths as gather's (a window inside the frame, runs of kw*ch values, indices
    provably non-negative)."""
    kh, kw, dh, dw, R, C, ch = geo[0], geo[1], geo[4], geo[5], geo[8], geo[9], geo[12]
    flat = dst.reshape(-1)
    span = kw * ch
    runs = dw == 1
    b, y, x = _first_window(geo, p0)
    for p in range(p0, p1):
        r, pb = p - p0, b
        y0, x0, inside, b, y, x = _window(geo, b, y, x)
        if inside:
            for ky in range(kh):
                at = (pb * R + y0 + ky * dh) * C + x0
                if runs:
                    base, at = ky * span, max(at * ch, 0)
                    for c in range(span):
                        flat[at + c] += dp[r, base + c]
                    continue
                for kx in range(kw):
                    base, s = (ky * kw + kx) * ch, at + kx * dw
                    for c in range(ch):
                        dst[s, c] += dp[r, base + c]
        else:
            for ky in range(kh):
                yy = y0 + ky * dh
                if yy < 0 or yy >= R:
                    continue
                for kx in range(kw):
                    xx = x0 + kx * dw
                    if 0 <= xx < C:
                        s, base = (pb * R + yy) * C + xx, (ky * kw + kx) * ch
                        for c in range(ch):
                            dst[s, c] += dp[r, base + c]


# -- forward -----------------------------------------------------------------------------
@njit(inline="always", **FAST)
def _step_gates(t, z, r0, p0, p1, h, h_next, h_in, h_in_next, c, y, batch_first, lengths,
                h_mask, masked, training, gates, cs, hs, HW):
    """Step t's gate math for output pixels [p0, p1), whose pre-activations are z's
    rows r0.. (activated there in place): c, h_next (and h_in_next = h_next *
    h_mask when masked) and step t of y ([T,B,HW,F], or [B,T,HW,F] when
    batch_first); when training, gates[t], cs[t] and hs[t] (h_in)."""
    F = h.shape[1]
    if training:
        hs[t, p0:p1] = h_in[p0:p1]
    for p in range(p0, p1):
        r = r0 + p - p0
        zr = z[r]
        b, q = p // HW, p % HW
        yp = y[b, t, q] if batch_first else y[t, b, q]
        if t >= lengths[b]:  # past the row's length: state held, y = 0
            for u in range(F):
                h_next[p, u] = h[p, u]
                yp[u] = 0
                if masked:
                    h_in_next[p, u] = h_in[p, u]
            if training:
                gates[t, p] = 0
                cs[t, p] = c[p]
            continue
        # A block's 16 units are the lanes of a vector. The loop counts blocks
        # and indexes the 2-D arrays, and y is written after it: with row views
        # (y's among them), a stepped range over the units or a
        # branch inside, LLVM left it scalar (B=4, F=16: 58 ms of gate math
        # for T=10 on one thread, against 6 ms).
        for blk in range(-(-F // UNITS)):
            col, j0 = blk * CB, blk * UNITS
            for u in range(min(UNITS, F - j0)):
                k, j = col + u, j0 + u
                i = sigmoid(z[r, k])
                f = sigmoid(z[r, k + UNITS])
                g = tanh(z[r, k + 2 * UNITS])
                o = sigmoid(z[r, k + 3 * UNITS])
                cn = f * c[p, j] + i * g
                hn = o * tanh(cn)
                c[p, j] = cn
                h_next[p, j] = hn
                z[r, k], z[r, k + UNITS], z[r, k + 2 * UNITS], z[r, k + 3 * UNITS] = (
                    i, f, g, o)
        for u in range(F):
            yp[u] = h_next[p, u]
        if training:
            gates[t, p] = zr
            cs[t, p] = c[p]
        if masked:
            for u in range(F):
                h_in_next[p, u] = h_next[p, u] * h_mask[p, u]


@njit(parallel=True, **FAST)
def forward_loop(x, W, bias, gx, gh, h0, c0, lengths, h_mask, masked, A, Z, training,
                 y, batch_first, h_n, c_n, gates, cs, hs, V, U, M, D):
    """x [T,B*R*C,I]; W [Gp/CB, K, CB] (the two convolutions' weights stacked, in
    blocks); bias [1,Gp]; gx, gh the two convolutions; h0, c0, h_mask [N,F]; lengths
    [B]; masked: h * h_mask enters the recurrent convolution; A [P,rows,K], Z
    [P,rows,Gp]: each thread's scratch (rows: the pixels of a task).
    Writes y [T,B,HW,F], or [B,T,HW,F] when batch_first (a model's layout: one
    C-contiguous type either way, so the loop compiles once a dtype), h_n, c_n
    [N,F] and, when training, gates [T,N,Gp] (activated),
    cs [T,N,F] (c after each step) and hs [T,N,F] (the h that entered step t's
    recurrent convolution: h_{t-1}, times h_mask when masked).
    V: winograd.py's weights [16, Gp/CB, I+F, CB], or an empty array: then the
    step's convolutions run in Winograd's form (winograd.tile_rows; its scratch U,
    M, D and Z of at least 4 * winograd.TILES rows: a task's two rows of up to
    2 * TILES pixels) instead of the gathers and one product."""
    T = x.shape[0]
    N, F = h0.shape
    Kx = gx[0] * gx[1] * gx[12]
    nblk, HW, rows = W.shape[0], gx[10] * gx[11], A.shape[1]
    h = h0.copy()
    h_next = np.empty_like(h0)
    h_in = h * h_mask if masked else h
    h_in_next = np.empty_like(h0) if masked else h_next
    c = c0.copy()
    wino = V.shape[0] > 0
    zero = np.zeros((1, CB), x.dtype)
    B, Ro, Co = N // HW, gx[10], gx[11]
    tasks = task_count(B, Ro, Co) if wino else -(-N // rows)
    for t in range(T):
        for task in prange(tasks):
            tid = numba.get_thread_id()
            z = Z[tid]
            if wino:
                b, ty, x0, x1 = task_rows(task, Ro, Co)
                winograd_rows(x[t], h_in, gx, gh, V, bias, zero, b, ty, x0, x1, U[tid], M[tid],
                              D[tid], z)
                for dy in range(min(2, Ro - 2 * ty)):
                    p0 = b * HW + (2 * ty + dy) * Co + x0
                    _step_gates(t, z, dy * 2 * TILES, p0, p0 + x1 - x0, h, h_next, h_in,
                                h_in_next, c, y, batch_first, lengths, h_mask, masked,
                                training, gates, cs, hs, HW)
                continue
            p0 = np.int64(task) * rows
            p1 = min(p0 + rows, N)
            a = A[tid]
            gather(x[t], gx, p0, p1, a, 0)
            gather(h_in, gh, p0, p1, a, Kx)
            rows_product(a, W, z, bias, False, 0, p1 - p0, 0, nblk)
            _step_gates(t, z, 0, p0, p1, h, h_next, h_in, h_in_next, c, y, batch_first,
                        lengths, h_mask, masked, training, gates, cs, hs, HW)
        h, h_next = h_next, h
        if masked:
            h_in, h_in_next = h_in_next, h_in
        else:
            h_in, h_in_next = h, h_next
    h_n[:] = h
    c_n[:] = c


# -- backward ----------------------------------------------------------------------------
@njit(parallel=True, **FAST)
def backward_loop(dy, dh_n, dc_n, gates, cs, c0, lengths, h_mask, masked, W_hT, gh, Z,
                  dz, dh0, dc0, Vt, U, M, D):
    """The time loop of the backward: dy [T,N,F], dh_n, dc_n [N,F]; gates, cs as the
    training forward saved them; W_hT [ceil(Kh/CB), Gp, CB], the recurrent weights
    transposed; gh the recurrent convolution; Z [P,rows,ceil(Kh/CB)*CB] the threads'
    scratch. Writes dz [T,N,Gp] (the pre-activations' gradients, zero past a row's
    length) and the initial state's gradients dh0, dc0 [N,F].

    dh of the step before is dz's receptive-field gradients (dz @ W_h^T, Kh a
    pixel) added back where the recurrent convolution read them. A task adds into
    a band of its frame's rows and kh - 1 rows around it, so the bands run in two
    rounds, the even ones and then the odd ones, each band at least kh - 1 rows
    tall: no two tasks of a round add to the same pixel. (A gather of dz with the
    flipped kernel would need no rounds, but its product has F columns padded to
    CB, four times the work at F = 16.)

    Vt: winograd.transposed_weights, or an empty array: then dh of the step before
    is that gather in Winograd's form instead (winograd.tile_rows_transposed: 2.25x
    fewer multiply-adds, and each task writes only its own pixels, so no rounds);
    U, M, D and Z (of at least 4 * winograd.TILES rows) its scratch."""
    T, N, F = dy.shape
    Ro, Co = gh[10], gh[11]
    HW, B = Ro * Co, N // (Ro * Co)
    nblk, rows = W_hT.shape[0], Z.shape[1]
    Kh = gh[0] * gh[1] * gh[12]  # (dh's product: only these of its nblk * CB columns)
    zero = np.zeros((1, max(nblk, Vt.shape[1]) * CB), dy.dtype)
    wino = Vt.shape[0] > 0
    gz = gh.copy()
    gz[12] = dz.shape[2]  # (Winograd: the transpose reads dz's Gp channels)
    band = max(gh[0] - 1, -(-rows // Co), 1)  # rows of a band
    bands = -(-Ro // band)
    dh, dc = dh_n.copy(), dc_n.copy()
    for t in range(T - 1, -1, -1):
        c_prev = cs[t - 1] if t > 0 else c0
        for p in prange(N):  # the gate gradients, pixel by pixel
            if t >= lengths[p // HW]:  # (past its length a row's dh and dc pass unchanged)
                dz[t, p] = 0
                continue
            for blk in range(-(-F // UNITS)):  # (vectorised as the forward's gate loop)
                col, j0 = blk * CB, blk * UNITS
                for v in range(min(UNITS, F - j0)):
                    k, u = col + v, j0 + v
                    i, f = gates[t, p, k], gates[t, p, k + UNITS]
                    g, o = gates[t, p, k + 2 * UNITS], gates[t, p, k + 3 * UNITS]
                    tc = tanh(cs[t, p, u])
                    d_h = dh[p, u] + dy[t, p, u]
                    d_c = dc[p, u] + d_h * o * dtanh(tc)
                    dz[t, p, k] = d_c * g * dsigmoid(i)
                    dz[t, p, k + UNITS] = d_c * c_prev[p, u] * dsigmoid(f)
                    dz[t, p, k + 2 * UNITS] = d_c * i * dtanh(g)
                    dz[t, p, k + 3 * UNITS] = d_h * tc * dsigmoid(o)
                    dc[p, u] = d_c * f
                    dh[p, u] = 0
        if wino:  # dh of the step before: each task its own pixels
            for task in prange(task_count(B, Ro, Co)):
                tid = numba.get_thread_id()
                b, ty, x0, x1 = task_rows(task, Ro, Co)
                if t >= lengths[b]:
                    continue
                z = Z[tid]
                winograd_transposed(dz[t], gz, Vt, zero, F, b, ty, x0, x1, U[tid], M[tid],
                                    D[tid], z)
                for dy_ in range(min(2, Ro - 2 * ty)):
                    p0 = b * HW + (2 * ty + dy_) * Co + x0
                    for p in range(p0, p0 + x1 - x0):
                        r = dy_ * 2 * TILES + p - p0
                        for u in range(F):
                            dh[p, u] = z[r, u]
        for parity in range(0 if wino else 2):  # dh of the step before: dz through
            for task in prange(B * ((bands - parity + 1) // 2)):  # W_h^T, added back
                tid = numba.get_thread_id()
                b, k = divmod(np.int64(task), (bands - parity + 1) // 2)
                if t >= lengths[b]:
                    continue
                r0 = (2 * k + parity) * band
                z = Z[tid]
                lo, hi = b * HW + r0 * Co, b * HW + min(r0 + band, Ro) * Co
                for p0 in range(lo, hi, rows):
                    p1 = min(p0 + rows, hi)
                    cols_product(dz[t, p0:p1], W_hT, z, zero, 0, p1 - p0, Kh)
                    scatter_add(z, gh, p0, p1, dh)
        if masked:
            for p in prange(N):
                if t < lengths[p // HW]:
                    for u in range(F):
                        dh[p, u] *= h_mask[p, u]
    dh0[:] = dh
    dc0[:] = dc


@njit(parallel=True, **FAST)
def weight_grads(x, hs, dz, gx, gh, A, dW):
    """dW [P, K, Gp]: thread p's share of the sum over t of patches(x_t, hs[t])^T @ dz_t
    (the caller sums over P; each thread adds in its own, so no writes race). hs
    [T,N,F] as the training forward saved it; A [P,rows,K] the threads' scratch."""
    T, N, Gp = dz.shape
    Kx = gx[0] * gx[1] * gx[12]
    K, nblk, rows = dW.shape[1], Gp // CB, A.shape[1]
    tasks = -(-N // rows)
    dW[:] = 0
    for t in range(T):
        for task in prange(tasks):
            tid = numba.get_thread_id()
            p0 = np.int64(task) * rows
            p1 = min(p0 + rows, N)
            n = p1 - p0
            a = A[tid]
            gather(x[t], gx, p0, p1, a, 0)
            gather(hs[t], gh, p0, p1, a, Kx)
            blocks = dz[t, p0:p1].reshape(n, nblk, CB).transpose((1, 0, 2))
            rows_product(a[:n].T, blocks, dW[tid], dW[tid], True, 0, K, 0, nblk)


@njit(parallel=True, **FAST)
def weight_grads_winograd(x, hs, dz, gx, gh, U, dM, D, dV):
    """weight_grads in Winograd's form (the forward's, winograd.py): dV [P, 16, I+F,
    Gp], thread p's share of the sum over steps and tiles of U[xi]^T @ dM[xi], U the
    tiles' input transforms of x_t and hs[t] (as the forward made them) and dM =
    A dZ A^T their gradients' (winograd.tile_gradients); winograd.gradient_weights
    takes the sum to dW. U [P,TILES,16,I+F], dM [P,TILES,16,Gp/CB,CB], D
    [P,2,16,max(I,F)] scratch."""
    T, N, Gp = dz.shape
    Ro, Co = gx[10], gx[11]
    HW = Ro * Co
    B = N // HW
    zeros = np.zeros(Gp, dz.dtype)
    dV[:] = 0
    for t in range(T):
        for task in prange(task_count(B, Ro, Co)):
            tid = numba.get_thread_id()
            b, ty, x0, x1 = task_rows(task, Ro, Co)
            n = (x1 - x0 + 1) // 2
            u, m = U[tid], dM[tid]
            tile_inputs(x[t], gx, b, ty, x0 // 2, n, u, 0, D[tid])
            tile_inputs(hs[t], gh, b, ty, x0 // 2, n, u, gx[12], D[tid])
            tile_gradients(dz[t], gx, b, ty, x0, x1, zeros, m)
            for xi in range(16):
                blocks = m[:n, xi].transpose((1, 0, 2))  # [nblk, n, CB]
                matmul_rows(u[:n, xi].T, blocks, dV[tid, xi], dV[tid, xi], True, 0,
                            u.shape[2], 0, m.shape[2])


@njit(parallel=True, **FAST)
def input_grads(dz, W_x, gx, Z, dx):
    """dx [T,B*R*C,I] (zeroed here) = the input convolution's transpose of dz:
    dz @ W_x^T ([Gp] -> the Kx entries of a receptive field), added back into the
    frame; one task a frame (t, b), so no two tasks add to the same pixel.
    W_x [ceil(Kx/CB), Gp, CB]: the input weights transposed, in blocks; Z
    [P,rows,ceil(Kx/CB)*CB] the threads' scratch."""
    T, N, Gp = dz.shape
    HW = gx[10] * gx[11]
    B = N // HW
    nblk, rows = W_x.shape[0], Z.shape[1]
    Kx = gx[0] * gx[1] * gx[12]
    zero = np.zeros((1, nblk * CB), dz.dtype)
    dx[:] = 0
    for frame in prange(T * B):
        tid = numba.get_thread_id()
        t, b = divmod(np.int64(frame), B)
        z = Z[tid]
        for p0 in range(b * HW, (b + 1) * HW, rows):
            p1 = min(p0 + rows, (b + 1) * HW)
            cols_product(dz[t, p0:p1], W_x, z, zero, 0, p1 - p0, Kx)
            scatter_add(z, gx, p0, p1, dx[t])


# -- packing and the Python entries -------------------------------------------------------
def _scratch_threads():
    """Scratch arrays a thread: numba.get_thread_id() runs to the pool's size, which
    numba.set_num_threads may have set below."""
    return max(numba.config.NUMBA_NUM_THREADS, numba_threads())


def _task_rows(N):
    """Pixels a task: ROWS_PER_TASK, or all N (whole register tiles) when fewer."""
    return min(ROWS_PER_TASK, -(-N // ROWS) * ROWS)


def _matrix(w):  # [O,I,kh,kw] -> [kh*kw*I, O], rows in gather's order (ky, kx, i)
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


class PackedConvLSTM:
    """The kernels' weights, made once per change of the layer's parameters:
    W [Gp/CB, Kx+Kh, CB] (both convolutions' weights in gate columns), bias [1,Gp],
    W_x [ceil(Kx/CB), Gp, CB] and W_hT [ceil(Kh/CB), Gp, CB] (dx's and dh's
    products: the weights transposed), and with 3x3 kernels in float32 V [16, Gp/CB,
    I+F, CB] (winograd.winograd_weights; else an empty array), and with a 3x3
    recurrent kernel in float32 Vt (winograd.transposed_weights). w_ih [4F,I,kh,kw],
    w_hh [4F,F,kh,kw], b [4F]."""

    def __init__(self, w_ih, w_hh, b):
        dtype = w_ih.dtype
        F = w_hh.shape[1]
        self.F, self.kernel, self.rec_kernel = F, w_ih.shape[2:], w_hh.shape[2:]
        Gp = 4 * padded_filters(F)
        cols = gate_column(F)
        m_ih, m_hh = _matrix(w_ih), _matrix(w_hh)
        stacked = np.zeros((m_ih.shape[0] + m_hh.shape[0], Gp), dtype)
        stacked[:, cols] = np.concatenate([m_ih, m_hh])
        self.W = in_blocks(stacked)
        self.bias = np.zeros((1, Gp), dtype)
        self.bias[0, cols] = b
        self.W_x, self.W_hT = (in_blocks(self._gate_rows(m.T, cols, Gp)) for m in (m_ih, m_hh))
        I = w_ih.shape[1]
        self.V = (winograd_weights(stacked, I, F)
                  if applies(self.kernel, self.rec_kernel, (1, 1), (1, 1), dtype)
                  else np.zeros((0, 0, 0, 0), dtype))
        self.Vt = (transposed_weights(stacked, I, F)  # (the backward's dh)
                   if applies((3, 3), self.rec_kernel, (1, 1), (1, 1), dtype)
                   else np.zeros((0, 0, 0, 0), dtype))

    @staticmethod
    def _gate_rows(m, cols, Gp):
        """m [4F, K] with its rows moved to their gate columns of Gp (zero rows between)."""
        out = np.zeros((Gp, m.shape[1]), m.dtype)
        out[cols] = m
        return out


def convlstm_forward_cpu(x, packed, h0, c0, lengths=None, h_mask=None, strides=(1, 1),
                         padding="valid", dilation=(1, 1), training=False, batch_first_y=False,
                         winograd=None):
    """x [T,B,R,C,I] -> y [T,B,Ro,Co,F], h_n, c_n [B,Ro,Co,F], and (training) the
    cache convlstm_backward_cpu reads, else None. h0, c0 [B,Ro,Co,F]; lengths [B] or
    None; h_mask [B,Ro,Co,F] or None (recurrent dropout); batch_first_y: y comes
    as [B,T,Ro,Co,F] instead, written so by the loop (a model's layout, no copy).
    winograd: whether the step's convolutions run in Winograd's form
    (kernels/cpu/winograd.py); None: wherever it applies (float32, 3x3 kernels,
    stride 1, no dilation), where it is 1.3-1.9x faster (T=10, B=4, 64x64). The
    backward follows: its weight gradients take the form where the forward did,
    and dh (the recurrent convolution's transpose) wherever the recurrent kernel
    is 3x3 in float32, unless winograd=False."""
    T, B = x.shape[:2]
    F = packed.F
    gx, gh = convlstm_convs(packed.kernel, packed.rec_kernel, F, x.shape, strides, padding,
                            dilation)
    Ro, Co = gx[10], gx[11]
    N, Gp, K = B * Ro * Co, packed.bias.shape[1], packed.W.shape[1]
    dtype = x.dtype
    xs = np.ascontiguousarray(x).reshape(T, -1, x.shape[4])
    state = lambda a: np.ascontiguousarray(a, dtype).reshape(N, F)  # noqa: E731
    lengths = np.full(B, T, np.int64) if lengths is None else np.asarray(lengths, np.int64)
    masked = h_mask is not None
    mask = state(h_mask) if masked else np.ones((1, F), dtype)
    c0 = state(c0)
    P, rows = _scratch_threads(), _task_rows(N)
    HW = Ro * Co
    y = np.empty((B, T, HW, F) if batch_first_y else (T, B, HW, F), dtype)
    h_n, c_n = np.empty((N, F), dtype), np.empty((N, F), dtype)
    saved = (T, N) if training else (1, 1)
    gates, cs, hs = (np.empty(saved + (Gp,), dtype), np.empty(saved + (F,), dtype),
                     np.empty(saved + (F,), dtype))
    can = packed.V.shape[0] > 0 and applies(packed.kernel, packed.rec_kernel, strides,
                                            dilation, dtype)
    if winograd and not can:
        raise ValueError("winograd=True needs float32, 3x3 kernels, stride 1 and no "
                         "dilation")
    V = packed.V if can and winograd is not False else packed.V[:0]
    I = x.shape[4]
    U, M, D = ((np.empty((P, TILES, 16, I + F), dtype), np.empty((P, TILES, 16, CB), dtype),
                np.empty((P, 2, 16, max(I, F)), dtype)) if V.shape[0] else
               (np.empty((1, 1, 1, 1), dtype),) * 3)
    forward_loop(xs, packed.W, packed.bias, gx, gh, state(h0), c0, lengths, mask,
                 masked, np.empty((P, rows, K), dtype),
                 np.empty((P, max(rows, 4 * TILES), Gp), dtype),
                 training, y, batch_first_y, h_n, c_n, gates, cs, hs, V, U, M, D)
    grid = (B, Ro, Co, F)
    cache = dict(x=xs, x_shape=x.shape, packed=packed, convs=(gx, gh),
                 lengths=lengths, mask=mask, masked=masked, c0=c0, gates=gates,
                 cs=cs, hs=hs, grid=grid, winograd=winograd is not False,
                 winograd_forward=V.shape[0] > 0) if training else None
    y_shape = (B, T) + grid[1:] if batch_first_y else (T,) + grid
    return y.reshape(y_shape), h_n.reshape(grid), c_n.reshape(grid), cache


def convlstm_backward_cpu(dy, dh_n, dc_n, cache):
    """Backward of convlstm_forward_cpu(training=True): dy [T,B,Ro,Co,F], dh_n, dc_n
    [B,Ro,Co,F] -> dict of dx [T,B,R,C,I], dw_ih, dw_hh (their own shapes), db [4F],
    dh0, dc0 [B,Ro,Co,F]."""
    packed, (gx, gh) = cache["packed"], cache["convs"]
    gates, grid = cache["gates"], cache["grid"]
    T, N, Gp = gates.shape
    F, dtype = packed.F, gates.dtype
    P, rows = _scratch_threads(), _task_rows(N)
    flat = lambda a: np.ascontiguousarray(a, dtype).reshape(-1, N, F)  # noqa: E731
    dz = np.zeros((T, N, Gp), dtype)  # (the padded units' columns stay zero)
    dh0, dc0 = np.empty((N, F), dtype), np.empty((N, F), dtype)
    Vt = packed.Vt if cache["winograd"] else packed.Vt[:0]
    if Vt.shape[0]:
        U, M, D = (np.empty((P, TILES, 16, Gp), dtype), np.empty((P, TILES, 16, CB), dtype),
                   np.empty((P, 2, 16, Gp), dtype))
        Z = np.empty((P, 4 * TILES, Vt.shape[1] * CB), dtype)
    else:
        U = M = D = np.empty((1, 1, 1, 1), dtype)
        Z = np.empty((P, rows, packed.W_hT.shape[0] * CB), dtype)
    backward_loop(flat(dy), flat(dh_n)[0], flat(dc_n)[0], gates, cache["cs"], cache["c0"],
                  cache["lengths"], cache["mask"], cache["masked"], packed.W_hT, gh, Z, dz,
                  dh0, dc0, Vt, U, M, D)
    K = packed.W.shape[1]
    if cache["winograd_forward"]:  # the weight gradients in the forward's form
        I = gx[12]
        dV = np.empty((P, 16, I + F, Gp), dtype)
        weight_grads_winograd(cache["x"], cache["hs"], dz, gx, gh,
                              np.empty((P, TILES, 16, I + F), dtype),
                              np.empty((P, TILES, 16, Gp // CB, CB), dtype),
                              np.empty((P, 2, 16, max(I, F)), dtype), dV)
        dW = gradient_weights(dV.sum(axis=0), I, F)[:, gate_column(F)].astype(dtype)
    else:
        dW = np.empty((P, K, Gp), dtype)
        wrows = min(GRAD_ROWS, N)
        weight_grads(cache["x"], cache["hs"], dz, gx, gh, np.empty((P, wrows, K), dtype), dW)
        dW = dW.sum(axis=0)[:, gate_column(F)]  # [K, 4F]
    dx = np.empty_like(cache["x"])
    input_grads(dz, packed.W_x, gx, np.empty((P, rows, packed.W_x.shape[0] * CB), dtype), dx)
    kh, kw = packed.kernel
    Kx = kh * kw * gx[12]
    unmatrix = lambda m, k, ch: m.reshape(k[0], k[1], ch, 4 * F).transpose(3, 2, 0, 1)  # noqa
    return dict(dx=dx.reshape(cache["x_shape"]),
                dw_ih=np.ascontiguousarray(unmatrix(dW[:Kx], packed.kernel, gx[12])),
                dw_hh=np.ascontiguousarray(unmatrix(dW[Kx:], packed.rec_kernel, F)),
                db=dz.reshape(-1, Gp).sum(axis=0)[gate_column(F)],
                dh0=dh0.reshape(grid), dc0=dc0.reshape(grid))
