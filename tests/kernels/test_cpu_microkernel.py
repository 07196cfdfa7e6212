"""The register tile every float32 CPU product runs on (kernels/cpu/microkernel.py),
against NumPy: each tile height, a remainder after full tiles, K chunks added to
what is there, transposed and strided operands, a bias row; and the 16 x 16 register
transpose (transpose_tile)."""
import numpy as np
import pytest
from numba import njit

from numlstm.kernels.cpu import microkernel
from numlstm.kernels.cpu.microkernel import (CB, LANES, ROWS, TT, address, tile_block, tile_cols,
                                             transpose_tile)
from numlstm.kernels.cpu.products import in_blocks, matmul_cols


def _sequential_fma(init, A, W):
    """init + A @ W as the tile sums it: one rounding per multiply-add, k in order."""
    acc = init.astype(np.float64)
    for k in range(A.shape[1]):
        acc = (acc + A[:, k:k + 1].astype(np.float64) * W[k].astype(np.float64))
        acc = acc.astype(np.float32).astype(np.float64)
    return acc.astype(np.float32)


@pytest.mark.parametrize("rows", list(range(1, 2 * ROWS + 2)) + [4 * ROWS + 5])
def test_each_row_count_matches_numpy(rng, rows):
    K, nblk, blk = 37, 3, 1
    A = rng.standard_normal((rows + 5, K)).astype(np.float32)
    W = rng.standard_normal((nblk, K, CB)).astype(np.float32)
    init = rng.standard_normal((rows + 5, nblk * CB)).astype(np.float32)
    out = np.full_like(init, np.nan)
    tile_block(A, W, out, blk, 2, 2 + rows, init, True, 0, K)
    cols = slice(blk * CB, (blk + 1) * CB)
    want = _sequential_fma(init[2:2 + rows, cols], A[2:2 + rows], W[blk])
    # the same rounding as one multiply-add per k: equal to the bit
    np.testing.assert_array_equal(out[2:2 + rows, cols], want)
    np.testing.assert_allclose(out[2:2 + rows, cols],
                               init[2:2 + rows, cols] + A[2:2 + rows] @ W[blk], rtol=1e-4,
                               atol=1e-4)
    # nothing outside the rows and the block is written
    assert np.isnan(out[:2]).all() and np.isnan(out[2 + rows:]).all()
    assert np.isnan(out[:, :blk * CB]).all() and np.isnan(out[:, (blk + 1) * CB:]).all()


@pytest.mark.parametrize("rows", [1, 2, 5, ROWS, ROWS + 1, 3 * ROWS + 4])
def test_part_of_a_block_is_the_same_sums_and_writes_nothing_past_it(rng, rows):
    """tile_cols: the first `cols` columns of a block (every multiple of a vector),
    each element the same sum as the whole block's tile, the columns after it
    untouched."""
    K, blk = 29, 1
    A = rng.standard_normal((rows, K)).astype(np.float32)
    W = rng.standard_normal((2, K, CB)).astype(np.float32)
    init = rng.standard_normal((1, 2 * CB)).astype(np.float32)
    whole = np.empty((rows, 2 * CB), np.float32)
    tile_block(A, W, whole, blk, 0, rows, init, False, 0, K)
    for cols in range(LANES, CB + 1, LANES):
        out = np.full((rows, 2 * CB), np.nan, np.float32)
        tile_cols(A, W, out, blk, 0, rows, init, False, 0, K, cols)
        np.testing.assert_array_equal(out[:, CB:CB + cols], whole[:, CB:CB + cols])
        assert np.isnan(out[:, :CB]).all() and np.isnan(out[:, CB + cols:]).all()


@pytest.mark.parametrize("cols", [1, 9, CB, CB + 17, 144, 3 * CB])
def test_a_product_over_its_first_columns(rng, cols):
    """matmul_cols: the blocks up to column `cols`, the last to the vector that holds
    it (ConvLSTM's dx at 9 columns and dh at 144), against NumPy; nothing past it."""
    M, K, nblk = 23, 41, 3
    A = rng.standard_normal((M, K)).astype(np.float32)
    W = rng.standard_normal((nblk, K, CB)).astype(np.float32)
    out = np.full((M, nblk * CB), np.nan, np.float32)
    matmul_cols(A, W, out, np.zeros((1, nblk * CB), np.float32), False, 0, M, cols)
    width = -(-cols // LANES) * LANES
    want = A @ np.concatenate(list(W), axis=1)
    np.testing.assert_allclose(out[:, :width], want[:, :width], rtol=1e-5, atol=1e-4)
    assert np.isnan(out[:, width:]).all()


def test_k_chunks_add_to_what_is_there_and_a_bias_row(rng):
    """A first chunk from a bias row (per_row False), later chunks with out as init,
    as matmul_rows walks a long K; A transposed (column-major, as X^T in the weight
    gradients) and W a strided view."""
    M, K = 11, 50
    A = np.asfortranarray(rng.standard_normal((M, K)).astype(np.float32))
    W = rng.standard_normal((2, K, 2 * CB)).astype(np.float32)[:, :, CB:]  # strided blocks
    bias = rng.standard_normal((1, 2 * CB)).astype(np.float32)
    out = np.empty((M, 2 * CB), np.float32)
    for blk in range(2):
        tile_block(A, W, out, blk, 0, M, bias, False, 0, 20)
        tile_block(A, W, out, blk, 0, M, out, True, 20, K)
    want = bias + A @ np.concatenate([W[0], W[1]], axis=1)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


def test_the_tile_fits_the_registers():
    """A tile's accumulators, W's vectors and the broadcast fit the vector registers
    of the target (more would spill at every k), and the groups cover a block."""
    lanes, registers = microkernel._target()
    assert (lanes, registers) == (microkernel.LANES, microkernel.REGISTERS)
    assert ROWS * microkernel.NV + microkernel.NV + 1 <= registers
    assert microkernel.GROUPS * microkernel.NV * lanes == CB


def test_the_target_follows_numba_settings(monkeypatch):
    import numba
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx,+avx2,+fma")
    monkeypatch.setattr(microkernel.platform, "machine", lambda: "x86_64")
    assert microkernel._target() == (8, 16)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx512f,+avx2,-prefer-256-bit")
    assert microkernel._target() == (16, 32)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", None)
    monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
    assert microkernel._target() == (4, 16)

    class Host:  # what llvmlite reports of an AVX2 host
        def flatten(self):
            return "+avx,+avx2,+fma,-avx512f"

    monkeypatch.setattr(microkernel.llvm, "get_host_cpu_features", Host)
    monkeypatch.setattr(numba.config, "CPU_NAME", "host")  # NUMBA_CPU_NAME=host: the host's
    assert microkernel._target() == (8, 16)
    monkeypatch.setattr(numba.config, "CPU_NAME", None)
    assert microkernel._target() == (8, 16)
    monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
    monkeypatch.setattr(microkernel.platform, "machine", lambda: "aarch64")
    assert microkernel._target() == (4, 32)


_WIDTH_CHECK = """
import collections, re, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if FIRST:
        from numba import njit
        njit(lambda x: x)(1)
    import numlstm
import numpy as np
from numba import njit
from numba.core.registry import cpu_target
from numlstm.kernels.gates import sigmoid
@njit(error_model="numpy")
def loop(a, out):
    for i in range(a.shape[0]):
        out[i] = sigmoid(a[i])
a = np.ones(1000, np.float32)
loop(a, a)
asm = list(loop.inspect_asm().values())[0]
print(cpu_target.target_context.codegen()._tm_features.split(",")[-1])
print(collections.Counter(re.findall(r"\\b(zmm|ymm)\\d", asm)).most_common(1)[0][0])
print(sum(issubclass(w.category, RuntimeWarning) and "256-bit" in str(w.message)
          for w in caught))
"""


@pytest.mark.parametrize("numba_first", [False, True])
def test_importing_numlstm_gives_its_kernels_512_bit_vectors_on_avx512(tmp_path, numba_first):
    """Intel's AVX-512 server CPUs are tuned to prefer 256-bit vectors, at which the
    gate loops run 8 floats wide; numlstm turns the preference off before Numba
    fixes its target (when the first function is decorated, which a kernel module
    does as it is imported). Checked in a fresh process, with the machine code of a
    gate loop: 512-bit registers on an AVX-512 host, and no change elsewhere. If
    Numba set its target up before numlstm was imported, a warning says the kernels
    run at the narrower width."""
    import os
    import subprocess
    import sys
    import llvmlite.binding as llvm
    avx512 = "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CPU_FEATURES"}
    env["NUMBA_CACHE_DIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-c", f"FIRST = {numba_first}\n" + _WIDTH_CHECK],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    last_feature, register, warned = run.stdout.split()
    on = avx512 and not numba_first
    assert (last_feature == "-prefer-256-bit") == on
    assert (register == "zmm") == on or not avx512  # (an AVX2 host has no zmm at all)
    assert warned == ("1" if avx512 and numba_first else "0")


_AVX2_CHECK = """
import numpy as np
from numlstm.kernels.cpu import microkernel
from numlstm.kernels.cpu.microkernel import CB, tile_block
assert (microkernel.LANES, microkernel.NV, microkernel.GROUPS) == (8, 2, 4)
rng = np.random.default_rng(0)
for rows in (1, 5, 6, 7, 13):
    A = rng.standard_normal((rows, 19)).astype(np.float32)
    W = rng.standard_normal((2, 19, CB)).astype(np.float32)
    init = rng.standard_normal((rows, 2 * CB)).astype(np.float32)
    out = np.zeros_like(init)
    tile_block(A, W, out, 1, 0, rows, init, True, 0, 19)
    want = init[:, CB:].astype(np.float64)
    for k in range(19):
        want = (want + A[:, k:k + 1].astype(np.float64) * W[1, k]).astype(np.float32)
        want = want.astype(np.float64)
    np.testing.assert_array_equal(out[:, CB:], want.astype(np.float32))
    for cols in (8, 24, 40):  # part of a block: narrow tiles of 1 vector, after full ones
        part = np.full_like(init, np.nan)
        microkernel.tile_cols(A, W, part, 1, 0, rows, init, True, 0, 19, cols)
        np.testing.assert_array_equal(part[:, CB:CB + cols], out[:, CB:CB + cols])
        assert np.isnan(part[:, CB + cols:]).all()
from numba import njit
from numlstm.kernels.cpu.microkernel import TT, address, transpose_tile
@njit
def t(src, dst):
    transpose_tile(address(src) + 4 * (src.shape[1] + 2), src.shape[1], address(dst), dst.shape[1])
src = rng.standard_normal((TT + 1, TT + 3)).astype(np.float32)
dst = np.zeros((TT, TT + 1), np.float32)
t(src, dst)
np.testing.assert_array_equal(dst[:, :TT], src[1:, 2:TT + 2].T)
print("ok")
"""


@njit
def _transpose_at(src, i0, j0, dst, r0, c0):
    """dst[r0:r0+TT, c0:c0+TT] = src[i0:i0+TT, j0:j0+TT].T (C-contiguous float32)."""
    transpose_tile(address(src) + 4 * (i0 * src.shape[1] + j0), src.shape[1],
                   address(dst) + 4 * (r0 * dst.shape[1] + c0), dst.shape[1])


def test_transpose_tile_moves_each_element_and_nothing_else(rng):
    """The 16 x 16 register transpose, at unaligned offsets of arrays of odd row
    lengths, leaves the rest of dst as it was."""
    src = rng.standard_normal((TT + 9, TT + 21)).astype(np.float32)
    dst = np.full((TT + 19, TT + 25), np.nan, np.float32)
    _transpose_at(src, 3, 5, dst, 7, 2)
    want = np.full_like(dst, np.nan)
    want[7:7 + TT, 2:2 + TT] = src[3:3 + TT, 5:5 + TT].T
    np.testing.assert_array_equal(dst, want)


def test_the_avx2_tile_matches_in_a_process_compiled_for_avx2(tmp_path):
    """Laptops without AVX-512 get 8-lane vectors and 6 x 2 tiles (four column
    groups a block): compiled for Haswell in a process of its own, which this
    machine can run, the tile sums to the bit as on AVX-512."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CACHE_DIR=str(tmp_path),
               NUMBA_CPU_FEATURES="+avx,+avx2,+fma,+sse4.2,+sse4.1,+ssse3,+sse3,+sse2,+popcnt")
    run = subprocess.run([sys.executable, "-c", _AVX2_CHECK], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_short_tiles_span_more_columns_within_the_registers():
    """A tile of fewer rows than ROWS keeps about 8 FMA chains going by spanning
    more of the block (each width divides the block, the accumulators and a
    broadcast fit the registers); each_row_count above checks their sums."""
    for rows, nv in microkernel.WIDE_NV.items():
        assert CB % (nv * microkernel.LANES) == 0
        assert rows * nv + 2 <= microkernel.REGISTERS
        assert nv >= microkernel.NV
    if CB // microkernel.LANES >= 8:  # AVX2: a 1-row tile spans the whole block
        assert microkernel.WIDE_NV[1] == 8


@pytest.mark.parametrize("shape, dtype", [((7, 64), np.float32), ((5, 200), np.float32),
                                          ((300, 384), np.float32), ((33, 130), np.int8)])
def test_in_blocks_starts_each_block_on_a_cache_line(rng, shape, dtype):
    """in_blocks's copy (each path: one block, a small copy, the parallel one past
    SMALL_COPY elements; int8 for the quantized weights) holds a's columns in blocks
    of CB, zero past them, and each block starts on a 64-byte line, so that no
    vector a product loads from it spans two."""
    a = (rng.standard_normal(shape) * 10).astype(dtype)
    out = in_blocks(a)
    K, N = shape
    nblk = -(-N // CB)
    assert out.shape == (nblk, K, CB)
    assert all(out[b].ctypes.data % 64 == 0 for b in range(nblk))
    padded = np.zeros((K, nblk * CB), dtype)
    padded[:, :N] = a
    np.testing.assert_array_equal(out, padded.reshape(K, nblk, CB).transpose(1, 0, 2))
