"""The LSTM's peepholes and its activation choices through the layer: every backend
against the reference, streaming, checkpoints, and what cannot carry them (the
kernels themselves are tested in tests/kernels, ONNX in test_interop_onnx.py)."""
import numpy as np
import pytest

import numlstm
from helpers import SOFTSIGN, assert_close, lstm_layer_and_reference, run_steps


def _with_peepholes(layer, rng):
    """Random peephole weights (they start at zero)."""
    weights = layer.export_weights("torch")
    for name in weights:
        if name.startswith("weight_peephole"):
            weights[name] = rng.standard_normal(weights[name].shape) * 0.5
    layer.load_weights(weights, "torch")
    return layer


OPTIONS = [{"peephole": True}, {"activation": "relu", "recurrent_activation": "hard_sigmoid"},
           {"activation": SOFTSIGN, "peephole": True}]
PRECISIONS = [(np.float64, 1e-12), (np.float32, 2e-5)]
CASES = [(o, "cpu", d, tol) for o in OPTIONS for d, tol in PRECISIONS]
# (the simulator is slow: one CUDA case each)
CASES += [(o, "cuda", np.float32, 2e-5) for o in OPTIONS]
IDS = [f"{b}-{np.dtype(d).name}-{i}" for (o, b, d, _), i in zip(
    CASES, ["peephole"] * 2 + ["hard-sigmoid-relu"] * 2 + ["user-peephole"] * 2 +
    ["peephole", "hard-sigmoid-relu", "user-peephole"])]


@pytest.mark.parametrize("options,backend,dtype,tol", CASES, ids=IDS)
def test_backends_against_the_reference(rng, options, backend, dtype, tol):
    prepare = ((lambda layer: _with_peepholes(layer, np.random.default_rng(1)))
               if options.get("peephole") else (lambda layer: layer))
    got, want = lstm_layer_and_reference(rng, options, backend, dtype, prepare)
    assert sorted(got) == sorted(want)
    if options.get("peephole"):
        assert "weight_peephole_l1_reverse" in got
    for k in want:
        assert_close(got[k], want[k], tol if k in ("y", "h", "c") else 5 * tol, k)


def test_options_change_the_function_as_defined(rng):
    x = rng.standard_normal((6, 2, 3))
    plain = numlstm.LSTM(3, 4, dtype=np.float64, seed=1)
    peep = numlstm.LSTM(3, 4, peephole=True, dtype=np.float64, seed=1)
    assert peep.params["weight_peephole_l0"].shape == (12,)
    # Zero peepholes are the plain layer (the other weights drawn alike).
    weights = plain.export_weights("torch")
    peep.load_weights(dict(weights, weight_peephole_l0=np.zeros(12)), "torch")
    np.testing.assert_array_equal(peep(x)[0], plain(x)[0])
    _with_peepholes(peep, rng)
    assert not np.allclose(peep(x)[0], plain(x)[0])
    # hard_sigmoid gates and relu as the cell's activation (the pair the kernels are
    # tested with: each pair compiles every kernel again), one step from zeros by hand:
    # i = hs(a_i), g = relu(a_g), c = i * g, h = o * relu(c), hs(a) = min(max(a/6 + 1/2, 0), 1).
    hard = numlstm.LSTM(3, 4, recurrent_activation="hard_sigmoid", activation="relu",
                        dtype=np.float64, seed=1)
    hard.load_weights(weights, "torch")
    _, (h, c) = hard(x[:1])
    a = x[0] @ weights["weight_ih_l0"].T + weights["bias_ih_l0"] + weights["bias_hh_l0"]
    hs = np.clip(a / 6 + 0.5, 0, 1)
    c_want = hs[:, :4] * np.maximum(a[:, 8:12], 0)
    np.testing.assert_allclose(c[0], c_want, rtol=1e-13)
    np.testing.assert_allclose(h[0], hs[:, 12:] * np.maximum(c_want, 0), rtol=1e-13)
    assert (a[:, 8:12] < 0).any()  # (relu clips something)
    # hard_sigmoid gates saturate exactly: an input far out opens them fully.
    hard.load_weights(dict(weights, bias_ih_l0=np.full(16, 50.0)), "torch")
    _, (h, c) = hard(np.zeros((1, 1, 3)))  # i = f = o = 1 exactly, g = relu(50 + b_hh)
    np.testing.assert_allclose(c, (50 + weights["bias_hh_l0"][8:12])[None, None])


def test_step_equals_the_sequence(rng):
    lstm = _with_peepholes(numlstm.LSTM(3, 6, num_layers=2, peephole=True, seed=0,
                                        recurrent_activation="hard_sigmoid",
                                        activation="relu"), rng)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    y, _ = lstm(x)
    ys, _ = run_steps(lstm, x)
    for t in range(5):
        assert_close(ys[t], y[t], 2e-6, f"step {t}")


def test_checkpoints_keep_the_options(tmp_path, rng):
    lstm = numlstm.LSTM(3, 4, peephole=True, activation="relu",
                        recurrent_activation="hard_sigmoid", seed=0)
    model = numlstm.Sequential([_with_peepholes(lstm, rng)])
    numlstm.save_checkpoint(tmp_path, model)
    back = numlstm.load(tmp_path).layers[0]
    assert (back.spec.peephole, back.spec.activation, back.spec.recurrent_activation) == \
        (True, "relu", "hard_sigmoid")
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(numlstm.load(tmp_path).predict(x), model.predict(x))


def test_what_cannot_carry_the_options_says_so(tmp_path):
    for options in ({"peephole": True}, {"activation": "relu"},
                    {"recurrent_activation": "hard_sigmoid"}):
        with pytest.raises(ValueError, match="torch.nn.LSTM has no peepholes"):
            numlstm.LSTM(3, 4, **options).to_torch()
    with pytest.raises(ValueError, match="layout 'keras' has no peepholes"):
        numlstm.LSTM(3, 4, peephole=True).export_weights("keras")
    user = numlstm.LSTM(3, 4, activation=SOFTSIGN)
    with pytest.raises(ValueError, match="user's activation function"):
        numlstm.export_onnx(user, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(TypeError, match=r"layers\[0\]\.config\.activation\[0\] is "
                                        r"UserFunction\('_softsign'\), which is not JSON "
                                        r"serializable .* A layer with a user's activation"):
        numlstm.save_checkpoint(tmp_path, numlstm.Sequential([user]))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="activation: expected one of"):
        numlstm.LSTM(3, 4, activation="gelu")
    with pytest.raises(TypeError, match="recurrent_activation: expected one of"):
        numlstm.LSTM(3, 4, recurrent_activation=np.tanh)
    with pytest.raises(TypeError, match="Numba could not compile"):
        numlstm.LSTM(3, 4, activation=(lambda a: open(a), lambda y: y))
    with pytest.raises(TypeError, match="unexpected argument"):
        numlstm.GRU(3, 4, peephole=True)
    with pytest.raises(TypeError, match="peephole: expected True or False"):
        numlstm.LSTM(3, 4, peephole=1)
