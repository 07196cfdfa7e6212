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


# -- found by an adversarial audit: each was a crash, a late error or a silent change -----
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(bidirectional="False"), TypeError, "bidirectional: expected True or False"),
    (dict(batch_first="no"), TypeError, "batch_first: expected True or False"),
    (dict(dtype=None), TypeError, "dtype: expected float32 or float64, got None"),
    (dict(dtype="foo"), TypeError, "dtype: expected float32 or float64, got 'foo'"),
    (dict(seed=-1), ValueError, "seed: expected None or an integer >= 0, got -1"),
    (dict(seed=1.5), TypeError, "seed: expected None or an integer >= 0, got 1.5"),
    (dict(reset_after=True), TypeError, "LSTM: unexpected argument"),
])
def test_bad_construction_found_by_the_audit(kwargs, error, match):
    with pytest.raises(error, match=match):
        numlstm.LSTM(**(dict(input_size=3, hidden_size=4) | kwargs))


def test_other_cells_refuse_options_of_another():
    with pytest.raises(TypeError, match="GRU: unexpected argument.*nonlinearity"):
        numlstm.GRU(3, 4, nonlinearity="relu")
    with pytest.raises(TypeError, match="reset_after: expected True or False"):
        numlstm.GRU(3, 4, reset_after="x")


def test_step_with_an_empty_batch(lstm):
    with pytest.raises(ValueError, match="x_t: expected at least one sequence"):
        numlstm.LSTM(3, 4).step(np.zeros((0, 3), np.float32))


def test_dense_and_dropout_edges():
    dense = numlstm.Dense(3, 2)
    assert dense.forward(np.zeros((0, 3), np.float32)).shape == (0, 2)
    assert dense.forward(np.zeros((2, 0, 3)), training=True).shape == (2, 0, 2)
    assert dense.backward_output(np.zeros((2, 0, 2), np.float32)).shape == (2, 0, 3)
    drop = numlstm.Dropout(0.5, seed=0)
    drop.forward(np.ones((4, 3), np.float32), training=True)
    with pytest.raises(ValueError, match=r"dout: expected floats of the output's shape "
                                         r"\(4, 3\), got float32 of shape \(3,\)"):
        drop.backward_output(np.ones(3, np.float32))


def _tiny_model():
    model = numlstm.Sequential([numlstm.Embedding(5, 3, seed=0), numlstm.LSTM(3, 4, seed=1),
                                numlstm.Dense(4, 5, seed=2)])
    return model.compile("adam", "cross_entropy", lr=0.1)


@pytest.mark.parametrize("call,error,match", [
    (lambda m, x, y: m.fit(x, y, validation_data=(x, y[:, :2]), verbose=0), ValueError,
     r"target: expected shape \(4, 3\)"),
    (lambda m, x, y: m.fit(x, y, validation_data=(x,), verbose=0), ValueError,
     r"validation_data: expected a pair \(x_val, y_val\), got tuple of 1"),
    (lambda m, x, y: m.fit(x, np.where(np.arange(4)[:, None] == 3, 9, y), batch_size=2,
                           shuffle=False, verbose=0), ValueError,
     r"target: expected class indices in \[0, 5\)"),
    (lambda m, x, y: m.fit(np.where(np.arange(4)[:, None] == 3, 7, x), y, batch_size=2,
                           shuffle=False, verbose=0), ValueError,
     r"ids: expected values in \[0, 5\)"),
    (lambda m, x, y: m.fit(x, y, lengths=[3, 2], verbose=0), ValueError,
     r"lengths: expected 4 integers \(one per sample\)"),
    (lambda m, x, y: m.fit(x, y, lengths=[3, 2, 4, 1], verbose=0), ValueError,
     r"lengths: expected values in \[1, 3\]"),
    (lambda m, x, y: m.predict(x, lengths=5), ValueError, "lengths: expected 4 integers"),
    (lambda m, x, y: m.train_step(x, y.astype(float)), TypeError,
     "target: expected integer class indices"),
    (lambda m, x, y: m.set_weights({k: (v.astype(complex) if k == "dense/bias" else v)
                                    for k, v in m.get_weights().items()}), TypeError,
     "dense/bias|dense bias"),
    (lambda m, x, y: m.set_weights([1, 2]), TypeError, "weights: expected a dict"),
])
def test_models_check_everything_before_the_first_update(rng, call, error, match):
    model = _tiny_model()
    x, y = rng.integers(0, 5, (4, 3)), rng.integers(0, 5, (4, 3))
    before = model.get_weights()
    with pytest.raises(error, match=match):
        call(model, x, y)
    assert model.optimizer.steps == 0
    for k, v in before.items():
        np.testing.assert_array_equal(model.get_weights()[k], v, err_msg=k)


def test_sequential_construction_errors():
    with pytest.raises(ValueError, match=r"layers\[1\]: an Embedding reads token ids, so it "
                                         r"must be the first layer"):
        numlstm.Sequential([numlstm.Dense(3, 4), numlstm.Embedding(10, 4)])
    with pytest.raises(ValueError, match="merge_mode=None gives a pair.*it is the first layer"):
        numlstm.Sequential([numlstm.LSTM(3, 4, bidirectional=True, merge_mode=None)])


def test_non_finite_weights_are_refused_by_every_loader(lstm):
    weights = lstm.export_weights("torch")
    weights["weight_hh_l1"][0, 0] = np.nan
    before = lstm.params
    with pytest.raises(ValueError, match="NaN or inf values: weight_hh_l1"):
        lstm.load_weights(weights)
    assert all(lstm.params[k] is v for k, v in before.items())
    with pytest.raises(ValueError, match="NaN or inf values: bias"):
        numlstm.Dense(2, 1).load_params({"weight": np.ones((1, 2)), "bias": [np.inf]})


def test_optimizer_state_and_hyper_parameters():
    with pytest.raises(ValueError, match="eps: expected a number > 0, got 0"):
        numlstm.Adam(eps=0)
    adam = numlstm.Adam()
    with pytest.raises(ValueError, match="'q/exp_avg_sq': expected a float32 or float64 "
                                         "array"):
        adam.load_state_dict({"type": "Adam", "steps": 1, "state": {
            "q/step": np.array(1), "q/exp_avg": np.zeros(3), "q/exp_avg_sq": np.array("x")}})
    with pytest.raises(ValueError, match="'q/step': expected a 0-d integer"):
        adam.load_state_dict({"type": "Adam", "steps": 1, "state": {
            "q/step": np.zeros(3), "q/exp_avg": np.zeros(3), "q/exp_avg_sq": np.zeros(3)}})
    assert adam.state == {} and adam.steps == 0


def test_save_checkpoint_arguments(tmp_path, lstm):
    model = numlstm.Sequential([numlstm.LSTM(3, 4)])
    with pytest.raises(TypeError, match="model: expected a numlstm.Sequential or Seq2Seq, got LSTM"):
        numlstm.save_checkpoint(tmp_path, lstm)
    with pytest.raises(TypeError, match="optimizer: expected None or a numlstm optimizer"):
        numlstm.save_checkpoint(tmp_path, model, "adam")
    with pytest.raises(TypeError, match="step: expected an integer >= 0, got 'abc'"):
        numlstm.save_checkpoint(tmp_path, model, step="abc")
    with pytest.raises(TypeError, match="extra: expected None or a dict, got list"):
        numlstm.save_checkpoint(tmp_path, model, extra=[1, 2])
    with pytest.raises(FileNotFoundError, match="the folder .*nowhere does not exist"):
        numlstm.save_checkpoint(tmp_path / "nowhere" / "c.npz", model)
    assert list(tmp_path.iterdir()) == []


def test_packer_arguments(lstm):
    with pytest.raises(TypeError, match="spec: expected a numlstm.packing.RecurrentSpec"):
        numlstm.convert(lstm.state_dict(), "torch", "keras", None)
    with pytest.raises(ValueError, match="unknown layout"):
        lstm.export_weights(["torch"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(x=[[[1, 2, 3]], [[1, 2]]]), "x: expected a rectangular array, got nested"),
    (dict(x=np.zeros((5, 2, 3)), mask=np.array([[1, 1, 0, 0, 0], [0] * 5], bool)),
     r"mask: expected at least one True \(valid step\) in every row; rows \[1\]"),
    (dict(x=np.zeros((5, 3)), mask=np.ones((1, 5), bool)),
     r"mask: only batched input \(\[T,B,I\]\) takes a mask"),
])
def test_ragged_input_and_masks_say_what_is_wrong(kwargs, match):
    with pytest.raises(ValueError, match=match):
        numlstm.LSTM(3, 4)(**kwargs)
