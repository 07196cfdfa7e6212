"""The register tiles of the reduced-precision products (quantized.py), in LLVM IR.

Both write rows [r0, r1) of the blocks [b0, b1) of CB = 64 output columns:

int8_rows(A, W, out, r0, r1, b0, b1)  (int32 sums, exact)
    out[r, cols] = sum_k A[r, k] * W[block, k, col]
    A: [M, Kq] uint8, the quantized values + 128 (quantized.quantize_rows),
    Kq a multiple of 4; W: [nblk, Kq/4, CB, 4] int8, four k of one column
    together; out: [M, nblk*CB] int32. The 128 is taken off later with the
    columns' sums of W (quantized.py).
    - int8_rows_vnni: AVX512-VNNI's vpdpbusd, 64 multiply-adds of u8 x s8 into
      16 int32 lanes an instruction; tiles of up to 6 rows x 4 vectors (a block),
      and 1 or 2 rows x 8 vectors (two blocks) so that enough independent sums
      are in flight at B = 1.
    - int8_rows_generic: the same sums as a Numba loop (any CPU; several times
      slower), for machines without VNNI.
    The sums are integers, so the two are equal to the bit, and equal to NumPy's
    integer product (the tests check both).

bf16_rows(A, W, out, init, per_row, r0, r1, b0, b1)  (float32 sums)
    out[r, cols] = init[r or 0, cols] + sum_k A[r, k] * float32(W[block, k, col])
    A: [M, K] float32; W: [nblk, K, CB] uint16, bfloat16's bits (the upper half
    of a float32's); out, init: [M or 1, nblk*CB] float32. Each W vector is
    widened to float32 (zero-extend, shift left 16) and multiplied in float32:
    the weights' traffic halves, the activations keep float32's precision. (No
    vdpbf16ps: it rounds the activations to bfloat16 as well, and llvmlite's IR
    has no bfloat type to call it with.)
    One fused multiply-add per k, in order, from init: the tests check it to the
    bit against that sum in NumPy.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .microkernel import CB, accumulate, address

_FAST = dict(cache=True, error_model="numpy")
VL = 16        # int32 / float32 lanes of one tile vector (512 bits; LLVM splits it on AVX2)
ROWS = 6       # rows of a full tile


def _features():
    features = numba.config.CPU_FEATURES
    if features is None:
        import llvmlite.binding as llvm
        named = numba.config.CPU_NAME not in (None, "host")
        features = "" if named else llvm.get_host_cpu_features().flatten()
    return set(features.split(","))


HAS_VNNI = {"+avx512vnni", "+avx512f"} <= _features()


def int8_variant():
    """The int8 product this machine runs: "avx512vnni" or "generic"."""
    return "avx512vnni" if HAS_VNNI else "generic"


def _const(n):
    return ir.Constant(ir.IntType(64), n)


def _broadcast(builder, s, vec):
    i32 = ir.IntType(32)
    undef = ir.Constant(vec, ir.Undefined)
    return builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(i32, 0)), undef,
                                  ir.Constant(ir.VectorType(i32, VL), [0] * VL))


def _each_row(builder, rows, nv, a, a_row, k, vec, acc, update):
    """One k of a tile: for each row, A[r, k] broadcast to a vector s, then each of
    its nv accumulators becomes update(s, v, accumulator)."""
    new = []
    for r in range(rows):
        s = builder.load(builder.gep(a, [builder.add(k, builder.mul(a_row, _const(r)))]),
                         align=4)
        s = _broadcast(builder, s, vec)
        new.extend(update(s, v, acc[r * nv + v]) for v in range(nv))
    return new


def _store(builder, acc, rows, nv, vector_at, out_row):
    """The tile's accumulators to out: row r, vector v at r * out_row + v * VL."""
    for r in range(rows):
        for v in range(nv):
            offset = builder.add(builder.mul(out_row, _const(r)), _const(v * VL))
            builder.store(acc[r * nv + v], vector_at(offset), align=4)


def _emit_int8(builder, rows, nv, a, a_row, w, w_blk, n_kq, out, out_row):
    """rows x (nv * VL) int32 sums: a, w, out are i32 pointers (a's i32 is four
    uint8 k of one row, w's four int8 k of one column); strides in i32 elements;
    vector v reads block v // 4, its lanes (v % 4) * VL.."""
    vec = ir.VectorType(ir.IntType(32), VL)
    dp = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                        "llvm.x86.avx512.vpdpbusd.512")

    def at(base, offset):
        return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

    def step(k, acc):
        wk = builder.mul(k, _const(CB))
        ws = [builder.load(at(w, builder.add(wk, builder.add(
            builder.mul(w_blk, _const(v // 4)), _const((v % 4) * VL)))), align=4)
            for v in range(nv)]
        return _each_row(builder, rows, nv, a, a_row, k, vec, acc,
                         lambda s, v, total: builder.call(dp, [total, s, ws[v]]))

    zero = ir.Constant(vec, [0] * VL)
    _store(builder, accumulate(builder, n_kq, [zero] * (rows * nv), step, "i8"), rows, nv,
           lambda offset: at(out, offset), out_row)


def _emit_bf16(builder, rows, nv, a, a_row, w, w_blk, n_k, init, init_row, out, out_row):
    """rows x (nv * VL) float32 sums from init: a, init, out float pointers, w an
    i16 pointer (bfloat16 bits); strides in elements; vector v reads block v // 4."""
    f32, i16, i32 = ir.FloatType(), ir.IntType(16), ir.IntType(32)
    vec, wide, half = (ir.VectorType(f32, VL), ir.VectorType(i32, VL), ir.VectorType(i16, VL))
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                         f"llvm.fma.v{VL}f32")
    sixteen = ir.Constant(wide, [16] * VL)

    def at(base, offset, kind=vec):
        return builder.bitcast(builder.gep(base, [offset]), kind.as_pointer())

    start = [builder.load(at(init, builder.add(builder.mul(init_row, _const(r)),
                                                _const(v * VL))), align=4)
             for r in range(rows) for v in range(nv)]

    def step(k, acc):
        wk = builder.mul(k, _const(CB))
        ws = []
        for v in range(nv):
            bits = builder.load(at(w, builder.add(wk, builder.add(
                builder.mul(w_blk, _const(v // 4)), _const((v % 4) * VL))), half), align=2)
            ws.append(builder.bitcast(builder.shl(builder.zext(bits, wide), sixteen), vec))
        return _each_row(builder, rows, nv, a, a_row, k, vec, acc,
                         lambda s, v, total: builder.call(fma, [s, ws[v], total]))

    _store(builder, accumulate(builder, n_k, start, step, "bf16"), rows, nv,
           lambda offset: at(out, offset), out_row)


# Tiles by rows: a full block (4 vectors) for 1..ROWS rows, two blocks (8) for 1 or 2.
_SHAPES = [(r, 4) for r in range(1, ROWS + 1)] + [(1, 8), (2, 8)]


def _switch(builder, rows, nv, label, emit):
    end = builder.append_basic_block(f"{label}_end")
    key = builder.add(builder.mul(nv, _const(16)), rows)
    switch = builder.switch(key, end)
    for r, v in _SHAPES:
        case = builder.append_basic_block(f"{label}_{r}x{v}")
        switch.add_case(_const(v * 16 + r), case)
        builder.position_at_end(case)
        emit(r, v)
        builder.branch(end)
    builder.position_at_end(end)


@intrinsic
def _int8_tile(typingctx, rows, nv, a, a_row, w, w_blk, n_kq, out, out_row):
    """One int8 tile (_emit_int8): addresses in bytes, strides in int32 elements."""
    def codegen(context, builder, signature, args):
        rows, nv, a, a_row, w, w_blk, n_kq, out, out_row = args
        p32 = ir.IntType(32).as_pointer()
        a, w, out = (builder.inttoptr(p, p32) for p in (a, w, out))
        _switch(builder, rows, nv, "i8", lambda r, v: _emit_int8(
            builder, r, v, a, a_row, w, w_blk, n_kq, out, out_row))
        return context.get_dummy_value()
    return types.void(*([types.int64] * 9)), codegen


@intrinsic
def _bf16_tile(typingctx, rows, nv, a, a_row, w, w_blk, n_k, init, init_row, out, out_row):
    """One bfloat16 tile (_emit_bf16): addresses in bytes, strides in elements."""
    def codegen(context, builder, signature, args):
        rows, nv, a, a_row, w, w_blk, n_k, init, init_row, out, out_row = args
        pf = ir.FloatType().as_pointer()
        a, init, out = (builder.inttoptr(p, pf) for p in (a, init, out))
        w = builder.inttoptr(w, ir.IntType(16).as_pointer())
        _switch(builder, rows, nv, "bf", lambda r, v: _emit_bf16(
            builder, r, v, a, a_row, w, w_blk, n_k, init, init_row, out, out_row))
        return context.get_dummy_value()
    return types.void(*([types.int64] * 11)), codegen


@njit(inline="always", **_FAST)
def _tiles(r0, r1, b0, b1):
    """The tiles of rows [r0, r1) x blocks [b0, b1) as (row, rows, block, vectors)."""
    out = []
    n = r1 - r0
    full = n // ROWS * ROWS
    for b in range(b0, b1):
        for r in range(r0, r0 + full, ROWS):
            out.append((r, ROWS, b, 4))
    rest = n - full
    if rest:
        b = b0
        while b < b1:
            two = rest <= 2 and b + 1 < b1
            out.append((r0 + full, rest, b, 8 if two else 4))
            b += 2 if two else 1
    return out


@njit(**_FAST)
def int8_rows_vnni(A, W, out, r0, r1, b0, b1):
    """int8_rows on AVX512-VNNI (module docstring)."""
    a_row, w_blk, o_row = A.strides[0] // 4, W.strides[0] // 4, out.strides[0] // 4
    n_kq = A.shape[1] // 4
    for r, rows, b, nv in _tiles(r0, r1, b0, b1):
        _int8_tile(rows, nv, address(A) + r * A.strides[0], a_row,
                   address(W) + b * W.strides[0], w_blk, n_kq,
                   address(out) + r * out.strides[0] + 4 * b * CB, o_row)


@njit(**_FAST)
def int8_rows_generic(A, W, out, r0, r1, b0, b1):
    """int8_rows as a loop (module docstring): the same integer sums."""
    n_kq = A.shape[1] // 4
    acc = np.empty(CB, np.int32)
    flat = W.ravel()  # (flat indices: the callers' branches also type it with other arrays)
    per_block = W.strides[0] // W.itemsize
    for r in range(r0, r1):
        for b in range(b0, b1):
            acc[:] = 0
            for kq in range(n_kq):
                at = b * per_block + kq * 4 * CB
                for q in range(4):
                    a = np.int32(A[r, 4 * kq + q])
                    for j in range(CB):
                        acc[j] += a * np.int32(flat[at + 4 * j + q])
            out[r, b * CB:(b + 1) * CB] = acc


@njit(**_FAST)
def bf16_rows(A, W, out, init, per_row, r0, r1, b0, b1):
    """bf16_rows (module docstring)."""
    a_row, w_blk, o_row = A.strides[0] // 4, W.strides[0] // 2, out.strides[0] // 4
    i_row = init.strides[0] // 4 if per_row else 0
    for r, rows, b, nv in _tiles(r0, r1, b0, b1):
        _bf16_tile(rows, nv, address(A) + r * A.strides[0], a_row,
                   address(W) + b * W.strides[0], w_blk, A.shape[1],
                   address(init) + 4 * (r * i_row + b * CB), i_row,
                   address(out) + r * out.strides[0] + 4 * b * CB, o_row)
