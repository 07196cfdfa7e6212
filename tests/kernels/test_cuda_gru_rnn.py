"""The GRU's and the RNN's CUDA kernels against the NumPy reference (forward and
backward).

Without a GPU they run in Numba's simulator (tests/conftest.py), so shapes stay
tiny; each launch path is forced once per cell and variant: the persistent
kernel with one slice per block, with several slices in one block, and the
per-step launches.
"""
import numpy as np
import pytest
from helpers import assert_close, cell_weights

from numlstm.kernels import reference as ref

cuda = pytest.importorskip("numba.cuda")
from numlstm.kernels.cuda import (gru_backward_cuda, gru_forward_cuda,  # noqa: E402
                                  pack_gru_cuda, pack_rnn_cuda, rnn_backward_cuda,
                                  rnn_forward_cuda)

RTOL = {np.float32: 2e-5, np.float64: 1e-12}
PATHS = {"auto": {}, "slices": dict(units=2, blocks=1),
         "per_step": dict(units=2, persistent=False)}
# T, B, I, H, lengths, reverse, launch path (the simulator takes about a second
# a case, mostly in the products around the recurrence)
CASES = [
    (3, 2, 3, 5, [3, 1], True, "auto"),
    (1, 1, 4, 5, None, False, "slices"),
    (3, 3, 2, 5, [2, 3, 0], False, "per_step"),
]
DTYPES = [np.float32, np.float64]


def inputs(rng, T, B, I, H, gates, dtype):
    """Weights, x, h0 and the output gradients dy, dh_n of one random case."""
    w = cell_weights(rng, I, H, gates, dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0, dh_n = (rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    return w, x, h0, dy, dh_n


def check(got, want, dtype):
    """got: y, h_n, dx, dh0 (device) and the gradients; want: the reference's."""
    for name, g, w in zip(["y", "h_n", "dx", "dh0"], got[:4], want[:4]):
        assert_close(g.copy_to_host(), w, RTOL[dtype], name)
    for k in ("w_ih", "w_hh", "b_ih", "b_hh"):
        assert_close(got[4][k].copy_to_host(), want[4][k], RTOL[dtype], k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("T,B,I,H,lengths,reverse,path", CASES)
def test_gru_cuda_matches_reference(rng, dtype, reset_after, T, B, I, H, lengths, reverse,
                                    path):
    lens = None if lengths is None else np.array(lengths)
    w, x, h0, dy, dh_n = inputs(rng, T, B, I, H, 3, dtype)
    cell = pack_gru_cuda(*w, reset_after=reset_after)
    dev = cuda.to_device
    y, h, cache = gru_forward_cuda(dev(x), cell, dev(h0), lens, reverse, True,
                                   **PATHS[path])
    got = gru_backward_cuda(dev(dy), dev(dh_n), cache, cell, **PATHS[path])
    y_r, h_r, cache_r = ref.gru_forward_ref(x, *w, h0, lens, reverse, reset_after)
    check((y, h) + got, (y_r, h_r) + ref.gru_backward_ref(dy, dh_n, cache_r), dtype)


@pytest.mark.parametrize("reset_after,dtype,path", [
    (True, np.float32, "auto"), (False, np.float32, "auto"), (True, np.float64, "slices"),
    (False, np.float64, "per_step")],
    ids=["reset-after-float32", "reset-before-float32", "reset-after-float64-slices",
         "reset-before-float64-per-step"])
def test_gru_cuda_recurrent_dropout_matches_reference(rng, reset_after, dtype, path):
    """A recurrent dropout mask on h where W_hh reads it (not in z * h), with lengths."""
    T, B, I, H = 3, 3, 2, 5
    lens = np.array([3, 1, 2])
    w, x, h0, dy, dh_n = inputs(rng, T, B, I, H, 3, dtype)
    mask = ((rng.random((B, H)) >= 0.3) / 0.7).astype(dtype)
    assert (mask == 0).any() and (mask > 0).any()
    cell = pack_gru_cuda(*w, reset_after=reset_after)
    dev = cuda.to_device
    y, h, cache = gru_forward_cuda(dev(x), cell, dev(h0), lens, True, True, **PATHS[path],
                                   h_mask=mask)
    got = gru_backward_cuda(dev(dy), dev(dh_n), cache, cell, **PATHS[path])
    y_r, h_r, cache_r = ref.gru_forward_ref(x, *w, h0, lens, True, reset_after, h_mask=mask)
    check((y, h) + got, (y_r, h_r) + ref.gru_backward_ref(dy, dh_n, cache_r), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("T,B,I,H,lengths,reverse,path", CASES)
def test_rnn_cuda_matches_reference(rng, dtype, nonlinearity, T, B, I, H, lengths, reverse,
                                    path):
    lens = None if lengths is None else np.array(lengths)
    w, x, h0, dy, dh_n = inputs(rng, T, B, I, H, 1, dtype)
    cell = pack_rnn_cuda(*w, nonlinearity=nonlinearity)
    dev = cuda.to_device
    y, h, cache = rnn_forward_cuda(dev(x), cell, dev(h0), lens, reverse, True,
                                   **PATHS[path])
    got = rnn_backward_cuda(dev(dy), dev(dh_n), cache, cell, **PATHS[path])
    y_r, h_r, cache_r = ref.rnn_forward_ref(x, *w, h0, lens, reverse, nonlinearity)
    check((y, h) + got, (y_r, h_r) + ref.rnn_backward_ref(dy, dh_n, cache_r), dtype)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("path", ["auto", "per_step"])
def test_gru_cuda_inference_keeps_nothing(rng, reset_after, path):
    w, x, h0, _, _ = inputs(rng, 3, 2, 3, 4, 3, np.float32)
    y, h, cache = gru_forward_cuda(cuda.to_device(x), pack_gru_cuda(*w, reset_after),
                                   cuda.to_device(h0), **PATHS[path])
    assert cache is None
    y_r, h_r, _ = ref.gru_forward_ref(x, *w, h0, reset_after=reset_after)
    assert_close(y.copy_to_host(), y_r, 2e-5, "y")
    assert_close(h.copy_to_host(), h_r, 2e-5, "h_n")


def test_rnn_cuda_inference_keeps_nothing(rng):
    w, x, h0, _, _ = inputs(rng, 2, 2, 3, 4, 1, np.float32)
    y, h, cache = rnn_forward_cuda(cuda.to_device(x), pack_rnn_cuda(*w), cuda.to_device(h0))
    assert cache is None
    assert_close(y.copy_to_host(), ref.rnn_forward_ref(x, *w, h0)[0], 2e-5, "y")


def test_rnn_cuda_rejects_unknown_nonlinearity(rng):
    with pytest.raises(ValueError, match="nonlinearity"):
        pack_rnn_cuda(*cell_weights(rng, 2, 3, 1, np.float32), nonlinearity="gelu")
