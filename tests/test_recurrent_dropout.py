"""recurrent_dropout (LSTM and GRU): the mask on h where W_hh reads it, held over time.
The reference against finite differences, the CPU kernels against the reference (the
LSTM with and without a projection, the GRU in both forms), and the layer: masks drawn
per sequence only when training, equal to running the reference with the same masks."""
import numpy as np
import pytest

import numlstm
from numlstm.kernels.cpu import (gru_backward_cpu, gru_forward_cpu, lstm_backward_cpu,
                                 lstm_forward_cpu, pack_gru_cpu, pack_lstm_cpu)
from numlstm.kernels.cpu.plan import make_plan
from numlstm.kernels.reference import (gru_backward_ref, gru_forward_ref, lstm_backward_ref,
                                       lstm_forward_ref)
from helpers import (assert_close, check_gru_reference_gradients,
                     check_lstm_reference_gradients, lstm_layer_and_reference, rel_err)


def _cell(rng, I, H, P, scale):
    shapes = [(4 * H, I), (4 * H, P or H), (4 * H,), (4 * H,)] + ([(P, H)] if P else [])
    arrays = [rng.standard_normal(s) * scale for s in shapes]
    return arrays + [None] * (5 - len(arrays))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_reference_backward_matches_finite_differences(rng, reverse):
    T, B, I, H = 4, 3, 3, 4
    w_ih, w_hh, b_ih, b_hh, _ = _cell(rng, I, H, None, 0.8)
    inputs = dict(x=rng.standard_normal((T, B, I)), w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                  b_hh=b_hh, h0=rng.standard_normal((B, H)), c0=rng.standard_normal((B, H)))
    mask = (rng.random((B, H)) >= 0.4) / 0.6
    assert (mask == 0).any() and (mask > 0).any()
    check_lstm_reference_gradients(inputs, np.array([4, 1, 3]), reverse, h_mask=mask)


# (T, B, I, H, P, reverse): uneven, T=1 and B=1, a projection, and H >= 256 (every
# thread shares a step)
SHAPES = [(5, 3, 4, 7, None, False), (1, 1, 2, 5, None, True), (6, 4, 9, 70, 33, True),
          (4, 5, 6, 260, None, False), (3, 4, 5, 260, 129, True)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}P{}-{}".format(*s))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_kernels_against_the_reference(rng, shape, dtype):
    T, B, I, H, P, reverse = shape
    cell = _cell(rng, I, H, P, min(0.5, 2 / np.sqrt(H)))
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


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_layer_draws_one_mask_per_sequence_when_training(rng, backend):
    p = 0.4
    lstm = numlstm.LSTM(3, 5, num_layers=2, bidirectional=True, recurrent_dropout=p,
                        backend=backend, dtype=np.float64, seed=7)
    plain = numlstm.LSTM(3, 5, num_layers=2, bidirectional=True, backend="numpy",
                         dtype=np.float64, seed=7)
    x = rng.standard_normal((6, 4, 3))
    assert_close(lstm(x)[0], plain(x)[0], 1e-12, "inference is the plain layer")
    # The masks the layer draws: one [B,H] per layer and direction, from its dropout
    # generator, in the order it runs them.
    gen = np.random.default_rng()
    gen.bit_generator.state = lstm._drop_rng.bit_generator.state
    masks = [(gen.random((4, 5)) >= p) / (1 - p) for _ in range(4)]
    y, (h, c) = lstm(x, training=True)
    # The same forward by hand, layer by layer, with those masks
    inp, k = x, 0
    for l in range(2):
        outs = []
        for d in range(2):
            suffix = f"_l{l}" + ("_reverse" if d else "")
            cell = [lstm.params[n + suffix] for n in ("weight_ih", "weight_hh", "bias_ih",
                                                      "bias_hh")]
            out, *_ = lstm_forward_ref(inp, *cell, np.zeros((4, 5)), np.zeros((4, 5)),
                                       reverse=d == 1, h_mask=masks[k])
            outs.append(out)
            k += 1
        inp = np.concatenate(outs, axis=2)
    assert_close(y, inp, 1e-12, "y with the layer's masks")
    assert rel_err(y, plain(x)[0]) > 1e-3  # the dropout bites
    dx, _ = lstm.backward(np.ones_like(y))
    assert np.isfinite(dx).all()


def test_options_and_refusals(rng, tmp_path):
    for bad, err in ((1.0, ValueError), (-0.1, ValueError), ("0.2", TypeError)):
        with pytest.raises(err, match="recurrent_dropout"):
            numlstm.LSTM(3, 4, recurrent_dropout=bad)
    with pytest.raises(ValueError, match="recurrent_dropout: the LSTM and the GRU have it"):
        numlstm.RNN(3, 4, recurrent_dropout=0.2)
    lstm = numlstm.LSTM(3, 4, recurrent_dropout=0.25, seed=0)
    assert "recurrent_dropout=0.25" in repr(lstm)
    model = numlstm.Sequential([lstm])
    model.save(tmp_path / "ck")
    assert numlstm.load_checkpoint(tmp_path / "ck").model.layers[0].recurrent_dropout == 0.25


def test_cuda_lstm_trains_with_it_as_the_reference_does(rng):
    """The CUDA LSTM (simulator) draws the same masks as the numpy backend and
    computes the same training step: outputs, states and every gradient."""
    got, want = lstm_layer_and_reference(rng, {"recurrent_dropout": 0.4}, "cuda", np.float32)
    assert sorted(got) == sorted(want)
    for k in want:
        assert_close(got[k], want[k], 2e-5 if k in ("y", "h", "c") else 1e-4, k)


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset-after", "reset-before"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gru_reference_backward_matches_finite_differences(rng, reset_after, reverse):
    T, B, I, H = 4, 3, 3, 4
    w = [rng.standard_normal(s) * 0.8 for s in ((3 * H, I), (3 * H, H), (3 * H,), (3 * H,))]
    inputs = dict(x=rng.standard_normal((T, B, I)), w_ih=w[0], w_hh=w[1], b_ih=w[2],
                  b_hh=w[3], h0=rng.standard_normal((B, H)))
    mask = (rng.random((B, H)) >= 0.4) / 0.6
    check_gru_reference_gradients(inputs, np.array([4, 1, 3]), reverse, reset_after=reset_after,
                                  h_mask=mask)


GRU_SHAPES = [(5, 3, 4, 7, False), (1, 1, 2, 5, True), (6, 4, 9, 70, True),
              (4, 5, 6, 260, False)]


@pytest.mark.parametrize("shape", GRU_SHAPES, ids=lambda s: "T{}B{}I{}H{}-{}".format(*s))
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset-after", "reset-before"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gru_cpu_kernels_against_the_reference(rng, shape, reset_after, dtype):
    _check_gru_kernels(rng, shape, reset_after, dtype)


@pytest.mark.parametrize("rows", [False, True], ids=["units-split", "rows-split"])
def test_gru_parallel_loops_with_a_mask(rng, rows):
    """Both ways of sharing the float32 time loops among threads (the units of a
    step, or the rows of the batch), forced at small shapes."""
    for shape in [(5, 3, 4, 130, False), (4, 11, 3, 64, True), (3, 2, 5, 20, False)]:
        _check_gru_kernels(rng, shape, True, np.float32, dict(threads=2, rows=rows))


def _check_gru_kernels(rng, shape, reset_after, dtype, plan=None):
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


@pytest.mark.parametrize("backend,reset_after", [("cpu", True), ("cpu", False),
                                                 ("cuda", False)],
                         ids=["cpu-reset-after", "cpu-reset-before", "cuda-reset-before"])
def test_gru_layer_matches_numpy_with_the_same_masks(rng, backend, reset_after):
    """Same seed, same masks: the cpu and cuda (simulator) backends' GRU layer against
    the reference's, values and every gradient, stacked and bidirectional with
    lengths. (The cuda kernels' both forms are checked in tests/kernels.)"""
    T, B, H = (7, 4, 6) if backend == "cpu" else (3, 3, 4)

    def make(backend):
        return numlstm.GRU(3, H, num_layers=2, bidirectional=True, recurrent_dropout=0.3,
                           reset_after=reset_after, backend=backend, dtype=np.float64, seed=5)
    x = rng.standard_normal((T, B, 3))
    lengths = np.array([T, 2, 1, T - 1][:B])
    dy = rng.standard_normal((T, B, 2 * H))
    runs = []
    for layer in (make("numpy"), make(backend)):
        y, h = layer(x, training=True, lengths=lengths)
        dx, dh0 = layer.backward(dy)
        runs.append(dict(y=y, h=h, dx=dx, dh0=dh0, **layer.grads))
    assert rel_err(runs[0]["y"], make("numpy")(x, lengths=lengths)[0]) > 1e-3  # it bites
    for k in runs[0]:
        assert_close(runs[1][k], runs[0][k], 1e-12, k)
    if backend == "cuda":  # inference runs the plain kernels
        assert_close(make("cuda")(x)[0], make("numpy")(x)[0], 1e-12, "inference")
