"""recurrent_dropout (LSTM and GRU): the mask on h where W_hh reads it, held over time.
The reference against finite differences, and the layer: masks drawn per sequence only
when training, equal to running the reference with the same masks. (The CPU kernels
against the reference, the LSTM with and without a projection and the GRU in both
forms, are in tests/kernels/test_cpu_lstm.py and tests/kernels/test_cpu_gru_rnn.py.)"""
import numpy as np
import pytest

import numlstm
from numlstm.kernels.reference import lstm_forward_ref
from helpers import (assert_close, check_gru_reference_gradients,
                     check_lstm_reference_gradients, lstm_layer_and_reference, lstm_weights,
                     rel_err)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_reference_backward_matches_finite_differences(rng, reverse):
    T, B, I, H = 4, 3, 3, 4
    w_ih, w_hh, b_ih, b_hh = lstm_weights(rng, I, H, np.float64, 0.8)
    inputs = dict(x=rng.standard_normal((T, B, I)), w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                  b_hh=b_hh, h0=rng.standard_normal((B, H)), c0=rng.standard_normal((B, H)))
    mask = (rng.random((B, H)) >= 0.4) / 0.6
    assert (mask == 0).any() and (mask > 0).any()
    check_lstm_reference_gradients(inputs, np.array([4, 1, 3]), reverse, h_mask=mask)


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
