"""The NumPy references of the GRU and the plain RNN: backward against central finite
differences, forward and gradients against torch.nn.GRU / torch.nn.RNN (float64)."""
import numpy as np
import pytest

from numlstm.kernels.reference import (gru_backward_ref, gru_forward_ref, rnn_backward_ref,
                                       rnn_forward_ref)
from numlstm.kernels.gates import make_acts
from helpers import SOFTSIGN, cell_weights, numeric_gradient, rel_err

# name: (gate blocks, forward, backward, the cell's option)
CELLS = {
    "gru": (3, gru_forward_ref, gru_backward_ref, dict(reset_after=True)),
    "gru_reset_before": (3, gru_forward_ref, gru_backward_ref, dict(reset_after=False)),
    "gru_activations": (3, gru_forward_ref, gru_backward_ref,
                        dict(reset_after=True, acts=make_acts("hard_sigmoid", "relu"))),
    "gru_reset_before_user": (3, gru_forward_ref, gru_backward_ref,
                              dict(reset_after=False, acts=make_acts("tanh", SOFTSIGN))),
    "rnn_tanh": (1, rnn_forward_ref, rnn_backward_ref, dict(nonlinearity="tanh")),
    "rnn_relu": (1, rnn_forward_ref, rnn_backward_ref, dict(nonlinearity="relu")),
}


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, [4, 1, 0, 3]], ids=["full", "lengths"])
def test_reference_backward_matches_finite_differences(rng, cell, reverse, lengths):
    gates, forward, backward, option = CELLS[cell]
    T, B, I, H = 4, 4, 3, 2
    w_ih, w_hh, b_ih, b_hh = cell_weights(rng, I, H, gates, np.float64, scale=0.8)
    inputs = dict(x=rng.standard_normal((T, B, I)), w_ih=w_ih, w_hh=w_hh, b_ih=b_ih,
                  b_hh=b_hh, h0=rng.standard_normal((B, H)))
    wy, wh = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))

    def run():
        return forward(inputs["x"], inputs["w_ih"], inputs["w_hh"], inputs["b_ih"],
                       inputs["b_hh"], inputs["h0"], lengths, reverse, **option)

    def loss():  # depends on every output
        y, h, _ = run()
        return (y * wy).sum() + (h * wh).sum()

    _, _, cache = run()
    dx, dh0, grads = backward(wy, wh, cache)
    analytic = dict(x=dx, h0=dh0, **grads)
    for name, arr in inputs.items():
        err = rel_err(analytic[name], numeric_gradient(loss, arr))
        assert err < 1e-6, f"d{name}: relative error {err:.2e} against finite differences"
    if lengths is not None:  # the empty sequence passes its final state straight back
        np.testing.assert_array_equal(dh0[2], wh[2])
        assert (dx[:, 2] == 0).all()


@pytest.mark.parametrize("cell", list(CELLS))
def test_reference_lengths_hold_state_and_zero_outputs(rng, cell):
    gates, forward, _, option = CELLS[cell]
    T, B, I, H = 5, 3, 3, 4
    weights = cell_weights(rng, I, H, gates, np.float64)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H))
    for reverse in (False, True):
        y, h, _ = forward(x, *weights, h0, np.array([5, 2, 0]), reverse, **option)
        assert (y[2:, 1] == 0).all() and (y[:, 2] == 0).all()
        np.testing.assert_array_equal(h[2], h0[2])
        # Sequence 1 alone, cut to its length, gives the same outputs and final state.
        y1, h1, _ = forward(x[:2, 1:2], *weights, h0[1:2], None, reverse, **option)
        np.testing.assert_allclose(h[1], h1[0], rtol=1e-14)
        np.testing.assert_allclose(y[:2, 1], y1[:, 0], rtol=1e-14)


@pytest.mark.parametrize("cell", ["gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("lengths", [None, [5, 2, 1, 4]], ids=["full", "lengths"])
def test_reference_matches_torch(rng, cell, lengths):
    """Both directions of a bidirectional torch layer (packed when there are lengths,
    so its reverse direction starts at each sequence's last step): outputs, final
    states and every gradient."""
    torch = pytest.importorskip("torch")
    gates, forward, backward, option = CELLS[cell]
    T, B, I, H = 5, 4, 3, 6
    if cell == "gru":
        layer = torch.nn.GRU(I, H, bidirectional=True, dtype=torch.float64)
    else:
        layer = torch.nn.RNN(I, H, bidirectional=True, dtype=torch.float64, **option)
    names = ("w_ih", "w_hh", "b_ih", "b_hh")
    weights = [cell_weights(rng, I, H, gates, np.float64) for _ in range(2)]
    with torch.no_grad():
        for suffix, cell_w in zip(("", "_reverse"), weights):
            for name, w in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), cell_w):
                getattr(layer, f"{name}_l0{suffix}").copy_(torch.from_numpy(w))
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((2, B, H))
    wy, wh = rng.standard_normal((T, B, 2 * H)), rng.standard_normal((2, B, H))

    xt, h0t = torch.tensor(x, requires_grad=True), torch.tensor(h0, requires_grad=True)
    if lengths is None:
        yt, hnt = layer(xt, h0t)
    else:
        pack = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                      enforce_sorted=False)
        yt, hnt = layer(pack, h0t)
        yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yt, total_length=T)
    ((yt * torch.from_numpy(wy)).sum() + (hnt * torch.from_numpy(wh)).sum()).backward()

    dx = np.zeros_like(x)
    for d, reverse in enumerate((False, True)):
        y, h, cache = forward(x, *weights[d], h0[d], lengths, reverse, **option)
        np.testing.assert_allclose(y, yt.detach().numpy()[:, :, d * H:(d + 1) * H],
                                   rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(h, hnt.detach().numpy()[d], rtol=1e-12, atol=1e-13)
        ddx, dh0, grads = backward(wy[:, :, d * H:(d + 1) * H], wh[d], cache)
        dx += ddx
        np.testing.assert_allclose(dh0, h0t.grad.numpy()[d], rtol=1e-11, atol=1e-12)
        for name, torch_name in zip(names, ("weight_ih", "weight_hh", "bias_ih", "bias_hh")):
            want = getattr(layer, f"{torch_name}_l0{'_reverse' if reverse else ''}").grad
            np.testing.assert_allclose(grads[name], want.numpy(), rtol=1e-11, atol=1e-12,
                                       err_msg=f"d{name}, reverse={reverse}")
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-11, atol=1e-12)


def test_reference_rejects_an_unknown_nonlinearity(rng):
    weights = cell_weights(rng, 2, 3, 1, np.float64)
    with pytest.raises(ValueError, match="sigmoid"):
        rnn_forward_ref(np.zeros((1, 1, 2)), *weights, np.zeros((1, 3)),
                        nonlinearity="sigmoid")
