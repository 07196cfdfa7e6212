"""The int8 and bfloat16 kernels (kernels/cpu/qtile.py, quantized.py) against the
NumPy reference of the same quantization (reference.lstm_forward_quantized_ref):
the integer products to the bit, every int8 variant, every bfloat16 variant to
the bit against its own sum order, and the time loop at random, uneven shapes (T=1, B=1,
lengths, reverse, both thread counts)."""
import os

import numpy as np
import pytest

from numlstm.kernels import reference as ref
from numlstm.kernels.cpu import lstm_forward_quantized_cpu, quantized, qtile
from numlstm.kernels.cpu.microkernel import CB

from ..helpers import assert_close, lstm_weights

INT8_PRODUCTS = [qtile.INT8_ROWS[v] for v in qtile.VARIANTS]  # (all this CPU can run)


@pytest.mark.parametrize("product", INT8_PRODUCTS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("M,K,nblk", [(1, 4, 1), (1, 36, 3), (2, 8, 2), (5, 60, 1),
                                      (6, 12, 2), (13, 132, 3)])
def test_int8_products_are_numpys_integer_products(rng, product, M, K, nblk):
    A = rng.integers(1, 256, (M + 2, K), dtype=np.uint8)  # value + 128, value in +-127
    A[1, :4] = (1, 255, 128, 2)  # (the extremes -127 and 127, and 0)
    W = rng.integers(-127, 128, (nblk * CB, K), dtype=np.int8)
    W[:, :2] = (-127, 127)
    blocks, off = quantized.int8_blocks(W)  # (its layout; the sums are checked below)
    out = np.full((M + 2, nblk * CB), -7, np.int32)
    product(A, blocks, out, 1, 1 + M, 0, nblk, off)
    want = (A[1:1 + M].astype(np.int64) - 128) @ W.T.astype(np.int64)
    np.testing.assert_array_equal(out[1:1 + M], want)
    assert (out[0] == -7).all() and (out[M + 1:] == -7).all()  # other rows untouched


@pytest.mark.parametrize("variant", qtile.BF16_VARIANTS)  # (all this CPU can run)
@pytest.mark.parametrize("M,K,nblk", [(1, 1, 1), (7, 19, 3), (2, 64, 2), (13, 130, 1)])
def test_bfloat16_products_are_the_sequential_pair_sum(rng, variant, M, K, nblk):
    """Each variant this CPU runs (vdpbf16ps, or widened pairs) to the bit against
    the sum in NumPy: from init, each pair adds k odd, then k even, one rounding
    each; A's rows through the variant's activations, W's through bf16_blocks."""
    product = qtile.BF16_ROWS[variant]
    A = rng.standard_normal((M + 2, K)).astype(np.float32)
    A[1, 0] = 1 + 2 ** -8  # (a tie: to 1)
    pairs = np.full((M + 2, qtile.PAIR_BYTES[variant] * -(-K // 2)), 77, np.uint8)
    quantized.BF16_ACTIVATIONS[variant](A, pairs, 1, 1 + M)
    assert (pairs[0] == 77).all() and (pairs[M + 1] == 77).all()  # other rows untouched
    W = rng.standard_normal((nblk * CB, K)).astype(np.float32)
    blocks = quantized.bf16_blocks(quantized.to_bfloat16_bits(W))
    init = rng.standard_normal((M + 2, (nblk + 1) * CB)).astype(np.float32)
    out = np.full_like(init, np.nan)
    product(pairs, blocks, out[:, CB:], init[:, CB:], True, 1, 1 + M, 0, nblk)
    a = ref.bfloat16_ref(A[1:1 + M]).astype(np.float64)
    w = ref.bfloat16_ref(W).astype(np.float64)
    acc = init[1:1 + M, CB:]
    for j in range(-(-K // 2)):
        for k in (2 * j + 1, 2 * j):
            if k < K:
                acc = (acc + a[:, k:k + 1] * w[:, k]).astype(np.float32)  # (exact product)
    np.testing.assert_array_equal(out[1:1 + M, CB:], acc)
    assert np.isnan(out[:, :CB]).all() and np.isnan(out[0]).all()


def test_bfloat16_activations_round_as_the_weights_do():
    """Both forms (vdpbf16ps's pairs, the widened variant's float32 values): each
    value as to_bfloat16_bits rounds the weights, zero past K."""
    a = np.array([[1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5e-3, np.inf, np.nan, 3e38]],
                 np.float32)
    pairs, values = np.empty((1, 16), np.uint8), np.empty((1, 32), np.uint8)
    quantized.bf16_pairs(a, pairs, 0, 1)
    quantized.bf16_values(a, values, 0, 1)
    bits = pairs.view(np.uint32)[0]
    halves = np.stack([bits & 0xFFFF, bits >> 16], axis=1).ravel()
    np.testing.assert_array_equal(halves[:7], quantized.to_bfloat16_bits(a[0]))
    np.testing.assert_array_equal(values.view(np.uint32)[0], halves.astype(np.uint32) << 16)
    assert halves[7] == 0  # (past K)
    got = (halves[:7].astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(got, ref.bfloat16_ref(a[0]))


def test_bfloat16_rounding_is_to_nearest_even():
    w = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -7 + 2 ** -9, -2.5e-3, 3e38,
                  np.inf, np.nan], np.float32)
    got = (quantized.to_bfloat16_bits(w).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(got, ref.bfloat16_ref(w))
    # ties go to the even mantissa: 1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6
    assert got[1] == 1.0 and got[2] == 1 + 2 ** -6
    assert got[6] == np.inf and np.isnan(got[7])


def test_row_quantization_is_the_references(rng):
    a = rng.standard_normal((9, 13)).astype(np.float32) * 3
    a[2] = 0
    a[4, 5] = np.nan
    q = np.empty((9, 16), np.uint8)
    s = np.empty(9, np.float32)
    quantized.quantize_rows(a, q, s, 0, 9)
    q_ref, s_ref = ref.quantize_symmetric_ref(a)
    ok = ~np.isnan(s_ref)
    np.testing.assert_array_equal(q[ok, :13].astype(np.int64) - 128, q_ref[ok])
    assert (q[:, 13:] == 128).all()
    np.testing.assert_array_equal(s, s_ref)  # (NaN where a row holds one)
    assert np.isnan(s[4]) and s[2] == 0 and (q[2] == 128).all()
    assert np.abs(q_ref).max() == 127


def _h_entering(y, h0, lengths, reverse):
    """[T,B,H]: the h that each step of a kernel's run read, from its outputs (h0 at
    the first step; held past a sequence's length), for the reference's h_in."""
    T, B = y.shape[:2]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    h, out = h0.copy(), np.empty_like(y)
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        out[t] = h
        h = np.where((t < lengths)[:, None], y[t], h)
    return out


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 3, 5), (6, 3, 7, 20), (4, 1, 33, 70),
                                     (5, 9, 64, 40), (40, 4, 16, 48)])
def test_forward_matches_reference(rng, dtype, T, B, I, H):
    """Each step against the reference's, fed the kernel's h (reference.
    lstm_forward_quantized_ref's h_in: over many steps one element of h may round to
    the next quantum on one side only)."""
    w = lstm_weights(rng, I, H, np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0, c0 = (0.5 * rng.standard_normal((B, H)).astype(np.float32) for _ in range(2))
    cell = quantized.pack_lstm_quantized(*w, dtype)
    for lengths, reverse in ((None, False), (rng.integers(0, T + 1, B), True),
                             (rng.integers(0, T + 1, B), False)):
        y, h, c = lstm_forward_quantized_cpu(x, cell, h0, c0, lengths, reverse)
        y_r, h_r, c_r = ref.lstm_forward_quantized_ref(
            x, *w, h0, c0, lengths, reverse, dtype,
            h_in=_h_entering(y, h0, lengths, reverse))
        for got, want, what in ((y, y_r, "y"), (h, h_r, "h_n"), (c, c_r, "c_n")):
            assert_close(got, want, 1e-5, f"{dtype} {what}", atol=1e-6)
        if lengths is not None:  # past a sequence's length: zeros out, the state held
            for b in np.flatnonzero(lengths == 0):
                assert (y[:, b] == 0).all() and (h[b] == h0[b]).all()


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 3, 5), (6, 3, 7, 20), (5, 9, 64, 40),
                                     (30, 4, 16, 48)])
def test_gru_forward_matches_reference(rng, dtype, T, B, I, H):
    """The GRU on the four-slot loop (pack_gru_quantized) against
    reference.gru_forward_quantized_ref, each step fed the kernel's h; and its
    one-call path bit for bit against the general one."""
    k = 1 / np.sqrt(H)
    w = [rng.uniform(-k, k, s).astype(np.float32) for s in ((3 * H, I), (3 * H, H),
                                                             (3 * H,), (3 * H,))]
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = (0.5 * rng.standard_normal((B, H))).astype(np.float32)
    cell = quantized.pack_gru_quantized(*w, dtype)
    for lengths, reverse in ((None, False), (rng.integers(0, T + 1, B), True),
                             (rng.integers(0, T + 1, B), False)):
        y, h = quantized.gru_forward_quantized(x, cell, h0, lengths, reverse)
        y_r, h_r = ref.gru_forward_quantized_ref(x, *w, h0, lengths, reverse, dtype,
                                                 h_in=_h_entering(y, h0, lengths, reverse))
        assert_close(y, y_r, 1e-5, f"{dtype} y", atol=1e-6)
        assert_close(h, h_r, 1e-5, f"{dtype} h_n", atol=1e-6)
    y1, h1 = (np.full(s, np.nan, np.float32) for s in ((T, B, H), (B, H)))
    assert quantized.gru_forward_quantized_into(x, cell, h0, y1, h1)
    for got, want in zip((y1, h1), quantized.gru_forward_quantized(x, cell, h0, np.full(B, T))):
        np.testing.assert_array_equal(got, want)


def test_int8_products_inside_the_loop_are_exact(rng):
    """One step from h0 = 0 isolates the input product: the pre-activations are
    bias + the reference's integer product scaled, to the bit; and the time loop is
    the same to the bit whatever its plan: one thread or two (batch or units split),
    the input part made before the loop or step by step in it."""
    T, B, I, H = 3, 4, 24, 96
    w = lstm_weights(rng, I, H, np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    cell = quantized.pack_lstm_quantized(*w, "int8")
    xw = quantized._input_product(x, cell, False)
    prod, acc = ref.int8_product_ref(x.reshape(T * B, I), w[0])
    cols = quantized._columns(H)
    np.testing.assert_array_equal(xw.reshape(T * B, -1)[:, cols], (w[2] + w[3]) + prod)
    zeros = np.zeros((B, H), np.float32)
    lengths = np.array([3, 1, 0, 2])
    outs = [quantized._run(x, cell, zeros, zeros, lengths, False, xw_all, P, split)
            for xw_all, P, split in ((quantized._NO_XW, 1, "rows"), (quantized._NO_XW, 2, "rows"),
                                     (xw, 1, "rows"), (xw, 2, "units"))]
    for out in outs[1:]:
        for got, want in zip(out, outs[0]):
            np.testing.assert_array_equal(got, want)
    y_ref, _, _ = ref.lstm_forward_quantized_ref(
        x, *w, zeros, zeros, lengths, h_in=_h_entering(outs[0][0], zeros, lengths, False))
    assert_close(outs[0][0], y_ref, 1e-5, "int8 y", atol=1e-6)


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 5, 16), (7, 2, 9, 37), (3, 5, 64, 128)])
def test_the_one_call_path_is_the_general_one_bit_for_bit(rng, dtype, T, B, I, H):
    """forward_into (one thread, each step's input part in the loop) against
    lstm_forward_quantized with lengths (the general path), and what it declines it
    leaves unwritten."""
    w = lstm_weights(rng, I, H, np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0, c0 = (0.5 * rng.standard_normal((B, H)).astype(np.float32) for _ in range(2))
    cell = quantized.pack_lstm_quantized(*w, dtype)
    y, h, c = (np.full(s, np.nan, np.float32) for s in ((T, B, H), (B, H), (B, H)))
    assert quantized.lstm_forward_quantized_into(x, cell, h0, c0, y, h, c)
    want = lstm_forward_quantized_cpu(x, cell, h0, c0, np.full(B, T))
    for got, exp in zip((y, h, c), want):
        np.testing.assert_array_equal(got, exp)
    T_big = quantized.ALONE_MAX_MACS // (64 * 4 * cell.Hq * I) + 1  # (an input product
    big = np.zeros((T_big, 64, I), np.float32)                     # past the limit)
    y_big = np.full((T_big, 64, H), np.nan, np.float32)
    assert not quantized.runs_alone(T_big, 64, I, H, 2)
    assert not quantized.lstm_forward_quantized_into(big, cell, h0[:1].repeat(64, 0),
                                                     c0[:1].repeat(64, 0), y_big,
                                                     np.zeros((64, H), np.float32),
                                                     np.zeros((64, H), np.float32))
    assert np.isnan(y_big).all()


def _features_without(*words):
    """This CPU's LLVM features less every one naming one of `words`, each also
    switched off (so that nothing implies it back)."""
    import llvmlite.binding as llvm
    kept = [f for f in llvm.get_host_cpu_features().flatten().split(",")
            if not any(w in f for w in words)]
    return ",".join(kept + ["-avx512f", "-avx512vnni", "-avxvnni"]
                    + (["-avx2"] if "avx2" in words else []))


@pytest.mark.parametrize("variant,drop", [("avx2", ("avx512", "vnni")),
                                          ("generic", ("avx512", "vnni", "avx2"))])
def test_other_cpus_variants_give_the_same_layer(tmp_path, variant, drop):
    """A CPU with AVX2 and no VNNI (AMD Zen 3, Intel before Alder Lake), and one with
    neither (Numba told this CPU's features less those, in a process of its own):
    their int8 variant, the same outputs to the bit, and a RuntimeWarning, once,
    where the portable loop runs; and bfloat16 on its widened pairs (no
    AVX512-BF16, a RuntimeWarning once), the same outputs to the bit as this CPU's
    variant. (One call of each, with lengths: the parallel time loop, whose rows
    functions are the variant's; a fresh process compiles what it runs, about 20 s
    a loop.)"""
    import subprocess
    import sys
    if variant not in qtile.VARIANTS[1:]:
        pytest.skip(f"this CPU's own run is {qtile.VARIANT}")
    code = ("import sys, warnings, numpy as np, numlstm\n"
            "from numlstm.kernels.cpu import qtile\n"
            f"assert qtile.int8_variant() == {variant!r}, qtile.int8_variant()\n"
            "assert qtile.bf16_variant() == 'widen', qtile.bf16_variant()\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    q = numlstm.quantize_dynamic(numlstm.LSTM(7, 20, num_layers=2, seed=5))\n"
            "    numlstm.quantize_dynamic(numlstm.LSTM(7, 20, seed=5))\n"
            "    b = numlstm.quantize_dynamic(numlstm.LSTM(7, 20, num_layers=2, seed=5),"
            " 'bfloat16')\n"
            "    numlstm.quantize_dynamic(numlstm.LSTM(7, 20, seed=5), 'bfloat16')\n"
            "print(sum('portable loop' in str(x.message) for x in w),"
            " sum('AVX512-BF16' in str(x.message) for x in w))\n"
            "x = np.random.default_rng(0).standard_normal((5, 3, 7)).astype(np.float32)\n"
            "np.save(sys.argv[1], np.concatenate([q(x, lengths=[5, 2, 4])[0].ravel(),"
            " b(x, lengths=[5, 2, 4])[0].ravel()]))\n")
    env = dict(os.environ, NUMBA_CPU_FEATURES=_features_without(*drop),
               NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "y.npy"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1" if variant == "generic" else "0", "1"]
    import numlstm
    q = numlstm.quantize_dynamic(numlstm.LSTM(7, 20, num_layers=2, seed=5))
    x = np.random.default_rng(0).standard_normal((5, 3, 7)).astype(np.float32)
    b = numlstm.quantize_dynamic(numlstm.LSTM(7, 20, num_layers=2, seed=5), "bfloat16")
    want = np.concatenate([q(x, lengths=[5, 2, 4])[0].ravel(),
                           b(x, lengths=[5, 2, 4])[0].ravel()])
    np.testing.assert_array_equal(np.load(out), want)
