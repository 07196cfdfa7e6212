"""The layer-normalised LSTM (LSTM(layer_norm=True)) through the layer: the cpu and cuda
(simulator) backends against the numpy one, its parameters, streaming, checkpoints,
memory, and what cannot carry it (the kernels are tested in tests/kernels against the
reference, and the reference against finite differences). Then the layer-normalised GRU
(GRU(layer_norm=True)): its reference against finite differences, its CUDA (simulator)
kernels against the reference, and the layer (its CPU kernels against the reference are
in tests/kernels/test_cpu_gru_rnn.py)."""
import tracemalloc

import numpy as np
import pytest

import numlstm
from helpers import (assert_close, check_gru_reference_gradients,
                     check_streaming_and_checkpoint, layer_norm_gru_case,
                     lstm_layer_and_reference, run_steps)
from numlstm.kernels.reference import gru_backward_ref, gru_forward_ref


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
    y, _ = norm(x, training=True)  # (compile, or load, both passes at this shape first:
    norm.backward(np.ones_like(y))  # a worker may run this test before any other has)
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
        numlstm.RNN(3, 4, layer_norm=True)


# -- the GRU ---------------------------------------------------------------------------
@pytest.mark.parametrize("zoned", [False, True], ids=["plain", "zoneout"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gru_reference_backward_matches_finite_differences(rng, zoned, reverse):
    cell, norms, x, h0, mask, zone_h, lengths = layer_norm_gru_case(rng, 4, 3, 3, 4, zoned)
    inputs = dict(x=x, w_ih=cell[0], w_hh=cell[1], b_ih=cell[2], b_hh=cell[3], h0=h0, **norms)
    check_gru_reference_gradients(inputs, lengths, reverse, h_mask=mask, zone_h=zone_h)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_gru_cuda_kernels_against_the_reference(rng, dtype, rtol, training):
    """The CUDA kernels (simulator) with zoneout, recurrent dropout and lengths."""
    cuda = pytest.importorskip("numba.cuda")
    from numlstm.kernels.cuda import gru_backward_cuda, gru_forward_cuda, pack_gru_cuda
    T, B, I, H = 3, 3, 2, 5
    cell, norms, x, h0, mask, zone_h, lengths = layer_norm_gru_case(rng, T, B, I, H, True,
                                                                    training)
    cell, norms = [a.astype(dtype) for a in cell], {k: v.astype(dtype) for k, v in norms.items()}
    x, h0, mask, zone_h = (a.astype(dtype) for a in (x, h0, mask, zone_h))
    dy, dh_n = rng.standard_normal((T, B, H)).astype(dtype), h0[::-1].copy()
    dev = cuda.to_device
    packed = pack_gru_cuda(*cell, **norms)
    y, h, cache = gru_forward_cuda(dev(x), packed, dev(h0), lengths, True, training,
                                   h_mask=mask, zone_h=zone_h)
    y_r, h_r, cache_r = gru_forward_ref(x, *cell, h0, lengths, True, h_mask=mask,
                                        zone_h=zone_h, **norms)
    assert_close(y.copy_to_host(), y_r, rtol, "y")
    assert_close(h.copy_to_host(), h_r, rtol, "h_n")
    if training:
        got = gru_backward_cuda(dev(dy), dev(dh_n), cache, packed)
        want = gru_backward_ref(dy, dh_n, cache_r)
        assert_close(got[0].copy_to_host(), want[0], 5 * rtol, "dx")
        assert_close(got[1].copy_to_host(), want[1], 5 * rtol, "dh0")
        assert sorted(got[2]) == sorted(want[2])
        for k in want[2]:
            assert_close(got[2][k].copy_to_host(), want[2][k], 5 * rtol, k)


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_gru_layer_matches_numpy(rng, backend):
    """Two layers, bidirectional, lengths, zoneout and recurrent dropout, random gains:
    a training step on cpu (float32) or cuda (simulator, float64) against the numpy
    backend, every gradient; then inference and streaming steps."""
    T, B, H = (7, 4, 6) if backend == "cpu" else (3, 2, 4)
    dtype = np.float32 if backend == "cpu" else np.float64

    def make(backend, dtype):
        layer = numlstm.GRU(3, H, num_layers=2, bidirectional=True, layer_norm=True,
                            zoneout=0.2, recurrent_dropout=0.25, backend=backend, dtype=dtype,
                            seed=5)
        return _with_norms(layer, np.random.default_rng(1))
    x = rng.standard_normal((T, B, 3))
    lengths = np.array([T, 2, 1, T - 1][:B])
    dy = rng.standard_normal((T, B, 2 * H))
    runs = []
    for layer, dt in ((make("numpy", np.float64), np.float64), (make(backend, dtype), dtype)):
        y, h = layer(x.astype(dt), training=True, lengths=lengths)
        dx, dh0 = layer.backward(dy.astype(dt))
        runs.append(dict(y=y, h=h, dx=dx, dh0=dh0, inference=layer(x.astype(dt))[0],
                         **layer.grads))
    assert "weight_ln_hh_l1_reverse" in runs[0] and len(runs[0]) == 5 + 2 * 2 * 6
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for k in runs[0]:
        assert_close(runs[1][k], runs[0][k], tol if k in ("y", "h", "inference") else 5 * tol,
                     k)
    uni = _with_norms(numlstm.GRU(3, H, layer_norm=True, backend=backend, seed=2), rng)
    x32 = x.astype(np.float32)
    assert_close(run_steps(uni, x32)[0], uni(x32)[0], 2e-6, "streaming steps")


def test_gru_parameters_checkpoint_and_refusals(tmp_path, rng):
    gru = numlstm.GRU(3, 5, num_layers=2, bidirectional=True, layer_norm=True, seed=0)
    shapes = {k: v.shape for k, v in gru.params.items()}
    assert shapes["weight_ln_ih_l1_reverse"] == shapes["weight_ln_hh_l0"] == (15,)
    assert len(shapes) == 2 * 2 * 6
    assert all((w == 1).all() for k, w in gru.params.items() if k.startswith("weight_ln"))
    back = check_streaming_and_checkpoint(
        _with_norms(numlstm.GRU(3, 6, layer_norm=True, seed=0), rng),
        rng.standard_normal((5, 2, 3)).astype(np.float32), tmp_path / "ck")
    assert back.spec.layer_norm and "layer_norm=True" in repr(back)
    # LN undoes a scaling of the recurrent weights (up to its epsilon); the plain GRU does not.
    x = rng.standard_normal((4, 2, 3))
    for norm, changes in ((True, False), (False, True)):
        layer = numlstm.GRU(3, 5, layer_norm=norm, dtype=np.float64, seed=0)
        y = layer(x)[0]
        w = layer.export_weights("torch")
        layer.load_weights(dict(w, weight_hh_l0=3 * w["weight_hh_l0"]), "torch")
        assert (np.abs(layer(x)[0] - y).max() > 1e-2) == changes
    with pytest.raises(ValueError, match="use reset_after=True with layer_norm"):
        numlstm.GRU(3, 4, layer_norm=True, reset_after=False)
    with pytest.raises(ValueError, match="torch.nn.GRU has no layer normalisation"):
        gru.to_torch()
    for layout in ("keras", "onnx", "haste"):
        with pytest.raises(ValueError, match=f"layout '{layout}' has no layer-normalised GRU"):
            gru.export_weights(layout)
    with pytest.raises(ValueError, match="no layer-normalised"):
        numlstm.export_onnx(gru, tmp_path / "g.onnx")
    assert not (tmp_path / "g.onnx").exists()
