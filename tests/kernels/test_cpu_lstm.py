"""The CPU LSTM kernels against the NumPy reference."""
import numpy as np
import pytest

from numlstm.kernels.cpu import lstm_backward_cpu, lstm_forward_cpu, pack_lstm_cpu
from numlstm.kernels.cpu.lstm import forward_plan
from numlstm.kernels.gates import make_acts
from numlstm.kernels.reference import lstm_backward_ref, lstm_forward_ref
from helpers import SOFTSIGN, assert_close, lstm_weights

# float32 kernels use the vectorised exp; float64 ones are libm-exact.
RTOL = {np.float32: 2e-5, np.float64: 1e-12}


def _compare(rng, T, B, I, H, dtype, reverse, lengths, zoneout=None, proj=0, h_mask=False,
             layer_norm=False, plan=None, **options):
    """The kernels' forward (training and inference) and backward against the
    reference's, with the cell's options (pack_lstm_cpu's keywords; peephole=True
    draws the weights), a projection of proj units, and, when zoneout is a pair of
    rates, zoneout's 0/1 draws; h_mask: a random recurrent dropout mask; layer_norm:
    random gains and bias for layer normalisation; plan: None, or the fields of the
    float32 loops' plan to force (plan.Plan's), the rest as forward_plan makes it."""
    w_ih, w_hh, b_ih, b_hh = lstm_weights(rng, I, H, dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, proj or H)).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype)
    if proj:
        w_hh = np.ascontiguousarray(w_hh[:, :proj])
        options["w_hr"] = (rng.standard_normal((proj, H)) * 0.5).astype(dtype)
    if options.get("peephole") is True:
        options["peephole"] = (rng.standard_normal(3 * H) * 0.5).astype(dtype)
    if layer_norm:
        for k, n in (("ln_ih", 4 * H), ("ln_hh", 4 * H), ("ln_c", H), ("ln_c_bias", H)):
            base = 0 if k == "ln_c_bias" else 1
            options[k] = (base + 0.3 * rng.standard_normal(n)).astype(dtype)
    zone = {}
    if h_mask:
        zone["h_mask"] = rng.uniform(0, 2, (B, proj or H)).astype(dtype)
    if zoneout is not None:
        zone = {k: (rng.random((T, B, H)) < p).astype(dtype)
                for k, p in zip(("zone_c", "zone_h"), zoneout)}
    y, h, c, cache = lstm_forward_ref(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse,
                                      **options, **zone)
    packed = pack_lstm_cpu(w_ih, w_hh, b_ih, b_hh, **options)
    if plan is not None:
        assert packed.kind == "tiled"  # (the BLAS loops plan each step themselves)
        zone["plan"] = forward_plan(x.shape, packed, True)._replace(**plan)
    yk, hk, ck, cache_k = lstm_forward_cpu(x, packed, h0, c0, lengths, reverse, training=True,
                                           **zone)
    yi, hi, ci, none = lstm_forward_cpu(x, packed, h0, c0, lengths, reverse, training=False,
                                        **zone)
    assert none is None
    rtol = RTOL[dtype]
    for name, got, want in [("y", yk, y), ("h_n", hk, h), ("c_n", ck, c),
                            ("y (inference)", yi, y), ("h_n (inference)", hi, h)]:
        assert got.dtype == dtype
        assert_close(got, want, rtol, name)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh_n = rng.standard_normal(h.shape).astype(dtype)
    dc_n = rng.standard_normal(c.shape).astype(dtype)
    dx, dh0, dc0, grads = lstm_backward_ref(dy, dh_n, dc_n, cache)
    dxk, dh0k, dc0k, grads_k = lstm_backward_cpu(dy, dh_n, dc_n, cache_k, packed)
    assert sorted(grads_k) == sorted(grads)
    for name, got, want in [("dx", dxk, dx), ("dh0", dh0k, dh0), ("dc0", dc0k, dc0)] + [
            (k, grads_k[k], grads[k]) for k in grads]:
        assert got.dtype == dtype, name
        assert_close(got, want, 5 * rtol, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_cpu_kernels_match_reference_at_random_shapes(rng, dtype, reverse):
    for _ in range(4):
        T, B, I, H = rng.integers(1, 9), rng.integers(1, 6), rng.integers(1, 12), \
            rng.integers(1, 20)
        _compare(rng, T, B, I, H, dtype, reverse, None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (6, 1, 5, 7), (1, 1, 1, 1), (7, 3, 2, 33)],
                         ids=["T1", "B1", "all1", "uneven"])
def test_cpu_kernels_match_reference_at_edge_shapes(rng, dtype, shape):
    for reverse in (False, True):
        _compare(rng, *shape, dtype, reverse, None)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_cpu_kernels_match_reference_with_lengths(rng, dtype, reverse):
    T, B, I, H = 7, 5, 3, 6
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    _compare(rng, T, B, I, H, dtype, reverse, lengths)
    _compare(rng, T, B, I, H, dtype, reverse, np.array([0, 7, 1, 3, 0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [{"cell_clip": 0.4}, {"input_forget": True},
                                     {"gate_clip": 0.6},
                                     {"cell_clip": 0.4, "input_forget": True, "gate_clip": 0.6}],
                         ids=["clip", "coupled", "gate-clip", "all"])
def test_cpu_kernels_match_reference_with_cell_options(rng, dtype, options):
    for reverse in (False, True):
        _compare(rng, 6, 3, 4, 37, dtype, reverse, np.array([6, 2, 5]), **options)
        _compare(rng, 1, 1, 2, 3, dtype, reverse, None, **options)


@pytest.mark.parametrize("rows,fused", [(False, False), (True, False), (True, True)],
                         ids=["units-split", "rows-split", "rows-split-fused"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_parallel_step_matches_reference(rng, reverse, rows, fused):
    """Force the parallel time loops at small shapes, sharing out the units (a
    region per step: several blocks per thread, padded units (H=70 -> 128), a
    remainder of rows outside the 6-row tiles) or the batch (uneven parts, a
    thread with one row; the input projection before the loop or inside it; one
    step; the cell options)."""
    plan = dict(threads=2, rows=rows, fused=fused)
    for T, B, I, H in [(6, 5, 3, 70), (3, 11, 4, 128), (4, 2, 5, 20), (2, 15, 3, 64),
                       (5, 3, 2, 33), (1, 9, 3, 64), (3, 11, 70, 64)]:
        lengths = rng.integers(1, T + 1, B)
        _compare(rng, T, B, I, H, np.float32, reverse, lengths, plan=plan)
        _compare(rng, T, B, I, H, np.float32, reverse, None, plan=plan)
    _compare(rng, 4, 10, 3, 20, np.float32, reverse, rng.integers(1, 5, 10), cell_clip=0.4,
             input_forget=True, gate_clip=0.6, plan=plan)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_inference_in_chunks_of_steps_matches_reference(rng, reverse):
    """Inference projects a few steps at a time; chunks of 1, 2 and 3 steps (odd
    and even, a short last chunk) carry the state across their boundaries."""
    T, B, I, H = 7, 3, 4, 20
    for steps in (1, 2, 3):
        _compare(rng, T, B, I, H, np.float32, reverse, np.array([7, 2, 5]),
                 plan=dict(chunk=steps))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_step_kernel_matches_reference(rng, dtype):
    from numlstm.kernels.cpu import lstm_step_cpu
    for B, I, H in [(1, 1, 1), (1, 64, 64), (3, 5, 70), (7, 2, 128)]:
        cell = lstm_weights(rng, I, H, dtype)
        x = rng.standard_normal((1, B, I)).astype(dtype)
        h0 = rng.standard_normal((B, H)).astype(dtype)
        c0 = rng.standard_normal((B, H)).astype(dtype)
        kept = h0.copy(), c0.copy()
        _, h, c, _ = lstm_forward_ref(x, *cell, h0, c0)
        hk, ck = lstm_step_cpu(x[0], pack_lstm_cpu(*cell), h0, c0)
        assert hk.dtype == ck.dtype == dtype
        assert_close(hk, h, RTOL[dtype], "h")
        assert_close(ck, c, RTOL[dtype], "c")
        np.testing.assert_array_equal(h0, kept[0])  # the inputs are not modified
        np.testing.assert_array_equal(c0, kept[1])


@pytest.mark.parametrize("P", [1, 2, 3, 8])
def test_product_tasks_cover_the_rows_in_equal_chunks(P):
    from numlstm.kernels.cpu.microkernel import ROWS
    from numlstm.kernels.cpu.products import row_chunks
    for M in (0, 1, 5, 7, 13, 82, 512, 2048, 16384, 100_003):
        for nblk in (1, 2, 3, 16):
            rows, chunks = row_chunks(M, nblk, P)
            assert rows % ROWS == 0 and rows > 0
            assert (chunks - 1) * rows < M <= chunks * rows or M == chunks == 0
            # each thread gets as many tasks, unless the tasks are down to one tile
            assert (chunks * nblk) % P == 0 or rows == ROWS, (M, nblk, P, rows, chunks)


@pytest.mark.parametrize("small", [0, 1 << 40], ids=["kernel-copies", "numpy-copies"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_weight_gradients_through_both_copy_paths(rng, reverse, small):
    """The weight gradients re-lay dG and transpose x and y with NumPy for small
    arrays and with the parallel kernels (copy_to_blocks, transpose into an offset)
    above SMALL_COPY elements; both, with lengths in any order (the reverse
    direction's first steps inside the sequence)."""
    plan = dict(small_copy=small)
    _compare(rng, 5, 7, 3, 37, np.float32, reverse, np.array([5, 2, 1, 4, 5, 3, 2]), plan=plan)
    _compare(rng, 1, 2, 4, 20, np.float32, reverse, None, plan=plan)


@pytest.mark.parametrize("M, N", [(1, 1), (7, 3), (600, 13), (256, 8), (2 * 256 + 1, 17),
                                  (16, 16), (300, 48)])
def test_transpose_and_column_sums_at_uneven_tiles(rng, M, N):
    """transpose's bands (TR_ROWS x TT) at shapes that end inside a tile, into
    an offset of a wider out, and the bias gradients' column sums it makes on the
    way, against NumPy (the sums to float32 rounding of a float64 sum)."""
    from numlstm.kernels.cpu.products import transpose, transposed_with_sums
    from numlstm.kernels.cpu.sequence import NO_MASK
    a = rng.standard_normal((M, N)).astype(np.float32)
    a_t, sums = transposed_with_sums(a)
    assert a_t.shape == (N, M) and np.array_equal(a_t, a.T)
    exact = a.astype(np.float64).sum(axis=0)
    scale = np.abs(a).astype(np.float64).sum(axis=0)
    assert np.all(np.abs(sums - exact) <= 4 * np.finfo(np.float32).eps * scale), (sums, exact)
    out = np.full((N, M + 5), -1, np.float32)
    transpose(a, out, NO_MASK, 3)
    assert np.array_equal(out[:, 3:M + 3], a.T)
    assert np.all(out[:, :3] == -1) and np.all(out[:, M + 3:] == -1)
    strided = rng.standard_normal((M, 2 * N)).astype(np.float32)[:, ::2]  # column stride 2
    transpose(strided, out, NO_MASK, 3)
    assert np.array_equal(out[:, 3:M + 3], strided.T)


@pytest.mark.parametrize("H, n", [(1, 1), (16, 16), (37, 33), (64, 5), (64, 100)])
def test_untile_at_uneven_shapes(rng, H, n):
    """untile (a weight gradient computed transposed -> torch's layout) against NumPy:
    gate columns in runs of 16 (the registers' tiles) and, where H is not a
    multiple of 16, bands straddling two gates (one float at a time), edges of n,
    rows padded as _weight_gradients pads them or not, and columns in any order."""
    from numlstm.kernels.cpu.lstm import _gate_columns
    from numlstm.kernels.cpu.products import padded_cols, untile
    cols = _gate_columns(H)
    Gp = -(-H // 16) * 64
    for width in (Gp, padded_cols(Gp)):
        for order in (cols, rng.permutation(cols)):
            a_t = rng.standard_normal((n + 1, width)).astype(np.float32)
            out = np.full((len(order), n), np.nan, np.float32)
            untile(a_t, order, out)
            np.testing.assert_array_equal(out, a_t[:n, order].T)


# (each pair compiles every kernel again, about a minute: two pairs cover the kinds'
# code in both places; test_gates.py checks every kind's scalar function)
ACTIVATION_PAIRS = [("hard_sigmoid", "relu"), ("sigmoid", SOFTSIGN)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("acts", ACTIVATION_PAIRS, ids=["hard-sigmoid-relu", "user-softsign"])
def test_cpu_kernels_match_reference_with_activations(rng, dtype, acts):
    """recurrent_activation and activation on every path: the units split, the
    batch split (with and without the input projection fused), peepholes and
    the other options, lengths in any order, T=1 and B=1."""
    for reverse in (False, True):
        lengths = np.array([6, 2, 5])
        _compare(rng, 6, 3, 4, 37, dtype, reverse, lengths, acts=make_acts(*acts))
        _compare(rng, 1, 1, 2, 3, dtype, reverse, None, acts=make_acts(*acts))
        _compare(rng, 5, 3, 3, 20, dtype, reverse, np.array([5, 2, 4]), acts=make_acts(*acts),
                 peephole=True, cell_clip=0.8, gate_clip=2.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [{}, {"input_forget": True}, {"cell_clip": 0.4},
                                     {"gate_clip": 0.6}, {"zoneout": (0.3, 0.4)},
                                     {"w_hr": True}],
                         ids=["plain", "coupled", "clip", "gate-clip", "zoneout", "proj"])
def test_cpu_kernels_match_reference_with_peepholes(rng, dtype, options):
    """ONNX's peepholes (the old state into i and f, the new one into o), their
    gradient, and each option beside them."""
    for reverse in (False, True):
        for T, B, I, H, lengths in [(6, 3, 4, 37, np.array([6, 2, 5])), (1, 1, 2, 3, None),
                                    (4, 2, 3, 70, np.array([1, 4]))]:
            extra = dict(options)
            if extra.pop("w_hr", False):
                extra["proj"] = max(1, H // 3)
            _compare(rng, T, B, I, H, dtype, reverse, lengths, peephole=True, **extra)


@pytest.mark.parametrize("rows,fused", [(False, False), (True, False), (True, True)],
                         ids=["units-split", "rows-split", "rows-split-fused"])
def test_parallel_steps_with_activations_and_peepholes(rng, rows, fused):
    """The parallel time loops (forced at small shapes) with non-default activations,
    and with peepholes (which take the options' loop whatever the plan)."""
    plan = dict(threads=2, rows=rows, fused=fused)
    for reverse in (False, True):
        lengths = rng.integers(1, 5, 11)
        _compare(rng, 4, 11, 3, 70, np.float32, reverse, lengths,
                 acts=make_acts(*ACTIVATION_PAIRS[0]), plan=plan)
        _compare(rng, 4, 11, 3, 70, np.float32, reverse, lengths, peephole=True,
                 acts=make_acts("sigmoid", "tanh"), plan=plan)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [{}, {"acts": make_acts("hard_sigmoid", "relu")},
                                     {"h_mask": True}, {"cell_clip": 0.8, "gate_clip": 2.0},
                                     {"input_forget": True, "peephole": True},
                                     {"zoneout": (0.3, 0.4)}, {"proj": 3}],
                         ids=["plain", "activations", "recurrent-dropout", "clips",
                              "coupled-peephole", "zoneout", "proj"])
def test_cpu_kernels_match_reference_with_layer_norm(rng, dtype, options):
    """layer_norm (the BLAS path in both precisions) with each option beside it,
    lengths in any order (one of them 0), T=1 and B=1."""
    for reverse in (False, True):
        for T, B, I, H, lengths in [(6, 4, 3, 9, np.array([6, 0, 2, 5])), (1, 1, 2, 5, None),
                                    (5, 3, 7, 20, None)]:
            _compare(rng, T, B, I, H, dtype, reverse, lengths, layer_norm=True, **options)
