"""What the CUDA cell kernels share: the tiled matrix product, the launch plan of
the persistent recurrence, and small elementwise kernels on device arrays.

Dimensions: M, N, K of a product; T steps, B batch, H hidden units, R weight rows
per hidden unit that a recurrence keeps on chip (4 for the LSTM, 3 for the GRU,
1 for the RNN).

The recurrence of every cell runs in one of two ways (see `plan`):

  persistent: one cooperative launch for all T steps. The hidden units are cut
      into slices of `units`; each block owns whole slices, copies its slices'
      rows of W_hh into shared memory once, and the grid meets at
      cuda.cg.this_grid().sync() after each step. h is double-buffered
      ([2,B,H]: step s reads h[s % 2] and writes h[(s + 1) % 2]), so one
      barrier a step is enough. Any grid size works, one block included (a block
      loops over the slices it owns).
  per step: where the slices do not fit on chip in a co-resident grid, one
      launch per step (or phase) reading W_hh from global memory.

Inside a block, thread p of the block's (b, unit) pairs computes a unit's gates
for one batch row: its dot products over H and its gate math, so one step of a
unit needs no other thread.
"""
import math

import numpy as np
from numba import config, cuda

SIMULATED = bool(config.ENABLE_CUDASIM)
# Tile of the matrix product: TILE x TILE threads, one output each. The simulator
# runs every thread as a Python thread, so it gets a smaller tile.
TILE = 8 if SIMULATED else 16
# Dynamic shared memory a block may take without an opt-in attribute.
SHARED_BYTES = 48 * 1024
MAX_THREADS = 256


def device_array(shape, dtype):
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def is_device(a):
    """Whether a lives on the GPU: a Numba device array, or anything with
    __cuda_array_interface__ (CuPy arrays, torch CUDA tensors)."""
    return (hasattr(a, "__cuda_array_interface__") or
            bool(getattr(a, "__cuda_ndarray__", False)))


def as_device(a):
    """A Numba device array for a (no copy when a already lives on the GPU)."""
    if getattr(a, "__cuda_ndarray__", False):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a)
    return cuda.to_device(np.ascontiguousarray(a))


# -- the matrix product ---------------------------------------------------------------
@cuda.jit
def _matmul_kernel(a, b, c, bias, zero, trans_a, trans_b, accumulate, has_bias):
    """c [M,N] (+)= op(a) [M,K] @ op(b) [K,N] (+ bias [N]); op(a) = a.T when
    trans_a (a is then [K,M]), likewise for b. One TILE x TILE block of c per
    thread block, K walked in TILE-wide tiles through shared memory."""
    sa = cuda.shared.array((TILE, TILE), a.dtype)
    sb = cuda.shared.array((TILE, TILE), b.dtype)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty
    col = cuda.blockIdx.x * TILE + tx
    M = c.shape[0]
    N = c.shape[1]
    K = a.shape[0] if trans_a else a.shape[1]
    acc = zero
    for k0 in range(0, K, TILE):
        ka = k0 + tx
        if row < M and ka < K:
            sa[ty, tx] = a[ka, row] if trans_a else a[row, ka]
        else:
            sa[ty, tx] = zero
        kb = k0 + ty
        if kb < K and col < N:
            sb[ty, tx] = b[col, kb] if trans_b else b[kb, col]
        else:
            sb[ty, tx] = zero
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sa[ty, kk] * sb[kk, tx]
        cuda.syncthreads()
    if row < M and col < N:
        if has_bias:
            acc += bias[col]
        if accumulate:
            acc += c[row, col]
        c[row, col] = acc


def matmul(a, b, c, bias=None, trans_a=False, trans_b=False, accumulate=False):
    """c (+)= op(a) @ op(b) (+ bias), on device arrays of one float dtype.

    a: [M,K] ([K,M] with trans_a); b: [K,N] ([N,K] with trans_b); c: [M,N];
    bias: [N] or None. Returns c. op(a) may have more than M rows and op(b) more
    than N columns: only the first M and N are read, so c can be the leading
    rows of a larger product (the GRU's r and z rows of dW_hh use this).
    """
    M, N = c.shape
    if M == 0 or N == 0:
        return c
    zero = c.dtype.type(0)
    has_bias = bias is not None
    if bias is None:
        bias = c[0]  # never read
    grid = (math.ceil(N / TILE), math.ceil(M / TILE))
    _matmul_kernel[grid, (TILE, TILE)](a, b, c, bias, zero, trans_a, trans_b, accumulate,
                                       has_bias)
    return c


def column_sums(a, out, ones):
    """out [N] = the sum of a [M,N] over its rows (ones: a device [1,M] of ones)."""
    matmul(ones, a, out.reshape(1, out.shape[0]))
    return out


def ones(M, dtype):
    return cuda.to_device(np.ones((1, M), dtype))


# -- the plan of a recurrence ----------------------------------------------------------
class Plan:
    """How a recurrence is launched.

    units: hidden units per slice; slices: ceil(H / units); blocks, threads: the
    launch; shared: dynamic shared memory per block in bytes (0 when the
    weights stay in global memory); persistent: one cooperative launch for all
    steps (else one launch per step).
    """

    def __init__(self, units, slices, blocks, threads, shared, persistent):
        self.units, self.slices, self.blocks = units, slices, blocks
        self.threads, self.shared, self.persistent = threads, shared, persistent

    def __repr__(self):
        return (f"Plan(units={self.units}, slices={self.slices}, blocks={self.blocks}, "
                f"threads={self.threads}, shared={self.shared}, "
                f"persistent={self.persistent})")


def _threads_for(B, units):
    return min(MAX_THREADS, 32 * math.ceil(B * units / 32))


def _max_cooperative_blocks(kernel, args, threads, shared):
    if SIMULATED:  # the simulator runs cooperative grids of one block
        return 1
    argtypes = tuple(kernel.typeof_pyval(a) for a in args)
    return kernel.compile(argtypes).max_cooperative_grid_blocks(threads, shared)


_PLANS = {}


def plan(kernel, args, H, B, rows, width, itemsize, units=None, blocks=None,
         persistent=None):
    """The launch of a recurrence kernel whose block keeps, per hidden unit of
    its slices, `rows` rows of `width` weights in shared memory.

    None picks: the fewest units per slice for which each block's slice fits
    in shared memory and one block per slice fits in a co-resident cooperative
    grid; else the per-step path. units, blocks, persistent force a choice
    (tests use them to run the multi-slice and per-step paths at tiny shapes).
    """
    key = (kernel, H, B, rows, width, itemsize, units, blocks, persistent)
    if key not in _PLANS:
        _PLANS[key] = _plan(kernel, args, H, B, rows, width, itemsize, units, blocks,
                            persistent)
    return _PLANS[key]


def _plan(kernel, args, H, B, rows, width, itemsize, units, blocks, persistent):
    def co_resident(threads, shared):
        return _max_cooperative_blocks(kernel, args, threads, shared)
    return choose_plan(co_resident, H, B, rows, width, itemsize, units, blocks, persistent)


def choose_plan(co_resident, H, B, rows, width, itemsize, units=None, blocks=None,
                persistent=None, shared_limit=None):
    """plan's choice, given co_resident(threads, shared): the most blocks of that
    many threads and bytes of dynamic shared memory that a cooperative grid of the
    kernel may have (the GPU's max_cooperative_grid_blocks; resources.py puts
    ptxas's figures and an architecture's limits in its place, with no GPU).
    shared_limit: the most dynamic shared memory a block may take (default:
    SHARED_BYTES; no limit in the simulator)."""
    if shared_limit is None:
        shared_limit = math.inf if SIMULATED else SHARED_BYTES
    per_unit = rows * width * itemsize
    if persistent is not False:
        for u in ([units] if units else range(1, H + 1)):
            slices = math.ceil(H / u)
            n = blocks or slices
            shared = math.ceil(slices / n) * u * per_unit
            if shared > shared_limit:
                continue
            threads = _threads_for(B, u)
            if n <= co_resident(threads, shared):
                return Plan(u, slices, n, threads, shared, True)
        if persistent:
            raise RuntimeError(f"a persistent recurrence of H={H}, B={B} with "
                               f"units={units}, blocks={blocks} does not fit on this GPU")
    u = units or max(1, min(H, MAX_THREADS // max(B, 1)))
    slices = math.ceil(H / u)
    return Plan(u, slices, blocks or slices, _threads_for(B, u), 0, False)


def lengths_or_full(lengths, T, B):
    """Device int64 [B]: the lengths, or T for every row when lengths is None."""
    if lengths is None:
        return cuda.to_device(np.full(B, T, np.int64))
    if is_device(lengths):
        return as_device(lengths)
    return cuda.to_device(np.ascontiguousarray(lengths, np.int64))


# -- elementwise kernels on device arrays ----------------------------------------------
@cuda.jit
def _copy_kernel(src, dst):
    """dst[i] = src[i] over flat 1-D views."""
    i = cuda.grid(1)
    if i < dst.shape[0]:
        dst[i] = src[i]


@cuda.jit
def _combine_kernel(a, b, out, op, scale):
    """out = a + b (op 0), a * b (op 1), (a + b) * scale (op 2), a * scale (op 3)."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        if op == 0:
            out[i] = a[i] + b[i]
        elif op == 1:
            out[i] = a[i] * b[i]
        elif op == 2:
            out[i] = (a[i] + b[i]) * scale
        else:
            out[i] = a[i] * scale


@cuda.jit
def _copy3_kernel(src, dst, swap):
    """dst = src for 3-D arrays of any strides, or src's first two axes swapped."""
    i, j, k = cuda.grid(3)
    if i < dst.shape[0] and j < dst.shape[1] and k < dst.shape[2]:
        if swap:
            dst[i, j, k] = src[j, i, k]
        else:
            dst[i, j, k] = src[i, j, k]


@cuda.jit
def _scale_rows_kernel(a, m, out):
    """out[t, b, u] = a[t, b, u] * m[b, u]."""
    i, j, k = cuda.grid(3)
    if i < out.shape[0] and j < out.shape[1] and k < out.shape[2]:
        out[i, j, k] = a[i, j, k] * m[j, k]


@cuda.jit
def _copy2_kernel(src, dst):
    """dst = src for 2-D arrays of any strides."""
    i, j = cuda.grid(2)
    if i < dst.shape[0] and j < dst.shape[1]:
        dst[i, j] = src[i, j]


@cuda.jit
def _fill_kernel(a, value):
    i = cuda.grid(1)
    if i < a.shape[0]:
        a[i] = value


def flat_launch(n):
    """(blocks, threads) of a launch with a thread for each of n items."""
    threads = 32 if SIMULATED else 256
    return max(1, math.ceil(n / threads)), threads


def copy(src, dst):
    """dst[...] = src[...] for contiguous device arrays of one size."""
    if dst.size:
        _copy_kernel[flat_launch(dst.size)](src.reshape(src.size), dst.reshape(dst.size))
    return dst


def copy3(src, dst, swap=False):
    """dst[...] = src (or src with its first two axes swapped), any strides."""
    if dst.size:
        _copy3_kernel[_grid3(dst.shape)](src, dst, swap)
    return dst


def _grid3(shape):
    """The launch of a kernel with a thread per entry of a 3-D array (z walks the
    last axis: grid dims are limited to 65535 in y and z)."""
    tb = (4, 4, 2) if SIMULATED else (4, 4, 16)
    return tuple(math.ceil(n / t) for n, t in zip(shape, tb)), tb


def scale_rows(a, m):
    """A new array [T,B,H]: a [T,B,H] times m [B,H] at every step."""
    out = device_array(a.shape, a.dtype)
    if out.size:
        _scale_rows_kernel[_grid3(out.shape)](a, m, out)
    return out


def copy_any(src, dst):
    """dst[...] = src for arrays of 1 to 3 dimensions, any strides, casting to
    dst's dtype. Returns dst."""
    if not dst.size:
        return dst
    if src.ndim == 3:
        return copy3(src, dst)
    if src.ndim == 2:
        tb = (8, 4) if SIMULATED else (8, 32)
        grid = tuple(math.ceil(n / t) for n, t in zip(dst.shape, tb))
        _copy2_kernel[grid, tb](src, dst)
        return dst
    _copy_kernel[flat_launch(dst.size)](src, dst)
    return dst


def zeros(shape, dtype):
    out = device_array(shape, dtype)
    if out.size:
        _fill_kernel[flat_launch(out.size)](out.reshape(out.size), out.dtype.type(0))
    return out


def combine(a, b, op, scale=0.0):
    """A new contiguous array: a + b, a * b, (a + b) * scale or a * scale (op "add",
    "mul", "ave", "scale")."""
    out = device_array(a.shape, a.dtype)
    code = {"add": 0, "mul": 1, "ave": 2, "scale": 3}[op]
    if out.size:
        flat = a.size
        _combine_kernel[flat_launch(flat)](a.reshape(flat), (b if b is not None else a)
                                           .reshape(flat), out.reshape(flat), code,
                                           a.dtype.type(scale))
    return out


# -- the step's preamble, written once -------------------------------------------------
# Every recurrence kernel walks its step the same way: the step's time and the slots
# of the double-buffered state it reads (cur) and writes (nxt), then this thread's
# share of the block's (row, unit) pairs. A block owns the slices sl = blockIdx.x,
# blockIdx.x + gridDim.x, ... of `units` units each; its j-th slice's weights sit at
# the j-th place in shared memory (load_rows, load_columns).
def step_time(s, T, reverse):
    """The time of forward step s: T-1-s when reverse, else s (host loops;
    step_slots is the kernels')."""
    return T - 1 - s if reverse else s


def back_time(k, T, reverse):
    """The time of the backward walk's k-th step, that of forward step T-1-k: k when
    reverse, else T-1-k (host loops; back_slots is the kernels')."""
    return k if reverse else T - 1 - k


@cuda.jit(device=True)
def step_slots(s, T, reverse):
    """Forward step s: (t, cur, nxt), its time (T-1-s when reverse, else s), the
    slot of h it reads and the one it writes."""
    cur = s % 2
    return (T - 1 - s if reverse else s), cur, 1 - cur


@cuda.jit(device=True)
def back_slots(k, T, reverse):
    """The backward walk's k-th step: (t, cur, nxt) as step_slots's, t = back_time's."""
    cur = k % 2
    return (k if reverse else T - 1 - k), cur, 1 - cur


@cuda.jit(device=True)
def block_items(N, B, units):
    """range(*block_items(N, B, units)) walks this thread's share of the block's
    work over N units (H, or P for the projection): item n of the block's
    (slice, row, unit) triples, which item_at names."""
    slices = (N + units - 1) // units
    # (a block past the last slice owns none)
    mine = (slices - cuda.blockIdx.x + cuda.gridDim.x - 1) // cuda.gridDim.x
    if mine < 0:
        mine = 0
    return cuda.threadIdx.x, mine * B * units, cuda.blockDim.x


@cuda.jit(device=True)
def item_at(n, B, units):
    """(j, b, ul, u) of block_items's item n: the block's j-th slice, the batch
    row, the place in the slice and the unit (u may reach past the last unit:
    callers skip it)."""
    per = B * units
    j = n // per
    p = n - j * per
    b = p // units
    ul = p - b * units
    return j, b, ul, (cuda.blockIdx.x + j * cuda.gridDim.x) * units + ul


# -- on-chip weights of a recurrence ---------------------------------------------------
@cuda.jit(device=True)
def load_rows(w_hh, w_sh, rows, units):
    """Copy the block's slices of W_hh [rows*H, K] into shared memory, as the
    forward reads them: slice j (the j-th this block owns), gate g, unit ul of
    the slice at w_sh[(j*rows + g)*units*(K+1) + ul*(K+1) + k] = W_hh[g*H + u, k]
    (rows padded to K+1, so threads on consecutive units hit distinct banks). K,
    the units of h, is H but for the LSTM's projection."""
    H = w_hh.shape[0] // rows
    K = w_hh.shape[1]
    KP = K + 1
    slices = (H + units - 1) // units
    n = rows * units * K
    j = 0
    for sl in range(cuda.blockIdx.x, slices, cuda.gridDim.x):
        base = j * rows * units * KP
        for e in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            g = e // (units * K)
            rem = e - g * units * K
            ul = rem // K
            k = rem - ul * K
            u = sl * units + ul
            if u < H:
                w_sh[base + (g * units + ul) * KP + k] = w_hh[g * H + u, k]
        j += 1


@cuda.jit(device=True)
def load_columns(w_hh, w_sh, units):
    """Copy the block's slices of the columns of W_hh [G,H] into shared memory, as
    the backward's dh product reads them: slice j, unit ul at
    w_sh[(j*units + ul)*(G+1) + r] = W_hh[r, u]."""
    G = w_hh.shape[0]
    H = w_hh.shape[1]
    GP = G + 1
    slices = (H + units - 1) // units
    n = units * G
    j = 0
    for sl in range(cuda.blockIdx.x, slices, cuda.gridDim.x):
        base = j * units * GP
        for e in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            ul = e // G
            r = e - ul * G
            u = sl * units + ul
            if u < H:
                w_sh[base + ul * GP + r] = w_hh[r, u]
        j += 1


@cuda.jit(device=True)
def dh_product(k, da, w_hh, w_sh, cached, lengths, dh, walk, r0, r1, mask, zero):
    """The backward's recurrent product for the block's units j:
    dh[nxt, b, j] += m[b, j] * sum_r da[t*B + b, r] * W_hh[r, j] over rows r0 <= r < r1,
    of valid rows b (back_slots's t and nxt of step k; an invalid row keeps
    dh[cur, b, j]). Callers have already written their own part of dh[nxt] (zero,
    or a pointwise term such as the GRU's z * dh or zoneout's kept part) for valid
    rows. walk: (reverse, units, training); mask: m, the recurrent dropout mask
    [B,H] (W_hh read h * m), or [0,0] for none (m = 1)."""
    reverse, units, _ = walk
    H = w_hh.shape[1]
    GP = w_hh.shape[0] + 1
    B = dh.shape[1]
    t, cur, nxt = back_slots(k, da.shape[0] // B, reverse)
    for n in range(*block_items(H, B, units)):
        j, b, ul, u = item_at(n, B, units)
        if u >= H:
            continue
        if t < lengths[b]:
            row = t * B + b
            acc = zero if mask.shape[0] > 0 else dh[nxt, b, u]
            if cached:
                wi = j * units * GP + ul * GP
                for r in range(r0, r1):
                    acc += da[row, r] * w_sh[wi + r]
            else:
                for r in range(r0, r1):
                    acc += da[row, r] * w_hh[r, u]
            if mask.shape[0] > 0:
                acc = dh[nxt, b, u] + acc * mask[b, u]
            dh[nxt, b, u] = acc
        else:
            dh[nxt, b, u] = dh[cur, b, u]


@cuda.jit
def dh_one(k, da, w_hh, lengths, dh, walk, r0, r1, mask, zero):
    """Step k's dh_product alone, W_hh read from global memory (the per-step
    path of every cell's backward)."""
    w_sh = cuda.shared.array(0, w_hh.dtype)
    dh_product(k, da, w_hh, w_sh, False, lengths, dh, walk, r0, r1, mask, zero)


def input_gradients(da, x, w_ih, one):
    """What the pre-activation gradients da [T*B,G] of every step give, after the
    time loop: dx [T,B,I] = da @ W_ih, dW_ih [G,I] = da^T x and the column sums
    of da [G] (the input bias's gradient); one: ones(T*B)."""
    T, B, I = x.shape
    G = da.shape[1]
    dx = matmul(da, w_ih, device_array((T * B, I), da.dtype)).reshape(T, B, I)
    dw_ih = matmul(da, x.reshape(T * B, I), device_array((G, I), da.dtype), trans_a=True)
    return dx, dw_ih, column_sums(da, device_array(G, da.dtype), one)
