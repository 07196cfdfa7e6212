"""numlstm.LSTM against torch.nn.LSTM, and the layer's own semantics."""
import itertools

import numpy as np
import pytest
import torch

import numlstm
from helpers import assert_close, rel_err

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
# float32: relative to the largest value; float64: as the issue asks.
TOL = {np.float32: (1e-5, 1e-4), np.float64: (1e-10, 1e-10)}

CASES = list(itertools.product([1, 2, 3], [False, True], [False, True], [False, True]))


def _torch_run(module, x, h0, c0, dy, dh_n, dc_n):
    """torch forward and backward of sum(y*dy) + sum(h_n*dh_n) + sum(c_n*dc_n)."""
    xt = torch.tensor(x, requires_grad=True)
    state = None
    if h0 is not None:
        state = (torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True))
    y, (h, c) = module(xt, state)
    loss = (y * torch.tensor(dy)).sum() + (h * torch.tensor(dh_n)).sum() + \
        (c * torch.tensor(dc_n)).sum()
    loss.backward()
    out = dict(y=y, h_n=h, c_n=c, dx=xt.grad)
    if state is not None:
        out.update(dh0=state[0].grad, dc0=state[1].grad)
    grads = {n: p.grad.numpy() for n, p in module.named_parameters()}
    return {k: v.detach().numpy() for k, v in out.items()}, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layers,bidirectional,batch_first,with_state", CASES,
                         ids=[f"L{l}-{'bi' if b else 'uni'}-{'bf' if f else 'tm'}-"
                              f"{'h0' if s else 'noh0'}" for l, b, f, s in CASES])
def test_lstm_matches_torch(rng, dtype, layers, bidirectional, batch_first, with_state):
    T, B, I, H = 6, 3, 5, 7
    D = 2 if bidirectional else 1
    torch.manual_seed(int(rng.integers(1 << 30)))
    ref = torch.nn.LSTM(I, H, num_layers=layers, bidirectional=bidirectional,
                        batch_first=batch_first, dtype=TORCH_DTYPE[dtype])
    lstm = numlstm.LSTM(I, H, num_layers=layers, bidirectional=bidirectional,
                        batch_first=batch_first, dtype=dtype)
    lstm.load_weights(ref.state_dict(), layout="torch")
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = c0 = None
    if with_state:
        h0 = rng.standard_normal((layers * D, B, H)).astype(dtype)
        c0 = rng.standard_normal((layers * D, B, H)).astype(dtype)
    dy = rng.standard_normal((B, T, D * H) if batch_first else (T, B, D * H)).astype(dtype)
    dh_n = rng.standard_normal((layers * D, B, H)).astype(dtype)
    dc_n = rng.standard_normal((layers * D, B, H)).astype(dtype)
    want, want_grads = _torch_run(ref, x, h0, c0, dy, dh_n, dc_n)

    y, (h_n, c_n) = lstm(x, None if h0 is None else (h0, c0), training=True)
    dx, (dh0, dc0) = lstm.backward(dy, (dh_n, dc_n))
    vtol, gtol = TOL[dtype]
    for name, got in [("y", y), ("h_n", h_n), ("c_n", c_n)]:
        assert got.dtype == dtype
        assert_close(got, want[name], vtol, name)
    assert_close(dx, want["dx"], gtol, "dx")
    if with_state:
        assert_close(dh0, want["dh0"], gtol, "dh0")
        assert_close(dc0, want["dc0"], gtol, "dc0")
    assert set(lstm.grads) == set(want_grads)
    for name, g in want_grads.items():
        assert_close(lstm.grads[name], g, gtol, f"grad {name}")


def test_unbatched_input_matches_batch_of_one(rng):
    lstm = numlstm.LSTM(4, 5, num_layers=2, bidirectional=True, seed=1)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    h0 = rng.standard_normal((4, 5)).astype(np.float32)
    c0 = rng.standard_normal((4, 5)).astype(np.float32)
    y, (h, c) = lstm(x, (h0, c0), training=True)
    assert y.shape == (6, 10) and h.shape == (4, 5) and c.shape == (4, 5)
    dx, (dh0, dc0) = lstm.backward(np.ones_like(y), (np.ones_like(h), None))
    assert dx.shape == x.shape and dh0.shape == h0.shape
    yb, (hb, cb) = lstm(x[:, None], (h0[:, None], c0[:, None]), training=True)
    dxb, (dh0b, _) = lstm.backward(np.ones_like(yb), (np.ones_like(hb), None))
    np.testing.assert_array_equal(y, yb[:, 0])
    np.testing.assert_array_equal(h, hb[:, 0])
    np.testing.assert_array_equal(dx, dxb[:, 0])
    np.testing.assert_array_equal(dh0, dh0b[:, 0])


def test_backends_agree(rng):
    """Every backend of the table gives the same answer on the same inputs."""
    x = rng.standard_normal((5, 3, 4))
    dy = rng.standard_normal((5, 3, 12))
    results = {}
    for name in numlstm.available_backends():
        lstm = numlstm.LSTM(4, 6, num_layers=2, bidirectional=True, backend=name,
                            dtype=np.float64, seed=3)
        y, (h, c) = lstm(x, training=True, lengths=np.array([5, 2, 4]))
        dx, (dh0, dc0) = lstm.backward(dy)
        results[name] = [y, h, c, dx, dh0, dc0] + [lstm.grads[k] for k in sorted(lstm.grads)]
    ref = results.pop("numpy")
    for name, got in results.items():
        for a, b in zip(got, ref):
            assert_close(a, b, 1e-12, f"backend {name}")


def test_lengths_zero_outputs_and_hold_state(rng):
    lstm = numlstm.LSTM(3, 4, bidirectional=True, dtype=np.float64, seed=2)
    x = rng.standard_normal((6, 2, 3))
    y, (h, c) = lstm(x, lengths=[6, 3])
    assert (y[3:, 1] == 0).all()
    y1, (h1, c1) = lstm(x[:3, 1:])
    assert_close(y[:3, 1], y1[:, 0], 1e-14, "y of the short sequence")
    assert_close(h[:, 1], h1[:, 0], 1e-14, "h_n of the short sequence")
    assert_close(c[:, 1], c1[:, 0], 1e-14, "c_n of the short sequence")


def test_noncontiguous_and_fortran_inputs_give_the_same_answer(rng):
    lstm = numlstm.LSTM(4, 5, num_layers=2, seed=0)
    x = rng.standard_normal((7, 3, 4)).astype(np.float32)
    h0 = rng.standard_normal((2, 3, 5)).astype(np.float32)
    c0 = rng.standard_normal((2, 3, 5)).astype(np.float32)
    y, (h, c) = lstm(x, (h0, c0))
    strided = np.zeros((14, 3, 8), np.float32)
    strided[::2, :, ::2] = x
    for variant in (np.asfortranarray(x), strided[::2, :, ::2], x.astype(np.float64)):
        y2, (h2, c2) = lstm(variant, (np.asfortranarray(h0), c0[:, ::-1][:, ::-1]))
        np.testing.assert_array_equal(y, y2)
        np.testing.assert_array_equal(h, h2)


def test_dropout_is_seeded_and_only_active_when_training(rng):
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    a = numlstm.LSTM(3, 8, num_layers=2, dropout=0.5, seed=7)
    b = numlstm.LSTM(3, 8, num_layers=2, dropout=0.5, seed=7)
    plain = numlstm.LSTM(3, 8, num_layers=2, dropout=0.0, seed=7)
    ya, _ = a(x, training=True)
    yb, _ = b(x, training=True)
    np.testing.assert_array_equal(ya, yb)          # same seed, same masks
    y_inf, _ = a(x)
    np.testing.assert_array_equal(y_inf, plain(x)[0])  # no dropout at inference
    assert np.abs(ya - y_inf).max() > 1e-3           # dropout changed the training run


def test_dropout_backward_matches_finite_differences(rng):
    """With the mask fixed, the backward through dropout is the exact gradient."""
    lstm = numlstm.LSTM(3, 4, num_layers=2, dropout=0.4, dtype=np.float64, seed=5)
    x = rng.standard_normal((4, 2, 3))
    w = rng.standard_normal((4, 2, 4))
    state = lstm._drop_rng.bit_generator.state
    y, _ = lstm(x, training=True)
    dx, _ = lstm.backward(w)
    eps, numeric = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        for sign in (1, -1):
            xp = x.copy()
            xp[idx] += sign * eps
            lstm._drop_rng.bit_generator.state = state  # the same mask every time
            numeric[idx] += sign * (lstm(xp, training=True)[0] * w).sum() / (2 * eps)
    assert rel_err(dx, numeric) < 1e-7


def test_grads_accumulate_until_zero_grad(rng):
    lstm = numlstm.LSTM(3, 4, seed=0, dtype=np.float64)
    x = rng.standard_normal((5, 2, 3))
    y, _ = lstm(x, training=True)
    lstm.backward(np.ones_like(y))
    once = {k: g.copy() for k, g in lstm.grads.items()}
    assert any(np.abs(g).max() > 0 for g in once.values())
    y, _ = lstm(x, training=True)
    lstm.backward(np.ones_like(y))
    for k in once:
        assert_close(lstm.grads[k], 2 * once[k], 1e-14, k)
    lstm.zero_grad()
    assert all((g == 0).all() for g in lstm.grads.values())


def test_same_seed_same_weights_and_torch_initialisation_range():
    a, b = numlstm.LSTM(3, 16, seed=11), numlstm.LSTM(3, 16, seed=11)
    c = numlstm.LSTM(3, 16, seed=12)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
        assert np.abs(a.params[k]).max() <= 1 / 4
    assert any((a.params[k] != c.params[k]).any() for k in a.params)


def test_returned_output_is_independent_of_the_saved_activations(rng):
    lstm = numlstm.LSTM(3, 4, seed=0, dtype=np.float64)
    x = rng.standard_normal((5, 2, 3))
    y, _ = lstm(x, training=True)
    dx_clean, _ = lstm.backward(np.ones_like(y))
    y, _ = lstm(x, training=True)
    y[...] = 1e6  # the caller scribbles on its output
    dx, _ = lstm.backward(np.ones_like(y))
    np.testing.assert_array_equal(dx, dx_clean)
