"""The CPU GRU and plain-RNN kernels (gru_*_cpu, rnn_*_cpu) against the NumPy reference,
every option's case in this one file: random and edge shapes, lengths, both GRU forms,
activations, the parallel loops' plans, one step; then the GRU's zoneout, recurrent
dropout and layer normalisation on their own shapes."""
import numpy as np
import pytest

from numlstm.kernels.cpu import (gru_backward_cpu, gru_forward_cpu, pack_gru_cpu,
                                 pack_rnn_cpu, rnn_backward_cpu, rnn_forward_cpu)
from numlstm.kernels.cpu.plan import make_plan
from numlstm.kernels.reference import (gru_backward_ref, gru_forward_ref, rnn_backward_ref,
                                       rnn_forward_ref)
from numlstm.kernels.gates import make_acts
from helpers import (SOFTSIGN, assert_close, assert_kernels_match, cell_weights,
                     layer_norm_gru_case, zoneout_weights)

# float32 kernels use the vectorised exp; float64 ones are libm-exact.
RTOL = {np.float32: 2e-5, np.float64: 1e-12}

# name: (gate blocks, reference, kernels, the cell's option). float32 GRUs with
# reset_after run the tiled kernels, reset_after=False the per-step BLAS path.
GRU = (3, (gru_forward_ref, gru_backward_ref), (pack_gru_cpu, gru_forward_cpu, gru_backward_cpu))
RNN = (1, (rnn_forward_ref, rnn_backward_ref), (pack_rnn_cpu, rnn_forward_cpu, rnn_backward_cpu))
CELLS = {
    "gru": (*GRU, dict(reset_after=True)),
    "gru_reset_before": (*GRU, dict(reset_after=False)),
    # activation and recurrent_activation: the tiled path, and a user's on the BLAS one
    # (the pairs the layers' tests use too: each pair compiles the kernels again)
    "gru_activations": (*GRU, dict(reset_after=True, acts=make_acts("hard_sigmoid", "relu"))),
    "gru_reset_before_user": (*GRU, dict(reset_after=False,
                                         acts=make_acts("sigmoid", SOFTSIGN))),
    "rnn_tanh": (*RNN, dict(nonlinearity="tanh")),
    "rnn_relu": (*RNN, dict(nonlinearity="relu")),
}


def _compare(rng, cell, T, B, I, H, dtype, reverse, lengths, plan=None):
    """The kernels' forward (training and inference) and backward against the
    reference's; plan: None, or the fields of the float32 loops' plan to force
    (plan.Plan's), the rest as make_plan makes it."""
    gates, (forward_ref, backward_ref), (pack, forward, backward), option = CELLS[cell]
    # About torch's initial scale: larger recurrent weights make a plain RNN
    # chaotic, and float32 rounding then grows with every step in any kernel.
    w_ih, w_hh, b_ih, b_hh = cell_weights(rng, I, H, gates, dtype, min(0.5, 1 / np.sqrt(H)))
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    x_in, h0_in = x.copy(), h0.copy()
    y, h, cache = forward_ref(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, **option)
    packed = pack(w_ih, w_hh, b_ih, b_hh, **option)
    kw = {}
    if plan is not None:
        assert packed.kind == "tiled"  # (the BLAS loops plan each step themselves)
        kw["plan"] = make_plan(T, B, I, packed.Hp, gates, True)._replace(**plan)
    yk, hk, cache_k = forward(x, packed, h0, lengths, reverse, training=True, **kw)
    yi, hi, none = forward(x, packed, h0, lengths, reverse, training=False, **kw)
    assert none is None
    rtol = RTOL[dtype]
    for name, got, want in [("y", yk, y), ("h_n", hk, h), ("y (inference)", yi, y),
                            ("h_n (inference)", hi, h)]:
        assert got.dtype == dtype, name
        assert_close(got, want, rtol, name)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dh_n = rng.standard_normal(h.shape).astype(dtype)
    dx, dh0, grads = backward_ref(dy, dh_n, cache)
    dxk, dh0k, grads_k = backward(dy, dh_n, cache_k, packed)
    assert set(grads_k) == {"w_ih", "w_hh", "b_ih", "b_hh"}
    for name, got, want in [("dx", dxk, dx), ("dh0", dh0k, dh0)] + [
            (k, grads_k[k], grads[k]) for k in ("w_ih", "w_hh", "b_ih", "b_hh")]:
        assert got.dtype == dtype, name
        assert_close(got, want, 5 * rtol, name)
    np.testing.assert_array_equal(x, x_in)
    np.testing.assert_array_equal(h0, h0_in)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_cpu_kernels_match_reference_at_random_shapes(rng, cell, dtype, reverse):
    for _ in range(3):
        T, B, I, H = rng.integers(1, 9), rng.integers(1, 6), rng.integers(1, 12), \
            rng.integers(1, 20)
        _compare(rng, cell, T, B, I, H, dtype, reverse, None)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (6, 1, 5, 7), (1, 1, 1, 1), (7, 3, 2, 70)],
                         ids=["T1", "B1", "all1", "uneven"])
def test_cpu_kernels_match_reference_at_edge_shapes(rng, cell, dtype, shape):
    """"uneven": H = 70 pads to two blocks of 64 units."""
    for reverse in (False, True):
        _compare(rng, cell, *shape, dtype, reverse, None)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_cpu_kernels_match_reference_with_lengths(rng, cell, dtype, reverse):
    T, B, I, H = 7, 5, 3, 6
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    _compare(rng, cell, T, B, I, H, dtype, reverse, lengths)
    _compare(rng, cell, T, B, I, H, dtype, reverse, np.array([0, 7, 1, 3, 0]))


@pytest.mark.parametrize("cell, rows", [("gru", False), ("gru", True), ("gru_activations", True),
                                        ("rnn_tanh", False), ("rnn_relu", False)],
                         ids=["gru", "gru-rows-split", "gru-activations-rows-split",
                              "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_parallel_step_matches_reference(rng, cell, reverse, rows):
    """Force the parallel time loops at small shapes: a region per step sharing
    out the units (unit blocks shared unevenly, padded units (H=130 -> 192),
    row remainders outside the 6-row tiles), or (GRU) the rows of the batch."""
    plan = dict(threads=2, rows=rows)
    for T, B, I, H in [(5, 5, 3, 130), (3, 11, 4, 128), (2, 15, 3, 64)]:
        lengths = rng.integers(0, T + 1, B)
        _compare(rng, cell, T, B, I, H, np.float32, reverse, lengths, plan)
        _compare(rng, cell, T, B, I, H, np.float32, reverse, None, plan)


@pytest.mark.parametrize("cell", ["gru", "rnn_relu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_inference_in_chunks_of_steps_matches_reference(rng, cell, reverse):
    """Inference projects a few steps at a time; chunks of 1, 2 and 3 steps (odd
    and even, a short last chunk) carry the state across their boundaries."""
    T, B, I, H = 7, 3, 4, 20
    for steps in (1, 2, 3):
        _compare(rng, cell, T, B, I, H, np.float32, reverse, np.array([7, 2, 5]),
                 dict(chunk=steps))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gru_packs_to_the_documented_paths(rng, dtype):
    weights = cell_weights(rng, 3, 5, 3, dtype)
    assert pack_gru_cpu(*weights).kind == ("tiled" if dtype == np.float32 else "blas")
    assert pack_gru_cpu(*weights, reset_after=False).kind == "blas"
    assert pack_rnn_cpu(*cell_weights(rng, 3, 5, 1, dtype)).kind == \
        ("tiled" if dtype == np.float32 else "blas")


def test_rnn_rejects_an_unknown_nonlinearity(rng):
    with pytest.raises(ValueError, match="'gelu'"):
        pack_rnn_cpu(*cell_weights(rng, 3, 5, 1, np.float32), nonlinearity="gelu")


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_step_kernel_matches_reference(rng, cell, dtype):
    """The step kernel against the reference; and forward_into on one step, which
    the step kernel takes where it runs (the tiled float32 cells; the others
    decline and write nothing)."""
    from numlstm.kernels.cpu import KERNELS, gru_step_cpu, rnn_step_cpu
    gates, (forward_ref, _), (pack, _, _), option = CELLS[cell]
    step = gru_step_cpu if gates == 3 else rnn_step_cpu
    into = KERNELS["gru" if gates == 3 else "rnn"].forward_into
    # (reset_after=False is the GRU's BLAS path; float64 is every cell's)
    tiled = dtype == np.float32 and option.get("reset_after", True)
    for B, I, H in [(1, 1, 1), (1, 64, 64), (3, 5, 70), (7, 2, 128)]:
        cell_w = cell_weights(rng, I, H, gates, dtype, min(0.5, 1 / np.sqrt(H)))
        x = rng.standard_normal((1, B, I)).astype(dtype)
        h0 = rng.standard_normal((B, H)).astype(dtype)
        kept = h0.copy()
        _, h, _ = forward_ref(x, *cell_w, h0, **option)
        packed = pack(*cell_w, **option)
        got = step(x[0], packed, h0)
        assert got.dtype == dtype
        assert_close(got, h, RTOL[dtype], f"h (B={B}, I={I}, H={H})")
        y, h_out = np.full((1, B, H), np.nan, dtype), np.full((B, H), np.nan, dtype)
        assert into(x, packed, h0, y, h_out) == tiled
        np.testing.assert_array_equal(y[0], got if tiled else np.nan)
        np.testing.assert_array_equal(h_out, got if tiled else np.nan)
        np.testing.assert_array_equal(h0, kept)


@pytest.mark.parametrize("cell", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("chunk_bytes", [1, 4 << 20], ids=["chunks-of-one-step", "one-chunk"])
def test_forward_into_is_the_forward_bit_for_bit(rng, monkeypatch, cell, chunk_bytes):
    """forward_into (one thread, from Python) against the forward kernel's time loop
    at uneven shapes, T=1 and B=1, the input product in chunks of one step or all at once;
    and against the reference."""
    from numlstm.kernels.cpu import KERNELS, plan
    monkeypatch.setattr(plan, "INFERENCE_CHUNK_BYTES", chunk_bytes)
    gates, (forward_ref, _), (pack, forward, _), option = CELLS[cell]
    for T, B, I, H in [(6, 3, 4, 37), (1, 1, 2, 3), (9, 1, 5, 70), (3, 2, 3, 16)]:
        cell_w = cell_weights(rng, I, H, gates, np.float32, min(0.5, 1 / np.sqrt(H)))
        x = rng.standard_normal((T, B, I)).astype(np.float32)
        h0 = rng.standard_normal((B, H)).astype(np.float32)
        packed = pack(*cell_w, **option)
        y, h = np.empty((T, B, H), np.float32), np.empty((B, H), np.float32)
        assert KERNELS["gru" if gates == 3 else "rnn"].forward_into(x, packed, h0, y, h)
        want = forward(x, packed, h0, lengths=np.full(B, T))  # (lengths: the time loop)
        np.testing.assert_array_equal(y, want[0])
        np.testing.assert_array_equal(h, want[1])
        ref = forward_ref(x, *cell_w, h0, **option)
        assert_close(y, ref[0], RTOL[np.float32], "y")


def test_gru_split_step_is_the_one_thread_step_bit_for_bit(rng, monkeypatch):
    """gru_tiled.step_split (a streamed step's unit blocks shared among P threads, as
    the LSTM's) against steps_state bitwise at uneven shapes, B=1 and H=1, H past one
    block, for P = 1, 2, 3 (at H=1, more threads than blocks) and a hold on the
    gate; and forward_into, where plan.step_splits says (here forced), takes it:
    the same h, and one region counted with two threads. (One pair of activations: the gate math is
    _fwd_step's, which the other tests run with each pair; another pair compiles
    the split step again, some 10 s.)"""
    from numlstm.kernels.cpu import KERNELS, plan, threads
    from numlstm.kernels.cpu.gru_tiled import step_split, steps_state
    from numlstm.kernels.cpu.sequence import NO_MASK, NO_ZONE
    gates, (forward_ref, _), (pack, _, _), option = CELLS["gru"]
    no_zone = NO_ZONE[np.dtype(np.float32)][0]
    for B, I, H in [(1, 1, 1), (3, 5, 70), (2, 7, 130)]:
        cell_w = cell_weights(rng, I, H, gates, np.float32, min(0.5, 1 / np.sqrt(H)))
        x = rng.standard_normal((B, I)).astype(np.float32)
        h0 = rng.standard_normal((B, H)).astype(np.float32)
        kept = x.copy(), h0.copy()
        p = pack(*cell_w, **option)
        weights = p.w_in, p.b_in, p.w_fwd, p.b_rec
        y, h1 = np.empty((1, B, H), np.float32), np.empty((B, H), np.float32)
        steps_state(x[None], *weights, h0, y, h1, p.Hp, 1, NO_MASK, p.acts, no_zone)
        assert_close(h1, forward_ref(x[None], *cell_w, h0, **option)[1], RTOL[np.float32], "h")
        for P, hold in [(1, False), (2, False), (3, False), (2, True)]:
            gate = threads.new_gate()
            if hold:
                gate[threads.SERIAL_UNTIL] = np.iinfo(np.int64).max
            h2 = np.full((B, H), np.nan, np.float32)
            step_split(x, *weights, h0, h2, p.Hp, P, NO_MASK, p.acts, no_zone, gate)
            np.testing.assert_array_equal(h2, h1, err_msg=f"P={P}, hold={hold}")
            assert gate[threads.REGIONS] == (0 if P == 1 or hold else 1)
        for a, b in zip((x, h0), kept):
            np.testing.assert_array_equal(a, b)
        monkeypatch.setattr(plan, "STEP_SPLIT_MIN_FLOPS", 0)
        gate = threads.POLICY.gate()
        gate[threads.SERIAL_UNTIL] = gate[threads.HOLD] = 0
        before, many = gate[threads.REGIONS], threads.POLICY.call_threads() > 1
        y, h3 = np.empty((1, B, H), np.float32), np.empty((B, H), np.float32)
        assert KERNELS["gru"].forward_into(x[None], p, h0, y, h3)
        assert gate[threads.REGIONS] - before == (1 if many else 0)
        gate[threads.SERIAL_UNTIL] = gate[threads.HOLD] = 0
        np.testing.assert_array_equal(h3, h1)
        np.testing.assert_array_equal(y[0], h1)
        monkeypatch.undo()


# -- the GRU's zoneout: h' <- h' + zh (h - h'), with recurrent dropout --------------------
# (T, B, I, H, reverse): uneven, T=1 and B=1, H=1 (unpadded on the blas path), H past one
# tile block (64 units)
ZONEOUT_GRU_SHAPES = [(5, 3, 4, 7, False), (1, 1, 2, 5, True), (4, 2, 3, 1, True),
                      (6, 4, 9, 70, True)]


def _check_gru_zoneout_kernels(rng, shape, reset_after, training, dtype, plan=None):
    """plan: None, or the fields of the float32 loops' plan to force."""
    T, B, I, H, reverse = shape
    cell = cell_weights(rng, I, H, 3, np.float64, min(0.5, 2 / np.sqrt(H)))
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
    zone_h = zoneout_weights(rng, T, B, H, training, (0.35,))[0]
    mask = (rng.random((B, H)) >= 0.3) / 0.7
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    y, h, cache = gru_forward_ref(x, *cell, h0, lengths, reverse, reset_after, h_mask=mask,
                                  zone_h=zone_h)
    dy, dh_n = rng.standard_normal(y.shape), rng.standard_normal(h.shape)
    dx, dh0, grads = gru_backward_ref(dy, dh_n, cache)
    want = dict(y=y, h=h, dx=dx, dh0=dh0, **grads)
    packed = pack_gru_cpu(*(a.astype(dtype) for a in cell), reset_after=reset_after)
    args = (x.astype(dtype), packed, h0.astype(dtype), lengths, reverse)
    options = dict(h_mask=mask.astype(dtype), zone_h=zone_h.astype(dtype))
    if plan is not None:
        options["plan"] = make_plan(T, B, I, packed.Hp, 3, True)._replace(**plan)
    yk, hk, cache_k = gru_forward_cpu(*args, training=True, **options)
    yi, hi, _ = gru_forward_cpu(*args, training=False, **options)
    dxk, dh0k, grads_k = gru_backward_cpu(dy.astype(dtype), dh_n.astype(dtype), cache_k,
                                          packed)
    got = dict(y=yk, h=hk, dx=dxk, dh0=dh0k, **grads_k)
    assert_kernels_match(got, want, dict(y=(yi, y), h_n=(hi, h)),
                         2e-5 if dtype == np.float32 else 1e-12, dtype)


@pytest.mark.parametrize("shape", ZONEOUT_GRU_SHAPES, ids=lambda s: "T{}B{}I{}H{}-{}".format(*s))
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset-after", "reset-before"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gru_cpu_kernels_with_zoneout_against_the_reference(rng, shape, reset_after, training,
                                                             dtype):
    _check_gru_zoneout_kernels(rng, shape, reset_after, training, dtype)


@pytest.mark.parametrize("rows", [False, True], ids=["units-split", "rows-split"])
def test_gru_parallel_loops_with_zoneout(rng, rows):
    """Both ways of sharing the float32 time loops among threads (the units of a
    step, or the rows of the batch), forced at small shapes."""
    for shape in [(5, 3, 4, 130, False), (4, 11, 3, 64, True)]:
        _check_gru_zoneout_kernels(rng, shape, True, True, np.float32, dict(threads=2, rows=rows))


# -- the GRU's recurrent dropout: the mask on h where W_hh reads it -----------------------
# (T, B, I, H, reverse): uneven, T=1 and B=1, H past one tile block, H >= 256
DROPOUT_GRU_SHAPES = [(5, 3, 4, 7, False), (1, 1, 2, 5, True), (6, 4, 9, 70, True),
                      (4, 5, 6, 260, False)]


@pytest.mark.parametrize("shape", DROPOUT_GRU_SHAPES, ids=lambda s: "T{}B{}I{}H{}-{}".format(*s))
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset-after", "reset-before"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gru_cpu_kernels_with_recurrent_dropout_against_the_reference(rng, shape, reset_after,
                                                                       dtype):
    _check_gru_dropout_kernels(rng, shape, reset_after, dtype)


@pytest.mark.parametrize("rows", [False, True], ids=["units-split", "rows-split"])
def test_gru_parallel_loops_with_a_mask(rng, rows):
    """Both ways of sharing the float32 time loops among threads (the units of a
    step, or the rows of the batch), forced at small shapes."""
    for shape in [(5, 3, 4, 130, False), (4, 11, 3, 64, True), (3, 2, 5, 20, False)]:
        _check_gru_dropout_kernels(rng, shape, True, np.float32, dict(threads=2, rows=rows))


def _check_gru_dropout_kernels(rng, shape, reset_after, dtype, plan=None):
    """plan: None, or the fields of the float32 loops' plan to force."""
    T, B, I, H, reverse = shape
    scale = min(0.5, 2 / np.sqrt(H))
    w = [rng.standard_normal(s) * scale for s in ((3 * H, I), (3 * H, H), (3 * H,), (3 * H,))]
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
    mask = (rng.random((B, H)) >= 0.3) / 0.7
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    y, h, cache = gru_forward_ref(x, *w, h0, lengths, reverse, reset_after, h_mask=mask)
    dy, dh_n = rng.standard_normal(y.shape), rng.standard_normal(h.shape)
    dx, dh0, grads = gru_backward_ref(dy, dh_n, cache)
    want = dict(y=y, h=h, dx=dx, dh0=dh0, **grads)
    packed = pack_gru_cpu(*(a.astype(dtype) for a in w), reset_after=reset_after)
    kw = {} if plan is None else dict(
        plan=make_plan(T, B, I, packed.Hp, 3, True)._replace(**plan))
    yk, hk, cache_k = gru_forward_cpu(x.astype(dtype), packed, h0.astype(dtype), lengths,
                                      reverse, training=True, h_mask=mask.astype(dtype), **kw)
    dxk, dh0k, grads_k = gru_backward_cpu(dy.astype(dtype), dh_n.astype(dtype), cache_k,
                                          packed)
    got = dict(y=yk, h=hk, dx=dxk, dh0=dh0k, **grads_k)
    assert set(got) == set(want)
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    for k in want:
        assert got[k].dtype == dtype, k
        assert_close(got[k], want[k], rtol if k in "yh" else 5 * rtol, k)


# -- the layer-normalised GRU (reset_after), with zoneout and dropout or not --------------
# (T, B, I, H, reverse): uneven, T=1 and B=1, H=1, H past a tile block (64 units)
LAYER_NORM_GRU_SHAPES = [(5, 3, 4, 7, False), (1, 1, 2, 5, True), (4, 2, 3, 1, True),
                         (6, 4, 9, 70, True)]


@pytest.mark.parametrize("shape", LAYER_NORM_GRU_SHAPES,
                         ids=lambda s: "T{}B{}I{}H{}-{}".format(*s))
@pytest.mark.parametrize("zoned", [False, True], ids=["plain", "zoneout-dropout"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gru_cpu_kernels_with_layer_norm_against_the_reference(rng, shape, zoned, dtype):
    T, B, I, H, reverse = shape
    cell, norms, x, h0, mask, zone_h, lengths = layer_norm_gru_case(rng, T, B, I, H, zoned)
    options = dict(h_mask=mask, zone_h=zone_h) if zoned else {}
    y, h, cache = gru_forward_ref(x, *cell, h0, lengths, reverse, **options, **norms)
    dy, dh_n = rng.standard_normal(y.shape), rng.standard_normal(h.shape)
    dx, dh0, grads = gru_backward_ref(dy, dh_n, cache)
    want = dict(y=y, h=h, dx=dx, dh0=dh0, **grads)

    def cast(a):
        return None if a is None else a.astype(dtype)
    packed = pack_gru_cpu(*map(cast, cell), **{k: cast(v) for k, v in norms.items()})
    args = (cast(x), packed, cast(h0), lengths, reverse)
    options = {k: cast(v) for k, v in options.items()}
    yk, hk, cache_k = gru_forward_cpu(*args, training=True, **options)
    dxk, dh0k, grads_k = gru_backward_cpu(cast(dy), cast(dh_n), cache_k, packed)
    got = dict(y=yk, h=hk, dx=dxk, dh0=dh0k, **grads_k)
    assert sorted(got) == sorted(want)
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    # inference (zoneout's rate, when zoned, is the layer's test in tests/test_layer_norm.py)
    if not zoned:
        assert_close(gru_forward_cpu(*args)[0], y, rtol, "y (inference)")
    for k in want:
        assert got[k].dtype == dtype, k
        assert_close(got[k], want[k], rtol if k in "yh" else 20 * rtol, k)
