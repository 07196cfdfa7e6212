"""The GRU's activation choices (activation for n, recurrent_activation for r and z)
through the layer: the cpu backend against the numpy one, streaming, checkpoints, and
what cannot carry them (the kernels are tested in tests/kernels, ONNX in
test_interop_onnx.py)."""
import numpy as np
import pytest

import numlstm
from helpers import SOFTSIGN, assert_close, check_streaming_and_checkpoint

HARD_RELU = {"recurrent_activation": "hard_sigmoid", "activation": "relu"}
CASES = [(HARD_RELU, "cpu", np.float64, 1e-12), (HARD_RELU, "cpu", np.float32, 2e-5),
         ({"activation": SOFTSIGN, "reset_after": False}, "cpu", np.float32, 2e-5),
         # (the simulator is slow: small shapes, both forms of the GRU)
         (HARD_RELU, "cuda", np.float32, 2e-5),
         (dict(HARD_RELU, reset_after=False), "cuda", np.float32, 2e-5),
         ({"activation": SOFTSIGN}, "cuda", np.float32, 2e-5)]


def _train_step(layer, x, lengths, dy):
    y, h = layer(x, training=True, lengths=lengths)
    dx, dh0 = layer.backward(dy)
    return dict(y=y, h=h, dx=dx, dh0=dh0, **{k: v.copy() for k, v in layer.grads.items()})


@pytest.mark.parametrize("options,backend,dtype,tol", CASES,
                         ids=["cpu-float64", "cpu-float32", "cpu-user-reset-before",
                              "cuda", "cuda-reset-before", "cuda-user"])
def test_backends_against_the_reference(rng, options, backend, dtype, tol):
    """Two layers, bidirectional, lengths, a training step: outputs, states and every
    gradient against the numpy backend in float64."""
    T, B, H = (3, 2, 4) if backend == "cuda" else (9, 4, 21)
    x = rng.standard_normal((T, B, 3))
    lengths = rng.integers(1, T + 1, B)
    dy = rng.standard_normal((T, B, 2 * H))
    ref, ours = (numlstm.GRU(3, H, num_layers=2, bidirectional=True, backend=b, dtype=d,
                             seed=4, **options)
                 for b, d in (("numpy", np.float64), (backend, dtype)))
    want = _train_step(ref, x, lengths, dy)
    got = _train_step(ours, x.astype(dtype), lengths, dy.astype(dtype))
    assert sorted(got) == sorted(want)
    for k in want:
        assert_close(got[k], want[k], tol if k in ("y", "h") else 5 * tol, k)
    plain = numlstm.GRU(3, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=4,
                        reset_after=options.get("reset_after", True))
    assert np.abs(plain(x, lengths=lengths)[0] - want["y"]).max() > 1e-2  # (it differs)


def test_the_function_as_defined_and_streaming(rng, tmp_path):
    gru = numlstm.GRU(3, 4, recurrent_activation="hard_sigmoid", activation="relu",
                      dtype=np.float64, seed=1)
    w = gru.export_weights("torch")
    x = rng.standard_normal((1, 2, 3))
    # one step from zeros by hand: r, z = hard_sigmoid, n = relu(a_n + r * b_hn), h = (1-z) n
    a = x[0] @ w["weight_ih_l0"].T + w["bias_ih_l0"]
    b = w["bias_hh_l0"]
    r, z = (np.clip((a[:, k * 4:(k + 1) * 4] + b[k * 4:(k + 1) * 4]) / 6 + 0.5, 0, 1)
            for k in (0, 1))
    n = np.maximum(a[:, 8:] + r * b[8:], 0)
    np.testing.assert_allclose(gru(x)[1][0], (1 - z) * n, rtol=1e-13)
    stream = numlstm.GRU(3, 6, num_layers=2, recurrent_activation="hard_sigmoid",
                         activation="relu", seed=0)
    back = check_streaming_and_checkpoint(
        stream, rng.standard_normal((5, 2, 3)).astype(np.float32), tmp_path)
    assert (back.spec.activation, back.spec.recurrent_activation) == ("relu", "hard_sigmoid")


def test_what_cannot_carry_them_says_so(tmp_path):
    with pytest.raises(ValueError, match="torch.nn.GRU has only sigmoid gates"):
        numlstm.GRU(3, 4, activation="relu").to_torch()
    with pytest.raises(ValueError, match="this GRU uses a user's activation"):
        numlstm.export_onnx(numlstm.GRU(3, 4, activation=SOFTSIGN), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(ValueError, match="activation: expected one of"):
        numlstm.GRU(3, 4, activation="gelu")
