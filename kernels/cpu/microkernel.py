"""The register tile of the float32 products of the CPU kernels, written in LLVM IR.

tile_block(A, W, out, blk, r_begin, r_end, init, per_row, k0, k1) computes rows
[r_begin, r_end) of one block of CB = 64 output columns:

    out[r, blk*CB:(blk+1)*CB] = init[r or 0, same columns] + A[r, k0:k1] @ W[blk, k0:k1]

A: [M,K] float32, any strides; W: [nblk,K,CB] float32, each block's columns
contiguous; out, init: [M or 1, nblk*CB] float32, unit column stride; init may
be out itself (the K chunks after the first add to what is there).

A tile is ROWS rows by NV vector registers of columns: its accumulators stay in
registers through the whole k loop, and per k it loads NV vectors of W and
broadcasts one value of A per row. The rows left after the full tiles (all of
them at B = 1) go through tiles that span WIDE_NV[rows] vectors instead, so that
enough independent FMA chains run (see WIDE_NV; a [1,1024] x [1024,4096] product
on one Zen 3 core, AVX2: 0.79-0.92 ms -> 0.32-0.42 ms). The vector width and the
tile follow the target Numba compiles for (_target): on AVX-512, 16 lanes and 6
rows x 4 vectors (24 of the 32 zmm registers, the whole block); on AVX2 8 lanes
and 6 x 2 of its 16 ymm registers (four column groups a block); on NEON 4 lanes
and 6 x 4 of its 32. A tile of more accumulators than registers spills at every k.

Why IR and not a Numba loop: the loop this replaces (the same tile, written as
loops over rows and columns for LLVM to vectorise) ran the tiles of 1 to 5 rows,
and more than one tile in a row, well below the 6-row tile's rate. Measured on
one core of the 2-core AVX-512 machine, [n, K] @ [K, 4K] with W in cache, the
time of the Numba loop -> this one (three runs): n=8, K=256 (a thread's share of
a step at B=16, H=256) 43.8 -> 27.8-37.2 us; n=16, K=128 19.3 -> 12.5-14.7 us;
n=64, K=256 281 -> 212-236 us.

The time loop's fused product of x[t] and h (_matmul_xh in lstm_tiled.py) is two
calls, the second adding to what the first left in out: as fast as the Numba
loop's single tile on AVX-512 (26.5 against 27.4 us at 16 rows, K = 128 + 128),
twice as fast on AVX2.

The sum is the one the Numba loop made: init, then one fused multiply-add per k,
in order; results are the same to the bit.

transpose_tile(src, src_row, dst, dst_row) writes the transpose of a 16 x 16
float32 tile: 16 row loads, 64 two-register shuffles, 16 row stores (the copy
loops it replaced moved one float at a time; see products.untile).
"""
import platform

import llvmlite.binding as llvm
import numba
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

CB = 64    # columns of a block: [i(16) f(16) g(16) o(16)] of 16 hidden units
ROWS = 6   # rows of a full tile

_FAST = dict(cache=True, error_model="numpy")


def cpu_features():
    """The LLVM features ({"+avx2", "-avx512f", ...}) of the CPU Numba compiles for:
    the ones it was told (NUMBA_CPU_FEATURES, or the AVX-512 setting
    kernels/cpu/__init__.py makes), else the host's, else none for a named CPU
    (NUMBA_CPU_NAME=generic: portable code)."""
    features = numba.config.CPU_FEATURES
    if features is None:
        named = numba.config.CPU_NAME not in (None, "host")
        features = "" if named else llvm.get_host_cpu_features().flatten()
    return set(features.split(","))


def _target():
    """(float32 lanes of a vector register, vector registers) of the CPU Numba
    compiles for (cpu_features)."""
    features = cpu_features()
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        if "+avx512f" in features:
            return 16, 32
        return (8 if "+avx" in features else 4), 16
    return 4, 32  # AArch64 (NEON), and others with 128-bit vectors


LANES, REGISTERS = _target()
NV = 4 if REGISTERS >= 32 else 2  # vectors per tile row (ROWS * NV + NV + 1 <= registers)
GROUPS = CB // (NV * LANES)         # column groups of a block


def vector_fma(builder):
    """(the vector type of LANES float32, LLVM's fma on it, broadcast(scalar) -> vector)
    for code emitted at the builder's position."""
    i32, f32 = ir.IntType(32), ir.FloatType()
    vec = ir.VectorType(f32, LANES)
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{LANES}f32")
    undef = ir.Constant(vec, ir.Undefined)
    splat = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)

    def broadcast(s):
        return builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(i32, 0)),
                                      undef, splat)
    return vec, fma, broadcast


def accumulate(builder, n, start, step, label):
    """Emit `for k in range(n): acc = step(k, acc)` (n an i64 value, start the
    accumulators' first values, step(k, acc) emitting the body and returning the
    new values); the accumulators are the loop's phi nodes, so they stay in
    registers. Leaves the builder after the loop; returns the final values."""
    i64 = ir.IntType(64)
    entry = builder.block
    head = builder.append_basic_block(f"{label}_k")
    body = builder.append_basic_block(f"{label}_body")
    done = builder.append_basic_block(f"{label}_done")
    builder.branch(head)
    builder.position_at_end(head)
    k = builder.phi(i64)
    k.add_incoming(ir.Constant(i64, 0), entry)
    acc = []
    for value in start:
        phi = builder.phi(value.type)
        phi.add_incoming(value, entry)
        acc.append(phi)
    builder.cbranch(builder.icmp_signed("<", k, n), body, done)
    builder.position_at_end(body)
    new = step(k, acc)
    k.add_incoming(builder.add(k, ir.Constant(i64, 1)), builder.block)
    for phi, value in zip(acc, new):
        phi.add_incoming(value, builder.block)
    builder.branch(head)
    builder.position_at_end(done)
    return acc


def _emit_tile(builder, rows, a, a_row, a_k, w, w_k, n_k, init, init_row, out, out_row, nv=NV):
    """Emit, at the builder's position, a rows x (nv * LANES) tile:
    out[r, :] = init[r, :] + sum_k A[r, k] W[k, :] (pointers to float32, strides in
    elements; init_row 0 reads one row for all, a bias). The accumulators are the
    k loop's phi nodes, so they live in registers throughout."""
    i64 = ir.IntType(64)
    vec, fma, broadcast = vector_fma(builder)

    def const(n):
        return ir.Constant(i64, n)

    def vector_at(base, offset):
        return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

    start = [builder.load(vector_at(init, builder.add(builder.mul(init_row, const(r)),
                                                       const(LANES * v))), align=4)
             for r in range(rows) for v in range(nv)]

    def step(k, acc):  # per k: nv vectors of W, one broadcast of A per row
        w_at = builder.mul(k, w_k)
        ws = [builder.load(vector_at(w, builder.add(w_at, const(LANES * v))), align=4)
              for v in range(nv)]
        a_at = builder.mul(k, a_k)
        new = []
        for r in range(rows):
            s = builder.load(builder.gep(a, [builder.add(a_at, builder.mul(a_row, const(r)))]),
                             align=4)
            new.extend(builder.call(fma, [broadcast(s), ws[v], acc[r * nv + v]])
                       for v in range(nv))
        return new

    acc = accumulate(builder, n_k, start, step, "tile")
    for r in range(rows):
        for v in range(nv):
            at = builder.add(builder.mul(out_row, const(r)), const(LANES * v))
            builder.store(acc[r * nv + v], vector_at(out, at), align=4)


def _tile_switch(cases, label):
    """An intrinsic tile(case, a, a_row, a_k, w, w_k, n_k, init, init_row, out,
    out_row) with addresses in bytes and strides in elements (_emit_tile's
    arguments): a switch on `case` to a tile compiled for each entry of `cases`
    (case -> (rows, vectors of columns)), as the registers must be named at compile
    time."""
    @intrinsic
    def tile(typingctx, case, a, a_row, a_k, w, w_k, n_k, init, init_row, out, out_row):
        def codegen(context, builder, signature, args):
            case, a, a_row, a_k, w, w_k, n_k, init, init_row, out, out_row = args
            f32p = ir.FloatType().as_pointer()
            a, w, init, out = (builder.inttoptr(p, f32p) for p in (a, w, init, out))
            end = builder.append_basic_block(f"{label}_end")
            switch = builder.switch(case, end)
            for key, (n, nv) in cases.items():
                block = builder.append_basic_block(f"{label}_{n}x{nv}")
                switch.add_case(ir.Constant(ir.IntType(64), key), block)
                builder.position_at_end(block)
                _emit_tile(builder, n, a, a_row, a_k, w, w_k, n_k, init, init_row, out,
                           out_row, nv)
                builder.branch(end)
            builder.position_at_end(end)
            return context.get_dummy_value()
        return types.void(*([types.int64] * 11)), codegen
    return tile


_tile = _tile_switch({n: (n, NV) for n in range(1, ROWS + 1)}, "tile")  # 1 to ROWS rows of NV


# The tiles of fewer rows than ROWS (a batch of 1 or 2, a remainder): each
# accumulator is a chain of dependent FMAs, one per k, so a tile needs as many
# chains as the FMA latency times the FMA pipes (8 on AVX2 and on Zen 4's
# AVX-512) or the FMAs wait on each other: a 1-row tile of NV vectors has NV
# chains. Such tiles span more of the block's columns instead, WIDE_NV[rows]
# vectors (a divisor of the block's CB / LANES), within the registers; each
# element's sum is the same k-ordered chain as in any other tile, so a row's
# values do not depend on the tile it falls in.
_BLOCK_NV = CB // LANES
WIDE_NV = {}
for _r in range(1, ROWS):
    _nv = NV
    while (_nv * 2 <= _BLOCK_NV and _BLOCK_NV % (_nv * 2) == 0
           and _r * _nv * 2 + 2 <= REGISTERS and _r * _nv * 2 <= 8):
        _nv *= 2
    WIDE_NV[_r] = _nv


# 1 to ROWS - 1 rows, each of WIDE_NV[rows] vectors of columns
_tile_wide = _tile_switch({n: (n, nv) for n, nv in WIDE_NV.items()}, "wide")
# 1 to ROWS rows of 1 to NV - 1 vectors (case rows * NV + vectors): the last columns of
# a block that tile_cols computes only in part
_tile_narrow = _tile_switch({n * NV + v: (n, v) for n in range(1, ROWS + 1)
                             for v in range(1, NV)}, "narrow")


TT = 16  # transpose_tile's side


def _swap_masks(b):
    """Shuffle masks (into the concatenation of rows i and i + b) that swap the
    off-diagonal b x b blocks of every 2b x 2b block: the new row i takes row
    i + b's lanes where row i had its upper half of each 2b lanes, row i + b the
    other way round."""
    lo = [lane if not lane & b else TT + lane - b for lane in range(TT)]
    hi = [lane + b if not lane & b else TT + lane for lane in range(TT)]
    return lo, hi


@intrinsic
def transpose_tile(typingctx, src, src_row, dst, dst_row):
    """dst[j, i] = src[i, j] for i, j < TT: addresses in bytes, row strides in
    elements (no alignment needed). Swapping the off-diagonal blocks of sides 8,
    4, 2 and 1 in turn transposes the tile, 16 shuffles a level, in registers;
    LLVM lowers the 16-lane vectors to what the target has."""
    def codegen(context, builder, signature, args):
        i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
        vec = ir.VectorType(f32, TT)
        src, src_row, dst, dst_row = args
        src, dst = (builder.inttoptr(p, f32.as_pointer()) for p in (src, dst))

        def row(base, stride, r):
            at = builder.gep(base, [builder.mul(stride, ir.Constant(i64, r))])
            return builder.bitcast(at, vec.as_pointer())

        rows = [builder.load(row(src, src_row, r), align=4) for r in range(TT)]
        b = TT // 2
        while b:
            lo, hi = (ir.Constant(ir.VectorType(i32, TT), m) for m in _swap_masks(b))
            for i in (i for i in range(TT) if not i & b):
                rows[i], rows[i + b] = (builder.shuffle_vector(rows[i], rows[i + b], lo),
                                        builder.shuffle_vector(rows[i], rows[i + b], hi))
            b //= 2
        for r in range(TT):
            builder.store(rows[r], row(dst, dst_row, r), align=4)
        return context.get_dummy_value()
    return types.void(types.int64, types.int64, types.int64, types.int64), codegen


@intrinsic
def address(typingctx, arr):
    """The address of an array's first element, as an integer."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(ary.data, ir.IntType(64))
    return types.int64(arr), codegen


_WIDE = tuple(WIDE_NV[r] if r in WIDE_NV else NV for r in range(ROWS + 1))


@njit(inline="always", **_FAST)
def _wide_nv(rows):
    return _WIDE[rows]


@njit(inline="always", **_FAST)
def _tile_addresses(A, W, out, blk, r_begin, init, per_row, k0):
    """The addresses (bytes) and strides (elements) of a block's tiles:
    (a, a_row, a_k, w, w_k, i, i_row, o, o_row)."""
    a_row, a_k, w_k = A.strides[0] // 4, A.strides[1] // 4, W.strides[1] // 4
    i_row = init.strides[0] // 4 if per_row else 0
    o_row = out.strides[0] // 4
    return (address(A) + 4 * (r_begin * a_row + k0 * a_k), a_row, a_k,
            address(W) + W.strides[0] * blk + 4 * k0 * w_k, w_k,
            address(init) + 4 * (r_begin * i_row + blk * CB), i_row,
            address(out) + 4 * (r_begin * o_row + blk * CB), o_row)


@njit(_nrt=False, **_FAST)
def tile_block(A, W, out, blk, r_begin, r_end, init, per_row, k0, k1):
    """Rows [r_begin, r_end) of block blk (see the module docstring): tiles of ROWS
    rows, then one of the rest, for each column group in turn (the group's columns
    of W stay in cache across the row tiles)."""
    a, a_row, a_k, w, w_k, i, i_row, o, o_row = _tile_addresses(A, W, out, blk, r_begin,
                                                                init, per_row, k0)
    n = r_end - r_begin
    full = n // ROWS * ROWS
    for g in range(GROUPS):
        col = 4 * g * NV * LANES  # (bytes)
        for r0 in range(0, full, ROWS):
            _tile(ROWS, a + 4 * r0 * a_row, a_row, a_k, w + col, w_k, k1 - k0,
                  i + 4 * r0 * i_row + col, i_row, o + 4 * r0 * o_row + col, o_row)
    rest = n - full
    if rest:
        width = _wide_nv(rest) * LANES
        for c in range(0, CB, width):
            _tile_wide(rest, a + 4 * full * a_row, a_row, a_k, w + 4 * c, w_k, k1 - k0,
                       i + 4 * full * i_row + 4 * c, i_row, o + 4 * full * o_row + 4 * c, o_row)


@njit(_nrt=False, **_FAST)
def tile_cols(A, W, out, blk, r_begin, r_end, init, per_row, k0, k1, cols):
    """tile_block for the first `cols` columns of the block only (a multiple of
    LANES, at most CB; the others are not written), in tiles of NV vectors and a
    narrow one: a product whose last block is mostly padding (the ConvLSTM's
    transposed products, 9 or 144 columns) runs only the tiles of the columns it
    has, each element the same sum as tile_block's. (Kept apart from tile_block,
    whose small products measured 10% slower through this one's loop.)"""
    a, a_row, a_k, w, w_k, i, i_row, o, o_row = _tile_addresses(A, W, out, blk, r_begin,
                                                                init, per_row, k0)
    n, nk = r_end - r_begin, k1 - k0
    vectors = cols // LANES
    for r0 in range(0, n, ROWS):
        rows = min(ROWS, n - r0)
        for v in range(0, vectors, NV):
            nv = min(NV, vectors - v)
            c = 4 * v * LANES  # (bytes)
            args = (a + 4 * r0 * a_row, a_row, a_k, w + c, w_k, nk,
                    i + 4 * r0 * i_row + c, i_row, o + 4 * r0 * o_row + c, o_row)
            if nv == NV:
                _tile(rows, *args)
            else:
                _tile_narrow(rows * NV + nv, *args)
