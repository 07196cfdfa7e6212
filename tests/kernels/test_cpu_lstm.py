"""The CPU LSTM kernels (lstm_forward_cpu, lstm_backward_cpu, lstm_step_cpu) against the
NumPy reference, every option's case in this one file: random and edge shapes, lengths,
the cell options, the parallel loops' plans, activations, peepholes and layer
normalisation; then zoneout (with and without a projection), recurrent dropout and the
projection on their own shapes. Also the weight gradients' helpers (row chunks,
transposes, untile) against NumPy."""
import numpy as np
import pytest

from numlstm.kernels.cpu import lstm_backward_cpu, lstm_forward_cpu, pack_lstm_cpu
from numlstm.kernels.cpu.lstm import forward_plan
from numlstm.kernels.gates import make_acts
from numlstm.kernels.reference import lstm_backward_ref, lstm_forward_ref
from helpers import (SOFTSIGN, assert_close, assert_kernels_match, lstm_weights,
                     projected_lstm_inputs, projected_lstm_weights, projected_zones,
                     zoneout_weights)

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
    """lstm_step_cpu against the reference; and forward_into on one step, which
    lstm_step_cpu takes where it runs (the tiled float32 cell; the float64 cell
    declines and writes nothing)."""
    from numlstm.kernels.cpu import KERNELS, lstm_step_cpu
    for B, I, H in [(1, 1, 1), (1, 64, 64), (3, 5, 70), (7, 2, 128)]:
        cell = lstm_weights(rng, I, H, dtype)
        x = rng.standard_normal((1, B, I)).astype(dtype)
        h0 = rng.standard_normal((B, H)).astype(dtype)
        c0 = rng.standard_normal((B, H)).astype(dtype)
        kept = h0.copy(), c0.copy()
        _, h, c, _ = lstm_forward_ref(x, *cell, h0, c0)
        packed = pack_lstm_cpu(*cell)
        hk, ck = lstm_step_cpu(x[0], packed, h0, c0)
        assert hk.dtype == ck.dtype == dtype
        assert_close(hk, h, RTOL[dtype], "h")
        assert_close(ck, c, RTOL[dtype], "c")
        y, h_out, c_out = (np.full(s, np.nan, dtype) for s in ((1, B, H), (B, H), (B, H)))
        ran = KERNELS["lstm"].forward_into(x, packed, h0, c0, y, h_out, c_out)
        assert ran == (dtype == np.float32)
        np.testing.assert_array_equal(y[0], hk if ran else np.nan)
        np.testing.assert_array_equal(h_out, hk if ran else np.nan)
        np.testing.assert_array_equal(c_out, ck if ran else np.nan)
        np.testing.assert_array_equal(h0, kept[0])  # the inputs are not modified
        np.testing.assert_array_equal(c0, kept[1])


@pytest.mark.parametrize("chunk_bytes", [1, 4 << 20], ids=["chunks-of-one-step", "one-chunk"])
def test_forward_into_is_the_forward_bit_for_bit(rng, monkeypatch, chunk_bytes):
    """forward_into (one thread, from Python) against lstm_forward_cpu's time loop at
    uneven shapes, T=1 and B=1, the input product in chunks of one step or all at once;
    and against the reference."""
    from numlstm.kernels.cpu import KERNELS, lstm_forward_cpu, plan
    monkeypatch.setattr(plan, "INFERENCE_CHUNK_BYTES", chunk_bytes)
    for T, B, I, H in [(6, 3, 4, 37), (1, 1, 2, 3), (9, 1, 5, 70), (3, 2, 3, 16)]:
        cell = lstm_weights(rng, I, H, np.float32)
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        h0, c0 = (rng.standard_normal((B, H)).astype(np.float32) for _ in range(2))
        packed = pack_lstm_cpu(*cell)
        y, h, c = (np.empty(s, np.float32) for s in ((T, B, H), (B, H), (B, H)))
        assert KERNELS["lstm"].forward_into(x, packed, h0, c0, y, h, c)
        # (lengths: the time loop, not the T=1 shortcut that itself takes forward_into)
        want = lstm_forward_cpu(x, packed, h0, c0, lengths=np.full(B, T))
        for got, w in zip((y, h, c), want):
            np.testing.assert_array_equal(got, w)
        ref = lstm_forward_ref(x, *cell, h0, c0)
        for got, w, name in zip((y, h, c), ref, "yhc"):
            assert_close(got, w, RTOL[np.float32], name)


def test_split_step_is_the_one_thread_step_bit_for_bit(rng):
    """lstm_tiled.step_split, a streamed step's blocks of units shared among P threads,
    against steps_state (the one-thread step) bitwise at uneven shapes, B=1 and H=1,
    for P = 1, 2, 3 and a hold on the gate (one thread); with the cell options; and
    against the reference. The inputs are not modified."""
    from numlstm.kernels.cpu import threads
    from numlstm.kernels.cpu.lstm_tiled import step_split, steps_state
    shapes = [(1, 1, 1, {}), (3, 5, 70, {}), (2, 7, 130, dict(cell_clip=0.7, input_forget=True)),
              (5, 3, 33, dict(gate_clip=1.5))]
    for B, I, H, options in shapes:
        cell = lstm_weights(rng, I, H, np.float32)
        x = rng.standard_normal((B, I)).astype(np.float32)
        h0, c0 = (rng.standard_normal((B, H)).astype(np.float32) for _ in range(2))
        kept = x.copy(), h0.copy(), c0.copy()
        p = pack_lstm_cpu(*cell, **options)
        args = p.w_in, p.bias, p.w_fwd
        tail = p.clip, p.coupled, p.gclip, p.acts
        y, h1, c1 = (np.empty(s, np.float32) for s in ((1, B, H), (B, H), (B, H)))
        steps_state(x[None], *args, h0, c0, y, h1, c1, p.Hp, 1, *tail)
        _, h_ref, c_ref, _ = lstm_forward_ref(x[None], *cell, h0, c0, **options)
        assert_close(h1, h_ref, RTOL[np.float32], "h")
        assert_close(c1, c_ref, RTOL[np.float32], "c")
        for P, hold in [(1, False), (2, False), (3, False), (2, True)]:
            gate = threads.new_gate()
            if hold:
                gate[threads.SERIAL_UNTIL] = np.iinfo(np.int64).max
            h2, c2 = np.full((B, H), np.nan, np.float32), np.full((B, H), np.nan, np.float32)
            step_split(x, *args, h0, c0, h2, c2, p.Hp, P, *tail, gate)
            np.testing.assert_array_equal(h2, h1, err_msg=f"h, P={P}, hold={hold}")
            np.testing.assert_array_equal(c2, c1, err_msg=f"c, P={P}, hold={hold}")
            # a region ran (and was counted) unless one thread or a hold
            assert gate[threads.REGIONS] == (0 if P == 1 or hold else 1)
        for a, b in zip((x, h0, c0), kept):
            np.testing.assert_array_equal(a, b)


def test_forward_into_splits_a_large_step_among_the_threads(rng, monkeypatch):
    """Where plan.step_splits says, forward_into runs a streamed step (T=1) with its
    units shared in one parallel region (lstm_tiled.step_split, counted in the thread
    policy's gate), bitwise what the one-thread step gives; other calls keep to
    one thread (no region) or decline."""
    from numlstm.kernels.cpu import KERNELS, plan, threads
    B, I, H = 3, 6, 90
    cell = lstm_weights(rng, I, H, np.float32)
    packed = pack_lstm_cpu(*cell)
    x = rng.standard_normal((1, B, I)).astype(np.float32)
    h0, c0 = (rng.standard_normal((B, H)).astype(np.float32) for _ in range(2))
    outs = {}
    for split in (False, True):
        monkeypatch.setattr(plan, "STEP_SPLIT_MIN_FLOPS", 0 if split else 1 << 62)
        gate = threads.POLICY.gate()
        gate[threads.SERIAL_UNTIL] = gate[threads.HOLD] = 0
        before, many = gate[threads.REGIONS], threads.POLICY.call_threads() > 1
        y, h, c = (np.empty(s, np.float32) for s in ((1, B, H), (B, H), (B, H)))
        assert KERNELS["lstm"].forward_into(x, packed, h0, c0, y, h, c)
        regions = gate[threads.REGIONS] - before
        # one region with two threads (a step this small may find it slower than one
        # and hold the next ones: threads.split_done); none on a one-core machine
        assert regions == (1 if split and many else 0)
        gate[threads.SERIAL_UNTIL] = gate[threads.HOLD] = 0
        np.testing.assert_array_equal(y[0], h)
        outs[split] = y, h, c
    for a, b in zip(outs[False], outs[True]):
        np.testing.assert_array_equal(a, b)
    assert_close(outs[True][2], lstm_forward_ref(x, *cell, h0, c0)[2], RTOL[np.float32], "c")
    # the options the compiled calls lack still decline (the general path serves them)
    peeped = pack_lstm_cpu(*cell, peephole=(rng.standard_normal(3 * H) * 0.5).astype(
        np.float32))
    y, h, c = (np.empty(s, np.float32) for s in ((1, B, H), (B, H), (B, H)))
    assert not KERNELS["lstm"].forward_into(x, peeped, h0, c0, y, h, c)


def test_a_call_from_a_zero_state_skips_only_its_first_recurrent_product(rng):
    """From h0 = 0 the one-thread call (forward_into's steps_state) skips the first
    step's recurrent product, which would add only zeros: with every value of W_hh
    NaN, one step from zeros is the step that W_hh = 0 gives, bitwise, and the second
    step reads W_hh (NaN); from a nonzero h0 (one unit of one row) the first step
    reads it too (every row: 0 x NaN is NaN). With finite weights the skip changes
    nothing: bitwise the general loop, and close to the reference (uneven B, I, H)."""
    from numlstm.kernels.cpu import KERNELS
    B, I, H = 3, 5, 19
    w_ih, w_hh, b_ih, b_hh = lstm_weights(rng, I, H, np.float32)
    x = rng.standard_normal((2, B, I)).astype(np.float32)
    zeros = np.zeros((B, H), np.float32)
    into = KERNELS["lstm"].forward_into

    def run(w, h0, T):
        y, h, c = (np.empty(s, np.float32) for s in ((T, B, H), (B, H), (B, H)))
        assert into(x[:T], pack_lstm_cpu(w_ih, w, b_ih, b_hh), h0, zeros, y, h, c)
        return y, h, c

    nan = np.full_like(w_hh, np.nan)
    for a, b in zip(run(nan, zeros, 1), run(np.zeros_like(w_hh), zeros, 1)):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)
    y = run(nan, zeros, 2)[0]
    assert np.isfinite(y[0]).all() and np.isnan(y[1]).all()
    h0 = zeros.copy()
    h0[1, 7] = 0.5
    y = run(nan, h0, 1)[0]
    assert np.isnan(y[0]).all()
    for T in (1, 2):
        got = run(w_hh, zeros, T)
        packed = pack_lstm_cpu(w_ih, w_hh, b_ih, b_hh)
        general = lstm_forward_cpu(x[:T], packed, zeros, zeros, [T] * B, False,
                                   training=False)
        for a, b in zip(got, general[:3]):
            np.testing.assert_array_equal(a, b)
        want = lstm_forward_ref(x[:T], w_ih, w_hh, b_ih, b_hh, zeros, zeros)
        assert_close(got[0], want[0], RTOL[np.float32], "y")


@pytest.mark.parametrize("T,B,I,H", [(2, 1, 5, 50), (7, 3, 4, 100), (1, 1, 3, 64),
                                     (13, 8, 9, 70)])
def test_the_duet_is_the_one_thread_loop_bit_for_bit(rng, T, B, I, H):
    """duet.steps_duet (each step's units in two halves, one a thread, a late
    thread's half taken over) against steps_state, the one-thread loop: bitwise the
    same y and last state at uneven shapes (an odd number of blocks of units: H=100
    has 7), from a zero and a random state, on two threads, on one (the region's two
    iterations then run one after the other: the first takes over the second's
    half of every step), on two with every wait on the peer counted as a stall
    (stall=0: the first thread to wait goes on alone, the other stops), and on a
    hold or given P=1 (the one-thread loop itself, no region); and close to the
    reference."""
    from numba import get_num_threads, set_num_threads

    from numlstm.kernels.cpu import threads
    from numlstm.kernels.cpu.duet import steps_duet
    from numlstm.kernels.cpu.lstm_tiled import steps_state
    cell = lstm_weights(rng, I, H, np.float32)
    p = pack_lstm_cpu(*cell)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    before = get_num_threads()
    for h0 in (np.zeros((B, H), np.float32), rng.standard_normal((B, H)).astype(np.float32)):
        c0 = rng.standard_normal((B, H)).astype(np.float32)
        outs = []
        for run in ("state", "two", "one", "stall", "hold", "P=1"):
            y, h, c = (np.full(s, np.nan, np.float32) for s in ((T, B, H), (B, H), (B, H)))
            args = (x, p.w_in, p.bias, p.w_fwd, h0, c0, y, h, c, p.Hp)
            gate = threads.new_gate()
            if run == "hold":
                gate[threads.SERIAL_UNTIL] = threads.clock_ns() + 60_000_000_000
            try:
                set_num_threads(1 if run == "one" else before)
                if run == "state":
                    steps_state(*args, T, p.clip, p.coupled, p.gclip, p.acts)
                else:
                    stall = 0 if run == "stall" else 60_000_000_000
                    P = 1 if run == "P=1" else 2
                    taken, alone = steps_duet(*args, P, p.clip, p.coupled, p.gclip, p.acts,
                                              gate, stall)
                    assert taken == (T if run == "one" else 0 if run in ("hold", "P=1")
                                     else taken)
                    assert 0 <= taken <= T and (run == "stall" or not alone)
            finally:
                set_num_threads(before)
            assert gate[threads.REGIONS] == (0 if run in ("state", "hold", "P=1") else 1)
            outs.append((y, h, c))
        for got in outs[1:]:
            for a, b in zip(got, outs[0]):
                np.testing.assert_array_equal(a, b)
        want = lstm_forward_ref(x, *cell, h0, c0)
        for a, b, what in zip(outs[0], want, ("y", "h", "c")):
            assert_close(a, b, RTOL[np.float32], what)


def test_step_splits_from_the_measured_thresholds():
    """plan.step_splits: a streamed step shares its units from STEP_SPLIT_MIN_FLOPS of
    product or STEP_SPLIT_MIN_BYTES of weights; the small steps of the bench grid stay
    on one thread."""
    from numlstm.kernels.cpu.plan import step_splits
    assert step_splits(32, 128, 256, 4)  # 25 MFLOP
    assert step_splits(1, 256, 1024, 4)  # 20 MiB of weights, 10 MFLOP
    assert step_splits(1, 256, 512, 4)  # 6 MiB
    assert not step_splits(1, 64, 128, 4)
    assert not step_splits(8, 40, 128, 4)  # (H=96 padded to 128)
    assert not step_splits(16, 32, 128, 4)  # 2.6 MFLOP
    assert not step_splits(8, 128, 256, 4)  # 6 MFLOP, 1.5 MiB


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


# -- zoneout: each unit of c and h keeps its old value (0/1 draws, or the rate) -----------
# (T, B, I, H, reverse): uneven, T=1 and B=1, H >= 256 (every thread shares a step)
ZONEOUT_SHAPES = [(5, 3, 4, 7, False), (1, 1, 2, 5, True), (6, 4, 9, 70, True),
                  (4, 5, 6, 260, False)]


@pytest.mark.parametrize("shape", ZONEOUT_SHAPES, ids=lambda s: "T{}B{}I{}H{}-{}".format(*s))
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_kernels_with_zoneout_against_the_reference(rng, shape, training, dtype):
    T, B, I, H, reverse = shape
    cell = lstm_weights(rng, I, H, np.float64, min(0.5, 2 / np.sqrt(H)))
    x, h0, c0 = (rng.standard_normal(s) for s in ((T, B, I), (B, H), (B, H)))
    zone = zoneout_weights(rng, T, B, H, training)
    mask = (rng.random((B, H)) >= 0.3) / 0.7  # with recurrent dropout too
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    y, h, c, cache = lstm_forward_ref(x, *cell, h0, c0, lengths, reverse, cell_clip=0.9,
                                      h_mask=mask, zone_c=zone[0], zone_h=zone[1])
    dy, dh_n, dc_n = (rng.standard_normal(a.shape) for a in (y, h, c))
    dx, dh0, dc0, grads = lstm_backward_ref(dy, dh_n, dc_n, cache)
    want = dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, **grads)

    def cast(a):
        return a.astype(dtype)

    packed = pack_lstm_cpu(*map(cast, cell), cell_clip=0.9)
    args = (cast(x), packed, cast(h0), cast(c0), lengths, reverse)
    options = dict(h_mask=cast(mask), zone_c=cast(zone[0]), zone_h=cast(zone[1]))
    yk, hk, ck, cache_k = lstm_forward_cpu(*args, training=True, **options)
    yi, hi, ci, _ = lstm_forward_cpu(*args, training=False, **options)
    dxk, dh0k, dc0k, grads_k = lstm_backward_cpu(*map(cast, (dy, dh_n, dc_n)), cache_k, packed)
    got = dict(y=yk, h=hk, c=ck, dx=dxk, dh0=dh0k, dc0=dc0k, **grads_k)
    assert_kernels_match(got, want, dict(y=(yi, y), c_n=(ci, c)),
                         2e-5 if dtype == np.float32 else 1e-12, dtype)


# -- zoneout in a projected LSTM: zone_h mixes the projected h (P units) ------------------
# (T, B, I, H, P, reverse): uneven, T=1 and B=1, H and P past one block, H >= 256
ZONEOUT_PROJ_SHAPES = [(5, 3, 4, 7, 3, False), (1, 1, 2, 5, 2, True), (6, 4, 9, 70, 65, True),
                       (4, 5, 6, 260, 130, False)]


def _check_projected_zoneout_kernels(rng, shape, training, dtype, layer_norm=False, plan=None):
    """plan: None, or the fields of the float32 loops' plan to force."""
    T, B, I, H, P, reverse = shape
    a = projected_lstm_inputs(rng, T, B, I, H, P, min(0.5, 2 / np.sqrt(H)), layer_norm)
    zone_c, zone_h = projected_zones(rng, T, B, H, P, training)
    mask = (rng.random((B, P)) >= 0.3) / 0.7
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    names = ("w_ih", "w_hh", "b_ih", "b_hh")
    extra = {k: a[k] for k in a if k not in names + ("x", "h0", "c0")}
    y, h, c, cache = lstm_forward_ref(a["x"], *(a[k] for k in names), a["h0"], a["c0"],
                                      lengths, reverse, cell_clip=0.9, h_mask=mask,
                                      zone_c=zone_c, zone_h=zone_h, **extra)
    dy, dh_n, dc_n = (rng.standard_normal(v.shape) for v in (y, h, c))
    dx, dh0, dc0, grads = lstm_backward_ref(dy, dh_n, dc_n, cache)
    want = dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, **grads)

    def cast(v):
        return v.astype(dtype)

    packed = pack_lstm_cpu(*(cast(a[k]) for k in names), cell_clip=0.9,
                           **{k: cast(v) for k, v in extra.items()})
    args = (cast(a["x"]), packed, cast(a["h0"]), cast(a["c0"]), lengths, reverse)
    options = dict(h_mask=cast(mask), zone_c=cast(zone_c), zone_h=cast(zone_h))
    if plan is not None:
        options["plan"] = forward_plan(args[0].shape, packed, True, False)._replace(**plan)
    yk, hk, ck, cache_k = lstm_forward_cpu(*args, training=True, **options)
    yi, hi, ci, _ = lstm_forward_cpu(*args, training=False, **options)
    dxk, dh0k, dc0k, grads_k = lstm_backward_cpu(*map(cast, (dy, dh_n, dc_n)), cache_k, packed)
    got = dict(y=yk, h=hk, c=ck, dx=dxk, dh0=dh0k, dc0=dc0k, **grads_k)
    rtol = (1e-4 if layer_norm else 2e-5) if dtype == np.float32 else 1e-12
    assert_kernels_match(got, want, dict(y=(yi, y), h_n=(hi, h), c_n=(ci, c)), rtol, dtype)


@pytest.mark.parametrize("shape", ZONEOUT_PROJ_SHAPES,
                         ids=lambda s: "T{}B{}I{}H{}P{}-{}".format(*s))
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_projected_cpu_kernels_with_zoneout_against_the_reference(rng, shape, training, dtype):
    _check_projected_zoneout_kernels(rng, shape, training, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_projected_layer_norm_cpu_kernels_with_zoneout_against_the_reference(rng, dtype):
    """layer_norm's loop (the BLAS path; float32's products on Numba's threads)."""
    for shape in ZONEOUT_PROJ_SHAPES[:3]:
        for training in (True, False):
            _check_projected_zoneout_kernels(rng, shape, training, dtype, layer_norm=True)


def test_projected_parallel_loop_with_zoneout(rng):
    """The float32 loop with every step shared among the threads (two parallel regions a
    step: the gates, then the projection), forced at small shapes."""
    for shape in [(5, 3, 4, 130, 70, False), (4, 2, 3, 70, 65, True)]:
        _check_projected_zoneout_kernels(rng, shape, True, np.float32, plan=dict(threads=2))


# -- recurrent dropout (projected or not): the mask on h where W_hh reads it --------------
def _dropout_cell(rng, I, H, P, scale):
    shapes = [(4 * H, I), (4 * H, P or H), (4 * H,), (4 * H,)] + ([(P, H)] if P else [])
    arrays = [rng.standard_normal(s) * scale for s in shapes]
    return arrays + [None] * (5 - len(arrays))


# (T, B, I, H, P, reverse): uneven, T=1 and B=1, a projection, and H >= 256 (every
# thread shares a step)
DROPOUT_SHAPES = [(5, 3, 4, 7, None, False), (1, 1, 2, 5, None, True), (6, 4, 9, 70, 33, True),
                  (4, 5, 6, 260, None, False), (3, 4, 5, 260, 129, True)]


@pytest.mark.parametrize("shape", DROPOUT_SHAPES, ids=lambda s: "T{}B{}I{}H{}P{}-{}".format(*s))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_kernels_with_recurrent_dropout_against_the_reference(rng, shape, dtype):
    T, B, I, H, P, reverse = shape
    cell = _dropout_cell(rng, I, H, P, min(0.5, 2 / np.sqrt(H)))
    Pu = P or H
    x, h0, c0 = (rng.standard_normal(s) for s in ((T, B, I), (B, Pu), (B, H)))
    mask = (rng.random((B, Pu)) >= 0.3) / 0.7
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    y, h, c, cache = lstm_forward_ref(x, *cell[:4], h0, c0, lengths, reverse, w_hr=cell[4],
                                      h_mask=mask)
    dy, dh_n, dc_n = (rng.standard_normal(a.shape) for a in (y, h, c))
    want = dict(zip(("y", "h", "c"), (y, h, c)))
    dx, dh0, dc0, grads = lstm_backward_ref(dy, dh_n, dc_n, cache)
    want.update(dx=dx, dh0=dh0, dc0=dc0, **grads)

    def cast(a):
        return None if a is None else a.astype(dtype)

    packed = pack_lstm_cpu(*map(cast, cell))
    yk, hk, ck, cache_k = lstm_forward_cpu(cast(x), packed, cast(h0), cast(c0), lengths,
                                           reverse, training=True, h_mask=cast(mask))
    dxk, dh0k, dc0k, grads_k = lstm_backward_cpu(cast(dy), cast(dh_n), cast(dc_n), cache_k,
                                                 packed)
    got = dict(y=yk, h=hk, c=ck, dx=dxk, dh0=dh0k, dc0=dc0k, **grads_k)
    assert set(got) == set(want)
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    for k in want:
        assert got[k].dtype == dtype, k
        assert_close(got[k], want[k], rtol if k in "yhc" else 5 * rtol, k)


# -- the projection (proj_size): h = W_hr (o * tanh(c)), P units --------------------------
# (T, B, I, H, P): uneven sizes, T=1 and B=1, and H >= 256, where a step runs on
# every thread (two parallel regions a step: gates, then the projection)
PROJ_SHAPES = [(5, 3, 4, 7, 3), (1, 1, 2, 5, 4), (6, 2, 9, 70, 65), (3, 4, 5, 260, 129)]


# (the float64 path has one loop shape whatever the size: the small shapes cover it)
PROJ_CASES = [(s, np.float32) for s in PROJ_SHAPES] + [
    (s, np.float64) for s in PROJ_SHAPES if s[3] < 100]


@pytest.mark.parametrize("shape,dtype", PROJ_CASES, ids=[
    "T{}B{}I{}H{}P{}-".format(*s) + np.dtype(d).name for s, d in PROJ_CASES])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_projected_cpu_kernels_against_the_reference(rng, shape, dtype, reverse):
    T, B, I, H, P = shape
    # Weights of a trainable size (torch draws them within 1/sqrt(H)): at 0.5 for
    # every H, two products of 65+ terms saturate the gates, and float32's rounding
    # grows with the gain whatever the summation order (5e-6 against 3e-7 at H=70).
    cell = projected_lstm_weights(rng, I, H, P, dtype, scale=min(0.5, 2 / np.sqrt(H)))
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, P)).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype)
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    options = dict(cell_clip=0.8) if T > 4 else {}
    # (the reference runs in float64 on the same numbers: the oracle, not a peer)
    x64, h64, c64, *cell64 = (a.astype(np.float64) for a in (x, h0, c0) + cell)
    y, h, c, cache = lstm_forward_ref(x64, *cell64[:4], h64, c64, lengths, reverse,
                                      w_hr=cell64[4], **options)
    packed = pack_lstm_cpu(*cell, **options)
    yk, hk, ck, cache_k = lstm_forward_cpu(x, packed, h0, c0, lengths, reverse, training=True)
    yi, hi, ci, _ = lstm_forward_cpu(x, packed, h0, c0, lengths, reverse, training=False)
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    for name, got, want in [("y", yk, y), ("h_n", hk, h), ("c_n", ck, c),
                            ("y (inference)", yi, y), ("c_n (inference)", ci, c)]:
        assert got.dtype == dtype, name
        assert_close(got, want, rtol, name)
    dy, dh_n, dc_n = (rng.standard_normal(a.shape) for a in (y, h, c))
    want = dict(zip(("dx", "dh0", "dc0"), lstm_backward_ref(dy, dh_n, dc_n, cache)[:3]))
    want.update(lstm_backward_ref(dy, dh_n, dc_n, cache)[3])
    dxk, dh0k, dc0k, grads_k = lstm_backward_cpu(*(a.astype(dtype) for a in (dy, dh_n, dc_n)),
                                                 cache_k, packed)
    got = dict(dx=dxk, dh0=dh0k, dc0=dc0k, **grads_k)
    assert set(got) == set(want)
    for name in want:
        assert_close(got[name], want[name], 5 * rtol, name)


@pytest.mark.parametrize("H", [5, 16, 37, 96, 128])
def test_products_skip_the_padding(rng, H):
    """The float32 weights keep none of the padding a product would spend time on:
    the recurrent product's K rows are the layer's units (not H padded to a
    multiple of 64), the forward's blocks those that hold units, and the
    backward's products read the gate columns of those blocks only. (The values
    are checked against the reference at such H above: 5, 37.)"""
    from numlstm.kernels.cpu import pack_gru_cpu, pack_rnn_cpu
    from numlstm.kernels.cpu.microkernel import CB
    from helpers import cell_weights
    blocks = -(-H // 16)  # blocks of 16 units, 4 x 16 gate columns each
    lstm = pack_lstm_cpu(*lstm_weights(rng, 3, H, np.float32))
    assert lstm.w_in.shape == (blocks, 3, CB)
    assert lstm.w_fwd.shape == (blocks, H, CB)
    assert lstm.w_bwd.shape == (lstm.Hp // CB, blocks * CB, CB)
    assert lstm.w_dx.shape[1] == blocks * CB
    P = max(1, H // 2)
    w_ih, w_hh, b_ih, b_hh = lstm_weights(rng, 3, H, np.float32)
    proj = pack_lstm_cpu(w_ih, np.ascontiguousarray(w_hh[:, :P]), b_ih, b_hh,
                         w_hr=rng.standard_normal((P, H)).astype(np.float32))
    assert proj.w_fwd.shape[1] == P and proj.w_proj.shape[1] == H
    assert proj.w_proj_bwd.shape[1] == P
    gru = pack_gru_cpu(*cell_weights(rng, 3, H, 3, np.float32))
    rnn = pack_rnn_cpu(*cell_weights(rng, 3, H, 1, np.float32))
    assert gru.w_fwd.shape[1] == H and rnn.w_fwd.shape[1] == H
