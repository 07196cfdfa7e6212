"""The layer-normalised LSTM (LSTM(layer_norm=True)) through the layer: the cpu and cuda
(simulator) backends against the numpy one, its parameters, streaming, checkpoints, memory, and what cannot
carry it (the kernels are tested in tests/kernels against the reference, and the
reference against finite differences)."""
import tracemalloc

import numpy as np
import pytest

import numlstm
from helpers import (assert_close, check_streaming_and_checkpoint, lstm_layer_and_reference,
                     run_steps)


def _with_norms(layer, rng):
    """Random gains and biases for layer normalisation (they start at 1 and 0)."""
    weights = layer.export_weights("torch")
    for name in weights:
        if "_ln_" in name:
            weights[name] = weights[name] + 0.3 * rng.standard_normal(weights[name].shape)
    layer.load_weights(weights, "torch")
    return layer


OPTIONS = [{"layer_norm": True},
           {"layer_norm": True, "peephole": True, "recurrent_activation": "hard_sigmoid",
            "recurrent_dropout": 0.3}]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "with-options"])
def test_cpu_against_the_reference(rng, options, dtype, tol):
    """Two layers, bidirectional, lengths, a training step: outputs, states and every
    gradient, layer normalisation's included."""
    prepare = lambda layer: _with_norms(layer, np.random.default_rng(1))  # noqa: E731
    got, want = lstm_layer_and_reference(rng, options, "cpu", dtype, prepare)
    assert sorted(got) == sorted(want)
    for name in ("weight_ln_ih_l1_reverse", "weight_ln_hh_l0", "weight_ln_c_l1",
                 "bias_ln_c_l0_reverse"):
        assert name in got
    for k in want:
        assert_close(got[k], want[k], tol if k in ("y", "h", "c") else 5 * tol, k)


def test_cuda_against_the_reference(rng):
    """The cuda backend (Numba's simulator, a tiny case; the kernels' options are
    checked in tests/kernels): two layers, bidirectional, lengths, recurrent
    dropout, a training step, every gradient; then streaming steps."""
    prepare = lambda layer: _with_norms(layer, np.random.default_rng(1))  # noqa: E731
    options = {"layer_norm": True, "recurrent_dropout": 0.3}
    got, want = lstm_layer_and_reference(rng, options, "cuda", np.float32, prepare)
    assert sorted(got) == sorted(want)
    for k in want:
        assert_close(got[k], want[k], 2e-5 if k in ("y", "h", "c") else 1e-4, k)
    layer = prepare(numlstm.LSTM(3, 4, layer_norm=True, backend="cuda", seed=2))
    x = rng.standard_normal((3, 2, 3)).astype(np.float32)
    ys, _ = run_steps(layer, x)
    assert_close(ys, prepare(numlstm.LSTM(3, 4, layer_norm=True, seed=2))(x)[0], 2e-6, "step")


def test_parameters_start_as_the_identity_norm(rng):
    lstm = numlstm.LSTM(3, 5, num_layers=2, bidirectional=True, layer_norm=True, seed=0)
    shapes = {k: v.shape for k, v in lstm.params.items()}
    assert shapes["weight_ln_ih_l1_reverse"] == shapes["weight_ln_hh_l0"] == (20,)
    assert shapes["weight_ln_c_l0"] == shapes["bias_ln_c_l1_reverse"] == (5,)
    assert len(shapes) == 2 * 2 * 8
    for name, w in lstm.params.items():
        if name.startswith("weight_ln"):
            assert (w == 1).all(), name
        elif name.startswith("bias_ln"):
            assert (w == 0).all(), name
    # LN undoes a scaling of the input weights (up to its epsilon); the plain layer does not.
    x = rng.standard_normal((4, 2, 3))
    for norm, changes in ((True, False), (False, True)):
        layer = numlstm.LSTM(3, 5, layer_norm=norm, dtype=np.float64, seed=0)
        y = layer(x)[0]
        weights = layer.export_weights("torch")
        layer.load_weights(dict(weights, weight_ih_l0=3 * weights["weight_ih_l0"]), "torch")
        assert (np.abs(layer(x)[0] - y).max() > 1e-2) == changes


def test_step_equals_the_sequence_and_checkpoints_keep_it(tmp_path, rng):
    lstm = _with_norms(numlstm.LSTM(3, 6, num_layers=2, layer_norm=True, seed=0), rng)
    back = check_streaming_and_checkpoint(
        lstm, rng.standard_normal((5, 2, 3)).astype(np.float32), tmp_path)
    assert back.spec.layer_norm


def test_training_memory_is_as_counted():
    """training_bytes counts layer_norm's two more [T,B,G] buffers; tracemalloc
    measures the training step's peak against it."""
    plain, norm = (numlstm.LSTM(16, 32, layer_norm=n, seed=0) for n in (False, True))
    T, B = 100, 16
    assert norm.training_bytes(T, B) - plain.training_bytes(T, B) == 2 * T * B * 128 * 4
    x = np.ones((T, B, 16), np.float32)
    y, _ = norm(x[:2], training=True)  # (compile, or load, both passes first: a worker
    norm.backward(np.ones_like(y))     # may run this test before any other has)
    tracemalloc.start()
    y, _ = norm(x, training=True)
    norm.backward(np.ones_like(y))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert 0.6 < peak / norm.training_bytes(T, B) < 1.3


def test_what_cannot_carry_layer_norm_says_so(tmp_path):
    lstm = numlstm.LSTM(3, 4, layer_norm=True)
    with pytest.raises(ValueError, match="torch.nn.LSTM has no layer normalisation"):
        lstm.to_torch()
    for layout in ("keras", "onnx", "haste"):
        with pytest.raises(ValueError, match=f"layout '{layout}' has no layer-normalised"):
            lstm.export_weights(layout)
    with pytest.raises(ValueError, match="no layer-normalised"):
        numlstm.export_onnx(lstm, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(TypeError, match="layer_norm: expected True or False"):
        numlstm.LSTM(3, 4, layer_norm=1)
    with pytest.raises(TypeError, match="unexpected argument"):
        numlstm.GRU(3, 4, layer_norm=True)
