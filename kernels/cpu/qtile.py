"""The register tiles of the reduced-precision products (quantized.py), in LLVM IR.

Both write rows [r0, r1) of the blocks [b0, b1) of CB = 64 output columns:

int8_rows(A, W, out, r0, r1, b0, b1, off)  (int32 sums, exact)
    out[r, cols] = sum_k (A[r, k] - 128) * W[block, k, col]
    A: [M, Kq] uint8, the quantized values + 128 (quantized.quantize_rows),
    Kq a multiple of 4; W: [nblk, Kq/4, CB, 4] int8 in [-127, 127], four k of one
    column together; out: [M, nblk*CB] int32; off: [nblk*CB] int32, -128 times
    each column's sum of W (the variants that multiply A as it is start there).
    One variant a machine, by its CPU's features (VARIANT):
    - "avx512vnni": vpdpbusd on zmm, 64 multiply-adds of u8 x s8 into 16 int32
      lanes an instruction; tiles of up to 6 rows x 4 vectors (a block), and 1
      or 2 rows x 8 vectors (two blocks) so that enough independent sums are in
      flight at B = 1 (AMD Zen 4 and 5, Intel server chips);
    - "avxvnni": the same instruction on ymm (Intel's client chips from Alder
      Lake), a row x 8 vectors (a block) a tile;
    - "avx2": no dot-product instruction. vpmaddubsw multiplies u8 by s8 and
      adds pairs into saturating int16: with A's 128 added, a pair could reach
      2 * 255 * 127 and saturate, so the tile takes the value v = A - 128 and
      multiplies |v| by W with v's sign (vpsignb): pairs stay within 2 * 127 *
      127 = 32258; vpmaddwd then adds pairs into int32. Four instructions for
      vpdpbusd's one; a row x 8 ymm vectors a tile;
    - "generic": the same sums as a Numba loop (any CPU; several times slower).
    The sums are integers, so every variant is equal to the bit, and equal to
    NumPy's integer product (the tests check each one this machine can run).

bf16_rows(A, W, out, init, per_row, r0, r1, b0, b1)  (float32 sums)
    out[r, cols] = init[r or 0, cols] + sum_k A[r, k] * W[block, k, col]
    over pairs of bfloat16: W [nblk, K2, CB] uint32 (quantized.bf16_blocks: two
    bfloat16 values of one column, k even in the low half); A [M, PAIR_BYTES[
    variant] * K2] uint8, each row K2 pairs of the activations, rounded to
    bfloat16 (quantized.bf16_activations), as the variant reads them: as W's
    pairs (4 bytes a pair), or as float32 values (8); out, init: [M or 1,
    nblk*CB] float32.
    The products of two bfloat16 are exact in float32; each pair adds k odd, then
    k even, to the float32 sum, each addition rounded (vdpbf16ps's definition).
    One variant a machine (BF16_VARIANT):
    - "avx512bf16": vdpbf16ps on zmm, 32 multiply-adds an instruction, twice an
      FMA's (AMD Zen 4 and 5, Intel from Cooper Lake and Sapphire Rapids);
    - "widen": each pair of W widened to two float32 vectors (a mask and a
      shift), the activations' float32 values broadcast, and two fused
      multiply-adds in that order (any CPU; 16-lane vectors, which LLVM splits
      on AVX2).
    The sums are the same to the bit on both (as long as no sum or product is
    subnormal: vdpbf16ps flushes those to zero), and to NumPy's sum in that
    order (the tests).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .microkernel import CB, accumulate, address, cpu_features

_FAST = dict(cache=True, error_model="numpy")
VL = 16        # int32 / float32 lanes of a zmm tile vector (LLVM splits bf16's on AVX2)
ROWS = 6       # rows of a full tile


def _variants(features):
    """The int8 variants a CPU with these LLVM features can run, the fastest first."""
    out = []
    if {"+avx512vnni", "+avx512f"} <= features:
        out.append("avx512vnni")
    if "+avxvnni" in features or {"+avx512vnni", "+avx512vl"} <= features:
        out.append("avxvnni")
    if "+avx2" in features:
        out.append("avx2")
    return out + ["generic"]


VARIANTS = _variants(cpu_features())
VARIANT = VARIANTS[0]
HAS_VNNI = VARIANT in ("avx512vnni", "avxvnni")


BF16_VARIANTS = (["avx512bf16"] if {"+avx512bf16", "+avx512f"} <= cpu_features() else []) + [
    "widen"]
BF16_VARIANT = BF16_VARIANTS[0]


def int8_variant():
    """The int8 product this machine runs: "avx512vnni", "avxvnni", "avx2" or
    "generic" (module docstring)."""
    return VARIANT


def bf16_variant():
    """The bfloat16 product this machine runs: "avx512bf16" or "widen" (module
    docstring)."""
    return BF16_VARIANT


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


def _emit_int8(builder, rows, nv, a, a_row, w, w_blk, n_kq, off, out, out_row):
    """rows x (nv * VL) int32 sums from off: a, w, off, out are i32 pointers (a's
    i32 is four uint8 k of one row, w's four int8 k of one column); strides in i32
    elements; vector v reads block v // 4, its lanes (v % 4) * VL.."""
    vec = ir.VectorType(ir.IntType(32), VL)
    dp = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3),
                                        "llvm.x86.avx512.vpdpbusd.512")

    def at(base, offset):
        return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

    start = [builder.load(at(off, _const((v // 4) * CB + (v % 4) * VL)), align=4)
             for v in range(nv)]

    def step(k, acc):
        wk = builder.mul(k, _const(CB))
        ws = [builder.load(at(w, builder.add(wk, builder.add(
            builder.mul(w_blk, _const(v // 4)), _const((v % 4) * VL)))), align=4)
            for v in range(nv)]
        return _each_row(builder, rows, nv, a, a_row, k, vec, acc,
                         lambda s, v, total: builder.call(dp, [total, s, ws[v]]))

    _store(builder, accumulate(builder, n_kq, start * rows, step, "i8"), rows, nv,
           lambda offset: at(out, offset), out_row)


YL = 8  # int32 lanes of a ymm vector


def _emit_int8_ymm(builder, kind, a, w, n_kq, off, out):
    """One row x CB columns (8 ymm vectors) of int32 sums, kind "avxvnni" (vpdpbusd
    on ymm, from off) or "avx2" (|v| x sign(v) W, from zero: module docstring);
    a, w, off, out are i32 pointers."""
    i8, i16, i32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
    vec, bytes_, pairs = ir.VectorType(i32, YL), ir.VectorType(i8, 32), ir.VectorType(i16, 16)
    module = builder.module

    def fn(name, ret, args):
        return cgutils.get_or_insert_function(module, ir.FunctionType(ret, args), name)

    def at(base, offset):
        return builder.bitcast(builder.gep(base, [offset]), vec.as_pointer())

    undef = ir.Constant(vec, ir.Undefined)

    def broadcast(s):
        return builder.shuffle_vector(builder.insert_element(undef, s, ir.Constant(i32, 0)),
                                      undef, ir.Constant(vec, [0] * YL))

    if kind == "avxvnni":
        dp = fn("llvm.x86.avx512.vpdpbusd.256", vec, [vec] * 3)
        start = [builder.load(at(off, _const(v * YL)), align=4) for v in range(CB // YL)]
    else:
        sign = fn("llvm.x86.avx2.psign.b", bytes_, [bytes_, bytes_])
        maddubs = fn("llvm.x86.avx2.pmadd.ub.sw", pairs, [bytes_, bytes_])
        maddwd = fn("llvm.x86.avx2.pmadd.wd", vec, [pairs, pairs])
        absolute = fn("llvm.abs.v32i8", bytes_, [bytes_, ir.IntType(1)])
        ones = ir.Constant(pairs, [1] * 16)
        flip = ir.Constant(vec, [-0x7F7F7F80] * YL)  # 0x80808080: each byte's top bit
        start = [ir.Constant(vec, [0] * YL)] * (CB // YL)

    def step(k, acc):
        x = broadcast(builder.load(builder.gep(a, [k]), align=4))
        ws = [builder.load(at(w, builder.add(builder.mul(k, _const(CB)), _const(v * YL))),
                           align=4) for v in range(CB // YL)]
        if kind == "avxvnni":
            return [builder.call(dp, [acc[v], x, ws[v]]) for v in range(CB // YL)]
        value = builder.bitcast(builder.xor(x, flip), bytes_)  # v = A - 128, as int8
        size = builder.call(absolute, [value, ir.Constant(ir.IntType(1), 0)])
        new = []
        for v in range(CB // YL):
            signed = builder.call(sign, [builder.bitcast(ws[v], bytes_), value])
            new.append(builder.add(acc[v], builder.call(
                maddwd, [builder.call(maddubs, [size, signed]), ones])))
        return new

    acc = accumulate(builder, n_kq, start, step, kind)
    for v in range(CB // YL):
        builder.store(acc[v], at(out, _const(v * YL)), align=4)


class _BFloat(ir.types._BaseFloatType):
    """LLVM's bfloat, which llvmlite's IR module lacks (vdpbf16ps's operands)."""
    intrinsic_name = "bf16"

    def __str__(self):
        return "bfloat"


_BFloat._create_instance()


def _emit_pairs(builder, rows, nv, a, a_row, w, w_blk, n_k2, init, init_row, out, out_row, hw):
    """rows x (nv * VL) float32 sums from init over pairs of bfloat16: w an i32
    pointer (each i32 two bfloat16, k even in the low half), init and out float
    pointers; strides in elements; vector v reads block v // 4. hw: vdpbf16ps, a
    an i32 pointer to pairs as w's; else a a float pointer to the values (two a
    pair), each W pair widened (a mask and a shift) and two fused multiply-adds,
    k odd first (vdpbf16ps's order; a product of two bfloat16 is exact in
    float32)."""
    f32, i32 = ir.FloatType(), ir.IntType(32)
    vec, wide = ir.VectorType(f32, VL), ir.VectorType(i32, VL)
    pairs = ir.VectorType(_BFloat(), 2 * VL)
    fn = (lambda name, ret, args: cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ret, args), name))
    dp = fn("llvm.x86.avx512bf16.dpbf16ps.512", vec, [vec, pairs, pairs]) if hw else None
    fma = fn(f"llvm.fma.v{VL}f32", vec, [vec] * 3)
    sixteen = ir.Constant(wide, [16] * VL)
    high = ir.Constant(wide, [0xFFFF0000 - (1 << 32)] * VL)

    def at(base, offset, kind):
        return builder.bitcast(builder.gep(base, [offset]), kind.as_pointer())

    start = [builder.load(at(init, builder.add(builder.mul(init_row, _const(r)), _const(v * VL)),
                             vec), align=4)
             for r in range(rows) for v in range(nv)]

    def step(k, acc):
        wk = builder.mul(k, _const(CB))
        ws = [builder.load(at(w, builder.add(wk, builder.add(
            builder.mul(w_blk, _const(v // 4)), _const((v % 4) * VL))), wide), align=4)
            for v in range(nv)]
        if hw:
            ws = [builder.bitcast(x, pairs) for x in ws]
            return _each_row(builder, rows, nv, a, a_row, k, wide, acc,
                             lambda s, v, total: builder.call(
                                 dp, [total, builder.bitcast(s, pairs), ws[v]]))
        odd = [builder.bitcast(builder.and_(x, high), vec) for x in ws]
        even = [builder.bitcast(builder.shl(x, sixteen), vec) for x in ws]
        new = []
        for r in range(rows):
            at_k = builder.add(builder.mul(a_row, _const(r)), builder.mul(k, _const(2)))
            s_even, s_odd = (_broadcast(builder, builder.load(builder.gep(a, [i]), align=4), vec)
                             for i in (at_k, builder.add(at_k, _const(1))))
            new.extend(builder.call(fma, [s_even, even[v], builder.call(
                fma, [s_odd, odd[v], acc[r * nv + v]])]) for v in range(nv))
        return new

    _store(builder, accumulate(builder, n_k2, start, step, "bp"), rows, nv,
           lambda offset: at(out, offset, vec), out_row)


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
def _int8_tile(typingctx, rows, nv, a, a_row, w, w_blk, n_kq, off, out, out_row):
    """One int8 tile (_emit_int8): addresses in bytes, strides in int32 elements."""
    def codegen(context, builder, signature, args):
        rows, nv, a, a_row, w, w_blk, n_kq, off, out, out_row = args
        p32 = ir.IntType(32).as_pointer()
        a, w, off, out = (builder.inttoptr(p, p32) for p in (a, w, off, out))
        _switch(builder, rows, nv, "i8", lambda r, v: _emit_int8(
            builder, r, v, a, a_row, w, w_blk, n_kq, off, out, out_row))
        return context.get_dummy_value()
    return types.void(*([types.int64] * 10)), codegen


def _ymm_tile(kind):
    """The intrinsic tile(a, w, n_kq, off, out) of _emit_int8_ymm's kind (addresses
    in bytes)."""
    @intrinsic
    def tile(typingctx, a, w, n_kq, off, out):
        def codegen(context, builder, signature, args):
            p32 = ir.IntType(32).as_pointer()
            a, w, n_kq, off, out = args
            a, w, off, out = (builder.inttoptr(p, p32) for p in (a, w, off, out))
            _emit_int8_ymm(builder, kind, a, w, n_kq, off, out)
            return context.get_dummy_value()
        return types.void(*([types.int64] * 5)), codegen
    return tile


_avxvnni_tile, _avx2_tile = _ymm_tile("avxvnni"), _ymm_tile("avx2")


def _pairs_tile(hw):
    """The intrinsic tile of _emit_pairs (hw: vdpbf16ps): addresses in bytes,
    strides in elements."""
    @intrinsic
    def tile(typingctx, rows, nv, a, a_row, w, w_blk, n_k2, init, init_row, out, out_row):
        def codegen(context, builder, signature, args):
            rows, nv, a, a_row, w, w_blk, n_k2, init, init_row, out, out_row = args
            pf, pi = ir.FloatType().as_pointer(), ir.IntType(32).as_pointer()
            a, w = builder.inttoptr(a, pi if hw else pf), builder.inttoptr(w, pi)
            init, out = builder.inttoptr(init, pf), builder.inttoptr(out, pf)
            _switch(builder, rows, nv, "bp", lambda r, v: _emit_pairs(
                builder, r, v, a, a_row, w, w_blk, n_k2, init, init_row, out, out_row, hw))
            return context.get_dummy_value()
        return types.void(*([types.int64] * 11)), codegen
    return tile


_dpbf16_tile, _widen_pairs_tile = _pairs_tile(True), _pairs_tile(False)


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
def int8_rows_vnni(A, W, out, r0, r1, b0, b1, off):
    """int8_rows on AVX512-VNNI (module docstring)."""
    a_row, w_blk, o_row = A.strides[0] // 4, W.strides[0] // 4, out.strides[0] // 4
    n_kq = A.shape[1] // 4
    for r, rows, b, nv in _tiles(r0, r1, b0, b1):
        _int8_tile(rows, nv, address(A) + r * A.strides[0], a_row,
                   address(W) + b * W.strides[0], w_blk, n_kq, address(off) + 4 * b * CB,
                   address(out) + r * out.strides[0] + 4 * b * CB, o_row)


@njit(**_FAST)
def int8_rows_avxvnni(A, W, out, r0, r1, b0, b1, off):
    """int8_rows on AVX-VNNI (module docstring): a row and a block a tile."""
    n_kq = A.shape[1] // 4
    for r in range(r0, r1):
        for b in range(b0, b1):
            _avxvnni_tile(address(A) + r * A.strides[0], address(W) + b * W.strides[0], n_kq,
                          address(off) + 4 * b * CB,
                          address(out) + r * out.strides[0] + 4 * b * CB)


@njit(**_FAST)
def int8_rows_avx2(A, W, out, r0, r1, b0, b1, off):
    """int8_rows on AVX2 (module docstring): a row and a block a tile."""
    n_kq = A.shape[1] // 4
    for r in range(r0, r1):
        for b in range(b0, b1):
            _avx2_tile(address(A) + r * A.strides[0], address(W) + b * W.strides[0], n_kq,
                       address(off) + 4 * b * CB, address(out) + r * out.strides[0] + 4 * b * CB)


@njit(**_FAST)
def int8_rows_generic(A, W, out, r0, r1, b0, b1, off):
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
                    a = np.int32(A[r, 4 * kq + q]) - np.int32(128)
                    for j in range(CB):
                        acc[j] += a * np.int32(flat[at + 4 * j + q])
            out[r, b * CB:(b + 1) * CB] = acc


# Each variant's int8_rows (module docstring); a machine runs INT8_ROWS[VARIANT].
INT8_ROWS = {"avx512vnni": int8_rows_vnni, "avxvnni": int8_rows_avxvnni,
             "avx2": int8_rows_avx2, "generic": int8_rows_generic}


@njit(**_FAST)
def bf16_rows_dp(A, W, out, init, per_row, r0, r1, b0, b1):
    """bf16_rows on AVX512-BF16 (module docstring)."""
    a_row, w_blk, o_row = A.strides[0] // 4, W.strides[0] // 4, out.strides[0] // 4
    i_row = init.strides[0] // 4 if per_row else 0
    for r, rows, b, nv in _tiles(r0, r1, b0, b1):
        _dpbf16_tile(rows, nv, address(A) + r * A.strides[0], a_row,
                     address(W) + b * W.strides[0], w_blk, W.shape[1],
                     address(init) + 4 * (r * i_row + b * CB), i_row,
                     address(out) + r * out.strides[0] + 4 * b * CB, o_row)


@njit(**_FAST)
def bf16_rows_widen(A, W, out, init, per_row, r0, r1, b0, b1):
    """bf16_rows widened to float32 (module docstring): the same sums."""
    a_row, w_blk, o_row = A.strides[0] // 4, W.strides[0] // 4, out.strides[0] // 4
    i_row = init.strides[0] // 4 if per_row else 0
    for r, rows, b, nv in _tiles(r0, r1, b0, b1):
        _widen_pairs_tile(rows, nv, address(A) + r * A.strides[0], a_row,
                          address(W) + b * W.strides[0], w_blk, W.shape[1],
                          address(init) + 4 * (r * i_row + b * CB), i_row,
                          address(out) + r * out.strides[0] + 4 * b * CB, o_row)


# Each variant's bf16_rows (module docstring); a machine runs BF16_ROWS[BF16_VARIANT]; the
# bytes of a pair of activations each reads.
BF16_ROWS = {"avx512bf16": bf16_rows_dp, "widen": bf16_rows_widen}
PAIR_BYTES = {"avx512bf16": 4, "widen": 8}
