"""Keras 3 (JAX backend, CPU) layers and numlstm layers with the same weights compute
the same outputs, in both directions of the move: export_weights("keras") into
set_weights(), and get_weights() into load_weights(..., "keras")."""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import numlstm  # noqa: E402
from helpers import assert_close  # noqa: E402

TOL = 2e-6  # float32, relative to the largest output

CELLS = {
    "lstm": (numlstm.LSTM, keras.layers.LSTM, {}, {}),
    "gru": (numlstm.GRU, keras.layers.GRU, {}, {"reset_after": True}),
    "gru-reset-before": (numlstm.GRU, keras.layers.GRU, {"reset_after": False},
                         {"reset_after": False}),
    "rnn-tanh": (numlstm.RNN, keras.layers.SimpleRNN, {}, {}),
    "rnn-relu": (numlstm.RNN, keras.layers.SimpleRNN, {"nonlinearity": "relu"},
                 {"activation": "relu"}),
}


def _keras_layer(kind, H, bidirectional=False, merge_mode="concat", **options):
    _, cls, _, kopts = CELLS[kind]
    layer = cls(H, **kopts, **options)
    return keras.layers.Bidirectional(layer, merge_mode=merge_mode) if bidirectional \
        else layer


def _numlstm_layer(kind, I, H, **options):
    cls, _, opts, _ = CELLS[kind]
    return cls(I, H, batch_first=True, **opts, **options)


def _split(out, kind, bidirectional, merge_mode):
    """Keras's (return_state=True) outputs -> (list of y, list of final h per direction)."""
    out = [np.asarray(o) for o in out]
    ny = 2 if merge_mode is None else 1
    ys, states = out[:ny], out[ny:]
    per_dir = 2 if kind == "lstm" else 1
    return ys, states[::per_dir]


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("bidirectional,merge_mode", [(False, "concat"), (True, "concat"),
                                                      (True, "sum"), (True, None)])
def test_keras_weights_into_numlstm(rng, kind, bidirectional, merge_mode):
    B, T, I, H = 3, 7, 4, 5
    theirs = _keras_layer(kind, H, bidirectional, merge_mode, return_sequences=True,
                          return_state=True)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    mask = np.arange(T)[None, :] < np.array([7, 2, 5])[:, None]
    theirs(x)  # builds the weights
    ours = _numlstm_layer(kind, I, H, bidirectional=bidirectional, merge_mode=merge_mode)
    ours.load_weights(theirs.get_weights(), "keras")
    for m in (None, mask):
        ys, hs = _split(theirs(x, mask=m), kind, bidirectional, merge_mode)
        y, state = ours(x, mask=m)
        h_n = state[0] if kind == "lstm" else state
        valid = np.ones((B, T, 1)) if m is None else m[..., None]
        for a, b in zip(ys, y if merge_mode is None else [y]):
            # Past a sequence's end numlstm writes zeros (as torch does, and Keras's
            # Bidirectional); a one-direction Keras layer repeats the last valid output.
            assert_close(b * valid, a * valid, TOL, f"y, mask={m is not None}")
            assert not np.any(b * (1 - valid))
        for d, h in enumerate(hs):
            assert_close(h_n[d], h, TOL, f"h_n direction {d}")


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_numlstm_weights_into_keras(rng, kind):
    """Two stacked bidirectional layers into two Keras Bidirectional layers."""
    B, T, I, H = 2, 6, 3, 4
    ours = _numlstm_layer(kind, I, H, num_layers=2, bidirectional=True, seed=1)
    model = keras.Sequential([keras.Input((None, I)),
                              _keras_layer(kind, H, True, return_sequences=True),
                              _keras_layer(kind, H, True, return_sequences=True)])
    for keras_layer, weights in zip(model.layers, ours.export_weights("keras")):
        keras_layer.set_weights(weights)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    assert_close(np.asarray(model(x)), ours(x)[0], TOL, "y")
    # and back: Keras's get_weights() lists load into a fresh layer
    again = _numlstm_layer(kind, I, H, num_layers=2, bidirectional=True)
    again.load_weights([layer.get_weights() for layer in model.layers], "keras")
    # (bitwise but for the one-bias layouts, where b_ih + b_hh is rounded once)
    assert_close(again(x)[0], ours(x)[0], 1e-6, "round trip")


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru-reset-before"])
@pytest.mark.parametrize("merge_mode", ["concat", "ave", "mul"])
def test_last_output_in_a_model(rng, kind, merge_mode):
    """return_sequences=False: Keras's Bidirectional returns the forward direction at
    the last valid step and the backward direction after the whole sequence."""
    B, T, I, H = 4, 5, 3, 4
    theirs = _keras_layer(kind, H, True, merge_mode)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    lengths = np.array([5, 1, 3, 4])
    mask = np.arange(T)[None, :] < lengths[:, None]
    theirs(x)
    ours = _numlstm_layer(kind, I, H, bidirectional=True, merge_mode=merge_mode,
                          return_sequences=False)
    ours.load_weights(theirs.get_weights(), "keras")
    model = numlstm.Sequential([ours])
    assert_close(model.predict(x), np.asarray(theirs(x)), TOL, "no mask")
    assert_close(model.predict(x, lengths=lengths), np.asarray(theirs(x, mask=mask)), TOL,
                 "mask")


# -- ConvLSTM2D / ConvLSTM1D --------------------------------------------------------------
CONV_TOL = 1e-5  # float32, relative to the largest output

CONV_CASES = {  # (rank, grid, I, F, kernel, options shared by both layers)
    "2d-same-3x3": (2, (5, 6), 2, 4, (3, 3), dict(padding="same")),
    "2d-valid-strided": (2, (7, 6), 3, 3, (3, 2), dict(padding="valid", strides=(2, 1))),
    "2d-same-strided-even": (2, (6, 7), 2, 5, (2, 2), dict(padding="same", strides=(2, 3))),
    "2d-valid-dilated": (2, (7, 7), 1, 3, (3, 3), dict(padding="valid",
                                                       dilation_rate=(2, 1))),
    "2d-same-dilated-even": (2, (5, 6), 2, 17, (2, 4), dict(padding="same",
                                                            dilation_rate=(1, 2))),
    "1d-same": (1, (9,), 3, 4, 3, dict(padding="same")),
    "1d-valid-strided-even": (1, (9,), 2, 3, 4, dict(padding="valid", strides=2)),
    "1d-same-dilated-even": (1, (8,), 2, 2, 2, dict(padding="same", dilation_rate=3)),
}


def _conv_pair(rank, I, F, kernel, options, **ours):
    keras_cls = keras.layers.ConvLSTM2D if rank == 2 else keras.layers.ConvLSTM1D
    numlstm_cls = numlstm.ConvLSTM2D if rank == 2 else numlstm.ConvLSTM1D
    return (keras_cls(F, kernel, return_sequences=True, return_state=True, **options),
            numlstm_cls(I, F, kernel, batch_first=True, **options, **ours))


def _check_conv_outputs(theirs, ours, x, what):
    y_k, h_k, c_k = (np.asarray(o) for o in theirs(x))
    y, (h, c) = ours(x)
    assert_close(y, y_k, CONV_TOL, f"y, {what}")
    assert_close(h, h_k, CONV_TOL, f"h_n, {what}")
    assert_close(c, c_k, CONV_TOL, f"c_n, {what}")
    assert np.abs(y[:, 0] - y[:, -1]).max() > 1e-3  # (the steps differ)
    return h_k


@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_keras_convlstm_weights_into_numlstm(rng, case):
    rank, grid, I, F, kernel, options = case
    theirs, ours = _conv_pair(rank, I, F, kernel, options)
    x = rng.standard_normal((3, 4) + grid + (I,)).astype(np.float32)
    theirs.build(x.shape)  # then random weights, the bias included
    theirs.set_weights([(rng.standard_normal(w.shape) * 0.4).astype(np.float32)
                        for w in theirs.get_weights()])
    ours.load_weights(theirs.get_weights(), "keras")
    _check_conv_outputs(theirs, ours, x, "keras -> numlstm")


@pytest.mark.parametrize("name", ["2d-same-3x3", "2d-same-strided-even", "2d-valid-dilated",
                                  "1d-valid-strided-even"])
def test_numlstm_convlstm_weights_into_keras(rng, name):
    """(A few of the cases: each Keras call costs seconds of tracing.)"""
    rank, grid, I, F, kernel, options = CONV_CASES[name]
    theirs, ours = _conv_pair(rank, I, F, kernel, options, seed=2)
    ours.load_weights(dict(ours.params, bias=rng.standard_normal(4 * F) * 0.5))
    x = rng.standard_normal((2, 5) + grid + (I,)).astype(np.float32)
    theirs.build(x.shape)
    theirs.set_weights(ours.export_weights("keras"))
    h_k = _check_conv_outputs(theirs, ours, x, "numlstm -> keras")
    # a model's last output (return_sequences=False) is Keras's last h
    ours.return_sequences = False
    assert_close(numlstm.Sequential([ours]).predict(x), h_k, CONV_TOL, "last output")


def _orthonormal(m):
    """Whether m has orthonormal columns (tall) or rows (wide)."""
    g = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    return np.abs(g - np.eye(len(g))).max() < 1e-5


@pytest.mark.parametrize("rank,I,F,kernel", [(2, 2, 3, (3, 3)), (2, 8, 4, (1, 1)),
                                             (2, 3, 4, (2, 2)), (1, 4, 5, 2), (1, 4, 4, 3)])
def test_convlstm_initial_weights_are_keras_like(rng, rank, I, F, kernel):
    """As Keras draws them: a glorot-uniform kernel, an orthogonal recurrent kernel as the
    [kh*kw*F, 4F] matrix, the bias zero but the forget gate's one."""
    theirs, ours = _conv_pair(rank, I, F, kernel, {}, seed=int(rng.integers(1 << 30)))
    theirs.build((1, 1) + (8,) * rank + (I,))
    k_keras, r_keras, b_keras = theirs.get_weights()
    k_ours, r_ours, b_ours = ours.export_weights("keras")
    assert [w.shape for w in (k_ours, r_ours, b_ours)] == \
        [w.shape for w in (k_keras, r_keras, b_keras)]
    np.testing.assert_array_equal(b_ours, b_keras)
    for name, r in (("keras", r_keras), ("numlstm", r_ours)):
        assert _orthonormal(r.reshape(-1, 4 * F)), f"{name}: recurrent kernel not orthogonal"
    area = int(np.prod(k_ours.shape[:-2]))
    limit = np.sqrt(6 / (area * I + area * 4 * F))  # glorot_uniform's bound
    assert np.abs(k_ours).max() <= limit
    assert 0.8 < k_ours.std() / k_keras.std() < 1.25
    assert abs(k_ours.mean()) < 0.4 * k_ours.std()
    # and a different seed draws different weights
    other = _conv_pair(rank, I, F, kernel, {}, seed=int(rng.integers(1 << 30)))[1]
    assert not np.array_equal(other.export_weights("keras")[1], r_ours)
