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
