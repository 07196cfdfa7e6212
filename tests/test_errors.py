"""Bad input is refused with a clear error before any kernel runs, and changes nothing."""
import numpy as np
import pytest

import numlstm


@pytest.fixture
def lstm():
    return numlstm.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)


X = np.zeros((5, 2, 3), np.float32)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(hidden_size=0), ValueError, "hidden_size: expected an integer >= 1, got 0"),
    (dict(hidden_size=2.5), TypeError, "hidden_size: expected an integer"),
    (dict(num_layers=0), ValueError, "num_layers: expected an integer >= 1, got 0"),
    (dict(input_size=-1), ValueError, "input_size"),
    (dict(dropout=1.0), ValueError, r"dropout: expected a probability in \[0, 1\), got 1.0"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(dropout="0.5"), TypeError, "dropout"),
    (dict(backend="tpu"), ValueError, "unknown backend 'tpu'; expected one of"),
    (dict(dtype=np.int32), TypeError, "dtype: expected float32 or float64, got int32"),
])
def test_bad_construction(kwargs, error, match):
    args = dict(input_size=3, hidden_size=4) | kwargs
    with pytest.raises(error, match=match):
        numlstm.LSTM(**args)


@pytest.mark.parametrize("x,state,lengths,error,match", [
    (np.zeros((5, 2)), None, None, ValueError, r"expected 3 input features .* got 2"),
    (np.zeros((2, 5, 2, 3)), None, None, ValueError, "expected rank 3"),
    (np.zeros(3), None, None, ValueError, "expected rank 3"),
    (np.zeros((5, 2, 4)), None, None, ValueError, r"expected 3 input features .* got 4"),
    (np.zeros((0, 2, 3)), None, None, ValueError, "at least one step"),
    (np.array([["a"] * 3] * 5), None, None, TypeError, "x: expected a real numeric array"),
    (X, (np.zeros((4, 2, 4)),), None, ValueError, r"state: expected a pair \(h, c\)"),
    (X, (np.zeros((4, 2, 4)), None), None, ValueError, "expected both h0 and c0"),
    (X, (np.zeros((2, 2, 4)), np.zeros((4, 2, 4))), None, ValueError,
     r"h0: expected shape \(4, 2, 4\), got \(2, 2, 4\)"),
    (X, (np.zeros((4, 2, 4)), np.zeros((4, 3, 4))), None, ValueError, "c0: expected shape"),
    (X, (np.zeros((4, 2, 4)), np.zeros((4, 2, 4), complex)), None, TypeError, "c0"),
    (X, None, [5], ValueError, r"lengths: expected shape \(2,\)"),
    (X, None, [5, 6], ValueError, r"lengths: expected values in \[1, 5\]"),
    (X, None, [0, 2], ValueError, r"lengths: expected values in \[1, 5\]"),
    (X, None, [2.0, 3.0], TypeError, "lengths: expected integers"),
    (np.zeros((5, 3)), None, [5], ValueError, "only batched input"),
])
def test_bad_call(lstm, x, state, lengths, error, match):
    with pytest.raises(error, match=match):
        lstm(x, state, lengths=lengths)


def test_backward_before_any_forward(lstm):
    with pytest.raises(RuntimeError, match="no forward has run"):
        lstm.backward(np.zeros((5, 2, 8)))


def test_backward_after_inference_forward(lstm):
    lstm(X)
    with pytest.raises(RuntimeError, match="training=False"):
        lstm.backward(np.zeros((5, 2, 8)))


def test_backward_twice(lstm):
    y, _ = lstm(X, training=True)
    lstm.backward(np.zeros_like(y))
    with pytest.raises(RuntimeError, match="already consumed"):
        lstm.backward(np.zeros_like(y))


@pytest.mark.parametrize("dy,dstate,match", [
    (np.zeros((5, 2, 4)), None, r"dy: expected the shape of y, \(5, 2, 8\), got \(5, 2, 4\)"),
    (np.zeros((2, 5, 8)), None, "dy: expected the shape of y"),
    (np.zeros((5, 2, 8)), (np.zeros((4, 2, 3)), None), "dh_n: expected shape"),
    (np.zeros((5, 2, 8)), np.zeros((4, 2, 4)), "dstate: expected a pair"),
])
def test_bad_backward_keeps_the_cache(lstm, dy, dstate, match):
    y, _ = lstm(X, training=True)
    before = {k: g.copy() for k, g in lstm.grads.items()}
    with pytest.raises(ValueError, match=match):
        lstm.backward(dy, dstate)
    assert all((lstm.grads[k] == before[k]).all() for k in before)
    lstm.backward(np.zeros_like(y))  # the forward's activations are still there


@pytest.mark.parametrize("layout,mutate,error,match", [
    ("torch", lambda w: w.pop("bias_hh_l1_reverse"), ValueError,
     r"missing \['bias_hh_l1_reverse'\]"),
    ("torch", lambda w: w.__setitem__("weight_ih_l2", np.zeros((16, 3))), ValueError,
     r"unexpected \['weight_ih_l2'\]"),
    ("torch", lambda w: w.__setitem__("weight_hh_l0", np.zeros((16, 5))), ValueError,
     r"weight_hh_l0: expected shape \(16, 4\), got \(16, 5\)"),
    ("torch", lambda w: w.__setitem__("bias_ih_l0", np.array(["x"] * 16)), TypeError,
     "bias_ih_l0: expected a real numeric array"),
    ("keras", lambda w: w.pop(), ValueError, "expected 2 layer entries, got 1"),
    ("keras", lambda w: w[1].pop(), ValueError, "expected 6 arrays"),
    ("keras", lambda w: w[0].__setitem__(0, np.zeros((16, 3))), ValueError,
     r"keras layer 0 direction 0 array 0: expected shape \(3, 16\)"),
    ("onnx", lambda w: w[0].pop("B"), ValueError, "expected a dict with keys 'W', 'R', 'B'"),
    ("onnx", lambda w: w[1].__setitem__("R", np.zeros((1, 16, 4))), ValueError,
     "num_directions=2"),
])
def test_bad_load_changes_nothing(lstm, layout, mutate, error, match):
    before = lstm.state_dict()
    weights = lstm.export_weights(layout)
    mutate(weights)
    with pytest.raises(error, match=match):
        lstm.load_weights(weights, layout=layout)
    for k, v in lstm.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_unknown_layout(lstm):
    with pytest.raises(ValueError, match="unknown layout 'caffe'"):
        lstm.export_weights("caffe")
    with pytest.raises(ValueError, match="unknown layout 'caffe'"):
        lstm.load_weights({}, layout="caffe")


def test_params_are_read_only(lstm):
    with pytest.raises(ValueError, match="read-only"):
        lstm.params["weight_ih_l0"][0, 0] = 1.0


def test_load_weights_invalidates_the_packed_kernel_layout(rng, lstm):
    y0, _ = lstm(X + 1)
    w = lstm.state_dict()
    w["weight_hh_l0"] = w["weight_hh_l0"] * 2
    lstm.load_weights(w)
    y1, _ = lstm(X + 1)
    assert np.abs(y1 - y0).max() > 1e-4
