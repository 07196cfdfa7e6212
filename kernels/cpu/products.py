"""The products around the CPU kernels' time loops, and the layout passes they read.

Every float32 product is microkernel.tile_block's register tile: matmul_rows runs
a range of rows and blocks on one thread, matmul shares the (row chunk, block)
tasks of a large product among Numba's threads (the input projection before the
loop, dx and the weight gradients after it), step_product does the same for a
step of the BLAS-path loops. The second operand is always in blocks of CB
columns ([nblk, K, CB], in_blocks's layout). The float64 paths use SciPy's BLAS
(blas_dot, the one np.dot calls inside Numba), never NumPy's: two OpenBLAS pools
in one call took the cores from each other (product_for).

Layout passes: transpose (register tiles of TT x TT, with the column sums on the
way), copy_to_blocks, untile (a weight gradient computed transposed, to torch's
layout), tiled_weights and tiled_bias (torch's rows to the tiled gate columns).
run_in_chunks projects the inputs and runs a time loop over them, a plan's chunk
of steps at a time.

Dimensions: M rows, K the summed dimension, N output columns; nblk = N / CB.
"""
import numba
import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import BORROW, FAST
from .microkernel import CB, LANES, ROWS, TT, address, tile_block, tile_cols, transpose_tile
from .plan import SMALL_COPY, step_threads
from .sequence import NO_MASK, aligned_empty, pad_units
from .threads import (POLICY, SMALL_REGION, clock_ns, finished, numba_threads, parallel_ok,
                      region_done, serial_if)


# A product before or after the time loop runs on one thread below this: it is then a
# few tens of microseconds, and a parallel region waits for the slowest thread, which
# on a busy machine may be one the OS has descheduled for a tick (threads.py).
PRODUCT_PARALLEL_MIN_FLOPS = 4_000_000
ROWS_PER_TASK = 120  # rows of one task of the large products (a multiple of ROWS;
                     # 120 beat 60 by 20-35% at T*B >= 2048, level below)
KC = 1024           # K chunk of the products: KC x CB of W is 256 KiB, held in L2 across a
                    # task's row tiles (measured against 256: 15-30% faster at K >= 512)


def stack_f32(n):
    """An intrinsic returning a pointer to n float32 on the stack: a fixed-size
    scratch that LLVM can keep in registers (a heap array it cannot)."""
    @intrinsic
    def stack(typingctx):
        def codegen(context, builder, signature, args):
            return cgutils.alloca_once(builder, context.get_value_type(types.float32), size=n)
        return types.CPointer(types.float32)(), codegen
    return stack


TR_ROWS = 256  # the rows of one of transpose's bands
_column_sums = stack_f32(TT)


# -- the register-tiled product --------------------------------------------------------
@njit(**BORROW)
def matmul_rows(A, W, out, init, per_row, r_begin, r_end, b0, b1):
    """out[r_begin:r_end, blk*CB:(blk+1)*CB] = init + A[r_begin:r_end] @ W[blk] for
    blk in [b0, b1). A: [M,K'] (C or F order), K' >= K; W: [nblk,K,CB], each block's
    columns contiguous; out: [M, nblk*CB]; init: [M or 1, nblk*CB]. The sum runs
    over W's K rows: A's columns past them (the padded units of h, for which the
    packed weights keep no rows) are not read. K is walked in chunks of KC so that a chunk
    of W stays in cache across the row tiles (the weight gradients have K = T*B)."""
    K = min(A.shape[1], W.shape[1])
    for k0 in range(0, max(K, 1), KC):
        k1 = min(k0 + KC, K)
        for blk in range(b0, b1):
            if k0 == 0:
                tile_block(A, W, out, blk, r_begin, r_end, init, per_row, k0, k1)
            else:  # later chunks add to what the earlier ones left in out
                tile_block(A, W, out, blk, r_begin, r_end, out, True, k0, k1)


@njit(**BORROW)
def matmul_cols(A, W, out, init, per_row, r_begin, r_end, cols):
    """matmul_rows over the blocks that hold out's first `cols` columns, and of the
    last of them only its vectors up to column `cols` (rounded up to a vector;
    columns past that are not written): for W whose columns are mostly padding
    past `cols` (kernels/cpu/convlstm.py's transposed weights). K in one chunk."""
    full, part = divmod(cols, CB)
    matmul_rows(A, W, out, init, per_row, r_begin, r_end, 0, full)
    if part:
        K = min(A.shape[1], W.shape[1])
        tile_cols(A, W, out, full, r_begin, r_end, init, per_row, 0, K,
                  -(-part // LANES) * LANES)


def matmul(A, W, out, init, per_row):
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
        matmul_rows(A, W, out, init, per_row, 0, M, 0, nblk)
        return
    rows, chunks = row_chunks(M, nblk, P)
    start = clock_ns()
    matmul_tasks(A, W, out, init, per_row, rows, chunks, gate)
    region_done(gate, start)


@njit(parallel=True, **BORROW)
def matmul_tasks(A, W, out, init, per_row, rows, chunks, gate):
    M, nblk = A.shape[0], W.shape[0]
    for task in prange(chunks * nblk):
        # (prange's index is unsigned: mixed with int64 it would become a float)
        blk, chunk = divmod(np.int64(task), chunks)  # neighbouring tasks share a W block
        r0 = chunk * rows
        matmul_rows(A, W, out, init, per_row, r0, min(r0 + rows, M), blk, blk + 1)
        finished(gate, numba.get_thread_id())


def row_chunks(M, nblk, P):
    """(rows per task, tasks per block) for matmul: about ROWS_PER_TASK rows, in as
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


@njit(parallel=True, **FAST)
def transpose(a, out, part, col0=0):
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
    serial_if(a.size <= SMALL_REGION, transpose, a, out, part)
    return out, part.sum(axis=0)


@njit(parallel=True, **BORROW)
def copy_to_blocks(a, out):
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


@njit(parallel=True, **BORROW)
def untile(a_t, cols, out):
    """out[j, i] = a_t[i, cols[j]]: a weight gradient computed transposed, in the
    kernels' gate columns (a_t [n(+), Gp(+)]), to torch's layout (out [len(cols), n]),
    in tiles of TT x TT, each a band of TT rows of out shared among the threads.
    Where a band's columns of a_t are consecutive (TT units of one gate, always
    when TT divides H) its tiles go through transpose_tile's registers, the rest
    (edges, gates straddling a band) one float at a time. a_t's rows should not
    be a multiple of 4 KiB apart (padded_cols): TT rows of a_t at such a distance
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


def padded_cols(G):
    """A row length of at least G float32 that is not a multiple of 1 KiB, so that
    rows read down a column fall into different L1 sets (untile)."""
    return G + TT if G % 256 == 0 else G


@njit(**BORROW)
def times_mask(a, mask, out, j0, j1):
    """out[:, j0:j1] = a[:, j0:j1] * mask[:, j0:j1] (the recurrent dropout mask)."""
    for r in range(a.shape[0]):
        for j in range(j0, j1):
            out[r, j] = a[r, j] * mask[r, j]


@njit(**BORROW)
def masked_product(dg_next, W, rec, zero, mask, b0, b1):
    """rec's output blocks [b0, b1) = dG of the step after @ W_hh, times the recurrent
    dropout mask when there is one (h entered the product times it): the gradient
    that reaches a step's h through the recurrent product (LSTM and GRU backward)."""
    matmul_rows(dg_next, W, rec, zero, False, 0, rec.shape[0], b0, b1)
    if mask.shape[0] > 0:
        times_mask(rec, mask, rec, b0 * CB, b1 * CB)


# -- the BLAS paths' products ------------------------------------------------------------
def blas_dot(a, b):
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


def tiled_dot(a, b):
    """a @ b (float32) on Numba's threads, in the tiled product (matmul), b copied to
    in_blocks's layout first; for the products around the layer-normalised float32
    loop, which keeps off BLAS (see blas_dot)."""
    a = a if a.flags.c_contiguous or a.flags.f_contiguous else np.ascontiguousarray(a)
    w = in_blocks(b)
    out = np.empty((a.shape[0], w.shape[0] * CB), np.float32)
    matmul(a, w, out, np.zeros((1, out.shape[1]), np.float32), False)
    return out[:, :b.shape[1]]


def product_for(dtype):
    """The matrix product the BLAS paths use around their loops: tiled_dot (Numba's
    threads) for float32, whose loops keep off BLAS, blas_dot (SciPy's BLAS, the one
    their np.dot calls) for float64."""
    return tiled_dot if np.dtype(dtype) == np.float32 else blas_dot


def step_plan(B, units, blocks):
    """step_product's plan for B rows and a W of `blocks` blocks: (rows a task,
    tasks a block, threads (step_threads's), the thread policy's gate)."""
    P = step_threads(B, units, max(1, blocks))
    rows, chunks = row_chunks(B, max(1, blocks), P)
    return rows, chunks, P, POLICY.gate()


def step_tiles(packed, B, recurrent, projection):
    """The BLAS loops' tiles argument (lstm_blas's forward_blas and backward_blas,
    gru_blas's): None where packed.tiles is (float64), else (the two weights
    packed.tiles[recurrent] and [projection] in blocks, a zero row as wide as
    their outputs, and each product's step_product plan for B rows)."""
    tiles = packed.tiles
    if tiles is None:
        return None
    w, wp = tiles[recurrent], tiles[projection]
    zero = np.zeros((1, max(w.shape[0], wp.shape[0], 1) * CB), np.float32)
    return (w, wp, zero, step_plan(B, packed.H, w.shape[0]),
            step_plan(B, packed.H, wp.shape[0]))


@njit(cache=True)
def _dot_into(a, b, out):
    if a.shape[1] == 0:  # (BLAS leaves out alone for an empty sum)
        out[:] = 0
    else:
        np.dot(a, b, out)


@njit(**BORROW)
def step_product(A, W, out, zero, plan):
    """out = A @ W (W in in_blocks's layout) on Numba's threads, for a step of the
    layer-normalised float32 loop: plan (rows a task, tasks a block, threads, the
    thread policy's gate), on one thread where step_threads says so or the gate holds."""
    rows, chunks, P, gate = plan
    if P == 1 or not parallel_ok(gate):
        matmul_rows(A, W, out, zero, False, 0, A.shape[0], 0, W.shape[0])
    else:
        start = clock_ns()
        matmul_tasks(A, W, out, zero, False, rows, chunks, gate)
        region_done(gate, start)


def in_blocks(a, small_copy=SMALL_COPY):
    """[K,N] -> [N/CB, K, CB]: the columns of each block of CB contiguous, as
    tile_block reads them. N is padded with zeros to a multiple of CB. Past
    small_copy elements and one block the copy is copy_to_blocks's parallel one (dG at T=64,
    B=32, H=128, [2048 x 512]: 0.28 ms, NumPy's strided copy 0.52 ms); one block
    is a copy of a (padded). The result starts on a cache line (aligned_empty), so
    every vector of W a product loads lies in one line (at NumPy's 16 bytes each
    spanned two: on one Zen 4 core a step's product at B=1, H=64 took 724 ns
    against 590, and a T=100, B=1, I=H=64 inference call 0.141 ms against 0.131)."""
    a = pad_units(a, -(-a.shape[1] // CB) * CB)
    K, N = a.shape
    out = aligned_empty((N // CB, K, CB), a.dtype)  # (each vector a product loads in one line)
    if a.size <= small_copy or N == CB:
        out[...] = a.reshape(K, N // CB, CB).transpose(1, 0, 2)
    else:
        serial_if(a.size <= SMALL_REGION, copy_to_blocks, a, out)
    return out


def transpose_into(a, out, col0, small):
    """out[:N, col0:col0 + M] = a.T for a [M,N]."""
    if small:
        out[:a.shape[1], col0:col0 + a.shape[0]] = a.T
    else:
        serial_if(a.size <= SMALL_REGION, transpose, a, out, NO_MASK, col0)


def blas_projection(x, w_ih, b):
    """The blas paths' input projection: x [T,B,I] @ w_ih^T + b -> [T,B,G], on the
    threads their loop's products use (products.product_for)."""
    T, B, I = x.shape
    xw = np.ascontiguousarray(product_for(x.dtype)(x.reshape(T * B, I), w_ih.T)).reshape(
        T, B, -1)
    xw += b
    return xw


def tiled_weights(w_ih, w_hh, cols, Gp, Hp):
    """Torch-layout w_ih [G,I], w_hh [G,H] -> the blocked copies the tiled kernels
    read, torch's row j moved to column cols[j] of Gp, the rest zero."""
    I, H = w_ih.shape[1], w_hh.shape[1]
    w_ih_p = np.zeros((Gp, I), np.float32)
    w_ih_p[cols] = w_ih
    w_hh_p = np.zeros((Gp, Hp), np.float32)
    w_hh_p[cols, :H] = w_hh
    return dict(
        w_in=in_blocks(w_ih_p.T),   # [Gp/CB, I, CB]: x @ W_ih^T
        w_fwd=in_blocks(w_hh_p[:, :H].T),  # [Gp/CB, H, CB]: h @ W_hh^T (h's H units)
        w_bwd=in_blocks(w_hh_p),    # [Hp/CB, Gp, CB]: dG @ W_hh
        w_dx=in_blocks(w_ih_p))     # [Ip/CB, Gp, CB]: dG @ W_ih, I padded to Ip


def tiled_bias(b, cols, Gp):
    """[G] -> [1,Gp], torch's entry j at column cols[j]."""
    out = np.zeros((1, Gp), np.float32)
    out[0, cols] = b
    return out


def run_in_chunks(x, w_in, bias, Gp, hbuf, reverse, steps, run):
    """Project x and run the time loop over it, `steps` steps at a time (a plan's
    chunk: all T when training, so that the projection buffer, returned, then
    serves the backward; else few enough that the projected inputs stay in cache).
    Chunks go in the direction's order; run(xw_chunk, t0, t1) runs steps
    [t0, t1) from the state in hbuf[0] and leaves it in hbuf[(t1 - t0) % 2]."""
    T, B, I = x.shape
    xw = aligned_empty((min(steps, T), B, Gp))
    starts = range(0, T, steps)
    for t0 in (reversed(starts) if reverse else starts):
        t1 = min(t0 + steps, T)
        chunk = xw[:t1 - t0]
        matmul(x[t0:t1].reshape(-1, I), w_in, chunk.reshape(-1, Gp), bias, False)
        run(chunk, t0, t1)
        if (t1 - t0) & 1:  # the state ended in hbuf[1]; the next chunk reads hbuf[0]
            hbuf[0] = hbuf[1]
    return xw
