"""LSTM with a recurrent projection (proj_size): the reference against finite
differences, the layer against torch.nn.LSTM (values and every gradient, with lengths,
both directions and stacked), and where it meets streaming, layouts, ONNX, checkpoints
and the CUDA backend. (The CPU kernels against the reference are in
tests/kernels/test_cpu_lstm.py.)"""
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import numlstm
from numlstm.kernels.reference import lstm_backward_ref, lstm_forward_ref
from helpers import assert_close, numeric_gradient, projected_lstm_weights, rel_err, run_steps

# torch says it leaves oneDNN for a projected LSTM: true, and not ours to act on
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("options", [{}, {"cell_clip": 0.6, "gate_clip": 0.9}],
                         ids=["plain", "clips"])
def test_reference_backward_matches_finite_differences(rng, reverse, options):
    T, B, I, H, P = 4, 3, 3, 4, 2
    w_ih, w_hh, b_ih, b_hh, w_hr = projected_lstm_weights(rng, I, H, P, np.float64, scale=0.8)
    inputs = dict(x=rng.standard_normal((T, B, I)), w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                  b_hh=b_hh, h0=rng.standard_normal((B, P)), c0=rng.standard_normal((B, H)),
                  w_hr=w_hr)
    lengths = np.array([4, 1, 3])
    wy, wh, wc = (rng.standard_normal(s) for s in ((T, B, P), (B, P), (B, H)))

    def forward():
        a = inputs
        return lstm_forward_ref(a["x"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["h0"],
                                a["c0"], lengths, reverse, w_hr=a["w_hr"], **options)

    def loss():
        y, h, c, _ = forward()
        return (y * wy).sum() + (h * wh).sum() + (c * wc).sum()

    y, h, c, cache = forward()
    assert y.shape == (T, B, P) and h.shape == (B, P) and c.shape == (B, H)
    dx, dh0, dc0, grads = lstm_backward_ref(wy, wh, wc, cache)
    analytic = dict(x=dx, h0=dh0, c0=dc0, **grads)
    assert set(analytic) == set(inputs)
    for name, arr in inputs.items():
        err = rel_err(analytic[name], numeric_gradient(loss, arr))
        assert err < 1e-6, f"d{name}: relative error {err:.2e} against finite differences"


def against_torch(rng, case, backend, dtype):
    """One TORCH_CASES case with random weights, inputs, lengths and state: (numlstm's
    outputs and gradients, torch's in float64), as dicts keyed alike (torch's
    parameter names for the weights)."""
    I, H, P, L, bi, T, B = case
    torch.manual_seed(int(rng.integers(1 << 30)))
    module = torch.nn.LSTM(I, H, num_layers=L, bidirectional=bi, proj_size=P).double()
    layer = numlstm.LSTM.from_torch(module, backend=backend, dtype=dtype)
    assert layer.spec.proj_size == P and layer.output_size == (2 if bi else 1) * P
    D = 2 if bi else 1
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((L * D, B, P)), rng.standard_normal((L * D, B, H))
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    dy = rng.standard_normal((T, B, D * P))
    dh, dc = rng.standard_normal(h0.shape), rng.standard_normal(c0.shape)

    xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    packed = pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
    yt, (ht, ct) = module(packed, (h0t, c0t))
    yt, _ = pad_packed_sequence(yt, total_length=T)
    loss = (yt * torch.tensor(dy)).sum() + (ht * torch.tensor(dh)).sum() + (
        ct * torch.tensor(dc)).sum()
    loss.backward()
    want = dict(y=yt, h=ht, c=ct, dx=xt.grad, dh0=h0t.grad, dc0=c0t.grad)
    want.update({name: p.grad for name, p in module.named_parameters()})

    y, (h, c) = layer(x, (h0, c0), training=True, lengths=lengths)
    dx, (dh0, dc0) = layer.backward(dy, (dh, dc))
    got = dict(y=y, h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, **layer.grads)
    return got, {k: v.detach().numpy() for k, v in want.items()}


TORCH_CASES = [  # (I, H, P, layers, bidirectional, T, B)
    (5, 7, 3, 2, True, 6, 4), (3, 9, 4, 1, False, 1, 1), (4, 70, 33, 2, True, 11, 5)]


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: "I{}H{}P{}L{}bi{}T{}B{}".format(*c))
def test_layer_against_torch(rng, backend, dtype, tol, case):
    got, want = against_torch(rng, case, backend, dtype)
    assert set(got) == set(want)
    for k in want:
        assert_close(got[k], want[k], tol if k in ("y", "h", "c") else 5 * tol, k)


def test_step_stateful_and_sequential(rng):
    lstm = numlstm.LSTM(5, 12, num_layers=2, proj_size=4, seed=0)
    x = rng.standard_normal((6, 3, 5)).astype(np.float32)
    y, (h, c) = lstm(x)
    assert y.shape == (6, 3, 4) and h.shape == (2, 3, 4) and c.shape == (2, 3, 12)
    ys, state = run_steps(lstm, x)
    assert_close(ys[-1], y[-1], 1e-6, "y_t")
    assert_close(state[1], c, 1e-6, "c")
    stateful = numlstm.LSTM(5, 12, num_layers=2, proj_size=4, seed=0, stateful=True)
    stateful(x[:2])
    y2, _ = stateful(x[2:])
    assert_close(y2, y[2:], 1e-6, "stateful y")
    with pytest.raises(ValueError, match=r"h0: expected shape \(2, 3, 4\)"):
        lstm(x, (np.zeros((2, 3, 12)), np.zeros((2, 3, 12))))
    model = numlstm.Sequential([numlstm.LSTM(5, 12, proj_size=4, batch_first=True, seed=1,
                                             return_sequences=False), numlstm.Dense(4, 2)])
    assert model.count_params() == 4 * 12 * (5 + 4) + 2 * 4 * 12 + 4 * 12 + 4 * 2 + 2
    model.compile(optimizer="adam", loss="mse", lr=1e-2)
    xb = np.swapaxes(x, 0, 1)
    yb = rng.standard_normal((3, 2)).astype(np.float32)
    losses = model.fit(xb, yb, epochs=20, batch_size=3, verbose=0)["loss"]
    assert losses[-1] < losses[0]


def test_layouts_torch_checkpoint_and_refusals(rng, tmp_path):
    lstm = numlstm.LSTM(3, 6, proj_size=2, bidirectional=True, seed=2)
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    y, _ = lstm(x)
    weights = lstm.state_dict()
    assert weights["weight_hr_l0_reverse"].shape == (2, 6)
    assert weights["weight_hh_l0"].shape == (24, 2)
    other = numlstm.LSTM(3, 6, proj_size=2, bidirectional=True, seed=3)
    other.load_weights(weights)
    assert_close(other(x)[0], y, 0, "reloaded")
    assert_close(lstm.to_torch()(torch.tensor(x))[0].detach().numpy(), y, 1e-6, "to_torch")
    model = numlstm.Sequential([lstm])
    model.save(tmp_path / "ck")
    back = numlstm.load_checkpoint(tmp_path / "ck").model
    assert_close(back.predict(np.swapaxes(x, 0, 1)), np.swapaxes(y, 0, 1), 0, "checkpoint")
    for layout in ("keras", "onnx", "haste"):
        with pytest.raises(ValueError, match="no recurrent projection"):
            lstm.export_weights(layout)
    with pytest.raises(ValueError, match="no recurrent projection"):
        numlstm.export_onnx(lstm, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    for bad, err in ((6, ValueError), (-1, ValueError), (True, TypeError), (1.5, TypeError)):
        with pytest.raises(err, match="proj_size"):
            numlstm.LSTM(3, 6, proj_size=bad)
    with pytest.raises(TypeError, match="proj_size"):
        numlstm.GRU(3, 6, proj_size=2)


def test_cuda_layer_against_torch(rng):
    """The cuda backend (Numba's simulator, so a tiny case; float32 is checked in
    tests/kernels) against torch in float64: stacked, bidirectional, lengths and
    initial states, every gradient."""
    got, want = against_torch(rng, (3, 5, 2, 2, True, 3, 2), "cuda", np.float64)
    assert set(got) == set(want)
    for k in want:
        assert_close(got[k], want[k], 1e-12 if k in ("y", "h", "c") else 5e-12, k)
